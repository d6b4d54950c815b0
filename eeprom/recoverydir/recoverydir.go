// Package recoverydir builds and checks the USB recovery directory that
// flashes a CM4/CM5 SPI bootloader EEPROM: recovery.bin served as the
// second stage, its config.txt, pieeprom.bin and pieeprom.sig, and the
// SDRAM files newer recovery.bin builds ask for. It is the domain side of
// "cm4bench eeprom set-boot-order"; package eeprom stays pure (bytes in,
// bytes out) and this package does the file I/O.
//
// What recovery.bin asks for, in which order, and what its metadata means
// is summarised in HARDWARE.md (section "EEPROM flashing over USB").
package recoverydir

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/cm4bench/cm4bench/eeprom"
	"github.com/cm4bench/cm4bench/internal/atomicfile"
	"github.com/cm4bench/cm4bench/usbboot"
)

// Spec is what goes into a recovery directory.
type Spec struct {
	Image       []byte // source bootloader image (512 KiB for 2711, 2 MiB for 2712)
	RecoveryBin []byte // recovery.bin for the image's SoC
	Order       string // BOOT_ORDER to set, e.g. "0xf21"
	Timestamp   int64  // ts: line of pieeprom.sig
	UART        bool   // uart_2ndstage=1 in config.txt
	// BootFiles is the path of usbboot's bootfiles.bin ("" = none). Its
	// mcb.bin, memsys*.bin and bootmain members for the image's SoC are
	// copied into the directory: recovery.bin builds from 2026-04-14 on ask
	// for them (rpi-sb-provisioner#338) and hang without them. bootfiles.bin
	// itself is never placed in the directory, so its bootcode members
	// cannot shadow recovery.bin.
	BootFiles string
	// Secure, when set, makes it a secure-boot directory (secure.go).
	Secure *Secure
}

// Dir describes a written recovery directory.
type Dir struct {
	Dir       string   `json:"dir"`
	BootOrder string   `json:"boot_order"`
	Modes     []string `json:"boot_modes"`
	SoC       int      `json:"soc"`
	// Bootcode is the name recovery.bin is served under (bootcode4.bin for
	// 2711, bootcode5.bin for 2712: the name the boot ROM asks for).
	Bootcode string `json:"bootcode"`
	// ImageSHA256 is the sha256 of pieeprom.bin; StampedSHA256 that of the
	// image with the update timestamp (the .sig's ts) stamped in. recovery.bin
	// should report one of them as EEPROM_HASH.
	ImageSHA256   string   `json:"pieeprom_sha256"`
	StampedSHA256 string   `json:"pieeprom_stamped_sha256,omitempty"`
	Timestamp     int64    `json:"timestamp"`
	Files         []File   `json:"files"`
	Warnings      []string `json:"warnings,omitempty"`
	// Secure is set for a secure-boot directory: the key hash each board
	// must report and the OTP options it was given.
	Secure *SecureDir `json:"secure_boot,omitempty"`
}

// File is one file of a recovery directory.
type File struct {
	Name   string `json:"name"`
	Path   string `json:"path"`
	Size   int    `json:"size"`
	SHA256 string `json:"sha256"`
}

// ErrNotConfirmed marks a board whose update was not confirmed.
var ErrNotConfirmed = errors.New("EEPROM flash not confirmed")

// BootcodeName is the second-stage name the boot ROM of soc asks for.
func BootcodeName(soc int) string {
	if soc == 2712 {
		return "bootcode5.bin"
	}
	return "bootcode4.bin"
}

// ownNames reports whether name is a file Build writes (or wrote in an
// earlier run): the only files allowed in the directory.
func ownNames(name string) bool {
	switch name {
	case "config.txt", "bootcode4.bin", "bootcode5.bin", "pieeprom.bin", "pieeprom.sig", "mcb.bin", "bootmain":
		return true
	}
	return strings.HasPrefix(name, "memsys") && strings.HasSuffix(name, ".bin") && len(name) == len("memsys00.bin")
}

