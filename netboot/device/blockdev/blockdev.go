// Package blockdev opens the deploy/backup target of the agent: an eMMC
// block device, or (only when explicitly allowed) a regular file standing in
// for one. It wraps the Linux ioctls and file-system calls the agent needs:
// size, discard, zero-out, hole punching, fsync and a page-cache-bypassing
// reader for verification.
package blockdev

import (
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// Kind tells what the target is.
type Kind int

// Target kinds.
const (
	KindBlock Kind = iota + 1 // a block device (/dev/mmcblk0)
	KindFile                  // a regular file (tests and the demo bench)
)

func (k Kind) String() string {
	switch k {
	case KindBlock:
		return "block device"
	case KindFile:
		return "regular file"
	}
	return "unknown"
}

// ErrNotBlockDevice is returned by Open for a target that is not a block
// device when regular files are not allowed.
var ErrNotBlockDevice = errors.New("not a block device")

// Device is an open target.
type Device struct {
	f    *os.File
	path string
	kind Kind
	size int64
}

// Open opens path for reading and (if write) writing. A regular file is
// accepted only if allowFile is set; anything else that is not a block device
// is refused with ErrNotBlockDevice.
func Open(path string, write, allowFile bool) (*Device, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("blockdev: stat target: %w", err)
	}
	var kind Kind
	switch m := st.Mode(); {
	case m&os.ModeDevice != 0 && m&os.ModeCharDevice == 0:
		kind = KindBlock
	case m.IsRegular() && allowFile:
		kind = KindFile
	case m.IsRegular():
		return nil, fmt.Errorf("blockdev: %s is a regular file, not a block device (regular files need the file-target mode): %w", path, ErrNotBlockDevice)
	default:
		return nil, fmt.Errorf("blockdev: %s (%s): %w", path, m.Type(), ErrNotBlockDevice)
	}
	flag := os.O_RDONLY
	if write {
		flag = os.O_RDWR
	}
	f, err := os.OpenFile(path, flag|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("blockdev: open target: %w", err)
	}
	d := &Device{f: f, path: path, kind: kind, size: st.Size()}
	if kind == KindBlock {
		sz, err := unix.IoctlGetUint64(int(f.Fd()), unix.BLKGETSIZE64)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("blockdev: BLKGETSIZE64 %s: %w", path, err)
		}
		d.size = int64(sz)
	}
	return d, nil
}

// Path is the target's path.
func (d *Device) Path() string { return d.path }

// Kind tells whether the target is a block device or a regular file.
func (d *Device) Kind() Kind { return d.kind }

// Size is the size of the target in bytes.
func (d *Device) Size() int64 { return d.size }

// File is the open file (for ReadAt/WriteAt).
func (d *Device) File() *os.File { return d.f }

// WriteAt writes p at off.
func (d *Device) WriteAt(p []byte, off int64) (int, error) { return d.f.WriteAt(p, off) }

// ReadAt reads into p from off.
func (d *Device) ReadAt(p []byte, off int64) (int, error) { return d.f.ReadAt(p, off) }

// Close closes the target.
func (d *Device) Close() error { return d.f.Close() }

// Sync flushes written data to the medium.
func (d *Device) Sync() error {
	if err := d.f.Sync(); err != nil {
		return fmt.Errorf("blockdev: fsync %s: %w", d.path, err)
	}
	return nil
}

// Discard tells the medium that [off, off+n) is unused. For a block device
// it issues BLKDISCARD; for a file it punches a hole. It returns an error
// wrapping errors.ErrUnsupported when the target cannot discard.
func (d *Device) Discard(off, n int64) error {
	if n <= 0 {
		return nil
	}
	switch d.kind {
	case KindBlock:
		r := [2]uint64{uint64(off), uint64(n)}
		if err := ioctlRange(d.f, unix.BLKDISCARD, &r); err != nil {
			if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOTTY) || errors.Is(err, unix.EINVAL) {
				return fmt.Errorf("blockdev: BLKDISCARD: %w (%w)", errors.ErrUnsupported, err)
			}
			return fmt.Errorf("blockdev: BLKDISCARD: %w", err)
		}
		return nil
	default:
		return d.punch(off, n)
	}
}

