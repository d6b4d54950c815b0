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
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
	"golang.org/x/sys/unix"

	"github.com/cm4bench/cm4bench/internal/contract"
	"github.com/cm4bench/cm4bench/internal/sparseimg"
	"github.com/cm4bench/cm4bench/netboot/device/blockdev"
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
	// FormatSparse is the sparse stream of a raw image (internal/sparseimg).
	FormatSparse = "sparse"
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
	case bytes.HasPrefix(head, []byte(sparseimg.Magic)):
		return FormatSparse
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
	CustomiseSeconds                          float64 // writing the per-device files (recipe deploys)
	// Files are the per-device files written into the boot partition after
	// the image verified, as read back (recipe deploys).
	Files []contract.FileHash
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
	OpenDirectReader() (blockdev.Reader, bool, error)
}

// ErrTooSmall is returned when the target is smaller than the image.
var ErrTooSmall = errors.New("target smaller than image")

// ErrHashMismatch is returned when a hash does not match.
var ErrHashMismatch = errors.New("sha256 mismatch")

// Stream is what Deploy reads an image from: an HTTP download (*Source), or
// a reader wrapped by ReaderStream.
type Stream interface {
	// Open starts the transfer. Deploy calls it once, after the size check
	// when the size is already known, so a target that is too small is
	// refused before the first byte is fetched.
	Open(ctx context.Context) error
	io.Reader
	// Abort ends a Read in progress, from another goroutine. Deploy calls
	// it when any stage fails, so a download does not outlive the deploy.
	Abort()
	// Announced is the uncompressed size and sha256 the source announced
	// when it opened (0 and "" when it announced none).
	Announced() (size int64, sha256 string)
}

// ReaderStream is a Stream over a reader that needs no opening and cannot
// block for long (a file or a buffer): Open and Abort do nothing and it
// announces nothing.
func ReaderStream(r io.Reader) Stream { return readerStream{r} }

type readerStream struct{ io.Reader }

func (readerStream) Open(context.Context) error { return nil }
func (readerStream) Abort()                     {}
func (readerStream) Announced() (int64, string) { return 0, "" }

// Deploy streams src (raw, gz, xz, zst or sparse, detected from its magic
// bytes)
// onto dev, as a pipeline of named stages:
//
//  1. open: check the size against the target (once: from opts, else from
//     what the source announces) and open the source;
//  2. fetch: read the network into bounded chunks;
//  3. decode: detect the format and decompress into aligned blocks;
//  4. hash: sha256 of the uncompressed stream;
//  5. write: zero blocks are not written (the range is discarded first and
//     zero runs left as such), the first MiB is written last;
//  6. verify: after fsync the written range is read back around the page
//     cache, mostly while the download goes on, and its sha256 compared
//     with the stream's (and opts.SHA256 if set).
//
// Stages 2 to 5 run in their own goroutines joined by bounded queues, so
// memory stays flat whatever the image size. A failure in any stage
// cancels the others and aborts the source.
func Deploy(ctx context.Context, dev Target, src Stream, opts DeployOptions) (*DeployResult, error) {
	start := time.Now()
	if opts.Meter == nil {
		opts.Meter = &Meter{}
	}
	d := &deployment{dev: dev, opts: opts, res: &DeployResult{}}
	if err := d.open(ctx, src); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	d.cancel = cancel
	defer context.AfterFunc(ctx, src.Abort)()

	compressed := d.fetch(ctx, src)
	raw, closeDecoder, err := d.decode(compressed)
	if err != nil {
		cancel(err)
		d.wg.Wait()
		return nil, err
	}
	defer closeDecoder()
	if err := d.prepare(); err != nil {
		cancel(err)
		d.wg.Wait()
		return nil, err
	}
	blocks := d.decompress(ctx, raw)
	hashed := d.hash(ctx, blocks)
	d.write(ctx, hashed)
	d.wg.Wait()
	if d.ver != nil {
		defer d.ver.f.Close()
		d.ver.stopAndWait()
	}
	if err := context.Cause(ctx); err != nil {
		return nil, err
	}
	d.res.StreamSeconds = time.Since(start).Seconds()
	if err := d.checkStream(); err != nil {
		return d.res, err
	}
	if err := d.verify(ctx); err != nil {
		return d.res, err
	}
	d.res.Seconds = time.Since(start).Seconds()
	return d.res, nil
}

// deployment is one Deploy in progress: what the stages share.
type deployment struct {
	dev    Target
	opts   DeployOptions
	res    *DeployResult
	cancel context.CancelCauseFunc
	wg     sync.WaitGroup

	wireN     atomic.Int64 // bytes fetched
	wireHash  hash.Hash    // of the fetched bytes (compressed streams only)
	w         *blockWriter
	pool      chan []byte // free aligned blocks
	rawHash   hash.Hash   // of the uncompressed stream
	headState []byte      // rawHash state after the first HeadSize bytes
	end       int64       // bytes written so far (the image size at the end)
	ver       *verifier   // reads back finished regions while the stream goes on
	verErr    error
}

