package firmware

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// fwServer serves catalogue files from ../shared at their real URL paths,
// plus synthetic netboot files, with switchable faults.
type fwServer struct {
	*httptest.Server
	mu       sync.Mutex
	files    map[string][]byte // URL path -> content
	fault    map[string]string // URL path -> "corrupt", "truncate", "short-length", "404"
	requests map[string]int
}

func newFWServer(t *testing.T, cat *Catalogue) *fwServer {
	t.Helper()
	s := &fwServer{files: map[string][]byte{}, fault: map[string]string{}, requests: map[string]int{}}
	for _, f := range cat.Files() {
		u, _ := url.Parse(f.URL)
		if rel, ok := fixtures[f.ID]; ok {
			s.files[u.Path] = readShared(t, rel)
		} else if !f.Pinned() {
			s.files[u.Path] = []byte("synthetic " + f.ID + " v1\n")
		}
	}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.Close)
	return s
}

func (s *fwServer) serve(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	body, ok := s.files[r.URL.Path]
	fault := s.fault[r.URL.Path]
	s.requests[r.URL.Path]++
	s.mu.Unlock()
	if !ok || fault == "404" {
		http.NotFound(w, r)
		return
	}
	switch fault {
	case "corrupt":
		body = bytes.Clone(body)
		body[len(body)/2] ^= 0x01
	case "truncate": // no Content-Length, body cut short
		w.Header().Set("Content-Type", "application/octet-stream")
		w.(http.Flusher).Flush()
		w.Write(body[:len(body)-100])
		return
	case "cut": // announces the full length, sends less, drops the connection
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.Write(body[:len(body)/2])
		if hj, ok := w.(http.Hijacker); ok {
			conn, _, _ := hj.Hijack()
			conn.Close()
		}
		return
	case "long":
		body = append(bytes.Clone(body), "extra"...)
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.Write(body)
}

func (s *fwServer) set(f File, fault string) {
	u, _ := url.Parse(f.URL)
	s.mu.Lock()
	s.fault[u.Path] = fault
	s.mu.Unlock()
}

func (s *fwServer) setContent(f File, b []byte) {
	u, _ := url.Parse(f.URL)
	s.mu.Lock()
	s.files[u.Path] = b
	s.mu.Unlock()
}

func (s *fwServer) count(f File) int {
	u, _ := url.Parse(f.URL)
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requests[u.Path]
}

func testCache(t *testing.T) (*Cache, *fwServer, *Catalogue) {
	t.Helper()
	cat, err := Default()
	if err != nil {
		t.Fatal(err)
	}
	srv := newFWServer(t, cat)
	return &Cache{Dir: t.TempDir(), Catalogue: cat, BaseURL: srv.URL, Client: srv.Client()}, srv, cat
}

func mustFile(t *testing.T, cat *Catalogue, id string) File {
	t.Helper()
	f, err := cat.File(id)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// cacheBlobs lists what is stored under sha256/ and tmp/.
func cacheBlobs(t *testing.T, c *Cache) []string {
	t.Helper()
	var out []string
	for _, sub := range []string{"sha256", "tmp"} {
		es, err := os.ReadDir(filepath.Join(c.Dir, sub))
		if err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		for _, e := range es {
			out = append(out, sub+"/"+e.Name())
		}
	}
	return out
}

// TestCataloguePins checks the catalogue's pins against the real files we
// have: size and sha256 of every fixture.
func TestCataloguePins(t *testing.T) {
	cat, err := Default()
	if err != nil {
		t.Fatal(err)
	}
	for id, rel := range fixtures {
		f := mustFile(t, cat, id)
		b := readShared(t, rel)
		sum := sha256.Sum256(b)
		if int64(len(b)) != f.Size || hex.EncodeToString(sum[:]) != f.SHA256 {
			t.Errorf("%s: catalogue pins %d bytes %s, the real file is %d bytes %x", id, f.Size, f.SHA256, len(b), sum)
		}
		if !strings.HasPrefix(f.URL, "https://raw.githubusercontent.com/raspberrypi/") {
			t.Errorf("%s: url %s", id, f.URL)
		}
	}
	for _, name := range []string{"msd", "recovery", "bootfiles", "eeprom", "netboot"} {
		if _, err := cat.SetFiles(name); err != nil {
			t.Errorf("set %s: %v", name, err)
		}
	}
	for _, f := range cat.Files() {
		if strings.HasPrefix(f.ID, "firmware/boot/") == f.Pinned() {
			t.Errorf("%s: netboot files (and only they) are left to the lock file", f.ID)
		}
	}
}

func TestCatalogueParseErrors(t *testing.T) {
	const sum = "5434ba443e90029ecd0aefef63ff7c65478f95c134198111409a58abce2533ef"
	for _, tt := range []struct{ json, want string }{
		{`{"version":2,"files":{},"sets":{}}`, "version 2"},
		{`{"version":1,"files":{"a":{"url":"http://x/a","size":1,"sha256":"` + sum + `"}}}`, "not an https URL"},
		{`{"version":1,"files":{"a":{"url":"https://x/a","size":1,"sha256":"ABC"}}}`, "64 lowercase hex"},
		{`{"version":1,"files":{"a":{"url":"https://x/a","sha256":"` + sum + `"}}}`, "needs its size"},
		{`{"version":1,"files":{"a":{"url":"https://x/a","size":5}}}`, "size without sha256"},
		{`{"version":1,"files":{"a":{"url":"https://x/a"}},"sets":{"s":{"files":{"../x":"a"}}}}`, "clean relative path"},
		{`{"version":1,"files":{"a":{"url":"https://x/a"}},"sets":{"s":{"files":{"x":"b"}}}}`, "unknown file b"},
		{`{"version":1,"files":{"a":{"url":"https://x/a"}},"sets":{"S x":{"files":{"x":"a"}}}}`, "lowercase letters"},
		{`{"version":1,"files":{},"sets":{},"extra":1}`, "unknown field"},
	} {
		if _, err := Parse([]byte(tt.json)); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Parse(%s) = %v, want error containing %q", tt.json, err, tt.want)
		}
	}
}

// TestSetDirFetchAndVerify fetches the recovery and bootfiles sets from the
// test server, checks the directory against the real files, and that a
// second call serves the verified cache without any request.
func TestSetDirFetchAndVerify(t *testing.T) {
	c, srv, cat := testCache(t)
	var progressed int64
	c.Progress = func(f File, size int64) io.Writer {
		if size != f.Size {
			t.Errorf("progress size %d for %s, want %d", size, f.ID, f.Size)
		}
		return writerFunc(func(p []byte) { progressed += int64(len(p)) })
	}
	dir, err := c.SetDir(context.Background(), "recovery")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"bootcode4.bin":         "eeprom-vectors/recovery.bin",
		"config.txt":            "firmware-fixtures/recovery-config.txt",
		"boot.conf":             "firmware-fixtures/recovery-boot.conf",
		"pieeprom.original.bin": "eeprom-vectors/pieeprom-2026-05-17.bin",
	}
	es, _ := os.ReadDir(dir)
	if len(es) != len(want) {
		t.Errorf("set dir holds %d entries, want %d", len(es), len(want))
	}
	var total int64
	for name, rel := range want {
		got, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, readShared(t, rel)) {
			t.Errorf("%s differs from %s", name, rel)
		}
		fi, _ := os.Lstat(filepath.Join(dir, name))
		if !fi.Mode().IsRegular() {
			t.Errorf("%s is not a regular file (%s)", name, fi.Mode())
		}
		total += int64(len(got))
	}
	if progressed != total {
		t.Errorf("progress saw %d bytes, want %d", progressed, total)
	}
	// every blob is stored under its own hash
	for _, b := range cacheBlobs(t, c) {
		if strings.HasPrefix(b, "tmp/") {
			t.Errorf("temporary file left: %s", b)
			continue
		}
		data, _ := os.ReadFile(filepath.Join(c.Dir, b))
		if sum := sha256.Sum256(data); "sha256/"+hex.EncodeToString(sum[:]) != b {
			t.Errorf("blob %s has the wrong name", b)
		}
	}
	rec := mustFile(t, cat, "rpi-eeprom/firmware-2711/latest/recovery.bin")
	if n := srv.count(rec); n != 1 {
		t.Errorf("recovery.bin fetched %d times", n)
	}
	// offline, the same verified directory comes back with no request
	off := &Cache{Dir: c.Dir, Catalogue: cat, Offline: true}
	dir2, err := off.SetDir(context.Background(), "recovery")
	if err != nil || dir2 != dir {
		t.Fatalf("offline SetDir = %s, %v; want %s", dir2, err, dir)
	}
	// a stray file dropped into the set directory is not served: it is rebuilt
	os.WriteFile(filepath.Join(dir, "pieeprom.upd"), []byte("stray"), 0o644)
	if dir3, err := off.SetDir(context.Background(), "recovery"); err != nil || dir3 != dir {
		t.Fatalf("SetDir after a stray file = %s, %v", dir3, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "pieeprom.upd")); !os.IsNotExist(err) {
		t.Error("stray file still in the set directory")
	}
	if n := srv.count(rec); n != 1 {
		t.Errorf("offline SetDir made requests (%d)", n)
	}
	st, err := off.Verify("recovery")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st {
		if s.State != "ok" {
			t.Errorf("verify %s: %s %s", s.File.ID, s.State, s.Detail)
		}
	}
	// bootfiles set: the archive reads back through BootFiles
	bdir, err := c.SetDir(context.Background(), "bootfiles")
	if err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(filepath.Join(bdir, "bootfiles.bin"))
	bf, err := ParseBootFiles(data)
	if err != nil {
		t.Fatal(err)
	}
	if m, err := bf.Lookup("2711", "bootcode4.bin"); err != nil || m.Size != 73120 {
		t.Errorf("bootcode4.bin member = %+v, %v", m, err)
	}
}

