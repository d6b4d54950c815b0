package cli

import (
	"errors"

	"github.com/spf13/cobra"
)

// newUSBBootCmd is a placeholder until its issue lands; it refuses to run.
func newUSBBootCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "usbboot",
		Short:  "(not built yet)",
		Hidden: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			return errors.New("usbboot: not built yet")
		},
	}
}
