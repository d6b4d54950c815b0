package firmware

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/cm4bench/cm4bench/internal/atomicfile"
)

// Errors wrapped by the cache.
var (
	ErrNotCached    = errors.New("not in the firmware cache")
	ErrChecksum     = errors.New("sha256 mismatch")
	ErrSize         = errors.New("size mismatch")
	ErrLockMismatch = errors.New("content differs from the lock file")
)

// maxUnpinned caps downloads whose size neither the catalogue nor the lock
// file knows yet.
const maxUnpinned = 512 << 20

// Cache is a content-addressed store of verified catalogue files:
// Dir/sha256/<hex> holds the blobs, Dir/lock.json pins the unpinned
// (netboot) files, Dir/sets/ holds materialised set directories.
type Cache struct {
	// Dir is the cache root. "" means DefaultDir().
	Dir string
	// Catalogue lists the files. nil means Default().
	Catalogue *Catalogue
	// Client downloads files. nil means a plain http.Client.
	Client *http.Client
	// BaseURL, when set, replaces the scheme and host of every catalogue
	// URL (a local mirror, or a test server): with BaseURL
	// "http://127.0.0.1:8080", https://raw.githubusercontent.com/a/b is
	// fetched from http://127.0.0.1:8080/a/b.
	BaseURL string
	// Offline forbids downloads: a file that is not cached is an error
	// wrapping ErrNotCached.
	Offline bool
	// Progress, when set, is called before each download with the file
	// and its expected size (-1 if unknown); every downloaded byte is
	// written to the writer it returns (a progress bar). It may return nil.
	Progress func(f File, size int64) io.Writer
	// Logger receives fetch and import events. nil means silent.
	Logger *slog.Logger

	mu sync.Mutex // serialises lock-file updates
}

// DefaultDir is the per-user cache: os.UserCacheDir()/cm4bench/firmware.
func DefaultDir() (string, error) {
	d, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("firmware: user cache dir: %w", err)
	}
	return filepath.Join(d, "cm4bench", "firmware"), nil
}

func (c *Cache) root() (string, error) {
	if c.Dir != "" {
		return c.Dir, nil
	}
	return DefaultDir()
}

func (c *Cache) catalogue() (*Catalogue, error) {
	if c.Catalogue != nil {
		return c.Catalogue, nil
	}
	return Default()
}

func (c *Cache) log() *slog.Logger {
	if c.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return c.Logger
}

// BlobPath is where the blob with the given sha256 lives.
func (c *Cache) BlobPath(sum string) (string, error) {
	root, err := c.root()
	if err != nil {
		return "", err
	}
	if !isSHA256(sum) {
		return "", fmt.Errorf("firmware: %q is not a sha256", sum)
	}
	return filepath.Join(root, "sha256", sum), nil
}

// expect returns the size and sha256 a file must have: from the catalogue
// when pinned, else from the lock file. ok is false for an unpinned file
// that was never fetched.
func (c *Cache) expect(f File) (size int64, sum string, ok bool, err error) {
	if f.Pinned() {
		return f.Size, f.SHA256, true, nil
	}
	lock, err := c.readLock()
	if err != nil {
		return 0, "", false, err
	}
	if e, found := lock.Files[f.URL]; found {
		return e.Size, e.SHA256, true, nil
	}
	return 0, "", false, nil
}

// Lookup returns the path of a cached, verified copy of f without
// downloading. A missing file gives an error wrapping ErrNotCached; a
// cached blob that no longer verifies is removed and reported.
func (c *Cache) Lookup(f File) (string, error) {
	size, sum, ok, err := c.expect(f)
	if err != nil {
		return "", err
	}
	if !ok {
		return "", fmt.Errorf("firmware: %s: never fetched, so not pinned yet: %w", f.ID, ErrNotCached)
	}
	p, err := c.BlobPath(sum)
	if err != nil {
		return "", err
	}
	if err := verifyFile(p, size, sum); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("firmware: %s: %w", f.ID, ErrNotCached)
		}
		os.Remove(p)
		return "", fmt.Errorf("firmware: cached %s was damaged and is removed: %w", f.ID, err)
	}
	return p, nil
}

