// Package sparseimg is cm4bench's sparse-aware image stream: a disk image
// sent as its data extents only, so the zero runs of a raw image (most of a
// freshly built one) cross the network as 16-byte record headers instead
// of bytes, with no compression on either side. The board's writer already
// skips zero runs; with this stream they are not downloaded either.
//
// Wire format (all integers big-endian uint64):
//
//	"CM4SPARS" size
//	off len <len bytes of the image at off>     one record per data extent
//	...
//	size 0                                      the end record
//
// Records are in increasing order and do not overlap; everything between
// them reads as zeros. The decoder checks all of that, and that nothing
// follows the end record, so a cut or forged stream is an error, never a
// shorter image. The image's sha256 is still checked over the decoded
// bytes by the receiver: a map that called a non-zero block zero fails
// there.
package sparseimg

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"

	"golang.org/x/sys/unix"
)

// Magic opens every stream.
const Magic = "CM4SPARS"

// Grain is the unit of zero detection: a data extent is a run of Grain
// blocks that are not all zero (the agent's writer uses the same grain).
const Grain = 64 << 10

const (
	headerSize = 16 // magic, size
	recordSize = 16 // off, len
)

// Extent is a run of image bytes [Off, Off+Len) that holds data.
type Extent struct{ Off, Len int64 }

// Map finds the data extents of src, an image of size bytes, at Grain
// granularity. Holes of a sparse file are skipped without reading them
// (SEEK_DATA) when src is an *os.File; the rest is read and checked.
func Map(ctx context.Context, src io.ReaderAt, size int64) ([]Extent, error) {
	if size < 0 {
		return nil, fmt.Errorf("sparseimg: map: size %d", size)
	}
	var ext []Extent
	add := func(off, n int64) {
		if k := len(ext) - 1; k >= 0 && ext[k].Off+ext[k].Len == off {
			ext[k].Len += n
			return
		}
		ext = append(ext, Extent{off, n})
	}
	buf := make([]byte, 16*Grain)
	f, _ := src.(*os.File)
	for off := int64(0); off < size; {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("sparseimg: map: %w", err)
		}
		if f != nil {
			next, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
			switch {
			case errors.Is(err, unix.ENXIO): // only a hole from here on
				return ext, nil
			case err == nil && next > off:
				off = next / Grain * Grain
			}
		}
		n := min(int64(len(buf)), size-off)
		m, err := src.ReadAt(buf[:n], off)
		if int64(m) < n {
			if err == nil || errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return nil, fmt.Errorf("sparseimg: map: read at %d: %w", off, err)
		}
		for g := int64(0); g < n; g += Grain {
			b := buf[g:min(g+Grain, n)]
			if !allZero(b) {
				add(off+g, int64(len(b)))
			}
		}
		off += n
	}
	return ext, nil
}

var zeros = make([]byte, Grain)

func allZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zeros))
		if !bytes.Equal(b[:n], zeros[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}

// DataBytes is the sum of the extents' lengths.
func DataBytes(ext []Extent) int64 {
	var n int64
	for _, e := range ext {
		n += e.Len
	}
	return n
}

// Stream is the encoded stream of an image as a read-only file: it can be
// served with Range requests (http.ServeContent over an io.SectionReader).
type Stream struct {
	src  io.ReaderAt
	size int64
	ext  []Extent
	at   []int64 // wire offset of each record header
	wire int64
}

// NewStream encodes the image src of size bytes with its data extents ext
// (from Map): sorted, not overlapping, inside the image.
func NewStream(src io.ReaderAt, size int64, ext []Extent) (*Stream, error) {
	if err := check(ext, size); err != nil {
		return nil, err
	}
	s := &Stream{src: src, size: size, ext: ext, at: make([]int64, len(ext))}
	w := int64(headerSize)
	for i, e := range ext {
		s.at[i] = w
		w += recordSize + e.Len
	}
	s.wire = w + recordSize
	return s, nil
}

func check(ext []Extent, size int64) error {
	var end int64
	for i, e := range ext {
		if e.Len <= 0 || e.Off < end || e.Off > size-e.Len {
			return fmt.Errorf("sparseimg: extent %d [%d, +%d) overlaps, is empty or leaves the %d-byte image", i, e.Off, e.Len, size)
		}
		end = e.Off + e.Len
	}
	return nil
}

// Size is the length of the encoded stream.
func (s *Stream) Size() int64 { return s.wire }

// ReadAt reads the encoded stream at off.
func (s *Stream) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("sparseimg: read at %d", off)
	}
	n := 0
	for len(p) > 0 && off < s.wire {
		m, err := s.readPart(p, off)
		n += m
		if err != nil {
			return n, err
		}
		p, off = p[m:], off+int64(m)
	}
	if len(p) > 0 {
		return n, io.EOF
	}
	return n, nil
}

