package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/cm4bench/cm4bench/eeprom/recoverydir"
	"github.com/cm4bench/cm4bench/usbboot"
)

// flash is "eeprom set-boot-order" without --no-flash: build the recovery
// directory (in --out-dir, or a temporary one), then serve it over USB to
// every selected board and require each to confirm the update.
func (o *setBootOrderOptions) flash(ctx context.Context, spec recoverydir.Spec, asJSON bool, stdout, stderr io.Writer) error {
	// Fail before writing anything when there is no USB to flash over.
	if err := o.usbServeFlags.preflight(ctx); err != nil {
		return err
	}
	dir := o.OutDir
	if dir == "" {
		tmp, err := os.MkdirTemp("", "cm4bench-recovery-")
		if err != nil {
			return fmt.Errorf("eeprom set-boot-order: %w", err)
		}
		defer os.RemoveAll(tmp)
		dir = tmp
	}
	rd, err := recoverydir.Build(spec, dir)
	if err != nil {
		return fmt.Errorf("eeprom set-boot-order: %w", err)
	}
	if !asJSON {
		for _, w := range rd.Warnings {
			fmt.Fprintf(stderr, "warning: %s\n", w)
		}
		fmt.Fprintf(stderr, "flashing BOOT_ORDER=%s (%s), pieeprom.bin sha256 %s: waiting for BCM%d boards in RPIBOOT mode\n",
			rd.BootOrder, strings.Join(rd.Modes, ", "), rd.ImageSHA256, rd.SoC)
	}
	_, err = flashRecoveryDir(ctx, &o.usbServeFlags, rd, stdout, stderr)
	return err
}

// flashRecoveryDir serves a recovery directory over USB; rd.Verify decides
// whether each board was flashed.
func flashRecoveryDir(ctx context.Context, f *usbServeFlags, rd recoverydir.Dir, stdout, stderr io.Writer) ([]usbboot.Result, error) {
	src, err := usbboot.NewDir(rd.Dir, false)
	if err != nil {
		return nil, err
	}
	return f.serve(ctx, src, func(r usbboot.Result) (string, error) { return rd.Verify(r, f.Strict) }, stdout, stderr)
}