type writerFunc func([]byte)

func (w writerFunc) Write(p []byte) (int, error) { w(p); return len(p), nil }

// TestFetchRefusals: a wrong checksum, a truncated or over-long download,
// a lying Content-Length, a 404 — each refused, and nothing is left in the
// cache under any name.
func TestFetchRefusals(t *testing.T) {
	for _, tt := range []struct {
		fault string
		want  error
		msg   string
	}{
		{"corrupt", ErrChecksum, "the catalogue pins"},
		{"truncate", ErrSize, "truncated download: got 1505180 of 1505280 bytes"},
		{"cut", nil, "unexpected EOF"},
		{"long", ErrSize, "server announces 1505285 bytes, want 1505280"},
		{"404", nil, "HTTP 404"},
	} {
		t.Run(tt.fault, func(t *testing.T) {
			c, srv, cat := testCache(t)
			f := mustFile(t, cat, "usbboot/firmware/bootfiles.bin")
			srv.set(f, tt.fault)
			_, err := c.Path(context.Background(), f)
			if err == nil || (tt.want != nil && !errors.Is(err, tt.want)) || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("Path = %v, want %v containing %q", err, tt.want, tt.msg)
			}
			if b := cacheBlobs(t, c); len(b) != 0 {
				t.Errorf("refused download left %q", b)
			}
			if _, err := c.Lookup(f); !errors.Is(err, ErrNotCached) {
				t.Errorf("Lookup after refusal = %v", err)
			}
			if _, err := c.SetDir(context.Background(), "bootfiles"); err == nil {
				t.Error("SetDir served a set whose file was refused")
			}
			// once the server is fixed, the same cache fetches it
			srv.set(f, "")
			if _, err := c.Path(context.Background(), f); err != nil {
				t.Fatalf("after fix: %v", err)
			}
		})
	}
}