// Build sets BOOT_ORDER in spec.Image and writes the recovery directory
// outDir: config.txt, the SDRAM files (with BootFiles), recovery.bin under
// the SoC's bootcode name, pieeprom.bin and, last, pieeprom.sig. Every
// file is written atomically; on error the files of this run are removed
// again. outDir is created if needed and must not hold other files.
func Build(spec Spec, outDir string) (Dir, error) {
	rd := Dir{Dir: outDir, BootOrder: spec.Order, Timestamp: spec.Timestamp}
	im, err := eeprom.Parse(spec.Image)
	if err != nil {
		return rd, fmt.Errorf("recovery dir: image: %w", err)
	}
	rd.SoC = im.SoC()
	rd.Bootcode = BootcodeName(rd.SoC)
	w, err := CheckRecoveryBin(spec.RecoveryBin, rd.SoC)
	if err != nil {
		return rd, err
	}
	if w != "" {
		rd.Warnings = append(rd.Warnings, w)
	}
	if spec.Timestamp < 0 || spec.Timestamp > 1<<32-1 {
		return rd, fmt.Errorf("recovery dir: timestamp %d does not fit in 32 bits", spec.Timestamp)
	}
	conf, err := im.BootConf()
	if err != nil {
		return rd, fmt.Errorf("recovery dir: image: %w", err)
	}
	c := eeprom.ParseConfig(conf)
	warnings, err := c.Set("BOOT_ORDER", spec.Order)
	if err != nil {
		return rd, fmt.Errorf("recovery dir: %w", err)
	}
	rd.Warnings = append(rd.Warnings, warnings...)
	if rd.Modes, err = eeprom.BootModes(spec.Order); err != nil {
		return rd, fmt.Errorf("recovery dir: %w", err)
	}
	if spec.Secure != nil {
		w, err := spec.Secure.check(im)
		if err != nil {
			return rd, err
		}
		rd.Warnings = append(rd.Warnings, w...)
		if v, _ := c.Get("SIGNED_BOOT"); v != "1" {
			if _, err := c.Set("SIGNED_BOOT", "1"); err != nil {
				return rd, fmt.Errorf("recovery dir: %w", err)
			}
			rd.Warnings = append(rd.Warnings, "SIGNED_BOOT=1 added to the bootloader config: it boots only signed boot.img files from now on")
		}
	}
	if err := im.SetBootConf(c.Bytes()); err != nil {
		return rd, fmt.Errorf("recovery dir: %w", err)
	}
	config := Config(spec.UART)
	if spec.Secure != nil {
		sd, err := spec.Secure.sign(im, c.Bytes(), spec.Timestamp)
		if err != nil {
			return rd, err
		}
		rd.Secure = &sd
		config = SecureConfig(spec.UART, spec.Secure.OTP)
	}
	pieeprom := im.Bytes()
	rd.ImageSHA256 = sha256Hex(pieeprom)
	if rd.StampedSHA256, err = usbboot.StampedSHA256(pieeprom, spec.Timestamp); err != nil {
		return rd, fmt.Errorf("recovery dir: stamp timestamp: %w", err)
	}
	// usbboot's update-pieeprom.sh writes no target-soc line for 2711 (the
	// vectors are byte-identical to it); rpi-eeprom-update writes one, and a
	// 2712 image gets it so a future bootloader can refuse a 2711 image.
	targetSoC := 0
	if rd.SoC == 2712 {
		targetSoC = 2712
	}
	type entry struct {
		name string
		data []byte
	}
	entries := []entry{{"config.txt", config}}
	if spec.BootFiles != "" {
		ddr, err := SDRAMFiles(spec.BootFiles, rd.SoC)
		if err != nil {
			return rd, err
		}
		for _, n := range slices.Sorted(maps.Keys(ddr)) {
			entries = append(entries, entry{n, ddr[n]})
		}
	} else {
		rd.Warnings = append(rd.Warnings, "no bootfiles.bin: a recovery.bin from 2026-04-14 or later that asks for mcb.bin/memsys*.bin/bootmain "+
			"would hang (fetch it with `cm4bench firmware fetch bootfiles`, or pass --bootfiles)")
	}
	entries = append(entries,
		entry{rd.Bootcode, spec.RecoveryBin},
		entry{"pieeprom.bin", pieeprom},
		entry{"pieeprom.sig", eeprom.Digest(pieeprom, spec.Timestamp, targetSoC)})

	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return rd, fmt.Errorf("recovery dir: create %s: %w", outDir, err)
	}
	existing, err := os.ReadDir(outDir)
	if err != nil {
		return rd, fmt.Errorf("recovery dir: read %s: %w", outDir, err)
	}
	var stray []string
	for _, e := range existing {
		if !ownNames(e.Name()) {
			stray = append(stray, e.Name())
		}
	}
	if len(stray) > 0 {
		return rd, fmt.Errorf("recovery dir: %s holds other files (%s) that USB boot would also serve: use a new or empty directory",
			outDir, strings.Join(stray, ", "))
	}
	// A directory without pieeprom.sig is visibly incomplete; files of an
	// earlier run that this one does not write (another SoC's bootcode, SDRAM
	// files) must not be served.
	for _, e := range existing {
		if !slices.ContainsFunc(entries, func(x entry) bool { return x.name == e.Name() }) || e.Name() == "pieeprom.sig" {
			if err := os.Remove(filepath.Join(outDir, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return rd, fmt.Errorf("recovery dir: remove old %s: %w", e.Name(), err)
			}
		}
	}
	var written []string
	for _, e := range entries {
		p := filepath.Join(outDir, e.name)
		if err := atomicfile.WriteFile(p, e.data, 0o644); err != nil {
			for _, w := range written {
				os.Remove(w)
			}
			return rd, fmt.Errorf("recovery dir: write %s: %w", e.name, err)
		}
		written = append(written, p)
		rd.Files = append(rd.Files, File{Name: e.name, Path: p, Size: len(e.data), SHA256: sha256Hex(e.data)})
	}
	return rd, nil
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// SDRAMFiles reads mcb.bin, memsys*.bin and bootmain for soc from a
// bootfiles.bin archive (members "<soc>/name").
func SDRAMFiles(bootfiles string, soc int) (map[string][]byte, error) {
	f, err := os.Open(bootfiles)
	if err != nil {
		return nil, fmt.Errorf("recovery dir: bootfiles.bin: %w", err)
	}
	defer f.Close()
	prefix := fmt.Sprintf("%d/", soc)
	out := map[string][]byte{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("recovery dir: read %s: %w", bootfiles, err)
		}
		name, ok := strings.CutPrefix(strings.TrimPrefix(h.Name, "./"), prefix)
		if !ok || h.Typeflag != tar.TypeReg || !ownNames(name) || strings.HasPrefix(name, "bootcode") || name == "config.txt" ||
			strings.HasPrefix(name, "pieeprom") {
			continue
		}
		if h.Size > 4<<20 {
			return nil, fmt.Errorf("recovery dir: %s member %s is %d bytes: not a bootfiles.bin", bootfiles, h.Name, h.Size)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			return nil, fmt.Errorf("recovery dir: read %s member %s: %w", bootfiles, h.Name, err)
		}
		out[name] = b
	}
	if _, ok := out["mcb.bin"]; !ok {
		return nil, fmt.Errorf("recovery dir: %s has no %smcb.bin: not usbboot's bootfiles.bin?", bootfiles, prefix)
	}
	return out, nil
}

