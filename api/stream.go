package api

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cm4bench/cm4bench/api/images"
	"github.com/cm4bench/cm4bench/api/store"
	"github.com/cm4bench/cm4bench/internal/atomicfile"
	"github.com/cm4bench/cm4bench/internal/contract"
	"github.com/cm4bench/cm4bench/internal/sparseimg"
	"github.com/klauspost/compress/zstd"
)

// progressEvery is how often the server reports progress it measures
// itself (for clients that report none).
const progressEvery = time.Second

// streamAction authorises a request on an image or backup URL.
func (s *Server) streamAction(r *http.Request, typ string) (store.Action, error) {
	id, token, err := parseStream(r)
	if err != nil {
		return store.Action{}, err
	}
	a, err := s.Store.ActionByID(r.Context(), id)
	if errors.Is(err, store.ErrNotFound) {
		return a, httpErr(http.StatusNotFound, "no action %q", id)
	}
	if err != nil {
		return a, err
	}
	if token == "" || !tokenEqual(token, a.Token) {
		return a, httpErr(http.StatusForbidden, "wrong or missing token for action %s", a.ID)
	}
	if a.State != contract.StatePending && a.State != contract.StateRunning {
		return a, httpErr(http.StatusGone, "action %s is %s; its token has expired", a.ID, a.State)
	}
	if err := s.expire(r.Context(), a); err != nil {
		return a, err
	}
	if a.Type != typ {
		return a, httpErr(http.StatusConflict, "action %s is a %s, not a %s", a.ID, a.Type, typ)
	}
	if a.PolledIP == "" {
		return a, httpErr(http.StatusConflict, "action %s has not been polled by its device yet", a.ID)
	}
	if ip := remoteIP(r); ip != a.PolledIP {
		return a, httpErr(http.StatusForbidden, "action %s belongs to the device at %s, not %s", a.ID, a.PolledIP, ip)
	}
	if err := s.checkLease(r, a.MAC); err != nil {
		return a, err
	}
	return a, nil
}

// meter counts bytes through a ResponseWriter (keeping sendfile: ReadFrom
// passes *os.File sections straight to the connection) and reports
// progress about once a second.
type meter struct {
	http.ResponseWriter
	n      int64
	start  time.Time
	next   time.Time
	report func(n int64, rate float64) // nil = count only
	count  func(n int64)
	// cov, when set, records what is written at offset off+n of the image
	// (coverageBook): claimed before each write, recorded after.
	cov *covStream
	off int64
}

// coverChunk bounds one sendfile call, so a claim covers at most this much.
const coverChunk = 4 << 20

func newMeter(w http.ResponseWriter, report func(int64, float64), count func(int64)) *meter {
	now := time.Now()
	return &meter{ResponseWriter: w, start: now, next: now.Add(progressEvery), report: report, count: count}
}

func (m *meter) add(n int) {
	m.n += int64(n)
	if m.count != nil {
		m.count(int64(n))
	}
	if m.report != nil {
		if now := time.Now(); now.After(m.next) {
			m.next = now.Add(progressEvery)
			m.report(m.n, m.rate())
		}
	}
}

func (m *meter) rate() float64 {
	if d := time.Since(m.start).Seconds(); d > 0 {
		return float64(m.n) / d
	}
	return 0
}

func (m *meter) Write(p []byte) (int, error) {
	at := m.off + m.n
	m.cov.claim(at, int64(len(p)))
	n, err := m.ResponseWriter.Write(p)
	m.cov.sent(at, int64(n))
	m.add(n)
	return n, err
}

func (m *meter) ReadFrom(src io.Reader) (int64, error) {
	rf, ok := m.ResponseWriter.(io.ReaderFrom)
	if !ok {
		return io.Copy(struct{ io.Writer }{m}, src)
	}
	lr, ok := src.(*io.LimitedReader)
	if !ok {
		return io.Copy(struct{ io.Writer }{m}, src)
	}
	var total int64
	for lr.N > 0 {
		chunk := min(lr.N, coverChunk)
		at := m.off + m.n
		m.cov.claim(at, chunk)
		n, err := rf.ReadFrom(&io.LimitedReader{R: lr.R, N: chunk})
		m.cov.sent(at, n)
		lr.N -= n
		total += n
		m.add(int(n))
		if err != nil {
			return total, err
		}
		if n < chunk {
			break
		}
	}
	return total, nil
}

