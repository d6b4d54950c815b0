package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/cm4bench/cm4bench/eeprom/recoverydir"
	"github.com/spf13/cobra"
)

// defaultBootOrder is eMMC/SD first, then network, then restart: a CM4 with
// an empty eMMC netboots, one with an OS boots it.
const defaultBootOrder = "0xf21"

// setBootOrderOptions are the flags of "eeprom set-boot-order". Flashing
// flags (--loop, --port, --serial, --timeout, --strict, --trace) belong here too.
type setBootOrderOptions struct {
	Image     string        // --image: the pieeprom.bin to start from ("" = firmware cache)
	Recovery  string        // --recovery: recovery.bin for the image's SoC ("" = firmware cache)
	BootFiles string        // --bootfiles: usbboot's bootfiles.bin for the SDRAM files ("" = firmware cache, if there)
	OutDir    string        // --out-dir: where the recovery directory is written
	NoFlash   bool          // --no-flash: only write the directory
	Timestamp timestampFlag // --timestamp: ts of pieeprom.sig (unset = $SOURCE_DATE_EPOCH or now)
	UART      bool          // --uart: recovery.bin logs on GPIO14/15 (uart_2ndstage=1)
	Cache     string        // --cache: firmware cache for the defaults ("" = user cache dir)

	usbServeFlags // flashing: --loop, --port, --serial, --timeout, --metadata-dir, --strict, --trace

	command string // the command errors are named after ("" = eeprom set-boot-order)
}

// step is the command name that prefixes errors.
func (o *setBootOrderOptions) step() string {
	if o.command == "" {
		return "eeprom set-boot-order"
	}
	return o.command
}

