package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/cm4bench/cm4bench/eeprom"
	"github.com/cm4bench/cm4bench/internal/atomicfile"
	"github.com/spf13/cobra"
)

// defaultBootOrder is eMMC/SD first, then network, then restart: a CM4 with
// an empty eMMC netboots, one with an OS boots it.
const defaultBootOrder = "0xf21"

// setBootOrderOptions are the flags of "eeprom set-boot-order". Flashing
// flags (--loop, --port, --serial, --timeout) belong here too.
type setBootOrderOptions struct {
	Image     string // --image: the pieeprom.bin to start from ("" = firmware cache)
	Recovery  string // --recovery: recovery.bin, served as bootcode4.bin ("" = firmware cache)
	OutDir    string // --out-dir: where the recovery directory is written
	NoFlash   bool   // --no-flash: only write the directory
	Timestamp int64  // --timestamp: ts of pieeprom.sig (-1 = $SOURCE_DATE_EPOCH or now)
	UART      bool   // --uart: recovery.bin logs on GPIO14/15 (uart_2ndstage=1)
	Cache     string // --cache: firmware cache for the defaults ("" = user cache dir)

	usbServeFlags // flashing: --loop, --port, --serial, --timeout, --metadata-dir (eeprom_flash.go)
}

func newEEPROMSetBootOrderCmd() *cobra.Command {
	opts := &setBootOrderOptions{}
	cmd := &cobra.Command{
		Use:   "set-boot-order [ORDER] --image IMAGE [--out-dir DIR --no-flash]",
		Short: "Build a USB recovery directory that flashes a new BOOT_ORDER",
		Long: `set-boot-order sets BOOT_ORDER (default 0xf21: eMMC, then network, then restart) in a copy
of IMAGE and writes a ready recovery directory for USB boot:

  pieeprom.bin   IMAGE with the new BOOT_ORDER (the rest of its config is kept); without
                 --image, the default release pieeprom-2026-05-17.bin from the firmware cache
  pieeprom.sig   its SHA-256 and timestamp, checked by recovery.bin before flashing
  bootcode4.bin  recovery.bin (the EEPROM updater the CM4 boot ROM runs), from --recovery,
                 or from the firmware cache ("cm4bench firmware fetch recovery") when omitted
  config.txt     recovery.bin options: halt after flashing (no reboot loop), metadata on

pieeprom.sig is written last: a directory without it is incomplete. The directory must be new,
empty, or one written before by set-boot-order: stray files (a pieeprom.upd, say) are refused
because USB boot would serve them.

Without --no-flash the directory (a temporary one unless --out-dir is given) is served over
USB at once, as "cm4bench usbboot DIR" would: a board counts as flashed only when recovery.bin
read this pieeprom.bin, reported EEPROM_UPDATE=success and then Done, and reported an
EEPROM_HASH equal to the image's sha256. --loop flashes board after board; --port and --serial
select boards; exit status as for usbboot (5: a board not confirmed, 6: timed out). With
--no-flash the directory can be served later with "cm4bench usbboot DIR" or "rpiboot -d DIR".
On the board: fit nRPIBOOT, connect the USB slave port, power on; recovery.bin reports
EEPROM_UPDATE=success as USB metadata and the green LED then flashes rapidly.`,
		Example: `  cm4bench eeprom set-boot-order --image pieeprom-2026-05-17.bin --recovery recovery.bin \
      --out-dir recovery --no-flash
  cm4bench eeprom set-boot-order 0xf2 --image pieeprom.bin --out-dir netboot-only --no-flash --json
  cm4bench eeprom set-boot-order --image pieeprom.bin --recovery recovery.bin --loop   # flash board after board`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return opts.run(cmd.Context(), args, wantJSON(cmd), cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.Image, "image", "", "bootloader image `FILE` to start from (default: pieeprom-2026-05-17.bin from the firmware cache)")
	f.StringVar(&opts.Recovery, "recovery", "", "recovery.bin `FILE` served as bootcode4.bin (default: the firmware cache)")
	f.StringVar(&opts.OutDir, "out-dir", "", "write the recovery directory to `DIR`")
	f.BoolVar(&opts.NoFlash, "no-flash", false, "only write the recovery directory, do not flash over USB")
	f.Int64Var(&opts.Timestamp, "timestamp", -1, "ts: of pieeprom.sig in `UNIX` seconds (default $SOURCE_DATE_EPOCH or now)")
	f.BoolVar(&opts.UART, "uart", false, "have recovery.bin log on the UART (GPIO14/15, 115200 baud)")
	f.StringVar(&opts.Cache, "cache", "", "firmware cache `DIR` for the default image and recovery.bin")
	opts.usbServeFlags.bind(cmd)
	return cmd
}

func (o *setBootOrderOptions) run(ctx context.Context, args []string, asJSON bool, stdout, stderr io.Writer) error {
	order := defaultBootOrder
	if len(args) == 1 {
		order = args[0]
	}
	if o.Image == "" {
		// Default image: the verified release image in the firmware cache.
		p, err := cachedPath(o.Cache, defaultImageID)
		if err != nil {
			return fmt.Errorf("eeprom set-boot-order: no --image FILE given and the default image is not usable from the firmware cache "+
				"(run `cm4bench firmware fetch recovery` or pass --image): %w", err)
		}
		o.Image = p
	}
	if !o.NoFlash {
		return o.flash(ctx, order, asJSON, stdout, stderr) // eeprom_flash.go
	}
	if o.OutDir == "" {
		return errors.New("eeprom set-boot-order: --out-dir DIR is required with --no-flash")
	}
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
	rd, err := buildRecoveryDir(recoverySpec{Image: image, RecoveryBin: recovery, Order: order, Timestamp: ts, UART: o.UART}, o.OutDir)
	if err != nil {
		return err
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
	_, err = fmt.Fprintf(stdout, "serve it to a CM4 in RPIBOOT mode: cm4bench usbboot %s  (or: rpiboot -d %s)\n", rd.Dir, rd.Dir)
	return err
}

// recoveryBin reads --recovery. Without it, recovery.bin comes from the
// verified firmware cache (see recoveryFromCache).
func (o *setBootOrderOptions) recoveryBin(ctx context.Context) ([]byte, error) {
	if o.Recovery == "" {
		return recoveryFromCache(ctx, o.Cache)
	}
	b, err := os.ReadFile(o.Recovery)
	if err != nil {
		return nil, fmt.Errorf("read recovery.bin: %w", err)
	}
	return b, nil
}

// recoverySpec is what goes into a recovery directory.
type recoverySpec struct {
	Image       []byte // source bootloader image (512 KiB or 2 MiB)
	RecoveryBin []byte // recovery.bin, served as bootcode4.bin
	Order       string // BOOT_ORDER to set, e.g. "0xf21"
	Timestamp   int64  // ts: line of pieeprom.sig
	UART        bool   // uart_2ndstage=1 in config.txt
}

// recoveryDir describes a written recovery directory.
type recoveryDir struct {
	Dir       string   `json:"dir"`
	BootOrder string   `json:"boot_order"`
	Modes     []string `json:"boot_modes"`
	// ImageSHA256 is the sha256 of pieeprom.bin, the value recovery.bin
	// should report as EEPROM_HASH metadata after flashing.
	ImageSHA256 string         `json:"pieeprom_sha256"`
	Files       []recoveryFile `json:"files"`
	Warnings    []string       `json:"warnings,omitempty"`
}

// recoveryFile is one file of a recovery directory.
type recoveryFile struct {
	Name   string `json:"name"`
	Path   string `json:"path"`
	Size   int    `json:"size"`
	SHA256 string `json:"sha256"`
}

// Names of the recovery directory files, in the order they are written
// (pieeprom.sig last: without it recovery.bin flashes nothing).
func recoveryFileNames() []string {
	return []string{"config.txt", "bootcode4.bin", "pieeprom.bin", "pieeprom.sig"}
}

// buildRecoveryDir sets BOOT_ORDER in spec.Image and writes the recovery
// directory outDir: config.txt, bootcode4.bin, pieeprom.bin and, last,
// pieeprom.sig. Every file is written atomically; on error the files of
// this run are removed again. outDir is created if needed and must not
// hold other files.
func buildRecoveryDir(spec recoverySpec, outDir string) (recoveryDir, error) {
	rd := recoveryDir{Dir: outDir, BootOrder: spec.Order}
	if err := checkRecoveryBin(spec.RecoveryBin); err != nil {
		return rd, err
	}
	im, err := eeprom.Parse(spec.Image)
	if err != nil {
		return rd, fmt.Errorf("eeprom set-boot-order: image: %w", err)
	}
	conf, err := im.BootConf()
	if err != nil {
		return rd, fmt.Errorf("eeprom set-boot-order: image: %w", err)
	}
	c := eeprom.ParseConfig(conf)
	warnings, err := c.Set("BOOT_ORDER", spec.Order)
	if err != nil {
		return rd, fmt.Errorf("eeprom set-boot-order: %w", err)
	}
	rd.Warnings = warnings
	if rd.Modes, err = eeprom.BootModes(spec.Order); err != nil {
		return rd, fmt.Errorf("eeprom set-boot-order: %w", err)
	}
	if err := im.SetBootConf(c.Bytes()); err != nil {
		return rd, fmt.Errorf("eeprom set-boot-order: %w", err)
	}
	pieeprom := im.Bytes()
	rd.ImageSHA256 = sha256Hex(pieeprom)
	contents := map[string][]byte{
		"config.txt":    recoveryConfig(spec.UART),
		"bootcode4.bin": spec.RecoveryBin,
		"pieeprom.bin":  pieeprom,
		"pieeprom.sig":  eeprom.Digest(pieeprom, spec.Timestamp, 0),
	}

	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return rd, fmt.Errorf("eeprom set-boot-order: create out dir: %w", err)
	}
	entries, err := os.ReadDir(outDir)
	if err != nil {
		return rd, fmt.Errorf("eeprom set-boot-order: read out dir: %w", err)
	}
	var stray []string
	for _, e := range entries {
		if !slices.Contains(recoveryFileNames(), e.Name()) {
			stray = append(stray, e.Name())
		}
	}
	if len(stray) > 0 {
		return rd, fmt.Errorf("eeprom set-boot-order: out dir %s holds other files (%s) that USB boot would also serve: use a new or empty directory",
			outDir, strings.Join(stray, ", "))
	}
	// A directory without pieeprom.sig is visibly incomplete.
	sigPath := filepath.Join(outDir, "pieeprom.sig")
	if err := os.Remove(sigPath); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return rd, fmt.Errorf("eeprom set-boot-order: remove old pieeprom.sig: %w", err)
	}
	var written []string
	for _, name := range recoveryFileNames() {
		p := filepath.Join(outDir, name)
		if err := atomicfile.WriteFile(p, contents[name], 0o644); err != nil {
			for _, w := range written {
				os.Remove(w)
			}
			return rd, fmt.Errorf("eeprom set-boot-order: write %s: %w", name, err)
		}
		written = append(written, p)
		rd.Files = append(rd.Files, recoveryFile{Name: name, Path: p, Size: len(contents[name]), SHA256: sha256Hex(contents[name])})
	}
	return rd, nil
}

