package cli

import (
	"context"
	"errors"

	"github.com/spf13/cobra"
)

// newFirmwareCmd is a placeholder until the firmware catalogue lands; it refuses to run.
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

// recoveryFromCache will return the verified recovery.bin of the firmware
// catalogue; until the catalogue exists, --recovery is required.
func recoveryFromCache(_ context.Context, _ string) ([]byte, error) {
	return nil, errors.New("eeprom set-boot-order: --recovery FILE is required (recovery.bin from raspberrypi/rpi-eeprom firmware-2711/latest)")
}
