package images

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

type cacheKey struct {
	path  string
	size  int64
	mtime int64
}

type cacheVal struct {
	raw int64
	sha string
}

// memCache is a HashCache in memory (the store is the real one).
type memCache struct{ m map[cacheKey]cacheVal }

func (c *memCache) ImageHash(_ context.Context, p string, size int64, mtime time.Time) (int64, string, bool) {
	v, ok := c.m[cacheKey{p, size, mtime.UnixNano()}]
	return v.raw, v.sha, ok
}

func (c *memCache) SaveImageHash(_ context.Context, p string, size int64, mtime time.Time, raw int64, sha string) error {
	if c.m == nil {
		c.m = map[cacheKey]cacheVal{}
	}
	c.m[cacheKey{p, size, mtime.UnixNano()}] = cacheVal{raw, sha}
	return nil
}

func TestCheckName(t *testing.T) {
	for _, tt := range []struct {
		name string
		ok   bool
	}{
		{"golden.img", true}, {"a-b_c+1.img.zst", true}, {"x.img.gz", true}, {"x.img.xz", true},
		{"x.iso", false}, {"../x.img", false}, {"a/b.img", false}, {".hidden.img", false}, {"", false},
		{"x..img", false}, {strings.Repeat("a", 200) + ".img", false}, {"x.img\x00", false},
	} {
		if err := CheckName(tt.name); (err == nil) != tt.ok {
			t.Errorf("CheckName(%q) = %v, want ok=%v", tt.name, err, tt.ok)
		}
	}
}

func FuzzCheckName(f *testing.F) {
	for _, s := range []string{"golden.img", "../../etc/passwd.img", "a/b.img.zst", "x.img.gz", "..img"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		if CheckName(name) != nil {
			return
		}
		// An accepted name stays inside the library dir.
		p := filepath.Join("/lib", name)
		if filepath.Dir(p) != "/lib" || strings.ContainsAny(name, "/\\\x00") {
			t.Fatalf("CheckName accepted %q (-> %s)", name, p)
		}
		if _, err := FormatOf(name); err != nil {
			t.Fatalf("accepted %q without a format: %v", name, err)
		}
	})
}

// TestFormats hashes one image stored in every format (made by the real
// compressors) and checks the uncompressed size and sha256, and the cache.
func TestFormats(t *testing.T) {
	dir := t.TempDir()
	raw := make([]byte, 3<<20+17)
	rand.Read(raw[:1<<20])
	sum := sha256.Sum256(raw)
	want := hex.EncodeToString(sum[:])
	os.WriteFile(filepath.Join(dir, "a.img"), raw, 0o644)
	for _, c := range []struct{ tool, ext string }{{"gzip", ".gz"}, {"xz", ".xz"}, {"zstd", ".zst"}} {
		out, err := exec.Command(c.tool, "-c", filepath.Join(dir, "a.img")).Output()
		if err != nil {
			t.Fatalf("%s: %v (scripts/deps.sh installs it)", c.tool, err)
		}
		os.WriteFile(filepath.Join(dir, "a.img"+c.ext), out, 0o644)
	}
	cache := &memCache{}
	lib := &Library{Dir: dir, Cache: cache}
	ctx := context.Background()
	for _, n := range []string{"a.img", "a.img.gz", "a.img.xz", "a.img.zst"} {
		e, err := lib.Info(ctx, n)
		if err != nil || e.Size != int64(len(raw)) || e.SHA256 != want {
			t.Errorf("Info(%s) = %+v, %v; want size %d sha %s", n, e.Image, err, len(raw), want)
		}
		f, _ := os.Open(e.Path)
		rc, err := Decompress(f, e.Format)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		f.Close()
		if err != nil || !bytes.Equal(got, raw) {
			t.Errorf("Decompress(%s): %d bytes, %v", n, len(got), err)
		}
	}
	if len(cache.m) != 4 {
		t.Errorf("cache holds %d entries, want 4", len(cache.m))
	}
	// A fresh library (a restart) finds the hashes in the cache: Stat
	// already knows them.
	lib2 := &Library{Dir: dir, Cache: cache}
	if e, _ := lib2.Stat(ctx, "a.img.xz"); e.SHA256 != want {
		t.Errorf("hash not cached across libraries: %+v", e.Image)
	}
	// Changing the file invalidates the cached hash.
	os.WriteFile(filepath.Join(dir, "a.img"), raw[:100], 0o644)
	if e, _ := lib2.Stat(ctx, "a.img"); e.SHA256 != "" {
		t.Errorf("stale hash served for a changed file: %+v", e.Image)
	}
	imgs, err := lib.List(ctx)
	if err != nil || len(imgs) != 4 {
		t.Errorf("List = %+v, %v", imgs, err)
	}
}

