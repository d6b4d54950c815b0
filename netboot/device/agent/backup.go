package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/cm4bench/cm4bench/netboot/device/blockdev"
)

// BackupResult tells what a backup sent.
type BackupResult struct {
	Bytes            int64  // raw bytes read from the target
	SHA256           string // of the raw bytes
	CompressedBytes  int64  // zstd bytes sent
	CompressedSHA256 string // of the zstd bytes
	Seconds          float64
}

// Backup reads [0, size) of dev (size <= 0: the whole target) around the
// page cache, compresses it with zstd and streams it to upload, which must
// consume the reader to EOF (an HTTP request body, typically). Reading,
// compression and upload overlap; holes of a file-backed target are not
// read. Both hashes are computed on the way; rawSHA256 returns the raw
// hash once body has reached EOF (for an HTTP trailer).
func Backup(ctx context.Context, dev *blockdev.Device, size int64, meter *Meter, upload func(ctx context.Context, body io.Reader, rawSHA256 func() string) error) (*BackupResult, error) {
	start := time.Now()
	if size <= 0 || size > dev.Size() {
		size = dev.Size()
	}
	if meter == nil {
		meter = &Meter{}
	}
	meter.Set("upload", size)
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	pr, pw := io.Pipe()
	compHash := sha256.New()
	cw := &countWriter{w: pw, h: compHash}
	enc, err := zstd.NewWriter(cw, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(2), zstd.WithLowerEncoderMem(true))
	if err != nil {
		return nil, fmt.Errorf("backup: zstd: %w", err)
	}
	rawHash := sha256.New()
	readErr := make(chan error, 1)
	var rawSum string // set before the body's EOF
	go func() {
		err := readInto(ctx, dev, size, rawHash, enc, meter)
		if err == nil {
			err = enc.Close()
		} else {
			enc.Close()
		}
		if err == nil {
			rawSum = hex.EncodeToString(rawHash.Sum(nil))
		}
		pw.CloseWithError(err)
		readErr <- err
	}()
	upErr := upload(ctx, pr, func() string { return rawSum })
	pr.CloseWithError(fmt.Errorf("backup: upload ended"))
	if upErr != nil {
		cancel(upErr)
	}
	rerr := <-readErr
	if rerr != nil {
		return nil, fmt.Errorf("backup: read %s: %w", dev.Path(), rerr)
	}
	if upErr != nil {
		return nil, fmt.Errorf("backup: upload: %w", upErr)
	}
	return &BackupResult{
		Bytes:            size,
		SHA256:           rawSum,
		CompressedBytes:  cw.n,
		CompressedSHA256: hex.EncodeToString(compHash.Sum(nil)),
		Seconds:          time.Since(start).Seconds(),
	}, nil
}

type countWriter struct {
	w io.Writer
	h hash.Hash
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.h.Write(p[:n])
	c.n += int64(n)
	return n, err
}

// readInto streams [0, size) of dev into h and w with a read-ahead goroutine.
func readInto(ctx context.Context, dev *blockdev.Device, size int64, h hash.Hash, w io.Writer, meter *Meter) error {
	extents, err := dev.DataExtents(size)
	if err != nil {
		return err
	}
	f, _, err := dev.OpenDirectReader()
	if err != nil {
		return err
	}
	defer f.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	const bufs = 3
	pool := make(chan []byte, bufs)
	for range bufs {
		pool <- blockdev.AlignedBuffer(BlockSize)
	}
	type piece struct {
		b    []byte
		zero bool
	}
	full := make(chan piece, bufs)
	errc := make(chan error, 1)
	go func() {
		defer close(full)
		send := func(p piece) bool {
			select {
			case full <- p:
				return true
			case <-ctx.Done():
				return false
			}
		}
		get := func() []byte {
			select {
			case b := <-pool:
				return b
			case <-ctx.Done():
				return nil
			}
		}
		off := int64(0)
		zeroTo := func(end int64) bool {
			for off < end {
				b := get()
				if b == nil {
					return false
				}
				n := min(int64(len(b)), end-off)
				clear(b[:n])
				if !send(piece{b[:n], true}) {
					return false
				}
				off += n
			}
			return true
		}
		for _, e := range extents {
			if !zeroTo(e[0]) {
				return
			}
			for off < e[1] {
				b := get()
				if b == nil {
					return
				}
				// Read aligned chunks; the extent ends are page aligned.
				n := min(int64(len(b)), e[1]-off)
				rd := (n + blockdev.DirectAlign - 1) &^ (blockdev.DirectAlign - 1)
				got, err := blockdev.ReadFullAt(f, b[:rd], off)
				if int64(got) < n {
					if err == nil || err == io.EOF {
						err = io.ErrUnexpectedEOF
					}
					errc <- fmt.Errorf("read at %d: %w", off, err)
					return
				}
				if !send(piece{b[:n], false}) {
					return
				}
				off += n
			}
		}
		zeroTo(size)
	}()
	for p := range full {
		h.Write(p.b)
		if _, err := w.Write(p.b); err != nil {
			cancel()
			for range full {
			}
			return err
		}
		meter.Add(int64(len(p.b)))
		pool <- p.b[:cap(p.b)]
	}
	select {
	case err := <-errc:
		return err
	default:
	}
	return context.Cause(ctx)
}
