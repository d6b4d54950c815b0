package agent

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
	"golang.org/x/sys/unix"

	"github.com/cm4bench/cm4bench/netboot/device/blockdev"
)

// makeImage returns a disk image of size bytes in which about zeroPct
// percent of the 64 KiB blocks are zero and the rest random (a fixed seed,
// so runs are repeatable). Block 0 is data, like a partition table.
func makeImage(size int64, zeroPct int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 7))
	img := make([]byte, size)
	for off := int64(0); off < size; off += 64 << 10 {
		end := min(off+64<<10, size)
		if off > 0 && r.IntN(100) < zeroPct {
			continue
		}
		for i := off; i < end; i += 8 {
			v := r.Uint64()
			for j := int64(0); j < 8 && i+j < end; j++ {
				img[i+j] = byte(v >> (8 * j))
			}
		}
	}
	return img
}

func compress(t testing.TB, format string, raw []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	var w io.WriteCloser
	var err error
	switch format {
	case FormatRaw:
		return raw
	case FormatGzip:
		w = gzip.NewWriter(&b)
	case FormatXZ:
		w, err = xz.NewWriter(&b)
	case FormatZstd:
		w, err = zstd.NewWriter(&b)
	}
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(raw); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func sum(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

// newDisk makes a file-backed disk of size bytes, filled with a pattern
// (fill) or sparse.
func newDisk(t testing.TB, size int64, fill bool) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "emmc.img")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if fill {
		pat := bytes.Repeat([]byte("OLD-DATA"), 1<<17)
		for off := int64(0); off < size; off += int64(len(pat)) {
			if _, err := f.WriteAt(pat[:min(int64(len(pat)), size-off)], off); err != nil {
				t.Fatal(err)
			}
		}
	} else if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDeployFormats(t *testing.T) {
	const size = 5<<20 + 4096 // not a multiple of the block size
	img := makeImage(size, 40, 1)
	for _, format := range []string{FormatRaw, FormatGzip, FormatXZ, FormatZstd} {
		stream := compress(t, format, img)
		for _, used := range []bool{false, true} {
			name := format + map[bool]string{false: "/fresh", true: "/used"}[used]
			t.Run(name, func(t *testing.T) {
				disk := newDisk(t, 8<<20, used)
				dev, err := blockdev.Open(disk, true, true)
				if err != nil {
					t.Fatal(err)
				}
				defer dev.Close()
				res, err := Deploy(context.Background(), dev, ReaderStream(bytes.NewReader(stream)), DeployOptions{Size: size, SHA256: sum(img)})
				if err != nil {
					t.Fatalf("deploy: %v", err)
				}
				if res.Format != format {
					t.Errorf("format %q, want %q", res.Format, format)
				}
				if !res.Verified || res.SHA256 != sum(img) || res.Bytes != size || res.WireBytes != int64(len(stream)) {
					t.Errorf("result %+v", res)
				}
				got, err := os.ReadFile(disk)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got[:size], img) {
					t.Fatalf("disk content differs from the image")
				}
				if used && !bytes.Equal(got[size:size+8], []byte("OLD-DATA")[:8]) && got[size] != 'O' {
					// Bytes past the image are not the deploy's business, but
					// a punched hole must stay within the image range.
					t.Errorf("bytes after the image were changed: %q", got[size:size+8])
				}
				if res.Written+res.Zeroed != size {
					t.Errorf("written %d + zeroed %d != %d", res.Written, res.Zeroed, size)
				}
			})
		}
	}
}

// dataBytes sums the SEEK_DATA extents of a file.
func dataBytes(t *testing.T, p string) int64 {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	ext, err := blockdev.FileDataExtents(f, st.Size())
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, e := range ext {
		n += e[1] - e[0]
	}
	return n
}

