package cli

import (
	"errors"

	"github.com/spf13/cobra"
)

// newBackupCmd is a placeholder until its issue lands; it refuses to run.
func newBackupCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "backup",
		Short:  "(not built yet)",
		Hidden: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			return errors.New("backup: not built yet")
		},
	}
}