// checkRecoveryBin catches the usual mix-ups: an empty file, or a
// bootloader image given where recovery.bin belongs.
func checkRecoveryBin(b []byte) error {
	switch {
	case len(b) == 0:
		return errors.New("eeprom set-boot-order: recovery.bin is empty")
	case len(b) == eeprom.Size2711 || len(b) == eeprom.Size2712:
		if _, err := eeprom.Parse(b); err == nil {
			return errors.New("eeprom set-boot-order: --recovery is a bootloader image (pieeprom-*.bin), not recovery.bin")
		}
	case len(b) > 1<<20:
		return fmt.Errorf("eeprom set-boot-order: recovery.bin is %d bytes; the real one is about 100 KB", len(b))
	}
	return nil
}

// recoveryConfig is the config.txt recovery.bin reads (usbboot.md §3.4).
func recoveryConfig(uart bool) []byte {
	var b strings.Builder
	b.WriteString(`# config.txt for recovery.bin (served as bootcode4.bin), written by cm4bench eeprom set-boot-order.
# recovery.bin checks pieeprom.bin against pieeprom.sig, writes the changed 4 KiB sectors of the SPI
# EEPROM, verifies them, and reports EEPROM_UPDATE and EEPROM_HASH as USB metadata. It then halts:
# green screen and a fast-flashing green LED. recovery_reboot is left off on purpose: with
# nRPIBOOT still fitted a reboot would start another USB boot and flash again.
`)
	if uart {
		b.WriteString("# Updater log on the UART (GPIO14/15, 115200 baud).\nuart_2ndstage=1\n")
	} else {
		b.WriteString("# For an updater log on the UART (GPIO14/15, 115200 baud): --uart, which sets uart_2ndstage=1.\n")
	}
	return []byte(b.String())
}
