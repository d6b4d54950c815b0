package linetwin

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// BenchmarkLine is `make bench-line`: it builds a realistic image
// (CM4BENCH_LINE_BYTES, default 2.6 GB: the field's figure), measures it,
// runs the twin for 1, 4, 8 and 16 boards on each line configuration, prints
// the table and the field's goals, and writes the plot to
// CM4BENCH_LINE_PLOT (default build/bench-line.png). It runs once
// (-benchtime 1x); the numbers are the twin's, the image's measurements
// are real.
func BenchmarkLine(b *testing.B) {
	size := int64(2.6e9)
	if s := os.Getenv("CM4BENCH_LINE_BYTES"); s != "" {
		v, err := strconv.ParseFloat(s, 64)
		if err != nil || v < 64<<20 {
			b.Fatalf("CM4BENCH_LINE_BYTES=%q: want a size in bytes of at least 64 MiB", s)
		}
		size = int64(v) &^ (4<<20 - 1)
	}
	plotPath := os.Getenv("CM4BENCH_LINE_PLOT")
	if plotPath == "" {
		plotPath = filepath.Join("..", "..", "..", "build", "bench-line.png")
	}
	for range b.N {
		dir := b.TempDir()
		img := filepath.Join(dir, "golden.img")
		start := time.Now()
		buildRealisticImage(b, img, size)
		built := time.Since(start)
		im, hostMBps := measureImage(b, img)
		os.Remove(img)
		rep, err := Report(Constraints{}, im)
		if err != nil {
			b.Fatal(err)
		}
		gs, err := Goals(Constraints{}, im)
		if err != nil {
			b.Fatal(err)
		}
		var out bytes.Buffer
		fmt.Fprintf(&out, "\nbench twin, %s on %s\n", time.Now().UTC().Format("2006-01-02"), machine())
		fmt.Fprintf(&out, "%s; built in %s from this machine's Debian files (FAT boot + ext4 root by mkfs.ext4 -d); zstd decodes here at %.0f MB/s\n\n",
			im.Describe(), built.Round(time.Second), hostMBps)
		WriteTable(&out, rep)
		fmt.Fprintln(&out)
		WriteGoals(&out, gs)
		fmt.Print(out.String())
		if err := os.MkdirAll(filepath.Dir(plotPath), 0o755); err != nil {
			b.Fatal(err)
		}
		f, err := os.Create(plotPath)
		if err != nil {
			b.Fatal(err)
		}
		if err := Plot(rep, fmt.Sprintf("CM4 line twin: %.1f GB image, 40 MB/s eMMC", im.RawBytes/1e9), f); err != nil {
			b.Fatal(err)
		}
		f.Close()
		fmt.Printf("plot: %s\n", plotPath)
	}
}

// machine is the CPU model and core count, for the report's header.
func machine() string {
	model := runtime.GOARCH
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "model name"); ok {
				model = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	kernel, _ := exec.Command("uname", "-r").Output()
	return fmt.Sprintf("%s, %d cores, Linux %s", model, runtime.NumCPU(), strings.TrimSpace(string(kernel)))
}
