package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cm4bench/cm4bench/internal/contract"
)

// Source is a deploy stream from an HTTP URL that survives connection cuts:
// on a network error, a stall or a short body it asks again with
// "Range: bytes=N-" (and If-Range with the ETag) and carries on from byte N
// of the same representation, so nothing is downloaded or written twice.
type Source struct {
	URL    string
	Client *http.Client
	// AcceptZstd asks the server for the zstd-compressed stream.
	AcceptZstd bool
	// AcceptSparse asks for the sparse stream of a raw image
	// (internal/sparseimg).
	AcceptSparse bool
	// Stall is how long a read may wait for bytes before the connection is
	// dropped and resumed (0 = 30 s).
	Stall time.Duration
	// MaxResumes bounds the reconnects of one download (0 = 20).
	MaxResumes int
	// Log gets one line per resume (nil = silent).
	Logger *slog.Logger
	// UserAgent is sent with each request ("" = UserAgent("")).
	UserAgent string

	ctx      context.Context
	mu       sync.Mutex
	body     io.ReadCloser
	cancel   context.CancelFunc
	timer    *time.Timer
	off      int64 // bytes delivered
	total    int64 // full length of the representation, -1 unknown
	etag     string
	encoding string
	hdr      http.Header
	resumes  int
	started  bool
	aborted  atomic.Bool
}

// errAborted is returned by Read after Abort.
var errAborted = errors.New("download: aborted")

// Abort ends the download from another goroutine: a Read in progress
// returns at once, and no reconnect follows.
func (s *Source) Abort() {
	s.aborted.Store(true)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cancel != nil {
		s.cancel()
	}
}

// Open starts the download; it fails without retrying on an HTTP error
// status so that a refused token or a missing image is reported at once.
func (s *Source) Open(ctx context.Context) error {
	s.ctx = ctx
	s.total = -1
	if s.Client == nil {
		s.Client = http.DefaultClient
	}
	return s.connect()
}

// Announced is the uncompressed image size and sha256 the server sent with
// its first answer (contract.HeaderImageSize, contract.HeaderImageSHA256);
// 0 and "" when it sent none.
func (s *Source) Announced() (size int64, sha256 string) {
	if s.hdr == nil {
		return 0, ""
	}
	size, err := strconv.ParseInt(s.hdr.Get(contract.HeaderImageSize), 10, 64)
	if err != nil || size < 0 {
		size = 0
	}
	return size, s.hdr.Get(contract.HeaderImageSHA256)
}

// Resumes is the number of reconnects so far.
func (s *Source) Resumes() int { return s.resumes }

// Total is the length of the stream if the server said it, else -1.
func (s *Source) Total() int64 { return s.total }

// Encoding is the Content-Encoding the server answered with.
func (s *Source) Encoding() string { return s.encoding }

type statusError struct {
	code int
	msg  string
}

func (e *statusError) Error() string { return fmt.Sprintf("HTTP %d: %s", e.code, e.msg) }

