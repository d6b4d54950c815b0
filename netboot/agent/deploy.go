package agent

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
	"golang.org/x/sys/unix"

	"github.com/cm4bench/cm4bench/netboot/agent/blockdev"
)

// Sizes of the deploy pipeline. Memory in flight is bounded by
// BlockSize*(BlockBuffers) plus the network chunks and the decoder window.
const (
	BlockSize    = 2 << 20   // bytes per write block (aligned to 4 KiB)
	BlockBuffers = 8         // blocks in flight between decompress, hash and write
	HeadSize     = 1 << 20   // the first MiB is written last
	zeroGrain    = 64 << 10  // granularity of zero-block detection
	netChunk     = 256 << 10 // bytes per network read handed to the decoder
	netChunks    = 16        // network chunks in flight
)

// Stream formats detected from magic bytes.
const (
	FormatRaw  = "raw"
	FormatGzip = "gz"
	FormatXZ   = "xz"
	FormatZstd = "zst"
)

// DetectFormat names the compression of a stream from its first bytes.
func DetectFormat(head []byte) string {
	switch {
	case bytes.HasPrefix(head, []byte{0x1f, 0x8b}):
		return FormatGzip
	case bytes.HasPrefix(head, []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}):
		return FormatXZ
	case bytes.HasPrefix(head, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return FormatZstd
	}
	return FormatRaw
}

// Meter is the live state of an action, sampled by the progress reporter.
type Meter struct {
	phase atomic.Value
	done  atomic.Int64
	total atomic.Int64
}

// Set switches to a new phase with its total and resets done.
func (m *Meter) Set(phase string, total int64) {
	m.phase.Store(phase)
	m.total.Store(total)
	m.done.Store(0)
}

// Add adds n to done.
func (m *Meter) Add(n int64) { m.done.Add(n) }

// Sample returns the current phase, done and total.
func (m *Meter) Sample() (phase string, done, total int64) {
	p, _ := m.phase.Load().(string)
	return p, m.done.Load(), m.total.Load()
}

// DeployResult tells what a deploy did.
type DeployResult struct {
	Format     string // stream format detected: raw, gz, xz, zst
	Bytes      int64  // image bytes (uncompressed)
	WireBytes  int64  // bytes read from the source (compressed)
	Written    int64  // data bytes written to the target
	Zeroed     int64  // zero bytes skipped (left as discarded/hole or zeroed by the device)
	SHA256     string // of the uncompressed stream
	WireSHA256 string // of the bytes read from the source
	Verified   bool   // read back and matched
	Direct     bool   // verify bypassed the page cache with O_DIRECT (else fadvise)
	Discarded  bool   // the target range was discarded/punched first
	// ZeroFallback is set when the device's discarded blocks did not read
	// back as zeros and the skipped zero runs were zeroed explicitly.
	ZeroFallback bool
	Seconds      float64 // wall time
	// Where the time went: streaming (download, decompress, hash, write),
	// fsync and first MiB, read-back verification.
	StreamSeconds, SyncSeconds, VerifySeconds float64
}

// DeployOptions tunes Deploy.
type DeployOptions struct {
	// Size is the expected uncompressed image size, or 0 if unknown. A known
	// size is checked against the target before anything is written.
	Size int64
	// SHA256 is the expected hash of the uncompressed image, or "" if unknown.
	SHA256 string
	// Meter receives progress (phases "write" and "verify"); may be nil.
	Meter *Meter
	// NoVerify skips the read-back (benchmarks of the write path only).
	NoVerify bool
}

// Target is what Deploy writes to: a *blockdev.Device (an eMMC, or a
// file-backed disk in tests and the demo bench).
type Target interface {
	WriteAt(p []byte, off int64) (int, error)
	Size() int64
	Kind() blockdev.Kind
	Path() string
	Sync() error
	// Discard tells the medium a range is unused (BLKDISCARD, punch hole).
	Discard(off, n int64) error
	// ZeroRange makes a range read as zeros (BLKZEROOUT, punch hole).
	ZeroRange(off, n int64) error
	// OpenDirectReader opens the target for reading around the page cache.
	OpenDirectReader() (*os.File, bool, error)
}

// ErrTooSmall is returned when the target is smaller than the image.
var ErrTooSmall = errors.New("target smaller than image")

// ErrHashMismatch is returned when a hash does not match.
var ErrHashMismatch = errors.New("sha256 mismatch")

