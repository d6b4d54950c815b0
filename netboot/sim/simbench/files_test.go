package simbench_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cm4bench/cm4bench/netboot/sim/pisim"
	"github.com/cm4bench/cm4bench/netboot/sim/simbench"
)

func TestGoldenImage(t *testing.T) {
	var a, b bytes.Buffer
	sumA, err := simbench.GoldenImage(&a, 16<<20, 7)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := simbench.GoldenImage(&b, 16<<20, 7); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Error("same seed, different bytes")
	}
	if s := sha256.Sum256(a.Bytes()); hex.EncodeToString(s[:]) != sumA || a.Len() != 16<<20 {
		t.Errorf("sha256/size mismatch: %d bytes", a.Len())
	}
	var c bytes.Buffer
	if _, err := simbench.GoldenImage(&c, 16<<20, 8); err != nil || bytes.Equal(a.Bytes(), c.Bytes()) {
		t.Errorf("different seed gives the same image (err %v)", err)
	}
	why, ok := pisim.EMMCBootable(bytes.NewReader(a.Bytes()))
	if !ok {
		t.Errorf("golden image not bootable for the simulated bootloader: %s", why)
	}
	zeros := 0
	for off := 0; off < a.Len(); off += 4096 {
		if bytes.Equal(a.Bytes()[off:off+4096], make([]byte, 4096)) {
			zeros++
		}
	}
	if frac := float64(zeros*4096) / float64(a.Len()); frac < 0.1 || frac > 0.9 {
		t.Errorf("zero blocks are %.0f%% of the image: want data and zeros", frac*100)
	}
	for _, bad := range []int64{0, 15 << 20, 16<<20 + 1} {
		if _, err := simbench.GoldenImage(&bytes.Buffer{}, bad, 1); err == nil {
			t.Errorf("size %d accepted", bad)
		}
	}
	p := filepath.Join(t.TempDir(), "g.img")
	sum, err := simbench.WriteGoldenImage(p, 16<<20, 7)
	if err != nil || sum != sumA {
		t.Errorf("WriteGoldenImage: %s %v", sum, err)
	}
}

func TestTFTPRoot(t *testing.T) {
	dir := t.TempDir()
	if err := simbench.WriteTFTPRoot(dir, "http://10.61.0.1:5000"); err != nil {
		t.Fatal(err)
	}
	cfg, _ := os.ReadFile(filepath.Join(dir, "config.txt"))
	if c := pisim.ParseConfigTxt(cfg); c.Initramfs != "initrd.img" || c.Kernel != "kernel8.img" {
		t.Errorf("config.txt parses as %+v", c)
	}
	cl, _ := os.ReadFile(filepath.Join(dir, "cmdline.txt"))
	if pisim.KernelArg(string(cl), "cm4bench.server") != "http://10.61.0.1:5000" {
		t.Errorf("cmdline.txt = %q", cl)
	}
	for _, f := range []string{"start4.elf", "fixup4.dat", "kernel8.img", "initrd.img", "bcm2711-rpi-cm4.dtb"} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil || !strings.HasPrefix(string(b), simbench.PlaceholderNote) || len(b) >= 64<<20 {
			t.Errorf("%s: %d bytes, %v", f, len(b), err)
		}
	}
}