func TestDeploySparseWritesOnlyData(t *testing.T) {
	const size = 32 << 20
	img := makeImage(size, 70, 2)
	nonzero := int64(0)
	for off := 0; off < size; off += zeroGrain {
		if !bytes.Equal(img[off:off+zeroGrain], make([]byte, zeroGrain)) {
			nonzero += zeroGrain
		}
	}
	for _, used := range []bool{false, true} {
		t.Run(map[bool]string{false: "fresh", true: "used"}[used], func(t *testing.T) {
			disk := newDisk(t, size, used)
			dev, err := blockdev.Open(disk, true, true)
			if err != nil {
				t.Fatal(err)
			}
			defer dev.Close()
			res, err := Deploy(context.Background(), dev, ReaderStream(bytes.NewReader(compress(t, FormatZstd, img))), DeployOptions{Size: size, SHA256: sum(img)})
			if err != nil {
				t.Fatal(err)
			}
			if !res.Discarded {
				t.Skip("file system cannot punch holes; sparse writes not testable here")
			}
			if res.Written != nonzero {
				t.Errorf("wrote %d data bytes, image has %d non-zero", res.Written, nonzero)
			}
			// The file's allocated data extents are exactly the non-zero
			// blocks (file systems allocate in 4 KiB blocks; ours are 64 KiB).
			if got := dataBytes(t, disk); got != nonzero {
				t.Errorf("file has %d bytes of data extents, want %d (only non-zero blocks)", got, nonzero)
			}
			got, _ := os.ReadFile(disk)
			if !bytes.Equal(got, img) {
				t.Fatal("disk content differs from the image")
			}
		})
	}
}

func TestDeployRefusesSmallTarget(t *testing.T) {
	img := makeImage(4<<20, 0, 3)
	disk := newDisk(t, 2<<20, true)
	before, _ := os.ReadFile(disk)
	dev, err := blockdev.Open(disk, true, true)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	_, err = Deploy(context.Background(), dev, ReaderStream(bytes.NewReader(img)), DeployOptions{Size: int64(len(img))})
	if !errors.Is(err, ErrTooSmall) {
		t.Fatalf("err = %v, want ErrTooSmall", err)
	}
	after, _ := os.ReadFile(disk)
	if !bytes.Equal(before, after) {
		t.Error("a refused deploy changed the target")
	}
	// Unknown size: the stream runs past the end; the deploy fails and the
	// first MiB stays cleared (no half image that boots).
	_, err = Deploy(context.Background(), dev, ReaderStream(bytes.NewReader(img)), DeployOptions{})
	if !errors.Is(err, ErrTooSmall) {
		t.Fatalf("unknown size: err = %v, want ErrTooSmall", err)
	}
	after, _ = os.ReadFile(disk)
	if !bytes.Equal(after[:HeadSize], make([]byte, HeadSize)) {
		t.Error("after a failed deploy the first MiB is not cleared")
	}
}

// recordingStream is a Stream that records Open and Abort and announces a
// size and hash of its choosing.
type recordingStream struct {
	io.Reader
	size            int64
	sum             string
	opened, aborted int
}

func (r *recordingStream) Open(context.Context) error { r.opened++; return nil }
func (r *recordingStream) Abort()                     { r.aborted++ }
func (r *recordingStream) Announced() (int64, string) { return r.size, r.sum }

// TestDeployOpenStage: the size is checked once, before the source opens
// when the caller knows it, right after when only the source announces it
// (and the source is then aborted); an announced sha256 is enforced.
func TestDeployOpenStage(t *testing.T) {
	img := makeImage(4<<20, 0, 5)
	for _, tc := range []struct {
		name        string
		opts        DeployOptions
		announce    int64
		sum         string
		wantErr     error
		wantOpened  int
		wantAborted bool
	}{
		{"known size, too big: refused before open", DeployOptions{Size: 8 << 20}, 0, "", ErrTooSmall, 0, false},
		{"announced size, too big: refused after open, aborted", DeployOptions{}, 8 << 20, "", ErrTooSmall, 1, true},
		{"announced size fits", DeployOptions{}, int64(len(img)), "", nil, 1, false},
		{"announced sha256 enforced", DeployOptions{}, 0, sum([]byte("not the image")), ErrHashMismatch, 1, false},
		{"announced sha256 matches", DeployOptions{}, 0, sum(img), nil, 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dev, err := blockdev.Open(newDisk(t, 6<<20, true), true, true)
			if err != nil {
				t.Fatal(err)
			}
			defer dev.Close()
			src := &recordingStream{Reader: bytes.NewReader(img), size: tc.announce, sum: tc.sum}
			_, err = Deploy(context.Background(), dev, src, tc.opts)
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil) != (err == nil) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if src.opened != tc.wantOpened {
				t.Errorf("source opened %d times, want %d", src.opened, tc.wantOpened)
			}
			if (src.aborted > 0) != tc.wantAborted {
				t.Errorf("source aborted %d times, want aborted=%v", src.aborted, tc.wantAborted)
			}
		})
	}
}