// RecoverySoC tells which SoC a recovery.bin was built for, from markers
// in the binary: 2711 builds carry "vc_driver_sdram_init_2711", 2712
// builds talk to RP1 ("RP1_BOOT"/"RP1 not found"). 0: cannot tell.
func RecoverySoC(b []byte) int {
	is2711 := bytes.Contains(b, []byte("vc_driver_sdram_init_2711"))
	is2712 := bytes.Contains(b, []byte("RP1_BOOT")) || bytes.Contains(b, []byte("RP1 not found"))
	switch {
	case is2711 && !is2712:
		return 2711
	case is2712 && !is2711:
		return 2712
	}
	return 0
}

// CheckRecoveryBin catches the usual mix-ups: an empty file, a bootloader
// image given where recovery.bin belongs, or a recovery.bin built for the
// other SoC. A recovery.bin whose SoC cannot be told gives a warning.
func CheckRecoveryBin(b []byte, soc int) (warning string, err error) {
	switch {
	case len(b) == 0:
		return "", errors.New("recovery dir: recovery.bin is empty")
	case len(b) == eeprom.Size2711 || len(b) == eeprom.Size2712:
		if _, err := eeprom.Parse(b); err == nil {
			return "", errors.New("recovery dir: --recovery is a bootloader image (pieeprom-*.bin), not recovery.bin")
		}
	case len(b) > 1<<20:
		return "", fmt.Errorf("recovery dir: recovery.bin is %d bytes; the real one is about 100 KB", len(b))
	}
	switch got := RecoverySoC(b); {
	case got == 0:
		return fmt.Sprintf("cannot tell which SoC recovery.bin was built for; serving it to BCM%d boards as %s", soc, BootcodeName(soc)), nil
	case got != soc:
		return "", fmt.Errorf("recovery dir: recovery.bin is built for BCM%d but the image is a BCM%d bootloader: use firmware-%d/recovery.bin", got, soc, soc)
	}
	return "", nil
}

