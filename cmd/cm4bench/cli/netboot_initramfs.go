package cli

import (
	"errors"

	"github.com/spf13/cobra"
)

// newNetbootInitramfsCmd is a placeholder until the agent issue lands.
func newNetbootInitramfsCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "initramfs",
		Short:  "(not built yet)",
		Hidden: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			return errors.New("netboot initramfs: not built yet")
		},
	}
}
