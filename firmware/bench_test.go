package firmware

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// BenchmarkVerify re-hashes the cached recovery and bootfiles sets (what
// every Path/SetDir does before serving) and, side by side, checks the
// same blobs with `sha256sum -c`, the usual manual check; it reports the
// ratio.
func BenchmarkVerify(b *testing.B) {
	cat, err := Default()
	if err != nil {
		b.Fatal(err)
	}
	c := &Cache{Dir: b.TempDir(), Catalogue: cat, Offline: true}
	src := b.TempDir()
	var sums []byte
	var total int64
	for id, rel := range fixtures {
		if id == "usbboot/msd/bootcode.bin" {
			continue // not in the two sets
		}
		data := readShared(b, rel)
		os.WriteFile(filepath.Join(src, filepath.Base(rel)), data, 0o644)
		f, _ := cat.File(id)
		p, _ := c.BlobPath(f.SHA256)
		sums = fmt.Appendf(sums, "%s  %s\n", f.SHA256, p)
		total += int64(len(data))
	}
	if _, err := c.Import(src); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(total)
	start := time.Now()
	for b.Loop() {
		st, err := c.Verify("recovery", "bootfiles")
		if err != nil {
			b.Fatal(err)
		}
		for _, s := range st {
			if s.State != "ok" {
				b.Fatalf("%s: %s", s.File.ID, s.State)
			}
		}
	}
	ours := time.Since(start) / time.Duration(b.N)

	tool, err := exec.LookPath("sha256sum")
	if err != nil {
		b.Logf("sha256sum not installed; cm4bench verify %s per run", ours)
		return
	}
	sumFile := filepath.Join(b.TempDir(), "SHA256SUMS")
	os.WriteFile(sumFile, sums, 0o644)
	const runs = 5
	t0 := time.Now()
	for range runs {
		if out, err := exec.Command(tool, "--quiet", "-c", sumFile).CombinedOutput(); err != nil {
			b.Fatalf("sha256sum -c: %v: %s", err, out)
		}
	}
	peer := time.Since(t0) / runs
	b.ReportMetric(float64(peer)/float64(ours), "x_vs_sha256sum")
	fmt.Printf("verify %d files, %d bytes\n%-20s %12s\n%-20s %12s\n%-20s %12s\n", len(fixtures)-1, total,
		"tool", "per run", "cm4bench firmware", ours, "sha256sum -c", peer)
}

// BenchmarkBootFiles indexes the real bootfiles.bin and reads every member.
func BenchmarkBootFiles(b *testing.B) {
	data := readShared(b, "firmware-fixtures/bootfiles.bin")
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		bf, err := ParseBootFiles(data)
		if err != nil {
			b.Fatal(err)
		}
		for _, m := range bf.Members() {
			if _, err := bf.Member("", m.Name); err != nil {
				b.Fatal(err)
			}
		}
	}
}