// TestDamagedBlob: a cached blob changed behind our back is detected,
// removed, and fetched again.
func TestDamagedBlob(t *testing.T) {
	c, srv, cat := testCache(t)
	f := mustFile(t, cat, "usbboot/recovery/config.txt")
	p, err := c.Path(context.Background(), f)
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(p, 0o644)
	if err := os.WriteFile(p, []byte("uart_2ndstage=1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Lookup(f); err == nil || !strings.Contains(err.Error(), "damaged") {
		t.Fatalf("Lookup of a damaged blob = %v", err)
	}
	if _, err := os.Stat(p); !os.IsNotExist(err) {
		t.Error("damaged blob not removed")
	}
	st, _ := (&Cache{Dir: c.Dir, Catalogue: cat, Offline: true}).Verify("recovery")
	for _, s := range st {
		if s.File.ID == f.ID && s.State != "missing" {
			t.Errorf("verify after removal: %+v", s)
		}
	}
	if _, err := c.Path(context.Background(), f); err != nil {
		t.Fatal(err)
	}
	if n := srv.count(f); n != 2 {
		t.Errorf("%d requests, want 2", n)
	}
	got, _ := os.ReadFile(p)
	if !bytes.Equal(got, readShared(t, "firmware-fixtures/recovery-config.txt")) {
		t.Error("refetched blob wrong")
	}
}

func TestOffline(t *testing.T) {
	c, srv, cat := testCache(t)
	c.Offline = true
	f := mustFile(t, cat, "rpi-eeprom/firmware-2711/latest/recovery.bin")
	if _, err := c.Path(context.Background(), f); !errors.Is(err, ErrNotCached) || !strings.Contains(err.Error(), "--from") {
		t.Errorf("offline Path = %v", err)
	}
	if _, err := c.SetDir(context.Background(), "recovery"); !errors.Is(err, ErrNotCached) {
		t.Errorf("offline SetDir = %v", err)
	}
	if srv.count(f) != 0 {
		t.Error("offline cache made a request")
	}
}

// TestImport: files are accepted by sha256 whatever their names, symlinks
// are followed, and a same-size impostor is ignored.
func TestImport(t *testing.T) {
	c, srv, cat := testCache(t)
	c.Offline = true
	src := t.TempDir()
	os.MkdirAll(filepath.Join(src, "sub"), 0o755)
	os.WriteFile(filepath.Join(src, "whatever.dat"), readShared(t, "eeprom-vectors/recovery.bin"), 0o644)
	os.WriteFile(filepath.Join(src, "sub", "cfg"), readShared(t, "firmware-fixtures/recovery-config.txt"), 0o644)
	os.Symlink(sharedPath(t, "firmware-fixtures/recovery-boot.conf"), filepath.Join(src, "boot.conf"))
	fake := bytes.Clone(readShared(t, "eeprom-vectors/pieeprom-2026-05-17.bin"))
	fake[100] ^= 0xFF
	os.WriteFile(filepath.Join(src, "pieeprom-2026-05-17.bin"), fake, 0o644) // right name and size, wrong bytes
	os.WriteFile(filepath.Join(src, "notes.txt"), []byte("hello"), 0o644)

	got, err := c.Import(src)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, f := range got {
		ids = append(ids, f.ID)
	}
	want := "rpi-eeprom/firmware-2711/latest/recovery.bin usbboot/recovery/boot.conf usbboot/recovery/config.txt"
	if strings.Join(sortedCopy(ids), " ") != want {
		t.Errorf("imported %q, want %s", ids, want)
	}
	if _, err := c.SetDir(context.Background(), "recovery"); !errors.Is(err, ErrNotCached) {
		t.Errorf("SetDir with the impostor image = %v, want ErrNotCached", err)
	}
	os.WriteFile(filepath.Join(src, "pieeprom-2026-05-17.bin"), readShared(t, "eeprom-vectors/pieeprom-2026-05-17.bin"), 0o644)
	if _, err := c.Import(src); err != nil {
		t.Fatal(err)
	}
	if _, err := c.SetDir(context.Background(), "recovery"); err != nil {
		t.Fatalf("SetDir after import: %v", err)
	}
	for _, f := range cat.Files() {
		if srv.count(f) != 0 {
			t.Errorf("import made a request for %s", f.ID)
		}
	}
	if b := cacheBlobs(t, c); len(b) != 4 {
		t.Errorf("cache holds %q, want the 4 verified blobs only", b)
	}
}

func sortedCopy(s []string) []string {
	out := append([]string(nil), s...)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

// TestNetbootLock: unpinned netboot files are pinned in lock.json on first
// fetch; a later fetch with other content is refused and stores nothing.
func TestNetbootLock(t *testing.T) {
	c, srv, cat := testCache(t)
	f := mustFile(t, cat, "firmware/boot/start4.elf")
	if f.Pinned() {
		t.Fatal("start4.elf is pinned in the catalogue; the lock file test needs an unpinned file")
	}
	st, _ := c.Verify("netboot")
	for _, s := range st {
		if s.State != "unpinned" {
			t.Errorf("before first fetch %s is %s", s.File.ID, s.State)
		}
	}
	dir, err := c.SetDir(context.Background(), "netboot")
	if err != nil {
		t.Fatal(err)
	}
	lock, err := os.ReadFile(filepath.Join(c.Dir, "lock.json"))
	if err != nil {
		t.Fatal(err)
	}
	v1 := []byte("synthetic firmware/boot/start4.elf v1\n")
	sum := sha256.Sum256(v1)
	if !strings.Contains(string(lock), hex.EncodeToString(sum[:])) || !strings.Contains(string(lock), f.URL) {
		t.Errorf("lock file does not pin start4.elf:\n%s", lock)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "start4.elf")); !bytes.Equal(got, v1) {
		t.Errorf("start4.elf = %q", got)
	}
	// upstream content changes: the cached pin still verifies and is served
	srv.setContent(f, []byte("synthetic firmware/boot/start4.elf v2 (changed upstream)\n"))
	if _, err := c.Path(context.Background(), f); err != nil {
		t.Fatal(err)
	}
	// a forced refetch (e.g. cache blob lost) is refused
	before := cacheBlobs(t, c)
	if _, err := c.Fetch(context.Background(), f); !errors.Is(err, ErrLockMismatch) && !errors.Is(err, ErrSize) {
		t.Fatalf("refetch of changed content = %v, want a lock refusal", err)
	}
	if after := cacheBlobs(t, c); strings.Join(after, " ") != strings.Join(before, " ") {
		t.Errorf("refused refetch changed the cache: %q -> %q", before, after)
	}
	// same size, other bytes: the sha256 check of the lock refuses it
	v1b := bytes.Clone(v1)
	v1b[0] = 'S'
	srv.setContent(f, v1b)
	if _, err := c.Fetch(context.Background(), f); !errors.Is(err, ErrLockMismatch) || !strings.Contains(err.Error(), "pinned") {
		t.Fatalf("same-size change = %v, want ErrLockMismatch", err)
	}
	lock2, _ := os.ReadFile(filepath.Join(c.Dir, "lock.json"))
	if !bytes.Equal(lock, lock2) {
		t.Error("a refused fetch rewrote the lock file")
	}
	// the lock also lets an offline import verify netboot files
	c2 := &Cache{Dir: t.TempDir(), Catalogue: cat, Offline: true}
	os.WriteFile(filepath.Join(c2.Dir, "lock.json"), lock, 0o644)
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "start4.elf"), v1, 0o644)
	os.WriteFile(filepath.Join(src, "fixup4.dat"), []byte("not the pinned fixup4.dat, but v1-sized?\n"), 0o644)
	got, err := c2.Import(src)
	if err != nil || len(got) != 1 || got[0].ID != f.ID {
		t.Errorf("import with lock = %v, %v", got, err)
	}
}