// block is one piece of the uncompressed image at its offset.
type block struct {
	off int64
	b   []byte
}

// open is stage 1: the one size check, then the source is opened. A size
// from the options is checked before the source opens; otherwise the
// source's announced size is checked right after. A missing sha256 is taken
// from the announcement too.
func (d *deployment) open(ctx context.Context, src Stream) error {
	opened := false
	if d.opts.Size == 0 {
		if err := src.Open(ctx); err != nil {
			return fmt.Errorf("deploy: open source: %w", err)
		}
		opened = true
		d.opts.Size, _ = src.Announced()
	}
	if d.opts.Size > d.dev.Size() {
		if opened {
			src.Abort()
		}
		return fmt.Errorf("deploy: image of %d bytes, %s %s has %d: %w", d.opts.Size, d.dev.Kind(), d.dev.Path(), d.dev.Size(), ErrTooSmall)
	}
	if !opened {
		if err := src.Open(ctx); err != nil {
			return fmt.Errorf("deploy: open source: %w", err)
		}
	}
	if d.opts.SHA256 == "" {
		_, sum := src.Announced()
		d.opts.SHA256 = strings.ToLower(sum)
	}
	return nil
}

// fetch is stage 2: src is read in netChunk pieces into a bounded queue.
func (d *deployment) fetch(ctx context.Context, src io.Reader) *bufio.Reader {
	chunks := make(chan []byte, netChunks)
	chunkPool := sync.Pool{New: func() any { b := make([]byte, netChunk); return &b }}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		defer close(chunks)
		for {
			bp := chunkPool.Get().(*[]byte)
			n, err := io.ReadFull(src, *bp)
			if n > 0 {
				d.wireN.Add(int64(n))
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
				d.cancel(fmt.Errorf("deploy: download: %w", err))
				return
			}
		}
	}()
	cr := &chanReader{ctx: ctx, ch: chunks, put: func(b []byte) { b = b[:cap(b)]; chunkPool.Put(&b) }}
	return bufio.NewReaderSize(cr, 64<<10)
}

// decode is stage 3's set-up: the format from the magic bytes and its
// decoder. The hash of the fetched bytes is taken on the way into the
// decoder; for a raw stream it is the image hash itself.
func (d *deployment) decode(br *bufio.Reader) (raw io.Reader, closeDecoder func(), err error) {
	head, _ := br.Peek(len(sparseimg.Magic))
	d.res.Format = DetectFormat(head)
	if d.res.Format == FormatRaw {
		return br, func() {}, nil
	}
	d.wireHash = sha256.New()
	comp := io.TeeReader(br, d.wireHash)
	switch d.res.Format {
	case FormatGzip:
		zr, err := gzip.NewReader(comp)
		if err != nil {
			return nil, nil, fmt.Errorf("deploy: gzip header: %w", err)
		}
		return zr, func() {}, nil
	case FormatXZ:
		zr, err := xz.NewReader(comp)
		if err != nil {
			return nil, nil, fmt.Errorf("deploy: xz header: %w", err)
		}
		return zr, func() {}, nil
	case FormatSparse:
		sr, err := sparseimg.NewReader(comp)
		if err != nil {
			return nil, nil, fmt.Errorf("deploy: %w", err)
		}
		return sr, func() {}, nil
	default: // FormatZstd
		zr, err := zstd.NewReader(comp, zstd.WithDecoderConcurrency(2), zstd.WithDecoderLowmem(true), zstd.WithDecoderMaxWindow(64<<20))
		if err != nil {
			return nil, nil, fmt.Errorf("deploy: zstd: %w", err)
		}
		return zr, zr.Close, nil
	}
}

// prepare erases the target range and allocates the block buffers.
func (d *deployment) prepare() error {
	d.w = &blockWriter{dev: d.dev, zero: make([]byte, zeroGrain)}
	if err := d.w.prepare(d.opts.Size); err != nil {
		return err
	}
	d.res.Discarded = d.w.discarded
	d.opts.Meter.Set("write", d.opts.Size)
	d.pool = make(chan []byte, BlockBuffers)
	for range BlockBuffers {
		d.pool <- blockdev.AlignedBuffer(BlockSize)
	}
	return nil
}

// decompress is stage 3: the uncompressed stream cut into blocks.
func (d *deployment) decompress(ctx context.Context, raw io.Reader) <-chan block {
	out := make(chan block, BlockBuffers)
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		defer close(out)
		off := int64(0)
		for {
			var b []byte
			select {
			case b = <-d.pool:
			case <-ctx.Done():
				return
			}
			n, err := fill(raw, b)
			if n > 0 {
				select {
				case out <- block{off, b[:n]}:
				case <-ctx.Done():
					return
				}
				off += int64(n)
			} else {
				d.pool <- b
			}
			if err == io.EOF {
				return
			}
			if err != nil {
				d.cancel(fmt.Errorf("deploy: decompress %s at byte %d: %w", d.res.Format, off, err))
				return
			}
		}
	}()
	return out
}