func (m *meter) Flush() {
	if f, ok := m.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// accepts reports whether the request's Accept-Encoding lists coding
// without q=0.
func accepts(r *http.Request, coding string) bool {
	for _, part := range strings.Split(r.Header.Get("Accept-Encoding"), ",") {
		name, q, _ := strings.Cut(strings.TrimSpace(part), ";")
		if strings.EqualFold(strings.TrimSpace(name), coding) && !strings.Contains(strings.ReplaceAll(q, " ", ""), "q=0") {
			return true
		}
	}
	return false
}

// handleImage streams a deploy's image: raw by default (sendfile for a raw
// file, decompressed on the fly otherwise), zstd when the client accepts
// it (a stored .zst passes through as is), and the sparse stream (data
// extents only, internal/sparseimg) of a raw image when the client accepts
// that; a client accepting both gets the sparse stream of a raw image and
// zstd otherwise. Range and ETag work on the raw stream, on a
// passed-through .zst and on the sparse stream.
func (s *Server) handleImage(w http.ResponseWriter, r *http.Request) {
	a, err := s.streamAction(r, contract.ActionDeploy)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	e, err := s.Images.Info(r.Context(), a.Image)
	if err != nil {
		s.fail(w, r, fmt.Errorf("image %q of action %s: %w", a.Image, a.ID, err))
		return
	}
	f, err := os.Open(e.Path)
	if err != nil {
		s.fail(w, r, fmt.Errorf("open image %q: %w", a.Image, err))
		return
	}
	defer f.Close()

	h := w.Header()
	h.Set(contract.HeaderImageSize, strconv.FormatInt(e.Size, 10))
	h.Set(contract.HeaderImageSHA256, e.SHA256)
	h.Set(contract.HeaderImageFormat, e.Format)
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Vary", "Accept-Encoding")
	h.Set("Cache-Control", "no-cache")

	// Progress: measured here for clients that report none themselves.
	tracked := r.Method == http.MethodGet && !strings.HasPrefix(r.UserAgent(), contract.AgentUserAgent)
	sparseOut := accepts(r, contract.AcceptSparse) && e.Format == images.FormatRaw
	zstdOut := accepts(r, contract.AcceptZstd) && !sparseOut
	var report func(int64, float64)
	var offset int64
	if tracked && !zstdOut && !sparseOut {
		report = func(n int64, rate float64) { s.queueProgress(a, "download", offset+n, e.Size, rate) }
	}
	m := newMeter(w, report, s.metrics.bytesServed.Add)
	// Every GET records what it streams, for every client: a deploy is
	// done only once the whole image went out (coverageBook).
	cover := func(space string, off int64) {
		if r.Method != http.MethodGet {
			return
		}
		cs, err := s.cov.open(a.ID, space)
		if err != nil {
			s.log().Error("recording an image stream", "action", a.ID, "err", err)
			return
		}
		m.cov, m.off = cs, off
	}
	defer func() {
		m.cov.close()
		if r.Method == http.MethodGet {
			s.streamEnded(a, e, tracked, m.rate())
		}
	}()

	switch {
	case sparseOut:
		// Keyed by the file as well as its hash: an image still being
		// hashed has none yet.
		key := fmt.Sprintf("%s|%d|%d|%s", e.Path, e.Size, e.Modified.UnixNano(), e.SHA256)
		ext, err := s.sparse.get(r.Context(), key, f, e.Size)
		if err != nil {
			s.fail(w, r, fmt.Errorf("image %q: %w", a.Image, err))
			return
		}
		st, err := sparseimg.NewStream(f, e.Size, ext)
		if err != nil {
			s.fail(w, r, fmt.Errorf("image %q: %w", a.Image, err))
			return
		}
		etag := `"` + e.SHA256 + `-sparse"`
		h.Set("Content-Encoding", contract.AcceptSparse)
		h.Set("ETag", etag)
		if start, ok := singleRangeStart(r, st.Size(), etag); ok {
			cover(spaceSparse(st.Size()), start)
		}
		http.ServeContent(m, r, "", e.Modified, io.NewSectionReader(st, 0, st.Size()))
		return
	case zstdOut && e.Format == images.FormatZstd:
		h.Set("Content-Encoding", "zstd")
		h.Set("ETag", `"`+e.SHA256+`-zst"`)
		if st, ok := singleRangeStart(r, e.CompressedSize, `"`+e.SHA256+`-zst"`); ok {
			cover(spaceZst, st)
		}
		http.ServeContent(m, r, "", e.Modified, f)
		return
	case zstdOut:
		// Compress on the fly; no Range (resume on the raw stream instead).
		h.Set("Content-Encoding", "zstd")
		h.Set("ETag", `"`+e.SHA256+`-zstd-live"`)
		if r.Method == http.MethodHead {
			w.WriteHeader(http.StatusOK)
			return
		}
		rc, err := images.Decompress(f, e.Format)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		defer rc.Close()
		enc, err := zstd.NewWriter(m, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1), zstd.WithLowerEncoderMem(true))
		if err != nil {
			s.fail(w, r, err)
			return
		}
		w.WriteHeader(http.StatusOK)
		n, err := io.Copy(enc, rc)
		if cerr := enc.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			s.log().Warn("zstd image stream ended early", "action", a.ID, "raw_bytes", n, "err", err)
			return
		}
		// Compressed on the fly: only a whole stream counts (no Range).
		if n == e.Size {
			if cs, err := s.cov.open(a.ID, spaceRaw); err == nil {
				cs.sent(0, n)
				cs.close()
			}
		}
		return
	}

	h.Set("ETag", `"`+e.SHA256+`"`)
	if e.Format == images.FormatRaw {
		if st, ok := singleRangeStart(r, e.Size, `"`+e.SHA256+`"`); ok {
			cover(spaceRaw, st)
		}
		http.ServeContent(m, r, "", e.Modified, f)
		return
	}

	// A compressed image as a raw stream: decompress, skipping to the
	// requested offset for a Range request.
	start, length, code := int64(0), e.Size, http.StatusOK
	if rg := r.Header.Get("Range"); rg != "" && ifRangeOK(r, `"`+e.SHA256+`"`) {
		st, ln, ok := parseRange(rg, e.Size)
		if !ok {
			h.Set("Content-Range", fmt.Sprintf("bytes */%d", e.Size))
			writeErr(w, http.StatusRequestedRangeNotSatisfiable, "unsatisfiable range "+rg)
			return
		}
		start, length, code = st, ln, http.StatusPartialContent
		h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", st, st+ln-1, e.Size))
	}
	offset = start
	h.Set("Accept-Ranges", "bytes")
	h.Set("Content-Length", strconv.FormatInt(length, 10))
	if r.Method == http.MethodHead {
		w.WriteHeader(code)
		return
	}
	rc, err := images.Decompress(f, e.Format)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	defer rc.Close()
	if start > 0 {
		if _, err := io.CopyN(io.Discard, rc, start); err != nil {
			s.fail(w, r, fmt.Errorf("skip to %d in image %q: %w", start, a.Image, err))
			return
		}
	}
	cover(spaceRaw, start)
	w.WriteHeader(code)
	n, err := io.CopyN(struct{ io.Writer }{m}, rc, length)
	if err != nil {
		s.log().Warn("image stream ended early", "action", a.ID, "image", a.Image, "sent", n, "want", length, "err", err)
	}
}

