package eeprom

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// BenchmarkSetBootOrder measures the whole edit set-boot-order does on a
// real image: parse, read the config, set BOOT_ORDER, replace, digest. When
// the upstream rpi-eeprom-config is installed it runs the same edit side by
// side and reports the ratio; otherwise only cm4bench's numbers are given.
func BenchmarkSetBootOrder(b *testing.B) {
	img := readVector(b, "pieeprom-2026-05-17.bin")
	want := readVector(b, "pieeprom-2026-05-17.bootorder-f21.bin")
	b.SetBytes(int64(len(img)))
	b.ReportAllocs()
	start := time.Now()
	for b.Loop() {
		im, err := Parse(img)
		if err != nil {
			b.Fatal(err)
		}
		conf, _ := im.BootConf()
		c := ParseConfig(conf)
		if _, err := c.Set("BOOT_ORDER", "0xf21"); err != nil {
			b.Fatal(err)
		}
		if err := im.SetBootConf(c.Bytes()); err != nil {
			b.Fatal(err)
		}
		out := im.Bytes()
		Digest(out, 1700000000, 0)
		if !bytes.Equal(out, want) {
			b.Fatal("output differs from upstream")
		}
	}
	ours := time.Since(start) / time.Duration(b.N)

	tool, err := exec.LookPath("rpi-eeprom-config")
	if err != nil {
		b.Logf("\n%-22s %12s\n%-22s %12s\n%-22s %12s", "tool", "per edit", "cm4bench eeprom", ours, "rpi-eeprom-config", "not installed")
		return
	}
	dir := b.TempDir()
	conf := filepath.Join(sharedDir(b), "eeprom-vectors", "pieeprom-2026-05-17.bootorder-f21.conf.txt")
	src := filepath.Join(sharedDir(b), "eeprom-vectors", "pieeprom-2026-05-17.bin")
	out := filepath.Join(dir, "out.bin")
	t0 := time.Now()
	const runs = 3
	for range runs {
		if o, err := exec.Command(tool, "--config", conf, "--out", out, src).CombinedOutput(); err != nil {
			b.Fatalf("rpi-eeprom-config: %v: %s", err, o)
		}
	}
	peer := time.Since(t0) / runs
	if got, _ := os.ReadFile(out); !bytes.Equal(got, want) {
		b.Fatal("rpi-eeprom-config output differs from the vector")
	}
	b.ReportMetric(float64(peer)/float64(ours), "x_faster_than_upstream")
	fmt.Printf("%-22s %12s\n%-22s %12s\n%-22s %12s\n", "tool", "per edit", "cm4bench eeprom", ours, "rpi-eeprom-config", peer)
}

func BenchmarkParse(b *testing.B) {
	img := readVector(b, "pieeprom-2026-05-17.bin")
	b.SetBytes(int64(len(img)))
	for b.Loop() {
		if _, err := Parse(img); err != nil {
			b.Fatal(err)
		}
	}
}