func (s *Source) connect() error {
	ctx, cancel := context.WithCancel(s.ctx)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.URL, nil)
	if err != nil {
		cancel()
		return fmt.Errorf("download: %w", err)
	}
	ua := s.UserAgent
	if ua == "" {
		ua = UserAgent("")
	}
	req.Header.Set("User-Agent", ua)
	var codings []string
	if s.AcceptSparse {
		codings = append(codings, contract.AcceptSparse)
	}
	if s.AcceptZstd {
		codings = append(codings, contract.AcceptZstd)
	}
	if len(codings) == 0 {
		codings = append(codings, "identity")
	}
	req.Header.Set("Accept-Encoding", strings.Join(codings, ", "))
	if s.off > 0 {
		req.Header.Set("Range", "bytes="+strconv.FormatInt(s.off, 10)+"-")
		if s.etag != "" {
			req.Header.Set("If-Range", s.etag)
		}
	}
	resp, err := s.Client.Do(req)
	if err != nil {
		cancel()
		return fmt.Errorf("download: %w", err)
	}
	switch {
	case resp.StatusCode == http.StatusPartialContent && s.off > 0:
		start, total, ok := parseContentRange(resp.Header.Get("Content-Range"))
		if !ok || start != s.off {
			resp.Body.Close()
			cancel()
			return fmt.Errorf("download: resume at %d: server sent range %q", s.off, resp.Header.Get("Content-Range"))
		}
		if total >= 0 {
			s.total = total
		}
	case resp.StatusCode == http.StatusOK:
		if s.off > 0 {
			// The server ignored the range (or the entity changed): a changed
			// entity fails the hash check; an unchanged one is skipped ahead.
			if et := resp.Header.Get("ETag"); s.etag != "" && et != s.etag {
				resp.Body.Close()
				cancel()
				return fmt.Errorf("download: image changed during the download (ETag %s, was %s)", et, s.etag)
			}
			if _, err := io.CopyN(io.Discard, resp.Body, s.off); err != nil {
				resp.Body.Close()
				cancel()
				return fmt.Errorf("download: skip %d bytes after a resume without range: %w", s.off, err)
			}
		} else {
			s.total = resp.ContentLength
			s.etag = resp.Header.Get("ETag")
			s.encoding = resp.Header.Get("Content-Encoding")
			s.hdr = resp.Header.Clone()
		}
	default:
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		resp.Body.Close()
		cancel()
		return &statusError{resp.StatusCode, strings.TrimSpace(string(msg))}
	}
	stall := s.Stall
	if stall <= 0 {
		stall = 30 * time.Second
	}
	s.mu.Lock()
	s.body, s.cancel = resp.Body, cancel
	s.timer = time.AfterFunc(stall, cancel)
	s.mu.Unlock()
	s.started = true
	return nil
}

// Read reads the stream, reconnecting as needed.
func (s *Source) Read(p []byte) (int, error) {
	for {
		if s.body == nil {
			if err := s.reconnect(); err != nil {
				return 0, err
			}
		}
		n, err := s.body.Read(p)
		if n > 0 {
			s.off += int64(n)
			s.timer.Reset(s.stall())
			return n, nil
		}
		if err == nil {
			continue
		}
		if err == io.EOF && (s.total < 0 || s.off >= s.total) {
			return 0, io.EOF
		}
		if s.aborted.Load() {
			return 0, errAborted
		}
		if s.ctx.Err() != nil {
			return 0, s.ctx.Err()
		}
		// Cut, stall or short body: drop this connection and resume.
		if s.Logger != nil {
			s.Logger.Warn("download interrupted; resuming", "at", s.off, "total", s.total, "err", err)
		}
		s.drop()
	}
}

func (s *Source) stall() time.Duration {
	if s.Stall <= 0 {
		return 30 * time.Second
	}
	return s.Stall
}

func (s *Source) drop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.body != nil {
		s.timer.Stop()
		s.body.Close()
		s.cancel()
		s.body = nil
	}
}

func (s *Source) reconnect() error {
	max := s.MaxResumes
	if max <= 0 {
		max = 20
	}
	var last error
	for s.resumes < max && !s.aborted.Load() {
		s.resumes++
		delay := time.Duration(min(s.resumes, 5)) * 200 * time.Millisecond
		select {
		case <-time.After(delay):
		case <-s.ctx.Done():
			return s.ctx.Err()
		}
		err := s.connect()
		if err == nil {
			return nil
		}
		last = err
		var se *statusError
		if errors.As(err, &se) && se.code < 500 {
			return fmt.Errorf("download: resume at byte %d: %w", s.off, err)
		}
	}
	if s.aborted.Load() {
		return errAborted
	}
	return fmt.Errorf("download: gave up after %d resumes at byte %d: %w", s.resumes, s.off, last)
}

// Close ends the download.
func (s *Source) Close() error {
	s.drop()
	return nil
}

// parseContentRange parses "bytes START-END/TOTAL" (TOTAL may be "*").
func parseContentRange(v string) (start, total int64, ok bool) {
	v, found := strings.CutPrefix(v, "bytes ")
	if !found {
		return 0, 0, false
	}
	rng, tot, found := strings.Cut(v, "/")
	if !found {
		return 0, 0, false
	}
	a, _, found := strings.Cut(rng, "-")
	if !found {
		return 0, 0, false
	}
	start, err := strconv.ParseInt(a, 10, 64)
	if err != nil || start < 0 {
		return 0, 0, false
	}
	total = -1
	if tot != "*" {
		total, err = strconv.ParseInt(tot, 10, 64)
		if err != nil || total < 0 {
			return 0, 0, false
		}
	}
	return start, total, true
}