// singleRangeStart is where a GET's body starts in the file: 0 without a
// (usable) Range, the start of a single range, and ok false for what the
// coverage cannot follow (several ranges, or an unsatisfiable one).
func singleRangeStart(r *http.Request, size int64, etag string) (int64, bool) {
	rg := r.Header.Get("Range")
	if rg == "" || !ifRangeOK(r, etag) {
		return 0, true
	}
	if strings.Contains(rg, ",") {
		return 0, false
	}
	st, _, ok := parseRange(rg, size)
	return st, ok
}

// streamEnded marks the action served once the coverage book shows the
// whole image streamed, and for clients that report no progress shows it
// as the download's end.
func (s *Server) streamEnded(a store.Action, e images.Entry, tracked bool, rate float64) {
	done, _, err := s.cov.complete(a.ID, e.Size, e.CompressedSize)
	if err != nil {
		s.log().Error("reading an image stream's record", "action", a.ID, "err", err)
		return
	}
	if !done {
		return
	}
	if err := s.Store.MarkServed(context.Background(), a.ID); err != nil {
		s.log().Error("recording a complete image stream", "action", a.ID, "err", err)
	}
	if tracked {
		s.queueProgress(a, "downloaded", e.Size, e.Size, rate)
	}
}

// serverPhases are the phases the server reports from its own streams; a
// device's later phase is never replaced by one of them.
var serverPhases = []string{"download", "downloaded", "upload"}