// Config is the config.txt recovery.bin reads (usbboot's recovery/config.txt
// keys).
func Config(uart bool) []byte {
	var b strings.Builder
	b.WriteString(`# config.txt for recovery.bin, written by cm4bench eeprom set-boot-order.
# recovery.bin checks pieeprom.bin against pieeprom.sig, writes the changed 4 KiB sectors of the SPI
# EEPROM, verifies them, and reports EEPROM_UPDATE and EEPROM_HASH as USB metadata. It then halts:
# green screen and a fast-flashing green LED. recovery_reboot is left off on purpose: with
# nRPIBOOT still fitted a reboot would start another USB boot and flash again.
# Metadata is on by default only in builds from 2025-11 on; older ones need the line below.
recovery_metadata=1
`)
	if uart {
		b.WriteString("# Updater log on the UART (GPIO14/15, 115200 baud).\nuart_2ndstage=1\n")
	} else {
		b.WriteString("# For an updater log on the UART (GPIO14/15, 115200 baud): --uart, which sets uart_2ndstage=1.\n")
	}
	return []byte(b.String())
}

// Verify decides whether a board's session flashed this directory's image:
// recovery.bin must have read this pieeprom.bin, reported
// EEPROM_UPDATE=success and an EEPROM_HASH of the image (as served, or with
// the update timestamp stamped in). A session that ended without Done
// counts when the hash matched, with a warning, unless strict. A
// secure-boot directory also needs the key hash (verifySecure).
func (d Dir) Verify(r usbboot.Result, strict bool) (warning string, err error) {
	if r.Err != nil {
		// The session failed already (EEPROM_UPDATE=fail, say): only add
		// the secure-boot reason, a key that is not ours, if there is one.
		return "", d.verifySecure(r)
	}
	served, ok := r.Served("pieeprom.bin")
	if !ok {
		return "", fmt.Errorf("%w: recovery.bin never read pieeprom.bin (is %s really recovery.bin?)", ErrNotConfirmed, d.Bootcode)
	}
	if !strings.EqualFold(served.SHA256, d.ImageSHA256) {
		return "", fmt.Errorf("%w: served pieeprom.bin has sha256 %s, built %s (directory changed while serving?)", ErrNotConfirmed, served.SHA256, d.ImageSHA256)
	}
	// The key check comes first: a board locked to another key also
	// refuses the update, and the key is the reason to report.
	if err := d.verifySecure(r); err != nil {
		return "", err
	}
	w, err := r.CheckEEPROM(strict)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrNotConfirmed, err)
	}
	return w, nil
}