func TestDeployTruncatedStream(t *testing.T) {
	img := makeImage(6<<20, 20, 4)
	z := compress(t, FormatZstd, img)
	disk := newDisk(t, 8<<20, false)
	dev, err := blockdev.Open(disk, true, true)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	_, err = Deploy(context.Background(), dev, ReaderStream(bytes.NewReader(z[:len(z)/2])), DeployOptions{Size: int64(len(img)), SHA256: sum(img)})
	if err == nil {
		t.Fatal("a truncated stream deployed without error")
	}
	got, _ := os.ReadFile(disk)
	if !bytes.Equal(got[:HeadSize], make([]byte, HeadSize)) {
		t.Error("after a failed deploy the first MiB is not cleared")
	}
}

func TestDeployWrongHash(t *testing.T) {
	img := makeImage(3<<20, 20, 5)
	disk := newDisk(t, 4<<20, false)
	dev, err := blockdev.Open(disk, true, true)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	_, err = Deploy(context.Background(), dev, ReaderStream(bytes.NewReader(img)), DeployOptions{Size: int64(len(img)), SHA256: sum([]byte("other"))})
	if !errors.Is(err, ErrHashMismatch) {
		t.Fatalf("err = %v, want ErrHashMismatch", err)
	}
}

func TestOpenRefusesNonBlockDevice(t *testing.T) {
	disk := newDisk(t, 1<<20, false)
	for _, tc := range []struct {
		path      string
		allowFile bool
		ok        bool
	}{
		{disk, false, false},
		{disk, true, true},
		{"/dev/null", true, false}, // character device
		{t.TempDir(), true, false}, // directory
		{filepath.Join(t.TempDir(), "missing"), true, false},
	} {
		dev, err := blockdev.Open(tc.path, true, tc.allowFile)
		if tc.ok != (err == nil) {
			t.Errorf("Open(%s, allowFile=%v): err = %v", tc.path, tc.allowFile, err)
		}
		if err == nil {
			dev.Close()
		} else if tc.path == disk && !errors.Is(err, blockdev.ErrNotBlockDevice) {
			t.Errorf("regular file refused with %v, want ErrNotBlockDevice", err)
		}
	}
}

func TestDetectFormat(t *testing.T) {
	for _, tc := range []struct {
		in   []byte
		want string
	}{
		{[]byte{0x1f, 0x8b, 8}, FormatGzip},
		{[]byte{0xfd, '7', 'z', 'X', 'Z', 0}, FormatXZ},
		{[]byte{0x28, 0xb5, 0x2f, 0xfd}, FormatZstd},
		{[]byte{0xeb, 0x3c, 0x90}, FormatRaw},
		{nil, FormatRaw},
	} {
		if got := DetectFormat(tc.in); got != tc.want {
			t.Errorf("DetectFormat(% x) = %s, want %s", tc.in, got, tc.want)
		}
	}
}

func TestHashDeviceBypassesCache(t *testing.T) {
	disk := newDisk(t, 1<<20, true)
	dev, err := blockdev.Open(disk, false, true)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	data, _ := os.ReadFile(disk)
	got, direct, err := HashDevice(context.Background(), dev, 1<<20-100, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got != sum(data[:1<<20-100]) {
		t.Error("read-back hash wrong")
	}
	var st unix.Statfs_t
	_ = unix.Statfs(disk, &st)
	t.Logf("O_DIRECT used: %v (fs type %#x)", direct, st.Type)
}

// lyingDisk is a block device whose discard succeeds but leaves the old
// data readable (the eMMC standard allows that), modelled on a file.
type lyingDisk struct{ *blockdev.Device }

func (lyingDisk) Kind() blockdev.Kind        { return blockdev.KindBlock }
func (lyingDisk) Discard(off, n int64) error { return nil }

type honestDisk struct{ *blockdev.Device }

func (honestDisk) Kind() blockdev.Kind { return blockdev.KindBlock }

func TestDeployBlockDiscardFallback(t *testing.T) {
	const size = 8 << 20
	img := makeImage(size, 60, 21)
	for _, tc := range []struct {
		name     string
		wrap     func(*blockdev.Device) Target
		fallback bool
	}{
		{"discard reads zeros", func(d *blockdev.Device) Target { return honestDisk{d} }, false},
		{"discard keeps old data", func(d *blockdev.Device) Target { return lyingDisk{d} }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			disk := newDisk(t, size, true) // used: every byte non-zero
			dev, err := blockdev.Open(disk, true, true)
			if err != nil {
				t.Fatal(err)
			}
			defer dev.Close()
			res, err := Deploy(context.Background(), tc.wrap(dev), ReaderStream(bytes.NewReader(img)), DeployOptions{Size: size, SHA256: sum(img)})
			if err != nil {
				t.Fatalf("deploy: %v", err)
			}
			if res.ZeroFallback != tc.fallback || !res.Verified {
				t.Errorf("ZeroFallback %v Verified %v, want fallback %v", res.ZeroFallback, res.Verified, tc.fallback)
			}
			got, _ := os.ReadFile(disk)
			if !bytes.Equal(got, img) {
				t.Fatal("disk differs from the image")
			}
		})
	}
}