// progressReport is progress the server measured on a stream.
type progressReport struct {
	a           store.Action
	phase       string
	done, total int64
	rate        float64
}

// queueProgress hands a report to the progress writer without blocking the
// stream; when the writer is behind, the report is dropped (the next one,
// a second later, supersedes it).
func (s *Server) queueProgress(a store.Action, phase string, done, total int64, rate float64) {
	select {
	case s.progress <- progressReport{a, phase, done, total, rate}:
	default:
	}
}

// writeProgress records queued progress reports until ctx ends.
func (s *Server) writeProgress(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case r := <-s.progress:
			s.serverProgress(r.a, r.phase, r.done, r.total, r.rate)
		}
	}
}

// serverProgress records progress the server measured itself.
func (s *Server) serverProgress(a store.Action, phase string, done, total int64, rate float64) {
	ctx := context.Background()
	if ok, err := s.Store.ServerProgress(ctx, a.ID, phase, done, total, rate, serverPhases...); err != nil || !ok {
		return // the action was closed, or the device has reported a later phase
	}
	s.emit(ctx, contract.Event{Kind: contract.EventActionProgress, MAC: a.MAC, Message: phase,
		Fields: map[string]any{"action_id": a.ID, "phase": phase, "done": done, "total": total, "rate": rate}})
}

func ifRangeOK(r *http.Request, etag string) bool {
	ir := r.Header.Get("If-Range")
	return ir == "" || ir == etag
}

// parseRange parses a single-range "bytes=" header against size. Several
// ranges are not supported (ok=false would refuse them, so they are
// treated as the first range only).
func parseRange(h string, size int64) (start, length int64, ok bool) {
	spec, found := strings.CutPrefix(h, "bytes=")
	if !found {
		return 0, 0, false
	}
	spec, _, _ = strings.Cut(spec, ",")
	a, b, found := strings.Cut(strings.TrimSpace(spec), "-")
	if !found {
		return 0, 0, false
	}
	if a == "" { // suffix: last b bytes
		n, err := strconv.ParseInt(b, 10, 64)
		if err != nil || n <= 0 {
			return 0, 0, false
		}
		n = min(n, size)
		return size - n, n, size > 0
	}
	st, err := strconv.ParseInt(a, 10, 64)
	if err != nil || st < 0 || st >= size {
		return 0, 0, false
	}
	end := size - 1
	if b != "" {
		e, err := strconv.ParseInt(b, 10, 64)
		if err != nil || e < st {
			return 0, 0, false
		}
		end = min(e, size-1)
	}
	return st, end - st + 1, true
}

// BackupDir is where backups are stored.
func (s *Server) backupDir() string { return filepath.Join(s.DataDir, "backups") }

// uploadError tells a cut upload (the client's side) from a failed write
// (ours: full disk, I/O error).
type uploadError struct {
	read bool
	n    int64
	err  error
}

func (e *uploadError) Error() string { return e.err.Error() }
func (e *uploadError) Unwrap() error { return e.err }

// copyUpload copies src to dst with distinct read and write errors.
func copyUpload(dst io.Writer, src io.Reader, buf []byte) (int64, error) {
	var n int64
	for {
		nr, rerr := src.Read(buf)
		if nr > 0 {
			nw, werr := dst.Write(buf[:nr])
			n += int64(nw)
			if werr != nil {
				return n, &uploadError{n: n, err: werr}
			}
		}
		if rerr == io.EOF {
			return n, nil
		}
		if rerr != nil {
			return n, &uploadError{read: true, n: n, err: rerr}
		}
	}
}

type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

// Upload limits (security item 5).
var (
	// errTooLarge: the backup's raw bytes passed the board's eMMC size.
	errTooLarge = errors.New("backup is larger than the board's eMMC")
	// errNoRoom: storing more would eat into the disk reserve.
	errNoRoom = errors.New("backup would leave less than the reserve free on the server's backup disk")
)

// DefaultMaxBackup caps a backup of a board that reported no eMMC size (the
// shell client sends no facts): the largest CM5 eMMC.
const DefaultMaxBackup = 64 << 30

// DefaultDiskReserve is the free space a backup never eats into.
const DefaultDiskReserve = 1 << 30

