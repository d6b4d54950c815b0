package bootfs_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cm4bench/cm4bench/internal/contract"
	"github.com/cm4bench/cm4bench/netboot/bootfs"
	"github.com/cm4bench/cm4bench/netboot/bootfs/bootfstest"
)

// BenchmarkCustomise: the agent's customise step (write 4 per-device files
// into a fresh FAT32 boot partition, sync, read them back and hash them)
// against mtools' mcopy writing the same files into the same image (no
// read-back), interleaved, best of reps.
func BenchmarkCustomise(b *testing.B) {
	dir := b.TempDir()
	golden := filepath.Join(dir, "golden.img")
	size, err := bootfstest.Make(golden, bootfstest.Disk{BootMiB: 256, FAT: 32, Cluster: 4, RootMiB: 8, Seed: 5})
	if err != nil {
		b.Fatal(err)
	}
	gb, _ := os.ReadFile(golden)
	files := []contract.CustomFile{
		file("user-data", "#cloud-config\nhostname: line-a-0001\nssh_authorized_keys:\n  - ssh-ed25519 AAAA factory\n"),
		file("meta-data", "instance-id: 10000abc\n"),
		file("network-config", "version: 2\nethernets:\n  eth0:\n    dhcp4: true\n"),
		file("device.pem", strings.Repeat("MIIB", 800)),
	}
	src := filepath.Join(dir, "src")
	os.Mkdir(src, 0o755)
	for _, f := range files {
		os.WriteFile(filepath.Join(src, f.Path), f.Data, 0o644)
	}
	const reps = 5
	var ours, peer time.Duration = 1 << 62, 1 << 62
	for i := 0; i < b.N; i++ {
		for rep := range reps {
			img := filepath.Join(dir, "a.img")
			os.WriteFile(img, gb, 0o644)
			f, _ := os.OpenFile(img, os.O_RDWR, 0)
			t0 := time.Now()
			if _, err := bootfs.Write(f, size, files); err != nil {
				b.Fatalf("rep %d: %v", rep, err)
			}
			ours = min(ours, time.Since(t0))
			f.Close()

			os.WriteFile(img, gb, 0o644)
			args := []string{"-o", "-i", img + "@@" + strconv.Itoa(4<<20)}
			for _, f := range files {
				args = append(args, filepath.Join(src, f.Path))
			}
			t0 = time.Now()
			if out, err := exec.Command("mcopy", append(args, "::")...).CombinedOutput(); err != nil {
				b.Fatalf("mcopy: %v %s", err, out)
			}
			if err := exec.Command("sync").Run(); err != nil {
				b.Fatal(err)
			}
			peer = min(peer, time.Since(t0))
		}
	}
	b.ReportMetric(ours.Seconds()*1e3, "ms-customise")
	b.ReportMetric(peer.Seconds()/ours.Seconds(), "x-vs-mcopy")
	fmt.Printf("\nCustomise: 4 per-device files (%d bytes) into a 256 MiB FAT32 boot partition, best of %d\n", func() int {
		n := 0
		for _, f := range files {
			n += len(f.Data)
		}
		return n
	}(), reps)
	fmt.Printf("%-44s %9s\n", "writer", "ms")
	fmt.Printf("%-44s %9.1f\n", "cm4agent bootfs.Write (sync, read back, hash)", ours.Seconds()*1e3)
	fmt.Printf("%-44s %9.1f\n", "mtools mcopy + sync (no read-back)", peer.Seconds()*1e3)
	fmt.Printf("ratio (mcopy time / ours) %.2fx\n", peer.Seconds()/ours.Seconds())
}
