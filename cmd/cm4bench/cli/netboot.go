package cli

import (
	"errors"

	"github.com/spf13/cobra"
)

// newNetbootCmd is a placeholder until its issue lands; it refuses to run.
func newNetbootCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "netboot",
		Short:  "(not built yet)",
		Hidden: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			return errors.New("netboot: not built yet")
		},
	}
}