// hash is stage 4. It keeps the hash state after the first HeadSize bytes:
// the read-back of the rest is hashed on from it while the download goes
// on (see verifier).
func (d *deployment) hash(ctx context.Context, in <-chan block) <-chan block {
	out := make(chan block, BlockBuffers)
	d.rawHash = sha256.New()
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		defer close(out)
		for blk := range in {
			if blk.off == 0 && len(blk.b) >= HeadSize {
				d.rawHash.Write(blk.b[:HeadSize])
				d.headState, _ = d.rawHash.(encoding.BinaryMarshaler).MarshalBinary()
				d.rawHash.Write(blk.b[HeadSize:])
			} else {
				d.rawHash.Write(blk.b)
			}
			select {
			case out <- blk:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out
}

// write is stage 5. Each region it finishes is offered to the verifier,
// which reads it back around the page cache (after an fsync) while the
// download goes on.
func (d *deployment) write(ctx context.Context, in <-chan block) {
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		for blk := range in {
			if err := d.w.write(blk.b, blk.off); err != nil {
				d.cancel(err)
				return
			}
			d.end = blk.off + int64(len(blk.b))
			d.opts.Meter.Add(int64(len(blk.b)))
			d.pool <- blk.b[:cap(blk.b)]
			if d.opts.NoVerify || d.headState == nil || d.verErr != nil {
				continue
			}
			if d.ver == nil {
				if d.ver, d.verErr = newVerifier(d.dev, d.headState); d.verErr != nil {
					continue // verified after the stream instead
				}
				go d.ver.loop(ctx)
			}
			d.ver.offer(d.end &^ (verifyStep - 1))
		}
	}()
}

// checkStream records what was streamed and checks it before the first
// MiB goes on: a short or wrong stream leaves the target unbootable, not
// half-written.
func (d *deployment) checkStream() error {
	r := d.res
	r.Bytes = d.end
	r.WireBytes = d.wireN.Load()
	r.SHA256 = hex.EncodeToString(d.rawHash.Sum(nil))
	r.WireSHA256 = r.SHA256
	if d.wireHash != nil {
		r.WireSHA256 = hex.EncodeToString(d.wireHash.Sum(nil))
	}
	if d.opts.Size > 0 && d.end != d.opts.Size {
		return fmt.Errorf("deploy: stream ended after %d of %d bytes", d.end, d.opts.Size)
	}
	if d.opts.SHA256 != "" && r.SHA256 != d.opts.SHA256 {
		return fmt.Errorf("deploy: stream sha256 %s, image is %s: %w", r.SHA256, d.opts.SHA256, ErrHashMismatch)
	}
	return nil
}

// verify is stage 6: the first MiB is written and everything synced, then
// the image range is read back around the page cache and its hash compared
// with the stream's.
func (d *deployment) verify(ctx context.Context) error {
	t := time.Now()
	headBytes := d.w.head
	if err := d.w.finish(); err != nil {
		return err
	}
	r := d.res
	r.SyncSeconds = time.Since(t).Seconds()
	r.Written = d.w.written
	r.Zeroed = d.w.zeroed
	if d.opts.NoVerify {
		return nil
	}
	meter, end := d.opts.Meter, d.end
	meter.Set("verify", end)
	t = time.Now()
	var sum string
	var err error
	if d.ver != nil && d.ver.err == nil {
		// The rest of the tail, then the first MiB, which was written
		// last: both read back from the device around the page cache.
		meter.Add(d.ver.pos)
		sum, err = d.ver.finish(ctx, end, headBytes, meter)
		r.Direct = d.ver.direct
	} else {
		sum, r.Direct, err = HashDevice(ctx, d.dev, end, meter)
	}
	r.VerifySeconds = time.Since(t).Seconds()
	if err != nil {
		return err
	}
	if sum != r.SHA256 && len(d.w.skipped) > 0 {
		// Discarded blocks that do not read as zeros: zero them and read
		// back again.
		if _, err := d.w.zeroSkipped(); err != nil {
			return err
		}
		r.ZeroFallback = true
		meter.Set("verify", end)
		sum, _, err = HashDevice(ctx, d.dev, end, meter)
		r.VerifySeconds = time.Since(t).Seconds()
		if err != nil {
			return err
		}
	}
	if sum != r.SHA256 {
		return fmt.Errorf("deploy: read back sha256 %s, wrote %s: %w", sum, r.SHA256, ErrHashMismatch)
	}
	r.Verified = true
	return nil
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
	f      blockdev.Reader
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
