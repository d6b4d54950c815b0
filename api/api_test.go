package api_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cm4bench/cm4bench/api"
	"github.com/cm4bench/cm4bench/api/images"
	"github.com/cm4bench/cm4bench/api/store"
	"github.com/cm4bench/cm4bench/internal/contract"
	"github.com/cm4bench/cm4bench/internal/powerswitch"
	"github.com/cm4bench/cm4bench/internal/sparseimg"
)

// bench is a real server on 127.0.0.1 over a real SQLite file.
type bench struct {
	t      testing.TB
	dir    string
	base   string
	token  string
	st     *store.Store
	srv    *api.Server
	cancel context.CancelFunc
	done   chan error
}

// startServer runs the server on dir (reusing its data when it exists).
// golden, if not "", is the --image default.
func startServer(t testing.TB, dir, golden string, tweak ...func(*api.Server)) *bench {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	st, err := store.Open(ctx, filepath.Join(dir, "cm4bench.db"))
	if err != nil {
		cancel()
		t.Fatalf("open store: %v", err)
	}
	tok, _, err := api.LoadOrCreateToken(dir)
	if err != nil {
		t.Fatal(err)
	}
	srv := &api.Server{
		Store: st, DataDir: dir, Token: tok, Version: "test", PollInterval: 200 * time.Millisecond,
		Images: &images.Library{Dir: filepath.Join(dir, "images"), Default: golden, Cache: st},
	}
	for _, f := range tweak {
		f(srv)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &bench{t: t, dir: dir, base: "http://" + ln.Addr().String(), token: tok, st: st, srv: srv, cancel: cancel, done: make(chan error, 1)}
	go func() { b.done <- srv.Serve(ctx, ln) }()
	t.Cleanup(b.stop)
	return b
}

func (b *bench) stop() {
	if b.cancel == nil {
		return
	}
	b.cancel()
	b.cancel = nil
	if err := <-b.done; err != nil {
		b.t.Errorf("server: %v", err)
	}
	b.st.Close()
}

// call makes a request; body may be nil, []byte, an io.Reader or a value
// sent as JSON. token "" sends no Authorization.
func (b *bench) call(method, path string, body any, token string) (int, []byte) {
	b.t.Helper()
	var r io.Reader
	switch v := body.(type) {
	case nil:
	case []byte:
		r = bytes.NewReader(v)
	case io.Reader:
		r = v
	default:
		j, _ := json.Marshal(v)
		r = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, b.base+path, r)
	if err != nil {
		b.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		b.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, out
}

// admin makes a technician request and requires want as the status.
func (b *bench) admin(method, path string, body any, want int, into any) {
	b.t.Helper()
	code, out := b.call(method, path, body, b.token)
	if code != want {
		b.t.Fatalf("%s %s = %d %s, want %d", method, path, code, out, want)
	}
	if into != nil {
		if err := json.Unmarshal(out, into); err != nil {
			b.t.Fatalf("%s %s: decode %s: %v", method, path, out, err)
		}
	}
}

func (b *bench) waitFor(what string, cond func() bool) {
	b.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			b.t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func sha(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

func fileSHA(t testing.TB, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return sha(b)
}

// makeImage writes an image of size bytes: random blocks with zero runs, so
// it compresses somewhat, like a real disk image.
func makeImage(t testing.TB, p string, size int) []byte {
	t.Helper()
	b := make([]byte, size)
	rand.Read(b)
	for off := 0; off+65536 <= size; off += 262144 {
		clear(b[off : off+65536])
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return b
}

// compress runs the real compressor on src into dst ("gzip", "xz", "zstd").
func compress(t testing.TB, tool, src, dst string) {
	t.Helper()
	path, err := exec.LookPath(tool)
	if err != nil {
		t.Fatalf("%s is not installed (scripts/deps.sh installs it): %v", tool, err)
	}
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	cmd := exec.Command(path, "-c", src)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = out, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s: %v %s", tool, err, stderr.String())
	}
}

func shell(t testing.TB) string {
	t.Helper()
	if p, err := exec.LookPath("busybox"); err == nil {
		return p // run the client under busybox sh, as in the initramfs
	}
	p, err := exec.LookPath("sh")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// runClient starts testdata/provisioning-client.sh for one action.
func (b *bench) runClient(mac, disk string, env ...string) (wait func() string) {
	b.t.Helper()
	if _, err := exec.LookPath("curl"); err != nil {
		b.t.Fatalf("curl is not installed (scripts/deps.sh installs it): %v", err)
	}
	sh := shell(b.t)
	args := []string{"testdata/provisioning-client.sh"}
	if filepath.Base(sh) == "busybox" {
		args = append([]string{"sh"}, args...)
	}
	cmd := exec.Command(sh, args...)
	cmd.Env = append(os.Environ(), "SERVER="+b.base, "MAC="+mac, "DISK="+disk, "MAX_ACTIONS=1", "POLL=0.1")
	cmd.Env = append(cmd.Env, env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		b.t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	b.t.Cleanup(func() { cmd.Process.Kill() })
	b.waitFor("device "+mac+" to register", func() bool {
		_, err := b.st.Device(context.Background(), mac)
		return err == nil
	})
	return func() string {
		select {
		case err := <-done:
			if err != nil {
				b.t.Fatalf("client: %v\n%s", err, out.String())
			}
		case <-time.After(60 * time.Second):
			cmd.Process.Kill()
			b.t.Fatalf("client did not finish\n%s", out.String())
		}
		return out.String()
	}
}

func hwAddr(t testing.TB, s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestShellClient runs the original curl+dd client against the real server:
// deploys of every image format write identical bytes, backups (PUT and
// POST, JSON and form action-done, raw and zstd storage) store the right
// sha256, and each success switches netboot off for that MAC only.
func TestShellClient(t *testing.T) {
	dir := t.TempDir()
	golden := makeImage(t, filepath.Join(dir, "golden.img"), 9<<20+12345)
	libDir := filepath.Join(dir, "images")
	os.MkdirAll(libDir, 0o755)
	raw := filepath.Join(dir, "golden.img")
	compress(t, "gzip", raw, filepath.Join(libDir, "lib.img.gz"))
	compress(t, "xz", raw, filepath.Join(libDir, "lib.img.xz"))
	compress(t, "zstd", raw, filepath.Join(libDir, "lib.img.zst"))
	b := startServer(t, dir, raw)
	ctx := context.Background()

	const other = "dc:a6:32:99:99:99"
	if _, err := b.st.Register(ctx, other, "127.0.0.9", nil); err != nil {
		t.Fatal(err)
	}

	for i, tt := range []struct {
		image string
		done  string
	}{
		{"", "json"}, // the default image
		{"lib.img.gz", "form"},
		{"lib.img.xz", "json"},
		{"lib.img.zst", "json"},
	} {
		name := tt.image
		if name == "" {
			name = "default"
		}
		t.Run("deploy/"+name, func(t *testing.T) {
			b.t = t
			mac := fmt.Sprintf("dc:a6:32:00:10:%02x", i)
			disk := filepath.Join(t.TempDir(), "mmcblk0")
			wait := b.runClient(mac, disk, "DONE="+tt.done)
			var a contract.Action
			b.admin("POST", "/api/v1/devices/"+mac+"/action", contract.SetActionRequest{Action: "deploy", Image: tt.image}, 200, &a)
			log := wait()
			got, err := os.ReadFile(disk)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, golden) {
				t.Fatalf("disk has %d bytes sha %s, want %d bytes sha %s\n%s", len(got), sha(got), len(golden), sha(golden), log)
			}
			var d contract.Device
			b.admin("GET", "/api/v1/devices/"+mac, nil, 200, &d)
			if d.State != contract.DeviceDone || d.Action == nil || d.Action.ID != a.ID || d.Action.State != contract.StateDone {
				t.Errorf("device after deploy = %+v action %+v", d, d.Action)
			}
			if b.st.NetbootEnabled(hwAddr(t, mac)) || d.Netboot {
				t.Errorf("netboot of %s still on after a successful deploy", mac)
			}
			if !b.st.NetbootEnabled(hwAddr(t, other)) {
				t.Errorf("netboot of an unrelated MAC was switched off")
			}
		})
	}

	for i, tt := range []struct {
		upload   string
		compress bool
	}{
		{"put", false},
		{"post", false},
		{"put", true},
	} {
		t.Run(fmt.Sprintf("backup/%s/zstd=%v", tt.upload, tt.compress), func(t *testing.T) {
			b.t = t
			b.srv.CompressBackups = tt.compress
			mac := fmt.Sprintf("dc:a6:32:00:20:%02x", i)
			disk := filepath.Join(t.TempDir(), "mmcblk0")
			content := makeImage(t, disk, 5<<20+777)
			wait := b.runClient(mac, disk, "UPLOAD="+tt.upload)
			b.admin("POST", "/api/v1/devices/"+mac+"/action", contract.SetActionRequest{Action: "backup"}, 200, nil)
			log := wait()
			var bs []contract.Backup
			b.admin("GET", "/api/v1/backups", nil, 200, &bs)
			if len(bs) == 0 || bs[0].MAC != mac {
				t.Fatalf("no backup of %s recorded: %+v\n%s", mac, bs, log)
			}
			bk := bs[0]
			if bk.SHA256 != sha(content) || bk.Size != int64(len(content)) || bk.Compressed != tt.compress {
				t.Errorf("backup = %+v, want sha %s size %d compressed=%v", bk, sha(content), len(content), tt.compress)
			}
			// The stored file, read back through the API, holds the bytes.
			code, stored := b.call("GET", "/api/v1/backups/"+bk.ID+"/download", nil, b.token)
			if code != 200 || int64(len(stored)) != bk.StoredSize {
				t.Fatalf("download = %d, %d bytes; want 200, %d", code, len(stored), bk.StoredSize)
			}
			if tt.compress {
				cmd := exec.Command("zstd", "-dc")
				cmd.Stdin = bytes.NewReader(stored)
				dec, err := cmd.Output()
				if err != nil {
					t.Fatalf("zstd -dc of the stored backup: %v", err)
				}
				stored = dec
			}
			if sha(stored) != sha(content) {
				t.Errorf("stored backup sha %s, want %s", sha(stored), sha(content))
			}
			if b.st.NetbootEnabled(hwAddr(t, mac)) {
				t.Errorf("netboot of %s still on after a successful backup", mac)
			}
		})
	}
}

// TestRestartKeepsPendingAction: an action set before a restart is served
// after it, with the same token.
func TestRestartKeepsPendingAction(t *testing.T) {
	dir := t.TempDir()
	golden := makeImage(t, filepath.Join(dir, "golden.img"), 3<<20)
	b := startServer(t, dir, filepath.Join(dir, "golden.img"))
	const mac = "dc:a6:32:00:30:01"
	if code, out := b.call("POST", contract.PathRegister, []byte(`{"mac":"`+mac+`","ip":"127.0.0.1"}`), ""); code != 200 {
		t.Fatalf("register = %d %s", code, out)
	}
	var a contract.Action
	b.admin("POST", "/api/v1/devices/"+mac+"/action", contract.SetActionRequest{Action: "deploy"}, 200, &a)
	b.admin("PUT", "/api/v1/netboot", contract.NetbootSwitch{Enabled: false}, 200, nil)
	b.stop()

	b2 := startServer(t, dir, filepath.Join(dir, "golden.img"))
	if b2.token != b.token {
		t.Errorf("admin token changed over restart")
	}
	var nb contract.NetbootSwitch
	b2.admin("GET", "/api/v1/netboot", nil, 200, &nb)
	if nb.Enabled {
		t.Error("global netboot switch not kept over restart")
	}
	code, out := b2.call("GET", contract.PathPoll+"?mac="+mac, nil, "")
	var p contract.PollResponse
	if code != 200 || json.Unmarshal(out, &p) != nil || p.Action != "deploy" || p.ActionID != a.ID {
		t.Fatalf("poll after restart = %d %s, want the deploy %s", code, out, a.ID)
	}
	if got := b.download(p); !bytes.Equal(got, golden) {
		t.Errorf("image after restart: %d bytes, want %d", len(got), len(golden))
	}
}

// TestImageStreams checks Range, ETag and zstd on every stored format.
func TestImageStreams(t *testing.T) {
	dir := t.TempDir()
	raw := filepath.Join(dir, "golden.img")
	golden := makeImage(t, raw, 2<<20+99)
	libDir := filepath.Join(dir, "images")
	os.MkdirAll(libDir, 0o755)
	compress(t, "gzip", raw, filepath.Join(libDir, "g.img.gz"))
	compress(t, "zstd", raw, filepath.Join(libDir, "z.img.zst"))
	b := startServer(t, dir, raw)
	const mac = "dc:a6:32:00:40:01"
	b.call("POST", contract.PathRegister, []byte("mac="+mac), "")

	for _, image := range []string{"golden.img", "g.img.gz", "z.img.zst"} {
		t.Run(image, func(t *testing.T) {
			b.t = t
			b.admin("POST", "/api/v1/devices/"+mac+"/action", contract.SetActionRequest{Action: "deploy", Image: image}, 200, nil)
			_, out := b.call("GET", contract.PathPoll+"?mac="+mac, nil, "")
			var p contract.PollResponse
			json.Unmarshal(out, &p)
			if p.Image == nil || p.Image.SHA256 != sha(golden) || p.Image.Size != int64(len(golden)) {
				t.Fatalf("poll image info = %+v", p.Image)
			}
			get := func(h map[string]string) (*http.Response, []byte) {
				req, _ := http.NewRequest("GET", p.URL, nil)
				req.Header.Set("User-Agent", contract.AgentUserAgent+"/test") // no server-side progress
				for k, v := range h {
					req.Header.Set(k, v)
				}
				// A bare transport: no transparent gzip, so Accept-Encoding stays ours.
				resp, err := (&http.Transport{DisableCompression: true}).RoundTrip(req)
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				body, _ := io.ReadAll(resp.Body)
				return resp, body
			}
			resp, body := get(nil)
			if resp.StatusCode != 200 || !bytes.Equal(body, golden) {
				t.Fatalf("raw stream: %d, %d bytes", resp.StatusCode, len(body))
			}
			etag := resp.Header.Get("ETag")
			if etag != `"`+sha(golden)+`"` || resp.Header.Get(contract.HeaderImageSHA256) != sha(golden) {
				t.Errorf("ETag %s, sha header %s", etag, resp.Header.Get(contract.HeaderImageSHA256))
			}
			for _, rg := range []struct {
				h          string
				start, end int
			}{
				{"bytes=1000-", 1000, len(golden)},
				{"bytes=5-9", 5, 10},
				{"bytes=-100", len(golden) - 100, len(golden)},
			} {
				resp, body = get(map[string]string{"Range": rg.h, "If-Range": etag})
				if resp.StatusCode != 206 || !bytes.Equal(body, golden[rg.start:rg.end]) {
					t.Errorf("Range %s: %d, %d bytes, want 206 and bytes %d-%d", rg.h, resp.StatusCode, len(body), rg.start, rg.end)
				}
			}
			resp, _ = get(map[string]string{"Range": fmt.Sprintf("bytes=%d-", len(golden)+10)})
			if resp.StatusCode != http.StatusRequestedRangeNotSatisfiable {
				t.Errorf("range past the end: %d, want 416", resp.StatusCode)
			}
			resp, body = get(map[string]string{"Accept-Encoding": "zstd"})
			if resp.StatusCode != 200 || resp.Header.Get("Content-Encoding") != "zstd" {
				t.Fatalf("zstd stream: %d encoding %q", resp.StatusCode, resp.Header.Get("Content-Encoding"))
			}
			cmd := exec.Command("zstd", "-dc")
			cmd.Stdin = bytes.NewReader(body)
			dec, err := cmd.Output()
			if err != nil || !bytes.Equal(dec, golden) {
				t.Errorf("zstd stream decodes to %d bytes (%v), want the image", len(dec), err)
			}
			if image == "z.img.zst" {
				stored, _ := os.ReadFile(filepath.Join(libDir, image))
				if !bytes.Equal(body, stored) {
					t.Errorf("stored .zst not passed through as is")
				}
			}
			// The sparse stream: for a raw image only (a compressed one
			// comes raw), decoding to the image, with Range on its bytes.
			resp, body = get(map[string]string{"Accept-Encoding": contract.AcceptSparse})
			if image != "golden.img" {
				if resp.StatusCode != 200 || resp.Header.Get("Content-Encoding") != "" || !bytes.Equal(body, golden) {
					t.Errorf("sparse asked for a compressed image: %d, encoding %q, %d bytes; want the raw stream", resp.StatusCode, resp.Header.Get("Content-Encoding"), len(body))
				}
				return
			}
			if resp.StatusCode != 200 || resp.Header.Get("Content-Encoding") != contract.AcceptSparse {
				t.Fatalf("sparse stream: %d encoding %q", resp.StatusCode, resp.Header.Get("Content-Encoding"))
			}
			sr, err := sparseimg.NewReader(bytes.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			if dec, err := io.ReadAll(sr); err != nil || !bytes.Equal(dec, golden) {
				t.Fatalf("sparse stream decodes to %d bytes (%v), want the image", len(dec), err)
			}
			setag := resp.Header.Get("ETag")
			resp, part := get(map[string]string{"Accept-Encoding": contract.AcceptSparse, "Range": "bytes=7-100000", "If-Range": setag})
			if resp.StatusCode != 206 || !bytes.Equal(part, body[7:min(100001, len(body))]) {
				t.Errorf("sparse Range: %d, %d bytes", resp.StatusCode, len(part))
			}
		})
	}
}

// TestOpenAPICoversEveryRoute: every route the server registers is in
// the OpenAPI document, and every documented technician route refuses a
// request without (or with a wrong) token.
func TestAuthAndOpenAPI(t *testing.T) {
	dir := t.TempDir()
	makeImage(t, filepath.Join(dir, "golden.img"), 1<<20)
	b := startServer(t, dir, filepath.Join(dir, "golden.img"))
	var doc struct {
		Paths map[string]map[string]struct {
			Security []map[string]any `json:"security"`
		} `json:"paths"`
	}
	code, out := b.call("GET", contract.PathOpenAPI, nil, "")
	if code != 200 || json.Unmarshal(out, &doc) != nil {
		t.Fatalf("openapi: %d", code)
	}
	routes := api.RoutesForTest(b.srv)
	if len(routes) < 30 {
		t.Fatalf("only %d routes registered", len(routes))
	}
	for _, r := range routes {
		method, path, _ := strings.Cut(r, " ")
		if _, ok := doc.Paths[path][strings.ToLower(method)]; !ok {
			t.Errorf("route %s is not in the OpenAPI document", r)
		}
	}
	n := 0
	for path, ops := range doc.Paths {
		for method, o := range ops {
			if len(o.Security) == 0 {
				continue
			}
			n++
			p := strings.NewReplacer("{mac}", "dc:a6:32:00:00:01", "{id}", "1", "{name}", "x.img").Replace(path)
			for _, tok := range []string{"", "wrong-token-0123456789abcdef"} {
				code, out := b.call(strings.ToUpper(method), p, []byte(`{}`), tok)
				if code != http.StatusUnauthorized || !strings.Contains(string(out), `"error"`) {
					t.Errorf("%s %s with token %q = %d %s, want 401 JSON", strings.ToUpper(method), p, tok, code, out)
				}
			}
		}
	}
	if n < 18 {
		t.Errorf("only %d technician routes documented", n)
	}
	// The dashboard's way in: login sets an HttpOnly cookie that works.
	jar := &cookieJar{}
	cl := &http.Client{Jar: jar}
	resp, err := cl.Post(b.base+contract.PathLogin, "application/json", strings.NewReader(`{"token":"nope"}`))
	if err != nil || resp.StatusCode != 401 {
		t.Fatalf("login with a wrong token: %v %v", resp.StatusCode, err)
	}
	resp.Body.Close()
	resp, err = cl.Post(b.base+contract.PathLogin, "application/json", strings.NewReader(`{"token":"`+b.token+`"}`))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("login: %v %v", resp.StatusCode, err)
	}
	resp.Body.Close()
	if len(jar.c) != 1 || !jar.c[0].HttpOnly || jar.c[0].Name != contract.CookieSession {
		t.Fatalf("login cookie = %+v", jar.c)
	}
	resp, err = cl.Get(b.base + "/api/v1/status")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("status with the session cookie: %v %v", resp.StatusCode, err)
	}
	var st contract.Status
	json.NewDecoder(resp.Body).Decode(&st)
	resp.Body.Close()
	if st.DefaultImage != "golden.img" || !st.Netboot {
		t.Errorf("status = %+v", st)
	}
	// The token file is private.
	fi, err := os.Stat(filepath.Join(dir, contract.FileAdminToken))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("admin-token mode = %v, %v; want 0600", fi.Mode(), err)
	}
}

type cookieJar struct{ c []*http.Cookie }

func (j *cookieJar) SetCookies(_ *url.URL, cs []*http.Cookie) {
	for _, c := range cs {
		if c.MaxAge >= 0 {
			j.c = append(j.c, c)
		}
	}
}
func (j *cookieJar) Cookies(*url.URL) []*http.Cookie { return j.c }

// TestImageLibrary uploads images through the API (refusing a corrupt or
// misnamed one), assigns one to a device, deploys it by default, and
// deletes it.
func TestImageLibrary(t *testing.T) {
	dir := t.TempDir()
	raw := filepath.Join(dir, "golden.img")
	makeImage(t, raw, 1<<20)
	b := startServer(t, dir, raw)
	other := makeImage(t, filepath.Join(dir, "other.img"), 2<<20+1)
	compress(t, "zstd", filepath.Join(dir, "other.img"), filepath.Join(dir, "other.img.zst"))
	zst, _ := os.ReadFile(filepath.Join(dir, "other.img.zst"))

	var im contract.Image
	b.admin("POST", "/api/v1/images?name=customer.img.zst", zst, 201, &im)
	if im.SHA256 != sha(other) || im.Size != int64(len(other)) || im.Format != "zst" {
		t.Errorf("uploaded image = %+v", im)
	}
	for _, tt := range []struct {
		name string
		body []byte
		want int
	}{
		{"customer.img.zst", zst, 409},        // exists
		{"golden.img", zst, 409},              // the default
		{"broken.img.zst", []byte("xx"), 400}, // not zstd
		{"noext", zst, 400},
	} {
		if code, out := b.call("POST", "/api/v1/images?name="+tt.name, tt.body, b.token); code != tt.want {
			t.Errorf("upload %s = %d %s, want %d", tt.name, code, out, tt.want)
		}
	}
	var imgs []contract.Image
	b.admin("GET", "/api/v1/images", nil, 200, &imgs)
	if len(imgs) != 2 || !imgs[0].Default || imgs[1].Name != "customer.img.zst" {
		t.Fatalf("images = %+v", imgs)
	}

	const mac = "dc:a6:32:00:80:01"
	b.register(mac)
	b.admin("PUT", "/api/v1/devices/"+mac+"/image", contract.SetImageRequest{Image: "customer.img.zst"}, 200, nil)
	if code, _ := b.call("PUT", "/api/v1/devices/"+mac+"/image", []byte(`{"image":"nope.img"}`), b.token); code != 404 {
		t.Errorf("assigning a missing image = %d, want 404", code)
	}
	var a contract.Action
	b.admin("POST", "/api/v1/devices/"+mac+"/action", contract.SetActionRequest{Action: "deploy"}, 200, &a)
	if a.Image != "customer.img.zst" {
		t.Errorf("deploy without an image used %q, want the assigned one", a.Image)
	}
	p := b.poll(mac)
	if got := b.download(p); !bytes.Equal(got, other) {
		t.Errorf("deployed %d bytes, want the assigned image", len(got))
	}
	b.admin("POST", "/api/v1/devices/"+mac+"/action", contract.SetActionRequest{Action: "none"}, 200, nil)
	b.admin("DELETE", "/api/v1/images/customer.img.zst", nil, 200, nil)
	if code, _ := b.call("DELETE", "/api/v1/images/golden.img", nil, b.token); code != 409 {
		t.Errorf("deleting the default image = %d, want 409", code)
	}
	// A deploy whose image vanished fails with the reason at the next poll.
	b.admin("POST", "/api/v1/devices/"+mac+"/action", contract.SetActionRequest{Action: "deploy", Image: "golden.img"}, 200, &a)
	os.Remove(raw)
	if p := b.poll(mac); p.Action != contract.ActionNone {
		t.Errorf("poll with a vanished image = %+v, want none", p)
	}
	got2, _ := b.st.ActionByID(context.Background(), a.ID)
	if got2.State != contract.StateFailed || !strings.Contains(got2.Error, "not usable") {
		t.Errorf("action with a vanished image = %s %q", got2.State, got2.Error)
	}
	b.admin("GET", "/api/v1/images", nil, 200, &imgs)
	b.admin("GET", "/api/v1/status", nil, 200, nil)
}

// The bench default image is one choice, kept in the store: Deploy on a
// board with no image of its own writes it, the status and the image list
// name it, it cannot be deleted while chosen, and "" goes back to --image.
func TestDefaultImageChoice(t *testing.T) {
	dir := t.TempDir()
	raw := filepath.Join(dir, "golden.img")
	makeImage(t, raw, 1<<20)
	b := startServer(t, dir, raw)
	other := makeImage(t, filepath.Join(dir, "other.img"), 1<<20+7)
	b.admin("POST", "/api/v1/images?name=line-b.img", other, 201, nil)

	defaults := func() (list []string, status string) {
		t.Helper()
		var imgs []contract.Image
		b.admin("GET", "/api/v1/images", nil, 200, &imgs)
		for _, im := range imgs {
			if im.Default {
				list = append(list, im.Name)
			}
			if im.Golden != (im.Name == "golden.img") {
				t.Errorf("%s golden = %v", im.Name, im.Golden)
			}
		}
		var st contract.Status
		b.admin("GET", "/api/v1/status", nil, 200, &st)
		return list, st.DefaultImage
	}
	if list, st := defaults(); len(list) != 1 || list[0] != "golden.img" || st != "golden.img" {
		t.Fatalf("before a choice: default %v, status %q; want golden.img", list, st)
	}
	if code, out := b.call("PUT", "/api/v1/images/default", []byte(`{"image":"nope.img"}`), b.token); code != 404 {
		t.Errorf("choosing a missing image = %d %s, want 404", code, out)
	}
	var got contract.DefaultImageRequest
	b.admin("PUT", "/api/v1/images/default", contract.DefaultImageRequest{Image: "line-b.img"}, 200, &got)
	if got.Image != "line-b.img" {
		t.Errorf("PUT default answered %q", got.Image)
	}
	if list, st := defaults(); len(list) != 1 || list[0] != "line-b.img" || st != "line-b.img" {
		t.Fatalf("after choosing line-b.img: default %v, status %q", list, st)
	}
	const mac, assigned = "dc:a6:32:00:80:02", "dc:a6:32:00:80:03"
	b.register(mac)
	b.register(assigned)
	b.admin("PUT", "/api/v1/devices/"+assigned+"/image", contract.SetImageRequest{Image: "golden.img"}, 200, nil)
	for _, tt := range []struct{ mac, want string }{{mac, "line-b.img"}, {assigned, "golden.img"}} {
		var a contract.Action
		b.admin("POST", "/api/v1/devices/"+tt.mac+"/action", contract.SetActionRequest{Action: "deploy"}, 200, &a)
		if a.Image != tt.want {
			t.Errorf("deploy on %s wrote %q, want %q", tt.mac, a.Image, tt.want)
		}
	}
	if code, out := b.call("DELETE", "/api/v1/images/line-b.img", nil, b.token); code != 409 || !strings.Contains(string(out), "set another default first") {
		t.Errorf("deleting the chosen default = %d %s, want 409 saying what to do", code, out)
	}
	b.admin("PUT", "/api/v1/images/default", contract.DefaultImageRequest{}, 200, &got)
	if list, st := defaults(); got.Image != "golden.img" || len(list) != 1 || list[0] != "golden.img" || st != "golden.img" {
		t.Fatalf("after clearing: answered %q, default %v, status %q; want golden.img", got.Image, list, st)
	}
	b.admin("DELETE", "/api/v1/images/line-b.img", nil, 200, nil)
}

// Power-cycle goes through the bench's power command (a real shell command
// here) with the board's MAC and serial, names the switch's own words when
// it fails, and says what to do on a bench without one.
func TestPowerCycle(t *testing.T) {
	dir := t.TempDir()
	raw := filepath.Join(dir, "golden.img")
	makeImage(t, raw, 1<<20)
	calls := filepath.Join(dir, "calls")
	const mac, broken = "dc:a6:32:00:90:01", "dc:a6:32:00:90:02"
	script := `if [ "$1" = "` + broken + `" ]; then echo "relay 2 does not answer" >&2; exit 3; fi; echo "$1 $CM4BENCH_SERIAL" >> ` + calls
	b := startServer(t, dir, raw, func(s *api.Server) { s.Power = &powerswitch.Command{Shell: script} })
	if code, out := b.call("POST", contract.PathRegister, []byte(`{"mac":"`+mac+`","ip":"127.0.0.1","facts":{"serial":"10000abc"}}`), ""); code != 200 {
		t.Fatalf("register = %d %s", code, out)
	}
	b.register(broken)
	var st contract.Status
	b.admin("GET", "/api/v1/status", nil, 200, &st)
	if !st.PowerControl {
		t.Error("status does not say the bench has power control")
	}
	for _, tt := range []struct {
		name, who, token string
		code             int
		want             string
	}{
		{"by MAC", mac, b.token, 200, `"power-cycled"`},
		{"by serial", "10000abc", b.token, 200, mac},
		{"the switch fails", broken, b.token, 502, "relay 2 does not answer"},
		{"unknown board", "dc:a6:32:00:90:09", b.token, 404, "unknown device"},
		{"no session", mac, "", 401, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code, out := b.call("POST", "/api/v1/devices/"+tt.who+"/power-cycle", nil, tt.token)
			if code != tt.code || !strings.Contains(string(out), tt.want) {
				t.Errorf("= %d %s, want %d containing %q", code, out, tt.code, tt.want)
			}
		})
	}
	got, _ := os.ReadFile(calls)
	if string(got) != mac+" 10000abc\n"+mac+" 10000abc\n" {
		t.Errorf("the power command ran with %q, want the MAC and serial twice", got)
	}
	var evs []contract.Event
	b.admin("GET", "/api/v1/events?limit=100", nil, 200, &evs)
	var ok, failed int
	for _, e := range evs {
		if e.Kind == contract.EventDevicePower {
			if e.Level == contract.LevelWarn {
				failed++
			} else {
				ok++
			}
		}
	}
	if ok != 2 || failed != 1 {
		t.Errorf("power events: %d done, %d failed; want 2 and 1", ok, failed)
	}

	plain := startServer(t, t.TempDir(), raw)
	plain.register(mac)
	if code, out := plain.call("POST", "/api/v1/devices/"+mac+"/power-cycle", nil, plain.token); code != 501 || !strings.Contains(string(out), "--power-command") {
		t.Errorf("without a power command = %d %s, want 501 naming --power-command", code, out)
	}
}

// An agent that sends its result again (the first answer was lost when the
// server was killed or the link cut) gets the recorded action, not 410, so
// it reboots; a repeat that does not match the record, or carries no
// token, still gets 410, and nothing is recorded twice.
func TestActionDoneRepeated(t *testing.T) {
	dir := t.TempDir()
	golden := makeImage(t, filepath.Join(dir, "golden.img"), 1<<20)
	b := startServer(t, dir, filepath.Join(dir, "golden.img"))
	const mac = "dc:a6:32:00:31:01"
	b.register(mac)
	b.admin("POST", "/api/v1/devices/"+mac+"/action", contract.SetActionRequest{Action: "deploy"}, 200, nil)
	p := b.poll(mac)
	if p.Token == "" {
		t.Fatalf("poll gave no token: %+v", p)
	}
	b.download(p)
	done := contract.ActionDone{MAC: mac, ActionID: p.ActionID, Token: p.Token, Status: "success", SHA256: sha(golden), Bytes: int64(len(golden))}
	if code, out := b.call("POST", contract.PathActionDone, done, ""); code != 200 {
		t.Fatalf("done = %d %s", code, out)
	}
	for _, tt := range []struct {
		name string
		edit func(d *contract.ActionDone)
		code int
	}{
		{"the same result again", func(*contract.ActionDone) {}, 200},
		{"another sha256", func(d *contract.ActionDone) { d.SHA256 = strings.Repeat("0", 64) }, 410},
		{"a failure after the success", func(d *contract.ActionDone) { d.Status, d.Error = "failed", "late" }, 410},
		{"no token", func(d *contract.ActionDone) { d.Token = "" }, 410},
		{"another token", func(d *contract.ActionDone) { d.Token = strings.Repeat("ab", 16) }, 403},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d := done
			tt.edit(&d)
			code, out := b.call("POST", contract.PathActionDone, d, "")
			if code != tt.code {
				t.Fatalf("repeat = %d %s, want %d", code, out, tt.code)
			}
			if code == 200 {
				var a contract.Action
				if json.Unmarshal(out, &a) != nil || a.ID != p.ActionID || a.State != contract.StateDone {
					t.Errorf("repeat answered %s", out)
				}
			}
		})
	}
	var rows []contract.LedgerRow
	b.admin("GET", "/api/v1/ledger?format=json", nil, 200, &rows)
	if len(rows) != 1 {
		t.Errorf("%d ledger rows after repeats, want 1", len(rows))
	}
}