// Path returns the path of a verified copy of f, downloading it first when
// it is not cached (unless Offline).
func (c *Cache) Path(ctx context.Context, f File) (string, error) {
	p, err := c.Lookup(f)
	if err == nil || !errors.Is(err, ErrNotCached) {
		return p, err
	}
	if c.Offline {
		return "", fmt.Errorf("%w (offline: import it with --from DIR)", err)
	}
	return c.Fetch(ctx, f)
}

// FileSHA256 returns the sha256 (hex) and size of the file at p, streamed:
// how the cache, the TFTP root preparation and doctor compare a file with
// the catalogue.
func FileSHA256(p string) (sum string, size int64, err error) {
	fh, err := os.Open(p)
	if err != nil {
		return "", 0, err
	}
	defer fh.Close()
	h := sha256.New()
	n, err := io.Copy(h, fh)
	if err != nil {
		return "", n, fmt.Errorf("read %s: %w", p, err)
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// verifyFile checks a file's size and sha256.
func verifyFile(p string, size int64, sum string) error {
	got, n, err := FileSHA256(p)
	if err != nil {
		return err
	}
	if n != size {
		return fmt.Errorf("%s is %d bytes, want %d: %w", p, n, size, ErrSize)
	}
	if got != sum {
		return fmt.Errorf("%s has sha256 %s, want %s: %w", p, got, sum, ErrChecksum)
	}
	return nil
}

// downloadURL applies BaseURL.
func (c *Cache) downloadURL(f File) (string, error) {
	if c.BaseURL == "" {
		return f.URL, nil
	}
	u, err := url.Parse(f.URL)
	if err != nil {
		return "", fmt.Errorf("firmware: %s: bad url: %w", f.ID, err)
	}
	return strings.TrimSuffix(c.BaseURL, "/") + u.EscapedPath(), nil
}

// Fetch downloads f, verifies it and stores it under its hash. For a file
// the catalogue does not pin, the first fetch records its size and sha256
// in the lock file; later fetches must match.
func (c *Cache) Fetch(ctx context.Context, f File) (string, error) {
	size, sum, known, err := c.expect(f)
	if err != nil {
		return "", err
	}
	src, err := c.downloadURL(f)
	if err != nil {
		return "", err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, src, nil)
	if err != nil {
		return "", fmt.Errorf("firmware: fetch %s: %w", f.ID, err)
	}
	client := c.Client
	if client == nil {
		client = &http.Client{}
	}
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		return "", fmt.Errorf("firmware: fetch %s: %w", f.ID, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("firmware: fetch %s from %s: HTTP %s", f.ID, src, resp.Status)
	}
	limit := int64(maxUnpinned)
	want := int64(-1)
	if known {
		limit, want = size, size
		if resp.ContentLength >= 0 && resp.ContentLength != size {
			return "", fmt.Errorf("firmware: fetch %s: server announces %d bytes, want %d: %w", f.ID, resp.ContentLength, size, ErrSize)
		}
	}
	var body io.Reader = resp.Body
	if c.Progress != nil {
		if w := c.Progress(f, want); w != nil {
			body = io.TeeReader(body, w)
		}
	}
	tmp, gotSum, n, err := c.storeTemp(body, limit)
	if err != nil {
		return "", fmt.Errorf("firmware: fetch %s: %w", f.ID, err)
	}
	defer os.Remove(tmp) // no-op once renamed
	switch {
	case n > limit:
		return "", fmt.Errorf("firmware: fetch %s: download is longer than %d bytes: %w", f.ID, limit, ErrSize)
	case known && n != size:
		return "", fmt.Errorf("firmware: fetch %s: truncated download: got %d of %d bytes: %w", f.ID, n, size, ErrSize)
	case known && gotSum != sum && f.Pinned():
		return "", fmt.Errorf("firmware: fetch %s: got sha256 %s, the catalogue pins %s: %w", f.ID, gotSum, sum, ErrChecksum)
	case known && gotSum != sum:
		return "", fmt.Errorf("firmware: fetch %s: got sha256 %s, the lock file pinned %s on first fetch: %w", f.ID, gotSum, sum, ErrLockMismatch)
	case resp.ContentLength >= 0 && n != resp.ContentLength:
		return "", fmt.Errorf("firmware: fetch %s: truncated download: got %d of %d bytes: %w", f.ID, n, resp.ContentLength, ErrSize)
	}
	if !known {
		if err := c.pin(f, n, gotSum); err != nil {
			return "", err
		}
	}
	p, err := c.commitBlob(tmp, gotSum)
	if err != nil {
		return "", err
	}
	c.log().Info("firmware fetched", "file", f.ID, "bytes", n, "sha256", gotSum, "elapsed", time.Since(start))
	return p, nil
}

// storeTemp copies up to limit+1 bytes of r into a temporary file in the
// cache, returning its path, sha256 and length. The caller removes it.
func (c *Cache) storeTemp(r io.Reader, limit int64) (path, sum string, n int64, err error) {
	root, err := c.root()
	if err != nil {
		return "", "", 0, err
	}
	tmpDir := filepath.Join(root, "tmp")
	if err := os.MkdirAll(tmpDir, 0o755); err != nil {
		return "", "", 0, fmt.Errorf("create cache: %w", err)
	}
	fh, err := os.CreateTemp(tmpDir, "download-*")
	if err != nil {
		return "", "", 0, fmt.Errorf("create temp file: %w", err)
	}
	h := sha256.New()
	n, err = io.Copy(io.MultiWriter(fh, h), io.LimitReader(r, limit+1))
	if err == nil {
		err = fh.Sync()
	}
	if cerr := fh.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(fh.Name())
		return "", "", 0, fmt.Errorf("download: %w", err)
	}
	return fh.Name(), hex.EncodeToString(h.Sum(nil)), n, nil
}

// commitBlob gives a verified temporary file its hash name.
func (c *Cache) commitBlob(tmp, sum string) (string, error) {
	p, err := c.BlobPath(sum)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return "", fmt.Errorf("firmware: create cache: %w", err)
	}
	if err := os.Chmod(tmp, 0o444); err != nil {
		return "", fmt.Errorf("firmware: chmod: %w", err)
	}
	if err := os.Rename(tmp, p); err != nil {
		return "", fmt.Errorf("firmware: store blob: %w", err)
	}
	if d, err := os.Open(filepath.Dir(p)); err == nil {
		d.Sync()
		d.Close()
	}
	return p, nil
}