// capWriter fails, writing nothing of the chunk, once limit bytes would
// be passed; put first in a MultiWriter, it stops the others too.
type capWriter struct {
	n, limit int64
	err      error
}

func (c *capWriter) Write(p []byte) (int, error) {
	if c.n+int64(len(p)) > c.limit {
		return 0, fmt.Errorf("%w (%d bytes)", c.err, c.limit)
	}
	c.n += int64(len(p))
	return len(p), nil
}

// backupLimits are the raw and stored caps of one upload.
func (s *Server) backupLimits(dev contract.Device) (raw, stored int64) {
	raw = DefaultMaxBackup
	if dev.Facts != nil && dev.Facts.EMMCBytes > 0 {
		raw = dev.Facts.EMMCBytes
	}
	reserve := s.DiskReserve
	if reserve == 0 {
		reserve = DefaultDiskReserve
	}
	stored = raw
	if free, err := freeBytes(s.backupDir()); err == nil && reserve > 0 {
		stored = max(0, min(stored, free-reserve))
	}
	return raw, stored
}

// limitCode maps an upload error to its status: 413 past the eMMC size,
// 507 past the disk reserve or on a full disk.
func limitCode(err error) int {
	switch {
	case errors.Is(err, errTooLarge):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, errNoRoom):
		return http.StatusInsufficientStorage
	}
	return writeCode(err)
}

// handleBackupUpload receives a backup (PUT or POST, any length or
// chunked). The body is raw device bytes, or zstd when sent with
// "Content-Encoding: zstd". It is written to a temp file, fsynced and
// renamed; only then is the backup recorded. A cut upload or a failed
// write fails the action and records no backup.
func (s *Server) handleBackupUpload(w http.ResponseWriter, r *http.Request) {
	a, err := s.streamAction(r, contract.ActionBackup)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if a.BackupID != "" {
		s.fail(w, r, httpErr(http.StatusConflict, "action %s already has backup %s", a.ID, a.BackupID))
		return
	}
	// One upload per backup URL: a second one, while the first runs, is
	// refused before it writes anything.
	s.uploadMu.Lock()
	if s.uploading == nil {
		s.uploading = map[string]bool{}
	}
	busy := s.uploading[a.ID]
	s.uploading[a.ID] = true
	s.uploadMu.Unlock()
	if busy {
		s.fail(w, r, httpErr(http.StatusConflict, "an upload to backup %s is already in progress: one upload per backup", a.ID))
		return
	}
	defer func() {
		s.uploadMu.Lock()
		delete(s.uploading, a.ID)
		s.uploadMu.Unlock()
	}()
	if cur, err := s.Store.ActionByID(r.Context(), a.ID); err == nil && cur.BackupID != "" {
		s.fail(w, r, httpErr(http.StatusConflict, "action %s already has backup %s", a.ID, cur.BackupID))
		return
	}
	b, code, err := s.receiveBackup(r, &idleReader{r: r.Body, rc: http.NewResponseController(w), idle: s.uploadIdle(), minRate: s.minUploadRate()}, a)
	if err != nil {
		s.failAction(r.Context(), a, err.Error())
		if code == 0 {
			code = http.StatusInternalServerError
		}
		s.log().Warn("backup upload failed", "action", a.ID, "mac", a.MAC, "status", code, "err", err)
		writeErr(w, code, err.Error())
		return
	}
	s.emit(r.Context(), contract.Event{Kind: contract.EventBackupStored, MAC: a.MAC, Serial: b.Serial,
		Message: fmt.Sprintf("backup %s stored (%d bytes, sha256 %s)", b.ID, b.Size, b.SHA256),
		Fields:  map[string]any{"action_id": a.ID, "backup_id": b.ID, "size": b.Size, "stored_size": b.StoredSize, "sha256": b.SHA256}})
	writeJSON(w, http.StatusCreated, b.Backup)
}

func (s *Server) uploadIdle() time.Duration {
	if s.UploadIdle > 0 {
		return s.UploadIdle
	}
	return DefaultUploadIdle
}

// idleReader moves the connection's read deadline forward before each read,
// so a read that waits longer than idle for data fails with a clear error.
// idleReader fails an upload that sends nothing for idle, or that over
// any window of idle sends less than minRate bytes a second (a byte every
// 29 s keeps a connection "alive" but is no backup).
type idleReader struct {
	r       io.Reader
	rc      *http.ResponseController
	idle    time.Duration
	minRate int64 // bytes per second; 0 = no minimum

	winStart time.Time
	winBytes int64
}

