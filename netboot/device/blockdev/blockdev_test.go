package blockdev

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// loopDevice attaches a file of size bytes (filled with 0xAA) to a loop
// device and detaches it when the test ends. Needs root.
func loopDevice(t *testing.T, size int) (dev, backing string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to attach a loop device (CI runs as root)")
	}
	losetup, err := exec.LookPath("losetup")
	if err != nil {
		t.Fatalf("losetup (util-linux): %v", err)
	}
	backing = filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(backing, bytes.Repeat([]byte{0xaa}, size), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(losetup, "--find", "--show", backing).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup: %v\n%s", err, out)
	}
	dev = strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command(losetup, "-d", dev).Run() })
	return dev, backing
}

func TestLoopBlockDevice(t *testing.T) {
	const size = 4 << 20
	path, _ := loopDevice(t, size)
	if _, err := Open(path, true, false); err != nil {
		t.Fatalf("a block device was refused: %v", err)
	}
	d, err := Open(path, true, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if d.Kind() != KindBlock || d.Size() != size {
		t.Fatalf("kind %v size %d", d.Kind(), d.Size())
	}
	// BLKZEROOUT: the range reads back as zeros, the rest is untouched.
	if err := d.ZeroRange(1<<20, 1<<20); err != nil {
		t.Fatal(err)
	}
	// Unaligned ranges fall back to writing zeros.
	if err := d.ZeroRange(3<<20+100, 50); err != nil {
		t.Fatal(err)
	}
	if err := d.Sync(); err != nil {
		t.Fatal(err)
	}
	r, direct, err := d.OpenDirectReader()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if !direct {
		t.Error("O_DIRECT not used on a block device")
	}
	buf := AlignedBuffer(size)
	if n, err := ReadFullAt(r, buf, 0); err != nil || n != size {
		t.Fatalf("read back %d: %v", n, err)
	}
	want := bytes.Repeat([]byte{0xaa}, size)
	clear(want[1<<20 : 2<<20])
	clear(want[3<<20+100 : 3<<20+150])
	if !bytes.Equal(buf, want) {
		t.Error("zeroed ranges wrong")
	}
	// BLKDISCARD on a loop device punches the backing file; a device that
	// cannot discard says so with ErrUnsupported.
	if err := d.Discard(0, 1<<20); err != nil && !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("discard: %v", err)
	}
	// Extents of a block device: the whole range.
	if ext, err := d.DataExtents(size); err != nil || len(ext) != 1 || ext[0] != [2]int64{0, size} {
		t.Errorf("extents %v %v", ext, err)
	}
}

func TestOpenKinds(t *testing.T) {
	f := filepath.Join(t.TempDir(), "f")
	os.WriteFile(f, make([]byte, 8192), 0o644)
	if _, err := Open(f, false, false); !errors.Is(err, ErrNotBlockDevice) {
		t.Errorf("regular file without allowFile: %v", err)
	}
	d, err := Open(f, false, true)
	if err != nil || d.Kind() != KindFile || d.Size() != 8192 {
		t.Fatalf("regular file with allowFile: %v", err)
	}
	d.Close()
	if _, err := Open("/dev/null", false, true); !errors.Is(err, ErrNotBlockDevice) {
		t.Errorf("/dev/null: %v", err)
	}
}

func TestFileDataExtents(t *testing.T) {
	p := filepath.Join(t.TempDir(), "sparse")
	f, _ := os.Create(p)
	defer f.Close()
	f.Truncate(8 << 20)
	f.WriteAt(bytes.Repeat([]byte{1}, 64<<10), 2<<20)
	f.WriteAt(bytes.Repeat([]byte{1}, 64<<10), 6<<20)
	ext, err := FileDataExtents(f, 8<<20)
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	for _, e := range ext {
		total += e[1] - e[0]
		if e[0] > 6<<20 || e[1] < 2<<20 {
			t.Errorf("extent %v outside the written ranges", e)
		}
	}
	if total < 128<<10 || total > 1<<20 {
		t.Errorf("extents %v cover %d bytes, want about 128 KiB", ext, total)
	}
}