// TestDeployLoopDevice deploys onto a real block device (a loop device on a
// used backing file): BLKDISCARD, skipped zero runs, O_DIRECT read-back.
func TestDeployLoopDevice(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to attach a loop device (CI runs as root)")
	}
	const size = 16 << 20
	backing := newDisk(t, size, true)
	out, err := exec.Command("losetup", "--find", "--show", backing).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup: %v\n%s", err, out)
	}
	loop := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "-d", loop).Run() })
	dev, err := blockdev.Open(loop, true, false)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	img := makeImage(12<<20, 60, 31)
	res, err := Deploy(context.Background(), dev, ReaderStream(bytes.NewReader(compress(t, FormatZstd, img))), DeployOptions{Size: int64(len(img)), SHA256: sum(img)})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Verified || !res.Direct || res.Written >= int64(len(img)) {
		t.Errorf("result %+v: want verified with O_DIRECT and zero runs not written", res)
	}
	got := make([]byte, size)
	f, _ := os.Open(loop)
	defer f.Close()
	if _, err := io.ReadFull(f, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:len(img)], img) || !bytes.Equal(got[len(img):len(img)+8], []byte("OLD-DATA")) {
		t.Fatal("loop device content wrong")
	}
	t.Logf("loop device: %d data bytes written, %d zero bytes skipped, discard fallback %v", res.Written, res.Zeroed, res.ZeroFallback)
}

// corruptingDisk stores one byte wrong: the medium loses a bit at at.
type corruptingDisk struct {
	*blockdev.Device
	at int64
}

func (d corruptingDisk) WriteAt(p []byte, off int64) (int, error) {
	if d.at >= off && d.at < off+int64(len(p)) {
		q := bytes.Clone(p)
		q[d.at-off] ^= 0x40
		p = q
	}
	return d.Device.WriteAt(p, off)
}

// TestDeployVerifyCatchesCorruption: the read-back that overlaps the
// download (tail regions), the rest of the tail after the stream, and the
// first MiB written last each catch one wrong byte on the medium.
func TestDeployVerifyCatchesCorruption(t *testing.T) {
	const size = 2*verifyStep + 5<<20 // two overlapped regions and a rest
	img := makeImage(size, 0, 33)
	for _, tc := range []struct {
		name string
		at   int64 // -1: no corruption
	}{
		{"clean", -1},
		{"first region", HeadSize + 4096 + 7},
		{"second region", verifyStep + 12345},
		{"rest after the stream", size - 3},
		{"first MiB", 100},
	} {
		t.Run(tc.name, func(t *testing.T) {
			disk := newDisk(t, size, false)
			dev, err := blockdev.Open(disk, true, true)
			if err != nil {
				t.Fatal(err)
			}
			defer dev.Close()
			res, err := Deploy(context.Background(), corruptingDisk{dev, tc.at}, ReaderStream(bytes.NewReader(img)), DeployOptions{Size: size, SHA256: sum(img)})
			if tc.at < 0 {
				if err != nil || !res.Verified {
					t.Fatalf("clean deploy: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrHashMismatch) {
				t.Fatalf("err = %v, want a hash mismatch", err)
			}
			if res != nil && res.Verified {
				t.Error("corrupted deploy reported verified")
			}
		})
	}
}
