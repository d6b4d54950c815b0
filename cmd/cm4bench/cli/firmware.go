package cli

import (
	"errors"

	"github.com/spf13/cobra"
)

// newFirmwareCmd is a placeholder until its issue lands; it refuses to run.
func newFirmwareCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "firmware",
		Short:  "(not built yet)",
		Hidden: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			return errors.New("firmware: not built yet")
		},
	}
}