func (i *idleReader) Read(p []byte) (int, error) {
	// Not every ResponseWriter supports deadlines (a test recorder does not);
	// then the read simply waits as before.
	_ = i.rc.SetReadDeadline(time.Now().Add(i.idle))
	n, err := i.r.Read(p)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		err = fmt.Errorf("no data from the board for %s: %w", i.idle, err)
	}
	now := time.Now()
	if i.winStart.IsZero() {
		i.winStart = now
	}
	i.winBytes += int64(n)
	if el := now.Sub(i.winStart); el >= i.idle {
		if i.minRate > 0 && float64(i.winBytes) < float64(i.minRate)*el.Seconds() && err == nil {
			return n, fmt.Errorf("the board sent %d bytes in %s, slower than the minimum of %d bytes/s: upload refused", i.winBytes, el.Round(time.Second), i.minRate)
		}
		i.winStart, i.winBytes = now, 0
	}
	return n, err
}

// receiveBackup stores the upload read from body (the request body behind
// an idle timeout) for action a.
func (s *Server) receiveBackup(r *http.Request, body io.Reader, a store.Action) (store.Backup, int, error) {
	ctx := r.Context()
	dev, err := s.Store.Device(ctx, a.MAC)
	if err != nil {
		return store.Backup{}, 0, fmt.Errorf("backup: look up device: %w", err)
	}
	inZstd := strings.EqualFold(r.Header.Get("Content-Encoding"), "zstd") ||
		strings.EqualFold(r.Header.Get("Content-Type"), "application/zstd")
	compressed := inZstd || s.CompressBackups
	serial := dev.Serial
	if serial == "" {
		serial = "noserial"
	}
	name := fmt.Sprintf("%s-%s-a%s-%s.img", strings.ReplaceAll(a.MAC, ":", "-"), serial, a.ID, time.Now().UTC().Format("20060102T150405Z"))
	if compressed {
		name += ".zst"
	}
	if err := os.MkdirAll(s.backupDir(), 0o750); err != nil {
		return store.Backup{}, http.StatusInsufficientStorage, fmt.Errorf("backup: create backup dir: %w", err)
	}
	f, err := atomicfile.Create(filepath.Join(s.backupDir(), name), 0o600)
	if err != nil {
		return store.Backup{}, writeCode(err), fmt.Errorf("backup: %w", err)
	}
	defer f.Abort()

	var total int64
	if r.ContentLength > 0 {
		total = r.ContentLength
	}
	var report func(int64, float64)
	if !strings.HasPrefix(r.UserAgent(), contract.AgentUserAgent) {
		report = func(n int64, rate float64) { s.queueProgress(a, "upload", n, total, rate) }
	}
	m := newMeter(nil, report, s.metrics.bytesReceived.Add)
	body = io.TeeReader(body, meterSink{m})

	rawSHA, storedSHA := sha256.New(), sha256.New()
	rawN, storedN := &countWriter{}, &countWriter{}
	rawLimit, storedLimit := s.backupLimits(dev)
	rawCap := &capWriter{limit: rawLimit, err: errTooLarge}
	storedCap := &capWriter{limit: storedLimit, err: errNoRoom}
	buf := make([]byte, 1<<20)
	switch {
	case inZstd:
		// Store as received; decode alongside to learn the raw hash and
		// size (and to refuse a stream that is not zstd). Decoding stops at
		// the eMMC size: a small zstd bomb never costs more than that.
		pr, pw := io.Pipe()
		done := make(chan error, 1)
		go func() { done <- decodeInto(pr, io.MultiWriter(rawCap, rawSHA, rawN)) }()
		_, err = copyUpload(io.MultiWriter(storedCap, f, storedSHA, storedN, pw), body, buf)
		pw.CloseWithError(err)
		if derr := <-done; err == nil && derr != nil {
			if errors.Is(derr, errTooLarge) {
				return store.Backup{}, http.StatusRequestEntityTooLarge, fmt.Errorf("backup: %w", derr)
			}
			return store.Backup{}, http.StatusBadRequest, fmt.Errorf("backup: upload is not a valid zstd stream: %w", derr)
		}
	case compressed:
		enc, eerr := zstd.NewWriter(io.MultiWriter(storedCap, f, storedSHA, storedN), zstd.WithEncoderLevel(zstd.SpeedDefault))
		if eerr != nil {
			return store.Backup{}, 0, fmt.Errorf("backup: zstd: %w", eerr)
		}
		_, err = copyUpload(io.MultiWriter(rawCap, enc, rawSHA, rawN), body, buf)
		if cerr := enc.Close(); err == nil && cerr != nil {
			err = &uploadError{err: cerr}
		}
	default:
		_, err = copyUpload(io.MultiWriter(rawCap, storedCap, f, rawSHA, rawN), body, buf)
		storedSHA, storedN = nil, rawN
	}
	if err != nil {
		var ue *uploadError
		if errors.As(err, &ue) && ue.read {
			return store.Backup{}, http.StatusBadRequest, fmt.Errorf("backup upload cut after %d bytes: %w", m.n, ue.err)
		}
		if errors.Is(err, errTooLarge) || errors.Is(err, errNoRoom) {
			return store.Backup{}, limitCode(err), fmt.Errorf("backup refused after %d bytes: %w", m.n, err)
		}
		return store.Backup{}, writeCode(err), writeFailure(err, m.n)
	}
	if rawN.n == 0 {
		return store.Backup{}, http.StatusBadRequest, errors.New("backup upload is empty")
	}
	raw := hex.EncodeToString(rawSHA.Sum(nil))
	want := r.Header.Get(contract.HeaderRawSHA256)
	if want == "" {
		want = r.Trailer.Get(contract.HeaderRawSHA256) // the agent knows it only at the end
	}
	if want != "" && !strings.EqualFold(want, raw) {
		return store.Backup{}, http.StatusBadRequest, fmt.Errorf("backup: device says raw sha256 %s, received %s", strings.ToLower(want), raw)
	}
	stored := raw
	if storedSHA != nil {
		stored = hexSum(storedSHA)
	}
	if err := f.Commit(); err != nil {
		return store.Backup{}, writeCode(err), writeFailure(err, m.n)
	}
	b, err := s.Store.AddBackup(ctx, a.ID, store.Backup{
		Backup: contract.Backup{MAC: a.MAC, Serial: dev.Serial, Size: rawN.n, StoredSize: storedN.n, Compressed: compressed, SHA256: raw},
		File:   name, StoredSHA256: stored,
	})
	if err != nil {
		os.Remove(filepath.Join(s.backupDir(), name))
		return store.Backup{}, 0, fmt.Errorf("backup: record: %w", err)
	}
	return b, 0, nil
}

