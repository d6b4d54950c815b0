package cli

import (
	"errors"

	"github.com/spf13/cobra"
)

// newDeviceCmd is a placeholder until its issue lands; it refuses to run.
func newDeviceCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "device",
		Short:  "(not built yet)",
		Hidden: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			return errors.New("device: not built yet")
		},
	}
}