// readPart copies from the one part (header, record header, data or end
// record) that contains off.
func (s *Stream) readPart(p []byte, off int64) (int, error) {
	var hdr [recordSize]byte
	if off < headerSize {
		copy(hdr[:], Magic)
		binary.BigEndian.PutUint64(hdr[8:], uint64(s.size))
		return copy(p, hdr[off:]), nil
	}
	// The last record starting at or before off.
	i, found := slices.BinarySearch(s.at, off)
	if !found {
		i--
	}
	if i < 0 || off >= s.wire-recordSize {
		// The end record.
		binary.BigEndian.PutUint64(hdr[0:], uint64(s.size))
		return copy(p, hdr[off-(s.wire-recordSize):]), nil
	}
	e, rel := s.ext[i], off-s.at[i]
	if rel < recordSize {
		binary.BigEndian.PutUint64(hdr[0:], uint64(e.Off))
		binary.BigEndian.PutUint64(hdr[8:], uint64(e.Len))
		return copy(p, hdr[rel:]), nil
	}
	rel -= recordSize
	want := min(int64(len(p)), e.Len-rel)
	m, err := s.src.ReadAt(p[:want], e.Off+rel)
	if int64(m) == want {
		return m, nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return m, fmt.Errorf("sparseimg: image read at %d: %w", e.Off+rel, err)
}

// ErrFormat is wrapped by every decoding error.
var ErrFormat = errors.New("sparseimg: bad stream")

// Reader decodes a stream back into the image: the data extents as sent,
// zeros between them.
type Reader struct {
	r    io.Reader
	size int64
	pos  int64 // image bytes returned
	next int64 // offset of the next record's data (size at the end record)
	left int64 // data bytes left in the current record
	done bool  // the end record was read
}

// NewReader reads the stream header from r.
func NewReader(r io.Reader) (*Reader, error) {
	var h [headerSize]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return nil, fmt.Errorf("%w: header: %v", ErrFormat, err)
	}
	if string(h[:8]) != Magic {
		return nil, fmt.Errorf("%w: magic %q", ErrFormat, h[:8])
	}
	size := binary.BigEndian.Uint64(h[8:])
	if size > 1<<62 {
		return nil, fmt.Errorf("%w: image size %d", ErrFormat, size)
	}
	d := &Reader{r: r, size: int64(size)}
	if err := d.record(); err != nil {
		return nil, err
	}
	return d, nil
}

// Size is the image size the stream announced.
func (d *Reader) Size() int64 { return d.size }

// record reads the next record header.
func (d *Reader) record() error {
	var h [recordSize]byte
	if _, err := io.ReadFull(d.r, h[:]); err != nil {
		return fmt.Errorf("%w: record at image offset %d: %v", ErrFormat, d.pos, noEOF(err))
	}
	off, n := binary.BigEndian.Uint64(h[:8]), binary.BigEndian.Uint64(h[8:])
	switch {
	case n == 0 && off == uint64(d.size):
		d.next, d.left, d.done = d.size, 0, true
	case n == 0:
		return fmt.Errorf("%w: empty record at %d", ErrFormat, off)
	case off < uint64(d.pos) || off > uint64(d.size) || n > uint64(d.size)-off:
		return fmt.Errorf("%w: record [%d, +%d) after offset %d of a %d-byte image", ErrFormat, off, n, d.pos, d.size)
	default:
		d.next, d.left = int64(off), int64(n)
	}
	return nil
}

func noEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// Read returns image bytes: zeros up to the next record, then its data.
func (d *Reader) Read(p []byte) (int, error) {
	for len(p) > 0 {
		switch {
		case d.pos < d.next: // a zero run
			n := min(int64(len(p)), d.next-d.pos)
			clear(p[:n])
			d.pos += n
			return int(n), nil
		case d.left > 0:
			n, err := d.r.Read(p[:min(int64(len(p)), d.left)])
			d.pos += int64(n)
			d.left -= int64(n)
			if n > 0 {
				return n, nil
			}
			if err != nil {
				return 0, fmt.Errorf("%w: data at %d: %v", ErrFormat, d.pos, noEOF(err))
			}
		case d.done:
			var one [1]byte
			if n, _ := io.ReadFull(d.r, one[:]); n > 0 {
				return 0, fmt.Errorf("%w: bytes after the end record", ErrFormat)
			}
			return 0, io.EOF
		default:
			if err := d.record(); err != nil {
				return 0, err
			}
		}
	}
	return 0, nil
}