type meterSink struct{ m *meter }

func (s meterSink) Write(p []byte) (int, error) { s.m.add(len(p)); return len(p), nil }

func hexSum(h hash.Hash) string { return hex.EncodeToString(h.Sum(nil)) }

func decodeInto(r io.Reader, w io.Writer) error {
	dec, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1))
	if err != nil {
		io.Copy(io.Discard, r)
		return err
	}
	defer dec.Close()
	if _, err := io.Copy(w, dec); err != nil {
		io.Copy(io.Discard, r) // keep the writer side from blocking
		return err
	}
	_, err = io.Copy(io.Discard, r)
	return err
}

// writeFailure words a local write failure for the technician and the
// device without server paths.
func writeFailure(err error, n int64) error {
	if writeCode(err) == http.StatusInsufficientStorage {
		return fmt.Errorf("backup disk full after %d bytes: no space left on the server's backup disk", n)
	}
	var pe *os.PathError
	if errors.As(err, &pe) {
		return fmt.Errorf("backup: writing failed after %d bytes: %s: %v", n, pe.Op, pe.Err)
	}
	return fmt.Errorf("backup: writing failed after %d bytes: %v", n, err)
}

// writeCode maps a local write failure to a status: 507 for a full disk.
func writeCode(err error) int {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return http.StatusInsufficientStorage
	}
	return http.StatusInternalServerError
}

// freeBytes is the space an unprivileged writer has left under path (or
// its nearest existing parent).
func freeBytes(path string) (int64, error) {
	for {
		var st syscall.Statfs_t
		err := syscall.Statfs(path, &st)
		if err == nil {
			return int64(st.Bavail) * int64(st.Bsize), nil
		}
		parent := filepath.Dir(path)
		if !errors.Is(err, syscall.ENOENT) || parent == path {
			return 0, err
		}
		path = parent
	}
}
