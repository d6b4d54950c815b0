package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/cm4bench/cm4bench/usbboot"
)

// flash is "eeprom set-boot-order" without --no-flash: build the recovery
// directory (in --out-dir, or a temporary one), then serve it over USB to
// every selected board and require each to confirm the update.
func (o *setBootOrderOptions) flash(ctx context.Context, order string, asJSON bool, stdout, stderr io.Writer) error {
	ts, err := digestTimestamp(o.Timestamp)
	if err != nil {
		return err
	}
	_, image, err := readImageFile(o.Image)
	if err != nil {
		return err
	}
	recovery, err := o.recoveryBin(ctx)
	if err != nil {
		return err
	}
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
	rd, err := buildRecoveryDir(recoverySpec{Image: image, RecoveryBin: recovery, Order: order, Timestamp: ts, UART: o.UART}, dir)
	if err != nil {
		return err
	}
	if !asJSON {
		for _, w := range rd.Warnings {
			fmt.Fprintf(stderr, "warning: %s\n", w)
		}
		fmt.Fprintf(stderr, "flashing BOOT_ORDER=%s (%s), pieeprom.bin sha256 %s: waiting for CM4s in RPIBOOT mode\n",
			rd.BootOrder, strings.Join(rd.Modes, ", "), rd.ImageSHA256)
	}
	_, err = flashRecoveryDir(ctx, &o.usbServeFlags, rd, stdout, stderr)
	return err
}

// flashRecoveryDir serves a recovery directory over USB and counts a board
// as flashed only when recovery.bin read the pieeprom.bin built for it,
// reported EEPROM_UPDATE=success and then Done, and (when reported) an
// EEPROM_HASH equal to that image's sha256.
func flashRecoveryDir(ctx context.Context, f *usbServeFlags, rd recoveryDir, stdout, stderr io.Writer) ([]usbboot.Result, error) {
	src, err := usbboot.NewDir(rd.Dir, false)
	if err != nil {
		return nil, err
	}
	return f.serve(ctx, src, func(r usbboot.Result) error { return checkFlash(r, rd.ImageSHA256) }, stdout, stderr)
}

// errFlash marks a board whose update was not confirmed.
var errFlash = errors.New("EEPROM flash not confirmed")

func checkFlash(r usbboot.Result, imageSHA256 string) error {
	served, ok := r.Served("pieeprom.bin")
	if !ok {
		return fmt.Errorf("%w: recovery.bin never read pieeprom.bin (is bootcode4.bin really recovery.bin?)", errFlash)
	}
	if !strings.EqualFold(served.SHA256, imageSHA256) {
		return fmt.Errorf("%w: served pieeprom.bin has sha256 %s, built %s (directory changed while serving?)", errFlash, served.SHA256, imageSHA256)
	}
	if err := r.CheckEEPROM(); err != nil {
		return fmt.Errorf("%w: %w", errFlash, err)
	}
	return nil
}