// Deploy streams src (raw, gz, xz or zst, detected from its magic bytes)
// onto dev. Download, decompression, hashing and writing run in their own
// goroutines joined by bounded queues. Zero blocks are not written: the
// image range is discarded (BLKDISCARD, or a punched hole in a file) first
// and zero runs are left as such (block devices get BLKZEROOUT so they read
// back as zeros). The first MiB is zeroed at the start and written last.
// After fsync the written range is read back around the page cache and its
// sha256 compared with the stream's (and opts.SHA256 if set).
func Deploy(ctx context.Context, dev Target, src io.Reader, opts DeployOptions) (*DeployResult, error) {
	start := time.Now()
	meter := opts.Meter
	if meter == nil {
		meter = &Meter{}
	}
	if opts.Size > 0 && opts.Size > dev.Size() {
		return nil, fmt.Errorf("deploy: image of %d bytes, %s %s has %d: %w", opts.Size, dev.Kind(), dev.Path(), dev.Size(), ErrTooSmall)
	}
	res := &DeployResult{}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	// A failure anywhere ends a download in progress at once (a Source
	// would otherwise keep reading until the server or the stall timer
	// ends it).
	if ab, ok := src.(interface{ Abort() }); ok {
		stop := context.AfterFunc(ctx, ab.Abort)
		defer stop()
	}

	// Stage 1: network reader -> chunks.
	chunks := make(chan []byte, netChunks)
	chunkPool := sync.Pool{New: func() any { b := make([]byte, netChunk); return &b }}
	var wireN atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(chunks)
		for {
			bp := chunkPool.Get().(*[]byte)
			n, err := io.ReadFull(src, *bp)
			if n > 0 {
				wireN.Add(int64(n))
				select {
				case chunks <- (*bp)[:n]:
				case <-ctx.Done():
					return
				}
			}
			if err == io.EOF || err == io.ErrUnexpectedEOF {
				return
			}
			if err != nil {
				cancel(fmt.Errorf("deploy: download: %w", err))
				return
			}
		}
	}()
	cr := &chanReader{ctx: ctx, ch: chunks, put: func(b []byte) { b = b[:cap(b)]; chunkPool.Put(&b) }}
	br := bufio.NewReaderSize(cr, 64<<10)
	head, _ := br.Peek(6)
	res.Format = DetectFormat(head)
	// The hash of the wire bytes: for a compressed stream computed on the
	// way into the decoder; for a raw one it is the image hash itself.
	var wireHash hash.Hash
	var comp io.Reader = br
	if res.Format != FormatRaw {
		wireHash = sha256.New()
		comp = io.TeeReader(br, wireHash)
	}
	var raw io.Reader
	switch res.Format {
	case FormatGzip:
		zr, err := gzip.NewReader(comp)
		if err != nil {
			cancel(err)
			wg.Wait()
			return nil, fmt.Errorf("deploy: gzip header: %w", err)
		}
		raw = zr
	case FormatXZ:
		zr, err := xz.NewReader(comp)
		if err != nil {
			cancel(err)
			wg.Wait()
			return nil, fmt.Errorf("deploy: xz header: %w", err)
		}
		raw = zr
	case FormatZstd:
		zr, err := zstd.NewReader(comp, zstd.WithDecoderConcurrency(2), zstd.WithDecoderLowmem(true), zstd.WithDecoderMaxWindow(64<<20))
		if err != nil {
			cancel(err)
			wg.Wait()
			return nil, fmt.Errorf("deploy: zstd: %w", err)
		}
		defer zr.Close()
		raw = zr
	default:
		raw = br
	}

	// Prepare the target: refuse early, then erase.
	w := &blockWriter{dev: dev, zero: make([]byte, zeroGrain)}
	if err := w.prepare(opts.Size); err != nil {
		cancel(err)
		wg.Wait()
		return nil, err
	}
	res.Discarded = w.discarded
	meter.Set("write", opts.Size)

	// Stage 2: decompress into blocks; stage 3: hash; stage 4: write.
	pool := make(chan []byte, BlockBuffers)
	for range BlockBuffers {
		pool <- blockdev.AlignedBuffer(BlockSize)
	}
	type block struct {
		off int64
		b   []byte
	}
	toHash := make(chan block, BlockBuffers)
	toWrite := make(chan block, BlockBuffers)
	rawHash := sha256.New()
	var decErr error
	wg.Add(3)
	go func() { // decompress
		defer wg.Done()
		defer close(toHash)
		off := int64(0)
		for {
			var b []byte
			select {
			case b = <-pool:
			case <-ctx.Done():
				return
			}
			n, err := fill(raw, b)
			if n > 0 {
				select {
				case toHash <- block{off, b[:n]}:
				case <-ctx.Done():
					return
				}
				off += int64(n)
			} else {
				pool <- b
			}
			if err == io.EOF {
				return
			}
			if err != nil {
				decErr = fmt.Errorf("deploy: decompress %s at byte %d: %w", res.Format, off, err)
				cancel(decErr)
				return
			}
		}
	}()
	// headState is the sha256 state after the image's first HeadSize
	// bytes as streamed: the read-back of the rest is hashed on from it
	// while the download goes on (see verifier).
	var headState []byte
	go func() { // hash
		defer wg.Done()
		defer close(toWrite)
		for blk := range toHash {
			if blk.off == 0 && len(blk.b) >= HeadSize {
				rawHash.Write(blk.b[:HeadSize])
				headState, _ = rawHash.(encoding.BinaryMarshaler).MarshalBinary()
				rawHash.Write(blk.b[HeadSize:])
			} else {
				rawHash.Write(blk.b)
			}
			select {
			case toWrite <- blk:
			case <-ctx.Done():
				return
			}
		}
	}()
	var end int64
	// The verifier reads back, around the page cache, each region the
	// writer has finished (after an fsync), while the download goes on.
	var ver *verifier
	var verErr error
	go func() { // write
		defer wg.Done()
		for blk := range toWrite {
			if err := w.write(blk.b, blk.off); err != nil {
				cancel(err)
				return
			}
			end = blk.off + int64(len(blk.b))
			meter.Add(int64(len(blk.b)))
			pool <- blk.b[:cap(blk.b)]
			if opts.NoVerify || headState == nil || verErr != nil {
				continue
			}
			if ver == nil {
				if ver, verErr = newVerifier(dev, headState); verErr != nil {
					continue // verified after the stream instead
				}
				go ver.loop(ctx)
			}
			ver.offer(end &^ (verifyStep - 1))
		}
	}()
	wg.Wait()
	if ver != nil {
		defer ver.f.Close()
		ver.stopAndWait()
	}
	if err := context.Cause(ctx); err != nil {
		return nil, err
	}
	if decErr != nil {
		return nil, decErr
	}
	res.StreamSeconds = time.Since(start).Seconds()
	res.Bytes = end
	res.WireBytes = wireN.Load()
	res.SHA256 = hex.EncodeToString(rawHash.Sum(nil))
	res.WireSHA256 = res.SHA256
	if wireHash != nil {
		res.WireSHA256 = hex.EncodeToString(wireHash.Sum(nil))
	}
	// Check the stream before the first MiB goes on: a short or wrong
	// stream leaves the target unbootable, not half-written.
	if opts.Size > 0 && end != opts.Size {
		return res, fmt.Errorf("deploy: stream ended after %d of %d bytes", end, opts.Size)
	}
	if opts.SHA256 != "" && res.SHA256 != opts.SHA256 {
		return res, fmt.Errorf("deploy: stream sha256 %s, image is %s: %w", res.SHA256, opts.SHA256, ErrHashMismatch)
	}
	t := time.Now()
	headBytes := w.head
	if err := w.finish(); err != nil {
		return res, err
	}
	res.SyncSeconds = time.Since(t).Seconds()
	res.Written = w.written
	res.Zeroed = w.zeroed
	if !opts.NoVerify {
		meter.Set("verify", end)
		t := time.Now()
		var sum string
		var direct bool
		var err error
		if ver != nil && ver.err == nil {
			// The rest of the tail, then the first MiB, which was written
			// last: both read back from the device around the page cache.
			meter.Add(ver.pos)
			sum, err = ver.finish(ctx, end, headBytes, meter)
			direct = ver.direct
		} else {
			sum, direct, err = HashDevice(ctx, dev, end, meter)
		}
		res.VerifySeconds = time.Since(t).Seconds()
		if err != nil {
			return res, err
		}
		res.Direct = direct
		if sum != res.SHA256 && len(w.skipped) > 0 {
			// Discarded blocks that do not read as zeros: zero them and
			// read back again.
			if _, err := w.zeroSkipped(); err != nil {
				return res, err
			}
			res.ZeroFallback = true
			meter.Set("verify", end)
			var err error
			sum, _, err = HashDevice(ctx, dev, end, meter)
			res.VerifySeconds = time.Since(t).Seconds()
			if err != nil {
				return res, err
			}
		}
		if sum != res.SHA256 {
			return res, fmt.Errorf("deploy: read back sha256 %s, wrote %s: %w", sum, res.SHA256, ErrHashMismatch)
		}
		res.Verified = true
	}
	res.Seconds = time.Since(start).Seconds()
	return res, nil
}

