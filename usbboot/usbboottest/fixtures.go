package usbboottest

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cm4bench/cm4bench/internal/repotest"
	"github.com/cm4bench/cm4bench/usbboot"
)

// SharedDir returns ../shared beside the module root. A missing directory
// fails the test: CI always has it.
func SharedDir(tb testing.TB) string {
	tb.Helper()
	return repotest.Shared(tb, "")
}

// SharedFile returns the path of a file under ../shared, failing the test
// when it is missing.
func SharedFile(tb testing.TB, rel string) string {
	tb.Helper()
	return repotest.Shared(tb, rel)
}

// BootDir builds a boot directory for a simulated board in dir: real
// firmware from ../shared linked in place (bootfiles.bin, msd bootcode,
// recovery.bin, a pieeprom image and its .sig) plus deterministic
// stand-ins for the files not in the fixtures (start4.elf, boot.img).
// It returns dir.
func BootDir(tb testing.TB, dir string, soc usbboot.SoC, mode Mode) string {
	tb.Helper()
	link := func(rel, name string) {
		tb.Helper()
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, name)), 0o755); err != nil {
			tb.Fatal(err)
		}
		if err := os.Symlink(SharedFile(tb, rel), filepath.Join(dir, name)); err != nil {
			tb.Fatal(err)
		}
	}
	gen := func(name string, size int) {
		tb.Helper()
		r := rand.New(rand.NewPCG(uint64(size), uint64(len(name))))
		b := make([]byte, size)
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			tb.Fatal(err)
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	switch {
	case soc == usbboot.SoC2835:
		link("firmware-fixtures/msd-bootcode.bin", "bootcode.bin")
		gen("start.elf", 536536)
	case mode == ModeMSD:
		link("firmware-fixtures/bootfiles.bin", "bootfiles.bin")
		gen("start4.elf", 536536)
	case mode == ModeGadget:
		link("firmware-fixtures/bootfiles.bin", "bootfiles.bin")
		if err := os.WriteFile(filepath.Join(dir, "config.txt"), []byte("boot_ramdisk=1\nuart_2ndstage=1\n"), 0o644); err != nil {
			tb.Fatal(err)
		}
		gen("boot.img", 3<<20+12345)
	case mode == ModeRecovery:
		if soc == usbboot.SoC2712 {
			tb.Fatal("usbboottest: no 2712 recovery fixtures")
		}
		link("eeprom-vectors/recovery.bin", "bootcode4.bin")
		link("firmware-fixtures/recovery-config.txt", "config.txt")
		link("eeprom-vectors/pieeprom-2026-05-17.bootorder-f21.bin", "pieeprom.bin")
		link("eeprom-vectors/pieeprom-2026-05-17.bootorder-f21.sig", "pieeprom.sig")
	}
	return dir
}

// ExpectedSHA256 computes, independently of usbboot.Dir, the sha256 of
// the file a board should receive for name from a BootDir: the SoC
// directory, then the bootfiles.bin member, then the top directory.
// ok is false when no such file exists.
func ExpectedSHA256(tb testing.TB, dir string, soc usbboot.SoC, name string) (sum string, ok bool) {
	tb.Helper()
	hashFile := func(p string) (string, bool) {
		f, err := os.Open(p)
		if err != nil {
			return "", false
		}
		defer f.Close()
		h := sha256.New()
		if _, err := io.Copy(h, f); err != nil {
			tb.Fatal(err)
		}
		return hex.EncodeToString(h.Sum(nil)), true
	}
	if s, ok := hashFile(filepath.Join(dir, string(soc), name)); ok {
		return s, true
	}
	if f, err := os.Open(filepath.Join(dir, "bootfiles.bin")); err == nil {
		defer f.Close()
		tr := tar.NewReader(f)
		for {
			h, err := tr.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				tb.Fatal(err)
			}
			if strings.EqualFold(h.Name, string(soc)+"/"+name) {
				s := sha256.New()
				if _, err := io.Copy(s, tr); err != nil {
					tb.Fatal(err)
				}
				return hex.EncodeToString(s.Sum(nil)), true
			}
		}
	}
	return hashFile(filepath.Join(dir, name))
}