// lockFile is Dir/lock.json: the first-fetch pins of unpinned files, keyed
// by URL.
type lockFile struct {
	Version int                  `json:"version"`
	Files   map[string]lockEntry `json:"files"`
}

type lockEntry struct {
	ID       string    `json:"id"`
	Size     int64     `json:"size"`
	SHA256   string    `json:"sha256"`
	PinnedAt time.Time `json:"pinned_at"`
}

func (c *Cache) lockPath() (string, error) {
	root, err := c.root()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, "lock.json"), nil
}

func (c *Cache) readLock() (lockFile, error) {
	lf := lockFile{Version: 1, Files: map[string]lockEntry{}}
	p, err := c.lockPath()
	if err != nil {
		return lf, err
	}
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return lf, nil
	}
	if err != nil {
		return lf, fmt.Errorf("firmware: read lock file: %w", err)
	}
	if err := json.Unmarshal(b, &lf); err != nil {
		return lf, fmt.Errorf("firmware: lock file %s is damaged (fix or delete it to re-pin): %w", p, err)
	}
	for u, e := range lf.Files {
		if !isSHA256(e.SHA256) || e.Size < 0 {
			return lf, fmt.Errorf("firmware: lock file %s: entry for %s is invalid", p, u)
		}
	}
	if lf.Files == nil {
		lf.Files = map[string]lockEntry{}
	}
	return lf, nil
}

// pin records a first fetch in the lock file. A concurrent pin of the same
// URL with other content is refused.
func (c *Cache) pin(f File, size int64, sum string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	lf, err := c.readLock()
	if err != nil {
		return err
	}
	if e, ok := lf.Files[f.URL]; ok {
		if e.SHA256 != sum || e.Size != size {
			return fmt.Errorf("firmware: %s: got sha256 %s, the lock file pinned %s: %w", f.ID, sum, e.SHA256, ErrLockMismatch)
		}
		return nil
	}
	lf.Files[f.URL] = lockEntry{ID: f.ID, Size: size, SHA256: sum, PinnedAt: time.Now().UTC()}
	b, err := json.MarshalIndent(lf, "", "  ")
	if err != nil {
		return err
	}
	p, err := c.lockPath()
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(p, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("firmware: write lock file: %w", err)
	}
	c.log().Info("firmware pinned on first fetch", "file", f.ID, "sha256", sum, "bytes", size)
	return nil
}

