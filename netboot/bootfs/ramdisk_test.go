package bootfs_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cm4bench/cm4bench/netboot/bootfs"
)

// A boot ramdisk: fsck.fat finds it clean, mdir/mtype read back every
// file (folders too), and the same files give the same bytes.
func TestBuildRamdisk(t *testing.T) {
	dir := t.TempDir()
	files := []bootfs.RamdiskFile{
		{Path: "config.txt", Data: []byte("[all]\nkernel=kernel8.img\ninitramfs initramfs.cpio.zst followkernel\n")},
		{Path: "cmdline.txt", Data: []byte("console=serial0,115200 rdinit=/cm4agent\n")},
		{Path: "kernel8.img", Data: bytes.Repeat([]byte("KERNEL"), 300000)},
		{Path: "start4.elf", Data: bytes.Repeat([]byte{0xe5}, 70000)},
		{Path: "overlays/dwc2.dtbo", Data: []byte("dtbo")},
	}
	a, b := filepath.Join(dir, "a.img"), filepath.Join(dir, "b.img")
	if _, err := bootfs.BuildRamdisk(a, files); err != nil {
		t.Fatal(err)
	}
	// FAT keeps times in 2-second steps: build the second one later, so a
	// timestamp that leaked into the image would show
	time.Sleep(2100 * time.Millisecond)
	if _, err := bootfs.BuildRamdisk(b, files); err != nil {
		t.Fatal(err)
	}
	ab, _ := os.ReadFile(a)
	bb, _ := os.ReadFile(b)
	if !bytes.Equal(ab, bb) {
		t.Error("the same files gave different images (not reproducible)")
	}
	if out, err := exec.Command("fsck.fat", "-n", a).CombinedOutput(); err != nil || strings.Contains(string(out), "orrect") || strings.Contains(string(out), "Fixing") {
		t.Errorf("fsck.fat -n: %v\n%s", err, out)
	}
	for _, f := range files {
		out, err := exec.Command("mtype", "-i", a, "::"+f.Path).Output()
		if err != nil || !bytes.Equal(out, f.Data) {
			t.Errorf("mtype %s: %d bytes, %v", f.Path, len(out), err)
		}
	}
	// ReadRamdisk reads back what mtype reads (root-folder files)
	for _, f := range files {
		if strings.Contains(f.Path, "/") {
			continue
		}
		if got, err := bootfs.ReadRamdisk(ab, f.Path); err != nil || !bytes.Equal(got, f.Data) {
			t.Errorf("ReadRamdisk %s: %d bytes, %v", f.Path, len(got), err)
		}
	}
	if _, err := bootfs.ReadRamdisk(ab, "missing.txt"); err == nil {
		t.Error("ReadRamdisk of a missing file succeeded")
	}
	if _, err := bootfs.ReadRamdisk(bytes.Repeat([]byte{0}, 4096), "config.txt"); err == nil {
		t.Error("ReadRamdisk of zeros succeeded")
	}
	if out, err := exec.Command("mdir", "-i", a, "::overlays").CombinedOutput(); err != nil || !strings.Contains(strings.ToLower(string(out)), "dwc2") {
		t.Errorf("mdir overlays: %v %s", err, out)
	}
	for _, bad := range []string{"../x", "/abs", "a//b", "CONFIG.TXT"} {
		fs := append([]bootfs.RamdiskFile{}, files...)
		fs = append(fs, bootfs.RamdiskFile{Path: bad, Data: []byte("x")})
		if _, err := bootfs.BuildRamdisk(filepath.Join(dir, "bad.img"), fs); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// A boot.img comes off the network: whatever its bytes, ReadRamdisk
// returns an error or a file, never panics.
func FuzzReadRamdisk(f *testing.F) {
	img := filepath.Join(f.TempDir(), "seed.img")
	if _, err := bootfs.BuildRamdisk(img, []bootfs.RamdiskFile{{Path: "config.txt", Data: []byte("[all]\n")}}); err != nil {
		f.Fatal(err)
	}
	seed, _ := os.ReadFile(img)
	f.Add(seed[:64*1024])
	f.Add(bytes.Repeat([]byte{0xff}, 1024))
	f.Fuzz(func(t *testing.T, b []byte) {
		if got, err := bootfs.ReadRamdisk(b, "config.txt"); err == nil && int64(len(got)) > int64(len(b)) {
			t.Fatalf("read %d bytes from an image of %d", len(got), len(b))
		}
	})
}
