package cli

import (
	"errors"

	"github.com/spf13/cobra"
)

// newSimCmd is a placeholder until its issue lands; it refuses to run.
func newSimCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "sim",
		Short:  "(not built yet)",
		Hidden: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			return errors.New("sim: not built yet")
		},
	}
}