// Status is the cache state of one file.
type Status struct {
	File   File   `json:"file"`
	State  string `json:"state"` // "ok", "missing", "unpinned" (never fetched) or "damaged"
	Path   string `json:"path,omitempty"`
	Detail string `json:"detail,omitempty"`
}

// Verify re-hashes every cached file of the catalogue (or of the named
// sets) and reports each one. Damaged blobs are removed.
func (c *Cache) Verify(sets ...string) ([]Status, error) {
	files, err := c.selectFiles(sets)
	if err != nil {
		return nil, err
	}
	var out []Status
	for _, f := range files {
		st := Status{File: f}
		p, err := c.Lookup(f)
		switch {
		case err == nil:
			st.State, st.Path = "ok", p
		case errors.Is(err, ErrNotCached) && !f.Pinned():
			if _, _, ok, _ := c.expect(f); ok {
				st.State = "missing"
			} else {
				st.State = "unpinned"
			}
		case errors.Is(err, ErrNotCached):
			st.State = "missing"
		default:
			st.State, st.Detail = "damaged", err.Error()
		}
		out = append(out, st)
	}
	return out, nil
}

// selectFiles returns the files of the named sets (all files when none),
// sorted by ID, without duplicates.
func (c *Cache) selectFiles(sets []string) ([]File, error) {
	cat, err := c.catalogue()
	if err != nil {
		return nil, err
	}
	if len(sets) == 0 {
		return cat.Files(), nil
	}
	seen := map[string]File{}
	for _, s := range sets {
		sf, err := cat.SetFiles(s)
		if err != nil {
			return nil, err
		}
		for _, x := range sf {
			seen[x.File.ID] = x.File
		}
	}
	out := make([]File, 0, len(seen))
	for _, f := range seen {
		out = append(out, f)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// FetchAll makes every file of the named sets (all when none) available,
// downloading what is missing.
func (c *Cache) FetchAll(ctx context.Context, sets ...string) ([]Status, error) {
	files, err := c.selectFiles(sets)
	if err != nil {
		return nil, err
	}
	var out []Status
	for _, f := range files {
		p, err := c.Path(ctx, f)
		if err != nil {
			return out, err
		}
		out = append(out, Status{File: f, State: "ok", Path: p})
	}
	return out, nil
}

// Import copies into the cache every regular file under dir whose sha256
// is a catalogue pin (or a lock-file pin), whatever its name. Files that
// match nothing are skipped. It returns the files imported.
func (c *Cache) Import(dir string) ([]File, error) {
	cat, err := c.catalogue()
	if err != nil {
		return nil, err
	}
	lock, err := c.readLock()
	if err != nil {
		return nil, err
	}
	bySum := map[string][]File{}
	sizes := map[int64]bool{}
	for _, f := range cat.Files() {
		sum, size := f.SHA256, f.Size
		if !f.Pinned() {
			e, ok := lock.Files[f.URL]
			if !ok {
				continue // cannot be verified offline before its first fetch
			}
			sum, size = e.SHA256, e.Size
		}
		bySum[sum] = append(bySum[sum], f)
		sizes[size] = true
	}
	var imported []File
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() && d.Type()&fs.ModeSymlink == 0 {
			return nil
		}
		fi, err := os.Stat(p) // follows symlinks: upstream checkouts are made of them
		if err != nil || !fi.Mode().IsRegular() || !sizes[fi.Size()] {
			return nil
		}
		fh, err := os.Open(p)
		if err != nil {
			return fmt.Errorf("firmware: import %s: %w", p, err)
		}
		tmp, sum, n, err := c.storeTemp(fh, fi.Size())
		fh.Close()
		if err != nil {
			return fmt.Errorf("firmware: import %s: %w", p, err)
		}
		defer os.Remove(tmp)
		files, ok := bySum[sum]
		if !ok || n != fi.Size() {
			return nil
		}
		if _, err := c.commitBlob(tmp, sum); err != nil {
			return err
		}
		for _, f := range files {
			c.log().Info("firmware imported", "file", f.ID, "from", p, "sha256", sum)
			imported = append(imported, f)
		}
		return nil
	})
	if err != nil {
		return imported, fmt.Errorf("firmware: import from %s: %w", dir, err)
	}
	return imported, nil
}