func TestAdd(t *testing.T) {
	dir := t.TempDir()
	lib := &Library{Dir: filepath.Join(dir, "lib"), Default: filepath.Join(dir, "golden.img")}
	ctx := context.Background()
	raw := bytes.Repeat([]byte("cm4 "), 50000)
	zst, err := exec.Command("sh", "-c", "head -c 200000 /dev/zero | tr '\\0' x | zstd -c").Output()
	if err != nil {
		t.Fatal(err)
	}
	im, err := lib.Add(ctx, "u.img", bytes.NewReader(raw))
	sum := sha256.Sum256(raw)
	if err != nil || im.SHA256 != hex.EncodeToString(sum[:]) || im.Size != int64(len(raw)) {
		t.Fatalf("Add raw = %+v, %v", im, err)
	}
	if _, err := lib.Add(ctx, "u.img", bytes.NewReader(raw)); !errors.Is(err, ErrExists) {
		t.Errorf("Add over an existing image = %v", err)
	}
	if im, err := lib.Add(ctx, "z.img.zst", bytes.NewReader(zst)); err != nil || im.Size != 200000 {
		t.Errorf("Add zst = %+v, %v", im, err)
	}
	if _, err := lib.Add(ctx, "bad.img.zst", bytes.NewReader(raw)); err == nil {
		t.Error("Add accepted a .zst that is not zstd")
	}
	if _, err := lib.Add(ctx, "cut.img.gz", io.MultiReader(bytes.NewReader([]byte{0x1f, 0x8b}), errReader{})); err == nil {
		t.Error("Add accepted a cut upload")
	}
	if _, err := lib.Add(ctx, "golden.img", bytes.NewReader(raw)); !errors.Is(err, ErrIsDefault) {
		t.Errorf("Add over the default = %v", err)
	}
	des, _ := os.ReadDir(lib.Dir)
	if len(des) != 2 {
		var n []string
		for _, d := range des {
			n = append(n, d.Name())
		}
		t.Errorf("library holds %v, want only u.img and z.img.zst (no temp files, no refused uploads)", n)
	}
	if err := lib.Remove("u.img"); err != nil {
		t.Fatal(err)
	}
	if err := lib.Remove("u.img"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second Remove = %v", err)
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, io.ErrUnexpectedEOF }

// Security item 11: two uploads of one name at once: exactly one is
// stored, the other gets ErrExists, and the file is the winner's, whole.
func TestAddRaceOneName(t *testing.T) {
	l := &Library{Dir: t.TempDir()}
	a, b := bytes.Repeat([]byte("A"), 1<<20), bytes.Repeat([]byte("B"), 1<<20)
	ra, wa := io.Pipe()
	rb, wb := io.Pipe()
	errs := make(chan error, 2)
	go func() { _, err := l.Add(context.Background(), "x.img", ra); errs <- err }()
	go func() { _, err := l.Add(context.Background(), "x.img", rb); errs <- err }()
	wa.Write(a[:1000]) // both are streaming before either finishes
	wb.Write(b[:1000])
	wa.Write(a[1000:])
	wa.Close()
	wb.Write(b[1000:])
	wb.Close()
	e1, e2 := <-errs, <-errs
	if (e1 == nil) == (e2 == nil) {
		t.Fatalf("both or neither stored: %v, %v", e1, e2)
	}
	lost := e1
	if lost == nil {
		lost = e2
	}
	if !errors.Is(lost, ErrExists) {
		t.Errorf("loser's error %v, want ErrExists", lost)
	}
	got, _ := os.ReadFile(filepath.Join(l.Dir, "x.img"))
	if !bytes.Equal(got, a) && !bytes.Equal(got, b) {
		t.Error("the stored image is a mix or cut")
	}
	entries, _ := os.ReadDir(l.Dir)
	if len(entries) != 1 {
		t.Errorf("library holds %d files (temp files left?)", len(entries))
	}
}
