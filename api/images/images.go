// Package images is the bench's image library: the golden default image
// (--image FILE) plus images uploaded into <data>/images, in raw .img,
// .img.gz, .img.xz or .img.zst form. It knows each image's uncompressed
// size and sha256, computed once and cached (keyed by path, size and
// mtime) through a HashCache, and opens any of them as a raw stream.
//
//	lib := &images.Library{Dir: filepath.Join(data, "images"), Default: "/srv/golden.img.zst", Cache: st}
//	e, err := lib.Info(ctx, "golden.img.zst") // hashes on first use, then cached
//	rc, err := images.Decompress(f, e.Format)  // raw bytes whatever the stored form
package images

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/cm4bench/cm4bench/internal/atomicfile"
	"github.com/cm4bench/cm4bench/internal/contract"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// Stored formats.
const (
	FormatRaw  = "raw"
	FormatGzip = "gz"
	FormatXZ   = "xz"
	FormatZstd = "zst"
)

// Errors callers test with errors.Is.
var (
	ErrNotFound  = errors.New("no such image")
	ErrBadName   = errors.New("bad image name")
	ErrExists    = errors.New("image already exists")
	ErrIsDefault = errors.New("the server's --image file cannot be replaced or deleted through the library")
)

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$`)

// FormatOf returns the stored format implied by an image file name:
// .img raw, .img.gz, .img.xz or .img.zst. Any other name is an error.
func FormatOf(name string) (string, error) {
	switch {
	case strings.HasSuffix(name, ".img"):
		return FormatRaw, nil
	case strings.HasSuffix(name, ".img.gz"):
		return FormatGzip, nil
	case strings.HasSuffix(name, ".img.xz"):
		return FormatXZ, nil
	case strings.HasSuffix(name, ".img.zst"):
		return FormatZstd, nil
	}
	return "", fmt.Errorf("%w %q: want a name ending in .img, .img.gz, .img.xz or .img.zst", ErrBadName, name)
}

// CheckName validates a library image name: a plain file name (no path)
// of letters, digits and ._+- with a known image extension.
func CheckName(name string) error {
	if !nameRE.MatchString(name) || strings.Contains(name, "..") {
		return fmt.Errorf("%w %q: use letters, digits and ._+- only, no path", ErrBadName, name)
	}
	_, err := FormatOf(name)
	return err
}

// Decompress returns the raw bytes of a stream stored in format.
func Decompress(r io.Reader, format string) (io.ReadCloser, error) {
	switch format {
	case FormatRaw:
		return io.NopCloser(r), nil
	case FormatGzip:
		zr, err := gzip.NewReader(r)
		if err != nil {
			return nil, fmt.Errorf("images: gzip header: %w", err)
		}
		return zr, nil
	case FormatXZ:
		zr, err := xz.NewReader(r)
		if err != nil {
			return nil, fmt.Errorf("images: xz header: %w", err)
		}
		return io.NopCloser(zr), nil
	case FormatZstd:
		zr, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true))
		if err != nil {
			return nil, fmt.Errorf("images: zstd: %w", err)
		}
		return zr.IOReadCloser(), nil
	}
	return nil, fmt.Errorf("images: unknown format %q", format)
}

// HashCache keeps computed hashes across restarts (the store implements it).
type HashCache interface {
	ImageHash(ctx context.Context, path string, size int64, mtime time.Time) (rawSize int64, sha string, ok bool)
	SaveImageHash(ctx context.Context, path string, size int64, mtime time.Time, rawSize int64, sha string) error
}

// Entry is an image with where it lives.
type Entry struct {
	contract.Image
	Path string
}

// Library is the set of deployable images. The zero value has no images;
// set the fields before first use and do not change them afterwards.
type Library struct {
	// Dir holds uploaded images (created on demand). Empty = no library.
	Dir string
	// Default is the path of the golden default image; empty = none.
	Default string
	// Cache keeps hashes across restarts; nil = in memory only.
	Cache HashCache
	// Logger receives hashing progress; nil = silent.
	Logger *slog.Logger

	mu       sync.Mutex
	inflight map[string]*hashCall
	mem      map[string]memHash
}

type memHash struct {
	size, rawSize int64
	mtime         time.Time
	sha           string
}

type hashCall struct {
	done    chan struct{}
	rawSize int64
	sha     string
	err     error
}

// DefaultName is the name of the default image, or "".
func (l *Library) DefaultName() string {
	if l.Default == "" {
		return ""
	}
	return filepath.Base(l.Default)
}

func (l *Library) path(name string) (string, bool, error) {
	if l.Default != "" && name == filepath.Base(l.Default) {
		return l.Default, true, nil
	}
	if err := CheckName(name); err != nil {
		return "", false, err
	}
	if l.Dir == "" {
		return "", false, fmt.Errorf("images: %q: %w", name, ErrNotFound)
	}
	return filepath.Join(l.Dir, name), false, nil
}

// Stat returns what is known about an image without hashing it: SHA256
// and Size are empty/zero until the hash has been computed.
func (l *Library) Stat(ctx context.Context, name string) (Entry, error) {
	p, def, err := l.path(name)
	if err != nil {
		return Entry{}, err
	}
	fi, err := os.Stat(p)
	if errors.Is(err, os.ErrNotExist) || (err == nil && !fi.Mode().IsRegular()) {
		return Entry{}, fmt.Errorf("images: %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return Entry{}, fmt.Errorf("images: stat %q: %w", name, err)
	}
	format, err := FormatOf(p)
	if err != nil {
		return Entry{}, err
	}
	e := Entry{Path: p, Image: contract.Image{Name: name, Format: format, CompressedSize: fi.Size(), Golden: def, Modified: fi.ModTime().UTC()}}
	if raw, sha, ok := l.cached(ctx, p, fi.Size(), fi.ModTime()); ok {
		e.Size, e.SHA256 = raw, sha
	} else if format == FormatRaw {
		e.Size = fi.Size() // a raw image's size needs no hashing
	}
	return e, nil
}

func (l *Library) cached(ctx context.Context, p string, size int64, mtime time.Time) (int64, string, bool) {
	l.mu.Lock()
	m, ok := l.mem[p]
	l.mu.Unlock()
	if ok && m.size == size && m.mtime.Equal(mtime) {
		return m.rawSize, m.sha, true
	}
	if l.Cache != nil {
		if raw, sha, ok := l.Cache.ImageHash(ctx, p, size, mtime); ok {
			l.remember(p, size, mtime, raw, sha)
			return raw, sha, true
		}
	}
	return 0, "", false
}

func (l *Library) remember(p string, size int64, mtime time.Time, raw int64, sha string) {
	l.mu.Lock()
	if l.mem == nil {
		l.mem = map[string]memHash{}
	}
	l.mem[p] = memHash{size: size, mtime: mtime, rawSize: raw, sha: sha}
	l.mu.Unlock()
}

// Info returns an image with its uncompressed size and sha256, computing
// and caching them on first use. Concurrent callers share one computation.
func (l *Library) Info(ctx context.Context, name string) (Entry, error) {
	e, err := l.Stat(ctx, name)
	if err != nil || e.SHA256 != "" {
		return e, err
	}
	l.mu.Lock()
	if l.inflight == nil {
		l.inflight = map[string]*hashCall{}
	}
	c, ok := l.inflight[e.Path]
	if !ok {
		c = &hashCall{done: make(chan struct{})}
		l.inflight[e.Path] = c
		go l.hash(e, c)
	}
	l.mu.Unlock()
	select {
	case <-c.done:
	case <-ctx.Done():
		return e, fmt.Errorf("images: wait for hash of %q: %w", name, ctx.Err())
	}
	if c.err != nil {
		return e, c.err
	}
	e.Size, e.SHA256 = c.rawSize, c.sha
	return e, nil
}

// hash runs detached from any one request so that a cancelled caller does
// not waste the work for the next one.
func (l *Library) hash(e Entry, c *hashCall) {
	defer func() {
		l.mu.Lock()
		delete(l.inflight, e.Path)
		l.mu.Unlock()
		close(c.done)
	}()
	start := time.Now()
	if l.Logger != nil {
		l.Logger.Info("hashing image", "image", e.Name, "format", e.Format, "bytes", e.CompressedSize)
	}
	f, err := os.Open(e.Path)
	if err != nil {
		c.err = fmt.Errorf("images: open %q: %w", e.Name, err)
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		c.err = fmt.Errorf("images: stat %q: %w", e.Name, err)
		return
	}
	rc, err := Decompress(f, e.Format)
	if err != nil {
		c.err = fmt.Errorf("images: %q: %w", e.Name, err)
		return
	}
	defer rc.Close()
	h := sha256.New()
	n, err := io.Copy(h, rc)
	if err != nil {
		c.err = fmt.Errorf("images: read %q (%s) at raw byte %d: %w", e.Name, e.Format, n, err)
		return
	}
	c.rawSize, c.sha = n, hex.EncodeToString(h.Sum(nil))
	l.remember(e.Path, fi.Size(), fi.ModTime(), n, c.sha)
	if l.Cache != nil {
		if err := l.Cache.SaveImageHash(context.Background(), e.Path, fi.Size(), fi.ModTime(), n, c.sha); err != nil && l.Logger != nil {
			l.Logger.Warn("caching image hash", "image", e.Name, "err", err)
		}
	}
	if l.Logger != nil {
		l.Logger.Info("hashed image", "image", e.Name, "raw_bytes", n, "sha256", c.sha, "seconds", time.Since(start).Seconds())
	}
}

// List returns every image (default first, then the library by name)
// without waiting for hashes; images still being hashed have an empty
// SHA256.
func (l *Library) List(ctx context.Context) ([]contract.Image, error) {
	out := []contract.Image{}
	if l.Default != "" {
		e, err := l.Stat(ctx, l.DefaultName())
		switch {
		case errors.Is(err, ErrNotFound):
			// Gone from disk while running: deploys of it fail with the
			// reason; the list shows what can be deployed.
			if l.Logger != nil {
				l.Logger.Warn("the default image is missing", "path", l.Default)
			}
		case err != nil:
			return nil, fmt.Errorf("images: default image %s: %w", l.Default, err)
		default:
			out = append(out, e.Image)
		}
	}
	if l.Dir == "" {
		return out, nil
	}
	des, err := os.ReadDir(l.Dir)
	if errors.Is(err, os.ErrNotExist) {
		return out, nil
	}
	if err != nil {
		return nil, fmt.Errorf("images: read library: %w", err)
	}
	names := []string{}
	for _, de := range des {
		if de.Type().IsRegular() && CheckName(de.Name()) == nil && de.Name() != l.DefaultName() {
			names = append(names, de.Name())
		}
	}
	sort.Strings(names)
	for _, n := range names {
		e, err := l.Stat(ctx, n)
		if err != nil {
			continue // removed meanwhile
		}
		out = append(out, e.Image)
	}
	return out, nil
}

// Warm hashes every image not yet hashed, one at a time, so the first
// deploy does not wait. It returns when done or when ctx ends.
func (l *Library) Warm(ctx context.Context) {
	imgs, err := l.List(ctx)
	if err != nil {
		if l.Logger != nil {
			l.Logger.Warn("listing images", "err", err)
		}
		return
	}
	for _, im := range imgs {
		if im.SHA256 == "" {
			if _, err := l.Info(ctx, im.Name); err != nil && l.Logger != nil && ctx.Err() == nil {
				l.Logger.Warn("hashing image", "image", im.Name, "err", err)
			}
		}
	}
}

// Add stores an uploaded image under name, hashing it while it streams in.
// The file appears only when complete and valid: a cut upload or a corrupt
// compressed stream leaves nothing behind.
func (l *Library) Add(ctx context.Context, name string, r io.Reader) (contract.Image, error) {
	if err := CheckName(name); err != nil {
		return contract.Image{}, err
	}
	if name == l.DefaultName() {
		return contract.Image{}, fmt.Errorf("images: %q: %w", name, ErrIsDefault)
	}
	if l.Dir == "" {
		return contract.Image{}, errors.New("images: no library directory configured")
	}
	if err := os.MkdirAll(l.Dir, 0o750); err != nil {
		return contract.Image{}, fmt.Errorf("images: create library dir: %w", err)
	}
	dst := filepath.Join(l.Dir, name)
	if _, err := os.Lstat(dst); err == nil {
		return contract.Image{}, fmt.Errorf("images: %q: %w (delete it first)", name, ErrExists)
	}
	format, _ := FormatOf(name)
	f, err := atomicfile.Create(dst, 0o644)
	if err != nil {
		return contract.Image{}, fmt.Errorf("images: store %q: %w", name, err)
	}
	defer f.Abort()
	// Decode the upload as it is written, so a stream that is not the
	// format its name says is refused.
	pr, pw := io.Pipe()
	type res struct {
		n   int64
		sha string
		err error
	}
	done := make(chan res, 1)
	go func() {
		rc, err := Decompress(pr, format)
		if err != nil {
			pr.CloseWithError(err)
			done <- res{err: err}
			return
		}
		h := sha256.New()
		n, err := io.Copy(h, rc)
		rc.Close()
		if err == nil {
			_, err = io.Copy(io.Discard, pr) // trailing bytes after a compressed stream
		}
		pr.CloseWithError(err)
		done <- res{n, hex.EncodeToString(h.Sum(nil)), err}
	}()
	src, sink := &readErr{r: r}, &writeErr{w: f}
	stored, err := io.Copy(io.MultiWriter(sink, pw), src)
	pw.CloseWithError(err)
	d := <-done
	switch {
	case src.err != nil:
		return contract.Image{}, fmt.Errorf("images: upload %q cut after %d bytes: %w", name, stored, src.err)
	case sink.err != nil:
		return contract.Image{}, fmt.Errorf("images: store %q after %d bytes: %w", name, stored, sink.err)
	}
	if d.err != nil {
		return contract.Image{}, fmt.Errorf("images: upload %q is not a valid %s image: %w", name, format, d.err)
	}
	// Two uploads of one name may race: the name is created exclusively, and
	// the loser gets ErrExists (409) with nothing of it left.
	if err := f.CommitNew(); errors.Is(err, fs.ErrExist) {
		return contract.Image{}, fmt.Errorf("images: %q: %w (another upload of this name finished first)", name, ErrExists)
	} else if err != nil {
		return contract.Image{}, fmt.Errorf("images: store %q: %w", name, err)
	}
	fi, err := os.Stat(dst)
	if err != nil {
		return contract.Image{}, fmt.Errorf("images: stat %q: %w", name, err)
	}
	l.remember(dst, fi.Size(), fi.ModTime(), d.n, d.sha)
	if l.Cache != nil {
		l.Cache.SaveImageHash(ctx, dst, fi.Size(), fi.ModTime(), d.n, d.sha)
	}
	return contract.Image{Name: name, Format: format, Size: d.n, CompressedSize: fi.Size(), SHA256: d.sha, Modified: fi.ModTime().UTC()}, nil
}

// writeErr remembers the error of the writer it wraps.
type writeErr struct {
	w   io.Writer
	err error
}

func (w *writeErr) Write(p []byte) (int, error) {
	n, err := w.w.Write(p)
	if err != nil {
		w.err = err
	}
	return n, err
}

// readErr remembers the error of the reader it wraps, to tell a cut
// upload from a failed write.
type readErr struct {
	r   io.Reader
	err error
}

func (r *readErr) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil && err != io.EOF {
		r.err = err
	}
	return n, err
}

// Remove deletes a library image. The default image cannot be removed.
func (l *Library) Remove(name string) error {
	if name == l.DefaultName() {
		return fmt.Errorf("images: %q: %w", name, ErrIsDefault)
	}
	p, _, err := l.path(name)
	if err != nil {
		return err
	}
	if err := os.Remove(p); errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("images: %q: %w", name, ErrNotFound)
	} else if err != nil {
		return fmt.Errorf("images: remove %q: %w", name, err)
	}
	return nil
}
