package cli

import (
	"errors"

	"github.com/spf13/cobra"
)

// newEEPROMCmd is a placeholder until its issue lands; it refuses to run.
func newEEPROMCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "eeprom",
		Short:  "(not built yet)",
		Hidden: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			return errors.New("eeprom: not built yet")
		},
	}
}