// FuzzCatalogue: Parse never panics, and an accepted catalogue only has
// https URLs, well-formed pins, safe served names and resolvable sets.
func FuzzCatalogue(f *testing.F) {
	f.Add([]byte(catalogueJSON))
	f.Add([]byte(`{"version":1,"files":{"a":{"url":"https://x/a"}},"sets":{"s":{"files":{"d/x":"a"}}}}`))
	f.Add([]byte(`{"version":1}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		cat, err := Parse(b)
		if err != nil {
			return
		}
		for _, file := range cat.Files() {
			u, err := url.Parse(file.URL)
			if err != nil || u.Scheme != "https" || (file.SHA256 != "" && (!isSHA256(file.SHA256) || file.Size <= 0)) {
				t.Fatalf("accepted bad file %+v", file)
			}
		}
		for _, name := range cat.SetNames() {
			files, err := cat.SetFiles(name)
			if err != nil {
				t.Fatal(err)
			}
			for _, sf := range files {
				if checkServedName(sf.Name) != nil || filepath.IsAbs(sf.Name) || strings.Contains(sf.Name, "..") {
					t.Fatalf("accepted served name %q", sf.Name)
				}
			}
		}
	})
}

// TestConcurrentSetDir: boards served in parallel may ask for the same set
// at once; all get the same verified directory.
func TestConcurrentSetDir(t *testing.T) {
	c, _, _ := testCache(t)
	const n = 4
	dirs := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dirs[i], errs[i] = c.SetDir(context.Background(), "recovery")
		}()
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil || dirs[i] != dirs[0] {
			t.Fatalf("SetDir %d = %s, %v; want %s", i, dirs[i], errs[i], dirs[0])
		}
	}
	if n, err := countFiles(dirs[0]); err != nil || n != 4 {
		t.Errorf("set dir holds %d files, %v", n, err)
	}
	if es, _ := os.ReadDir(filepath.Join(c.Dir, "sets")); len(es) != 1 {
		t.Errorf("sets/ holds %d entries (temporary dirs left?)", len(es))
	}
}