func newEEPROMSetBootOrderCmd(usb usbAccess) *cobra.Command {
	opts := &setBootOrderOptions{}
	cmd := &cobra.Command{
		Use:   "set-boot-order [ORDER] --image IMAGE [--out-dir DIR --no-flash]",
		Short: "Build a USB recovery directory that flashes a new BOOT_ORDER",
		Long: `set-boot-order sets BOOT_ORDER (default 0xf21: eMMC, then network, then restart) in a copy
of IMAGE and writes a ready recovery directory for USB boot:

  pieeprom.bin   IMAGE with the new BOOT_ORDER (the rest of its config is kept); without
                 --image, the default release pieeprom-2026-05-17.bin from the firmware cache
  pieeprom.sig   its SHA-256 and timestamp, checked by recovery.bin before flashing; a 2 MiB
                 (BCM2712, CM5) image also gets the "target-soc: 2712" line
  bootcode4.bin  recovery.bin (the EEPROM updater the boot ROM runs), from --recovery, or from
                 the firmware cache ("cm4bench firmware fetch recovery") when omitted; for a
                 2 MiB image it is named bootcode5.bin, the name the CM5 ROM asks for. A
                 recovery.bin built for the other SoC is refused
  config.txt     recovery.bin options: metadata on, halt after flashing (no reboot loop)
  mcb.bin, memsys*.bin, bootmain
                 the SDRAM files newer recovery.bin builds ask for, taken for the image's SoC
                 from usbboot's bootfiles.bin (--bootfiles, or the firmware cache when it holds
                 it: "cm4bench firmware fetch bootfiles"); bootfiles.bin itself is not copied,
                 so its own bootcode cannot shadow recovery.bin

pieeprom.sig is written last: a directory without it is incomplete. The directory must be new,
empty, or one written before by set-boot-order: stray files (a pieeprom.upd, say) are refused
because USB boot would serve them.

Without --no-flash the directory (a temporary one unless --out-dir is given) is served over
USB at once, as "cm4bench usbboot DIR" would. A board counts as flashed when recovery.bin read
this pieeprom.bin, reported EEPROM_UPDATE=success and an EEPROM_HASH equal to the sha256 of the
image as served or of the image with the .sig's timestamp stamped in (as the flash reads back),
and then either sent Done or left the bus (a warning says no Done came; --strict requires
Done, as earlier versions did). --loop flashes board after board; --port and --serial select
boards; --trace FILE records every USB transfer for the bug report; exit status as for usbboot
(5: a board not confirmed, 6: timed out). With --no-flash the directory can be served later
with "cm4bench usbboot DIR" or "rpiboot -d DIR". On the board: fit nRPIBOOT, connect the USB
slave port, power on; recovery.bin reports EEPROM_UPDATE=success as USB metadata and the green
LED then flashes rapidly.

--timestamp is parsed in base 10 as rpi-eeprom-digest's callers do: 012 is 12; 0x10, 0o17,
0b11 and negative values are refused.`,
		Example: `  cm4bench eeprom set-boot-order --image pieeprom-2026-05-17.bin --recovery recovery.bin \
      --out-dir recovery --no-flash
  cm4bench eeprom set-boot-order 0xf2 --image pieeprom.bin --out-dir netboot-only --no-flash --json
  cm4bench eeprom set-boot-order --image pieeprom.bin --recovery recovery.bin --loop   # flash board after board
  cm4bench eeprom set-boot-order --trace first-flash.trace --uart                       # first real bench run`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return opts.run(cmd.Context(), args, wantJSON(cmd), cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.Image, "image", "", "bootloader image `FILE` to start from (default: pieeprom-2026-05-17.bin from the firmware cache)")
	f.StringVar(&opts.Recovery, "recovery", "", "recovery.bin `FILE` for the image's SoC (default: the firmware cache)")
	f.StringVar(&opts.BootFiles, "bootfiles", "", "usbboot's bootfiles.bin `FILE`, for mcb.bin/memsys*.bin/bootmain (default: the firmware cache, if it holds it)")
	f.StringVar(&opts.OutDir, "out-dir", "", "write the recovery directory to `DIR`")
	f.BoolVar(&opts.NoFlash, "no-flash", false, "only write the recovery directory, do not flash over USB")
	f.Var(&opts.Timestamp, "timestamp", "ts: of pieeprom.sig in `UNIX` seconds, base 10 (default $SOURCE_DATE_EPOCH or now)")
	f.BoolVar(&opts.UART, "uart", false, "have recovery.bin log on the UART (GPIO14/15, 115200 baud)")
	f.StringVar(&opts.Cache, "cache", "", "firmware cache `DIR` for the default image, recovery.bin and bootfiles.bin")
	opts.usbServeFlags.bind(cmd)
	opts.usb = usb
	opts.usbServeFlags.bindFlash(cmd)
	return cmd
}

func (o *setBootOrderOptions) run(ctx context.Context, args []string, asJSON bool, stdout, stderr io.Writer) error {
	order := defaultBootOrder
	if len(args) == 1 {
		order = args[0]
	}
	if o.NoFlash && o.OutDir == "" {
		return errors.New("eeprom set-boot-order: --out-dir DIR is required with --no-flash")
	}
	spec, err := o.spec(ctx, order)
	if err != nil {
		return err
	}
	if !o.NoFlash {
		return o.flash(ctx, spec, asJSON, stdout, stderr) // eeprom_flash.go
	}
	rd, err := recoverydir.Build(spec, o.OutDir)
	if err != nil {
		return fmt.Errorf("eeprom set-boot-order: %w", err)
	}
	if asJSON {
		return writeJSON(stdout, rd)
	}
	for _, w := range rd.Warnings {
		fmt.Fprintf(stderr, "warning: %s\n", w)
	}
	fmt.Fprintf(stdout, "recovery directory %s: BOOT_ORDER=%s (%s)\n", rd.Dir, rd.BootOrder, strings.Join(rd.Modes, ", "))
	for _, f := range rd.Files {
		fmt.Fprintf(stdout, "  %-14s %7d  sha256 %s\n", f.Name, f.Size, f.SHA256)
	}
	_, err = fmt.Fprintf(stdout, "serve it to a board in RPIBOOT mode: cm4bench usbboot %s  (or: rpiboot -d %s)\n", rd.Dir, rd.Dir)
	return err
}

// spec reads every input of the recovery directory, for both --no-flash
// and flashing: the image (default from the firmware cache), recovery.bin
// (--recovery or the cache), bootfiles.bin (--bootfiles, or the cache when
// it holds it) and the timestamp.
func (o *setBootOrderOptions) spec(ctx context.Context, order string) (recoverydir.Spec, error) {
	spec := recoverydir.Spec{Order: order, UART: o.UART, BootFiles: o.BootFiles}
	if o.Image == "" {
		p, err := cachedPath(o.Cache, defaultImageID)
		if err != nil {
			return spec, fmt.Errorf("%s: no --image FILE given and the default image is not usable from the firmware cache "+
				"(run `cm4bench firmware fetch recovery` or pass --image): %w", o.step(), err)
		}
		o.Image = p
	}
	ts, err := digestTimestamp(o.Timestamp)
	if err != nil {
		return spec, err
	}
	spec.Timestamp = ts
	if _, spec.Image, err = readImageFile(o.Image); err != nil {
		return spec, err
	}
	if o.Recovery == "" {
		if spec.RecoveryBin, err = recoveryFromCache(ctx, o.step(), o.Cache); err != nil {
			return spec, err
		}
	} else if spec.RecoveryBin, err = os.ReadFile(o.Recovery); err != nil {
		return spec, fmt.Errorf("read recovery.bin: %w", err)
	}
	if spec.BootFiles == "" {
		if p, err := cachedPath(o.Cache, bootfilesID); err == nil {
			spec.BootFiles = p
		}
	}
	return spec, nil
}