// ZeroRange makes [off, off+n) read as zeros. On a block device that is
// BLKZEROOUT (the kernel uses WRITE ZEROES or unmap where the device has it,
// else writes zero pages itself); on a file it punches a hole, falling back
// to writing zeros.
func (d *Device) ZeroRange(off, n int64) error {
	if n <= 0 {
		return nil
	}
	if d.kind == KindBlock {
		if off%512 != 0 || n%512 != 0 {
			return d.writeZeros(off, n)
		}
		r := [2]uint64{uint64(off), uint64(n)}
		if err := ioctlRange(d.f, unix.BLKZEROOUT, &r); err != nil {
			return fmt.Errorf("blockdev: BLKZEROOUT [%d,+%d): %w", off, n, err)
		}
		return nil
	}
	if err := d.punch(off, n); err == nil {
		return nil
	}
	return d.writeZeros(off, n)
}

func (d *Device) punch(off, n int64) error {
	err := unix.Fallocate(int(d.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
	if err != nil {
		if errors.Is(err, unix.EOPNOTSUPP) {
			return fmt.Errorf("blockdev: punch hole: %w (%w)", errors.ErrUnsupported, err)
		}
		return fmt.Errorf("blockdev: punch hole: %w", err)
	}
	return nil
}

func (d *Device) writeZeros(off, n int64) error {
	z := make([]byte, min(n, 1<<20))
	for n > 0 {
		k := min(n, int64(len(z)))
		if _, err := d.f.WriteAt(z[:k], off); err != nil {
			return fmt.Errorf("blockdev: write zeros: %w", err)
		}
		off += k
		n -= k
	}
	return nil
}

// DropCache asks the kernel to drop cached pages of the whole target, so the
// next read comes from the medium. Call it after Sync.
func (d *Device) DropCache() error {
	if err := unix.Fadvise(int(d.f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		return fmt.Errorf("blockdev: fadvise DONTNEED: %w", err)
	}
	return nil
}

// DirectAlign is the alignment O_DIRECT reads use for buffers, offsets and
// lengths.
const DirectAlign = 4096

// OpenDirectReader opens a second handle on the target for reading around the
// page cache: with O_DIRECT where the file system supports it, else a normal
// handle after the cache of the target was dropped (call Sync first). direct
// tells which one it got.
func (d *Device) OpenDirectReader() (r Reader, direct bool, err error) {
	f, err := os.OpenFile(d.path, os.O_RDONLY|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	if err == nil {
		return f, true, nil
	}
	if err := d.DropCache(); err != nil {
		return nil, false, err
	}
	f, err = os.OpenFile(d.path, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, false, fmt.Errorf("blockdev: open for verify: %w", err)
	}
	_ = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
	return f, false, nil
}

// Reader is a read handle on a target: an *os.File, or a wrapper (the
// bench twin paces reads as a real eMMC would).
type Reader interface {
	io.ReaderAt
	io.Closer
	Fd() uintptr
}

// AlignedBuffer returns a zeroed buffer of n bytes whose start is aligned to
// DirectAlign, as O_DIRECT needs.
func AlignedBuffer(n int) []byte {
	b := make([]byte, n+DirectAlign)
	a := int(alignOf(b))
	return b[a : a+n : a+n]
}

// ReadFullAt reads len(p) bytes at off or up to EOF; it returns the count and
// io.EOF only when nothing could be read.
func ReadFullAt(f io.ReaderAt, p []byte, off int64) (int, error) {
	n := 0
	for n < len(p) {
		k, err := f.ReadAt(p[n:], off+int64(n))
		n += k
		if err == io.EOF {
			if n == 0 {
				return 0, io.EOF
			}
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// DataExtents lists the data (non-hole) ranges of a regular file in
// [0, limit), via SEEK_DATA/SEEK_HOLE. For a block device it returns the
// whole range.
func (d *Device) DataExtents(limit int64) ([][2]int64, error) {
	if d.kind == KindBlock {
		return [][2]int64{{0, limit}}, nil
	}
	return FileDataExtents(d.f, limit)
}

// FileDataExtents lists the data ranges of f in [0, limit).
func FileDataExtents(f *os.File, limit int64) ([][2]int64, error) {
	var out [][2]int64
	fd := int(f.Fd())
	off := int64(0)
	for off < limit {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break
		}
		if err != nil {
			return [][2]int64{{0, limit}}, nil // no SEEK_DATA: treat all as data
		}
		if data >= limit {
			break
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return nil, fmt.Errorf("blockdev: SEEK_HOLE: %w", err)
		}
		out = append(out, [2]int64{data, min(hole, limit)})
		off = hole
	}
	return out, nil
}