// fill reads into b until it is full or the stream ends. Unlike
// io.ReadFull it reports a decoder's io.ErrUnexpectedEOF (a truncated
// stream) as the error it is; io.EOF means a clean end.
func fill(r io.Reader, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		k, err := r.Read(b[n:])
		n += k
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// chanReader reads the network chunks in order.
type chanReader struct {
	ctx context.Context
	ch  <-chan []byte
	cur []byte
	buf []byte
	put func([]byte)
}

func (r *chanReader) Read(p []byte) (int, error) {
	for len(r.cur) == 0 {
		if r.buf != nil {
			r.put(r.buf)
			r.buf = nil
		}
		select {
		case b, ok := <-r.ch:
			if !ok {
				if err := context.Cause(r.ctx); err != nil {
					return 0, err
				}
				return 0, io.EOF
			}
			r.cur, r.buf = b, b
		case <-r.ctx.Done():
			return 0, context.Cause(r.ctx)
		}
	}
	n := copy(p, r.cur)
	r.cur = r.cur[n:]
	return n, nil
}

// blockWriter writes image blocks, skipping zero runs and holding back the
// head.
type blockWriter struct {
	dev       Target
	zero      []byte
	head      []byte
	discarded bool       // the image range was discarded: zero runs are not written
	trusted   bool       // discarded ranges surely read as zeros (a punched hole)
	skipped   [][2]int64 // zero runs left to an untrusted discard, for the fallback
	written   int64      // data bytes written
	zeroed    int64      // zero bytes not written as data
	limit     int64      // bytes the range prepared covers (image size or device size)
}

func (w *blockWriter) prepare(size int64) error {
	limit := size
	if limit <= 0 {
		limit = w.dev.Size()
	}
	w.limit = limit
	w.head = make([]byte, 0, HeadSize)
	// Zero the head first, so an interrupted deploy never boots a half image.
	if err := w.dev.ZeroRange(0, min(HeadSize, limit)); err != nil {
		return fmt.Errorf("deploy: clear first MiB: %w", err)
	}
	if err := w.dev.Sync(); err != nil {
		return fmt.Errorf("deploy: %w", err)
	}
	switch w.dev.Kind() {
	case blockdev.KindFile:
		// A punched hole reads as zeros: zero runs need no write at all.
		if err := w.dev.Discard(0, limit); err == nil {
			w.discarded, w.trusted = true, true
		}
	case blockdev.KindBlock:
		// Most eMMC and virtual disks read discarded blocks as zeros, but
		// the standard does not promise it: zero runs are skipped and
		// remembered, and if the read-back does not match they are zeroed
		// explicitly (BLKZEROOUT) and verified again.
		if limit > HeadSize {
			if err := w.dev.Discard(HeadSize, limit-HeadSize); err == nil {
				w.discarded = true
			}
		}
	}
	return nil
}

// zeroSkipped zeroes the runs an untrusted discard was relied on for and
// returns how many bytes that was.
func (w *blockWriter) zeroSkipped() (int64, error) {
	var n int64
	for _, r := range w.skipped {
		if err := w.dev.ZeroRange(r[0], r[1]); err != nil {
			return n, fmt.Errorf("deploy: zero [%d,+%d): %w", r[0], r[1], err)
		}
		n += r[1]
	}
	if err := w.dev.Sync(); err != nil {
		return n, fmt.Errorf("deploy: %w", err)
	}
	return n, nil
}

func (w *blockWriter) write(b []byte, off int64) error {
	if off+int64(len(b)) > w.dev.Size() {
		return fmt.Errorf("deploy: image exceeds %s %s of %d bytes at offset %d: %w", w.dev.Kind(), w.dev.Path(), w.dev.Size(), off, ErrTooSmall)
	}
	if off < HeadSize {
		k := min(int64(len(b)), HeadSize-off)
		w.head = append(w.head, b[:k]...)
		b, off = b[k:], off+k
	}
	return w.writeRuns(b, off)
}

// writeRuns writes b at off, leaving zero runs to zeroRun.
func (w *blockWriter) writeRuns(b []byte, off int64) error {
	// Walk zeroGrain pieces; coalesce data runs and zero runs.
	i := 0
	for i < len(b) {
		j := i
		isZero := w.isZero(b[i:min(i+zeroGrain, len(b))])
		for j < len(b) && w.isZero(b[j:min(j+zeroGrain, len(b))]) == isZero {
			j = min(j+zeroGrain, len(b))
		}
		if isZero {
			if err := w.zeroRun(off+int64(i), int64(j-i)); err != nil {
				return err
			}
		} else {
			if _, err := w.dev.WriteAt(b[i:j], off+int64(i)); err != nil {
				return fmt.Errorf("deploy: write at %d: %w", off+int64(i), err)
			}
			w.written += int64(j - i)
		}
		i = j
	}
	return nil
}

func (w *blockWriter) isZero(p []byte) bool { return bytes.Equal(p, w.zero[:len(p)]) }

func (w *blockWriter) zeroRun(off, n int64) error {
	w.zeroed += n
	if off+n <= HeadSize {
		return nil // zeroed by prepare
	}
	if w.discarded && off+n <= w.limit {
		if !w.trusted {
			if k := len(w.skipped); k > 0 && w.skipped[k-1][0]+w.skipped[k-1][1] == off {
				w.skipped[k-1][1] += n
			} else {
				w.skipped = append(w.skipped, [2]int64{off, n})
			}
		}
		return nil
	}
	if err := w.dev.ZeroRange(off, n); err != nil {
		return fmt.Errorf("deploy: zero [%d,+%d): %w", off, n, err)
	}
	return nil
}

func (w *blockWriter) finish() error {
	if err := w.dev.Sync(); err != nil {
		return fmt.Errorf("deploy: %w", err)
	}
	// The head range was cleared at the start: write its data runs.
	head := w.head
	w.head = nil
	if err := w.writeRuns(head, 0); err != nil {
		return fmt.Errorf("deploy: write first MiB: %w", err)
	}
	if err := w.dev.Sync(); err != nil {
		return fmt.Errorf("deploy: %w", err)
	}
	return nil
}

// HashDevice reads [0, n) of dev around the page cache (O_DIRECT, or after
// fadvise DONTNEED) and returns its sha256 and whether O_DIRECT was used.
// Reading and hashing overlap.
func HashDevice(ctx context.Context, dev Target, n int64, meter *Meter) (string, bool, error) {
	f, direct, err := dev.OpenDirectReader()
	if err != nil {
		return "", false, err
	}
	defer f.Close()
	const bufs = 3
	pool := make(chan []byte, bufs)
	for range bufs {
		pool <- blockdev.AlignedBuffer(BlockSize)
	}
	full := make(chan []byte, bufs)
	errc := make(chan error, 1)
	go func() {
		defer close(full)
		for off := int64(0); off < n; {
			var b []byte
			select {
			case b = <-pool:
			case <-ctx.Done():
				errc <- ctx.Err()
				return
			}
			want := min(int64(len(b)), n-off)
			rd := (want + blockdev.DirectAlign - 1) &^ (blockdev.DirectAlign - 1)
			got, err := blockdev.ReadFullAt(f, b[:rd], off)
			if err != nil && err != io.EOF {
				errc <- fmt.Errorf("verify: read at %d: %w", off, err)
				return
			}
			if int64(got) < want {
				errc <- fmt.Errorf("verify: short read at %d: got %d of %d bytes", off, got, want)
				return
			}
			full <- b[:want]
			off += want
		}
	}()
	h := sha256.New()
	for b := range full {
		h.Write(b)
		if meter != nil {
			meter.Add(int64(len(b)))
		}
		pool <- b[:cap(b)]
	}
	select {
	case err := <-errc:
		return "", direct, err
	default:
	}
	return hex.EncodeToString(h.Sum(nil)), direct, nil
}

// verifyStep is the granularity of the read-back that overlaps the
// download: each finished, fsynced region of this size is read back.
const verifyStep = 32 << 20

// verifier reads back the written range [HeadSize, end) around the page
// cache while the deploy goes on, region by region after an fsync, and
// hashes it on from the sha256 state of the streamed first MiB. At the end
// the first MiB (written last) is read back and compared byte for byte with
// the streamed one, so the check covers the whole range read from the
// device: sha256(streamed head || read-back tail) must equal the stream's
// sha256, and the read-back head must equal the streamed head.
type verifier struct {
	dev    Target
	f      *os.File
	direct bool
	h      hash.Hash
	buf    []byte
	pos    int64 // read back and hashed up to here
	ready  atomic.Int64
	kick   chan struct{}
	stop   chan struct{}
	done   chan struct{}
	err    error
}

func newVerifier(dev Target, headState []byte) (*verifier, error) {
	h := sha256.New()
	if err := h.(encoding.BinaryUnmarshaler).UnmarshalBinary(headState); err != nil {
		return nil, fmt.Errorf("verify: sha256 state: %w", err)
	}
	f, direct, err := dev.OpenDirectReader()
	if err != nil {
		return nil, err
	}
	v := &verifier{dev: dev, f: f, direct: direct, h: h, buf: blockdev.AlignedBuffer(BlockSize), pos: HeadSize,
		kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	v.ready.Store(HeadSize)
	return v, nil
}

// offer tells the verifier that [HeadSize, upto) is written.
func (v *verifier) offer(upto int64) {
	if upto > v.ready.Load() {
		v.ready.Store(upto)
		select {
		case v.kick <- struct{}{}:
		default:
		}
	}
}

func (v *verifier) loop(ctx context.Context) {
	defer close(v.done)
	stopped := false
	for {
		if to := v.ready.Load(); v.pos < to {
			if err := v.readTo(ctx, to); err != nil {
				v.err = err
				return
			}
			continue
		}
		if stopped {
			return
		}
		select {
		case <-v.kick:
		case <-v.stop:
			stopped = true
		case <-ctx.Done():
			v.err = context.Cause(ctx)
			return
		}
	}
}

// stopAndWait lets the verifier finish what was offered and waits for it.
func (v *verifier) stopAndWait() {
	close(v.stop)
	<-v.done
}

// readTo fsyncs, then reads [pos, to) around the page cache into the hash.
func (v *verifier) readTo(ctx context.Context, to int64) error {
	if err := v.dev.Sync(); err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	if !v.direct {
		_ = unix.Fadvise(int(v.f.Fd()), v.pos, to-v.pos, unix.FADV_DONTNEED)
	}
	for v.pos < to {
		if err := ctx.Err(); err != nil {
			return context.Cause(ctx)
		}
		want := min(int64(len(v.buf)), to-v.pos)
		rd := (want + blockdev.DirectAlign - 1) &^ (blockdev.DirectAlign - 1)
		got, err := blockdev.ReadFullAt(v.f, v.buf[:rd], v.pos)
		if err != nil && err != io.EOF {
			return fmt.Errorf("verify: read at %d: %w", v.pos, err)
		}
		if int64(got) < want {
			return fmt.Errorf("verify: short read at %d: got %d of %d bytes", v.pos, got, want)
		}
		v.h.Write(v.buf[:want])
		v.pos += want
	}
	return nil
}

// finish reads back the rest of the tail up to end and the first MiB (the
// caller has fsynced both), checks the head against the streamed one and
// returns the hex sha256 of streamed head + read-back tail.
func (v *verifier) finish(ctx context.Context, end int64, head []byte, meter *Meter) (string, error) {
	from := v.pos
	if err := v.readTo(ctx, end); err != nil {
		return "", err
	}
	meter.Add(end - from)
	if !v.direct {
		_ = unix.Fadvise(int(v.f.Fd()), 0, HeadSize, unix.FADV_DONTNEED)
	}
	got, err := blockdev.ReadFullAt(v.f, v.buf[:HeadSize], 0)
	if err != nil || got < HeadSize {
		return "", fmt.Errorf("verify: read first MiB: got %d bytes: %v", got, err)
	}
	if len(head) != HeadSize || !bytes.Equal(v.buf[:HeadSize], head) {
		return "", fmt.Errorf("verify: first MiB read back differs from the image: %w", ErrHashMismatch)
	}
	meter.Add(HeadSize)
	return hex.EncodeToString(v.h.Sum(nil)), nil
}
