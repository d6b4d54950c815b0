package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cm4bench/cm4bench/api"
	"github.com/cm4bench/cm4bench/api/client"
	"github.com/cm4bench/cm4bench/internal/contract"
)

// clientFrom is an HTTP client whose connections come from local address ip
// (127.0.0.0/8 is all this machine's): a second machine on the bench LAN.
func clientFrom(ip string) *http.Client {
	return &http.Client{Transport: &http.Transport{DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}).DialContext}}
}

func send(t *testing.T, c *http.Client, method, url, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// Security item 1: with our DHCP leases known, every device route refuses
// an address that has no lease, so a laptop on the bench LAN cannot act for
// a board (register over its facts, take its action token, upload a fake
// backup, report success).
func TestHostileUnleasedAddressRefused(t *testing.T) {
	dir := t.TempDir()
	golden := filepath.Join(dir, "golden.img")
	makeImage(t, golden, 1<<20)
	const victim = "dc:a6:32:00:91:01"
	b := startServer(t, dir, golden, func(s *api.Server) {
		s.RequireLease = true
		s.MACForIP = func(a netip.Addr) (net.HardwareAddr, bool) {
			if a == netip.MustParseAddr("127.0.0.1") {
				return hwAddr(t, victim), true
			}
			return nil, false
		}
	})
	b.register(victim)
	var a contract.Action
	b.admin("POST", "/api/v1/devices/"+victim+"/action", contract.SetActionRequest{Action: "backup"}, 200, &a)
	attacker := clientFrom("127.0.0.3")
	for _, tt := range []struct{ method, path, body string }{
		{"POST", contract.PathRegister, `{"mac":"` + victim + `","facts":{"serial":"deadbeef","model":"fake"}}`},
		{"GET", contract.PathPoll + "?mac=" + victim, ""},
		{"POST", contract.PathProgress, `{"mac":"` + victim + `","action_id":"` + a.ID + `","token":"x","phase":"upload","done":1}`},
		{"POST", contract.PathLog, `{"mac":"` + victim + `","lines":["spoofed"]}`},
		{"POST", contract.PathActionDone, `{"mac":"` + victim + `","status":"ok"}`},
		{"PUT", b.base + contract.PathBackup + "/" + a.ID + "?token=x", "fake backup"},
	} {
		url := b.base + tt.path
		if strings.HasPrefix(tt.path, "http") {
			url = tt.path
		}
		code, out := send(t, attacker, tt.method, url, tt.body)
		if code != http.StatusForbidden {
			t.Errorf("%s %s from an unleased address = %d %s, want 403", tt.method, tt.path, code, out)
		}
	}
	d, err := b.st.Device(context.Background(), victim)
	if err != nil {
		t.Fatal(err)
	}
	if d.Facts != nil && (d.Facts.Serial == "deadbeef" || d.Facts.Model == "fake") {
		t.Errorf("the attacker's re-register changed the victim: %+v", d.Facts)
	}
	got, _ := b.st.ActionByID(context.Background(), a.ID)
	if got.State != contract.StatePending || got.PolledIP != "" {
		t.Errorf("victim's action after the attack: %s polled from %q", got.State, got.PolledIP)
	}
	// The victim itself is served.
	if p := b.poll(victim); p.Token == "" || p.UploadURL == "" {
		t.Errorf("the victim's own poll: %+v", p)
	}
}

// Security item 1, without leases (--no-dhcp, --proxy): the first address
// that fetched an action keeps it. A poll from another address gets no
// token, does not move the board's recorded address, and the real board's
// download still works.
func TestHostileRepollFromAnotherAddress(t *testing.T) {
	dir := t.TempDir()
	golden := filepath.Join(dir, "golden.img")
	img := makeImage(t, golden, 1<<20)
	const victim = "dc:a6:32:00:92:01"
	b := startServer(t, dir, golden)
	b.register(victim)
	b.admin("POST", "/api/v1/devices/"+victim+"/action", contract.SetActionRequest{Action: "deploy"}, 200, nil)
	p := b.poll(victim)
	if p.Token == "" || p.URL == "" {
		t.Fatalf("victim poll %+v", p)
	}
	attacker := clientFrom("127.0.0.4")
	code, out := send(t, attacker, "GET", b.base+contract.PathPoll+"?mac="+victim, "")
	if code != http.StatusConflict || strings.Contains(out, p.Token) || !strings.Contains(out, "fetched from 127.0.0.1") {
		t.Errorf("poll from another address = %d %s, want 409 without the token", code, out)
	}
	var pr contract.PollResponse
	if json.Unmarshal([]byte(out), &pr) == nil && pr.Token != "" {
		t.Error("the second address got a token")
	}
	d, _ := b.st.Device(context.Background(), victim)
	if d.IP != "127.0.0.1" {
		t.Errorf("the board's recorded address moved to %s", d.IP)
	}
	code, out = send(t, attacker, "GET", p.URL, "")
	if code != http.StatusForbidden {
		t.Errorf("the attacker's download = %d, want 403", code)
	}
	resp, err := http.Get(p.URL)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || sha(body) != sha(img) {
		t.Errorf("the real board's download = %d (%d bytes), want the image", resp.StatusCode, len(body))
	}
}

// Security item 2: a deploy is done only after the server streamed the
// whole image to that action, for every client (cm4agent too), counting
// the parts of a resumed download.
func TestHostileDeployDoneWithoutProof(t *testing.T) {
	dir := t.TempDir()
	golden := filepath.Join(dir, "golden.img")
	img := makeImage(t, golden, 3<<20)
	b := startServer(t, dir, golden)
	agentDone := func(mac string, p contract.PollResponse) (int, string) {
		body := `{"mac":"` + mac + `","action_id":"` + p.ActionID + `","token":"` + p.Token + `","status":"success","sha256":"` + sha(img) + `"}`
		req, _ := http.NewRequest("POST", b.base+contract.PathActionDone, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("User-Agent", contract.AgentUserAgent+"/test")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		out, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(out)
	}
	get := func(url, rng string) []byte {
		req, _ := http.NewRequest("GET", url, nil)
		req.Header.Set("User-Agent", contract.AgentUserAgent+"/test")
		if rng != "" {
			req.Header.Set("Range", rng)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		out, _ := io.ReadAll(resp.Body)
		return out
	}
	for _, tt := range []struct {
		name  string
		fetch func(p contract.PollResponse)
		ok    bool
	}{
		{"status ok after only a poll (shell form)", nil, false},
		{"agent reports success with the right sha256, nothing downloaded", func(contract.PollResponse) {}, false},
		{"half the image downloaded", func(p contract.PollResponse) { get(p.URL, "bytes=0-1572863") }, false},
		{"resumed download in two parts", func(p contract.PollResponse) {
			get(p.URL, "bytes=0-1048575")
			get(p.URL, "bytes=1048576-")
		}, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			mac := "dc:a6:32:00:93:" + hex2(len(tt.name))
			b.register(mac)
			var a contract.Action
			b.admin("POST", "/api/v1/devices/"+mac+"/action", contract.SetActionRequest{Action: "deploy"}, 200, &a)
			p := b.poll(mac)
			var code int
			var out string
			if tt.fetch == nil {
				c, o := b.call("POST", contract.PathActionDone, []byte(`{"mac":"`+mac+`","status":"ok"}`), "")
				code, out = c, string(o)
			} else {
				tt.fetch(p)
				code, out = agentDone(mac, p)
			}
			got, _ := b.st.ActionByID(context.Background(), a.ID)
			if tt.ok {
				if code != 200 || got.State != contract.StateDone {
					t.Fatalf("done after a whole (resumed) download = %d %s, action %s %q", code, out, got.State, got.Error)
				}
				if b.st.NetbootEnabled(hwAddr(t, mac)) {
					t.Error("netboot still on after a proven deploy")
				}
				return
			}
			if got.State == contract.StateDone || !strings.Contains(got.Error, "whole image went out") {
				t.Errorf("action %s %q after %s", got.State, got.Error, tt.name)
			}
			if !b.st.NetbootEnabled(hwAddr(t, mac)) {
				t.Error("netboot switched off without proof")
			}
		})
	}
}

func hex2(n int) string { return strings.ToLower(strconv.FormatInt(int64(n%256)+256, 16)[1:]) }

// Security item 3: two simultaneous uploads to one backup URL: the second
// is refused at once, before it writes anything, and one backup is recorded.
func TestHostileTwoUploadsOneBackup(t *testing.T) {
	dir := t.TempDir()
	b := startServer(t, dir, "")
	const mac = "dc:a6:32:00:94:01"
	b.register(mac)
	var a contract.Action
	b.admin("POST", "/api/v1/devices/"+mac+"/action", contract.SetActionRequest{Action: "backup"}, 200, &a)
	p := b.poll(mac)
	pr, pw := io.Pipe()
	first := make(chan int, 1)
	go func() {
		req, _ := http.NewRequest("PUT", p.UploadURL, pr)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			first <- 0
			return
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		first <- resp.StatusCode
	}()
	data := bytes.Repeat([]byte("backup "), 100000)
	pw.Write(data[:1000]) // the first upload is under way
	b.waitFor("the first upload to start", func() bool {
		entries, _ := os.ReadDir(filepath.Join(dir, "backups"))
		return len(entries) > 0
	})
	code, out := send(t, http.DefaultClient, "PUT", p.UploadURL, "a second upload")
	if code != http.StatusConflict || !strings.Contains(out, "already in progress") {
		t.Errorf("second upload = %d %s, want 409", code, out)
	}
	pw.Write(data[1000:])
	pw.Close()
	if c := <-first; c != http.StatusCreated {
		t.Fatalf("first upload = %d", c)
	}
	bs, _ := b.st.Backups(context.Background())
	n := 0
	for _, bk := range bs {
		if bk.ActionID == a.ID {
			n++
			if bk.Size != int64(len(data)) {
				t.Errorf("recorded backup of %d bytes, want %d", bk.Size, len(data))
			}
		}
	}
	if n != 1 {
		t.Errorf("%d backups recorded for one action", n)
	}
	code, out = send(t, http.DefaultClient, "PUT", p.UploadURL, "late")
	if code == http.StatusCreated {
		t.Errorf("an upload after the first was stored: %s", out)
	}
}

// Security item 12: the data directory is 0750 at most, and the database
// (with its WAL) and every stored backup are 0600.
func TestDataPermissions(t *testing.T) {
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	b := startServer(t, dir, "")
	const mac = "dc:a6:32:00:95:01"
	b.register(mac)
	b.admin("POST", "/api/v1/devices/"+mac+"/action", contract.SetActionRequest{Action: "backup"}, 200, nil)
	p := b.poll(mac)
	if code, out := send(t, http.DefaultClient, "PUT", p.UploadURL, strings.Repeat("disk", 1000)); code != http.StatusCreated {
		t.Fatalf("upload = %d %s", code, out)
	}
	for _, f := range []string{"cm4bench.db", "cm4bench.db-wal", "admin-token"} {
		if fi, err := os.Stat(filepath.Join(dir, f)); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v (%v), want 0600", f, fi.Mode(), err)
		}
	}
	entries, _ := os.ReadDir(filepath.Join(dir, "backups"))
	for _, e := range entries {
		if fi, _ := e.Info(); fi.Mode().Perm() != 0o600 {
			t.Errorf("backup %s: mode %v, want 0600", e.Name(), fi.Mode())
		}
	}
	if len(entries) == 0 {
		t.Error("no backup stored")
	}
}

// Security item 10: a server killed mid-upload leaves a temp file and a
// running backup. The next start removes the file, fails the backup with
// the reason, and its old token takes no new upload. Tokens also expire.
func TestCrashRecoveryAndTokenLifetime(t *testing.T) {
	dir := t.TempDir()
	b := startServer(t, dir, "")
	const mac = "dc:a6:32:00:96:01"
	b.register(mac)
	var a contract.Action
	b.admin("POST", "/api/v1/devices/"+mac+"/action", contract.SetActionRequest{Action: "backup"}, 200, &a)
	p := b.poll(mac)
	b.stop()
	// what a SIGKILL mid-upload leaves: the upload's temp file
	bdir := filepath.Join(dir, "backups")
	os.MkdirAll(bdir, 0o750)
	tmp := filepath.Join(bdir, ".dc-a6-32-00-96-01-noserial-a"+a.ID+"-20261202T120000Z.img.tmp-123456")
	os.WriteFile(tmp, bytes.Repeat([]byte{1}, 84<<10), 0o600)
	os.MkdirAll(filepath.Join(dir, "images"), 0o750)
	itmp := filepath.Join(dir, "images", ".big.img.tmp-42")
	os.WriteFile(itmp, []byte("half an image"), 0o600)

	b = startServer(t, dir, "")
	b.waitFor("recovery", func() bool {
		_, e1 := os.Stat(tmp)
		_, e2 := os.Stat(itmp)
		a, _ := b.st.ActionByID(context.Background(), a.ID)
		return os.IsNotExist(e1) && os.IsNotExist(e2) && a.State == contract.StateFailed
	})
	got, _ := b.st.ActionByID(context.Background(), a.ID)
	if got.State != contract.StateFailed || !strings.Contains(got.Error, "server stopped while this backup was being uploaded") {
		t.Errorf("interrupted backup after the restart: %s %q", got.State, got.Error)
	}
	u, _ := url.Parse(p.UploadURL) // the restarted server has another port
	if code, out := send(t, http.DefaultClient, "PUT", b.base+u.RequestURI(), "a new upload on the old token"); code != http.StatusGone {
		t.Errorf("upload with the old token = %d %s, want 410", code, out)
	}
	b.stop()

	// An action older than its lifetime is failed, and its token dies.
	b = startServer(t, dir, "", func(s *api.Server) { s.ActionLifetime = time.Millisecond })
	const mac2 = "dc:a6:32:00:96:02"
	b.register(mac2)
	var a2 contract.Action
	b.admin("POST", "/api/v1/devices/"+mac2+"/action", contract.SetActionRequest{Action: "backup"}, 200, &a2)
	time.Sleep(5 * time.Millisecond)
	if p := b.poll(mac2); p.Token != "" || p.Action != contract.ActionNone {
		t.Errorf("poll of an expired action: %+v", p)
	}
	got, _ = b.st.ActionByID(context.Background(), a2.ID)
	if got.State != contract.StateFailed || !strings.Contains(got.Error, "expired") {
		t.Errorf("expired action: %s %q", got.State, got.Error)
	}
}

// Security item 5: a backup is capped at the board's reported eMMC size
// (decoding stops there: a small zstd bomb costs no more than that) and at
// the free space minus the reserve. Nothing is recorded or left behind.
func TestHostileOversizedBackups(t *testing.T) {
	zstdBin := requireTool(t, "zstd")
	dir := t.TempDir()
	b := startServer(t, dir, "")
	ctx := context.Background()
	backup := func(mac string, facts string) (contract.PollResponse, string) {
		t.Helper()
		if code, out := b.call("POST", contract.PathRegister, []byte(`{"mac":"`+mac+`","ip":"127.0.0.1"`+facts+`}`), ""); code != 200 {
			t.Fatalf("register = %d %s", code, out)
		}
		var a contract.Action
		b.admin("POST", "/api/v1/devices/"+mac+"/action", contract.SetActionRequest{Action: "backup"}, 200, &a)
		return b.poll(mac), a.ID
	}
	// A board that reported an 8 MiB eMMC uploads 9 MiB raw.
	p, id := backup("dc:a6:32:00:97:01", `,"facts":{"emmc_bytes":8388608}`)
	code, out := send(t, http.DefaultClient, "PUT", p.UploadURL, strings.Repeat("x", 9<<20))
	if code != http.StatusRequestEntityTooLarge || !strings.Contains(out, "larger than the board's eMMC") {
		t.Errorf("9 MiB raw from an 8 MiB board = %d %s", code, out)
	}
	b.assertNothingComplete("dc:a6:32:00:97:01", id, "larger than the board's eMMC")

	// A 1 GiB zstd bomb (a few hundred KB on the wire) from the same kind of board.
	bomb := filepath.Join(t.TempDir(), "bomb.zst")
	cmd := exec.Command("sh", "-c", "head -c 1073741824 /dev/zero | "+zstdBin+" -q -19 -o "+bomb)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make the bomb: %v %s", err, out)
	}
	p, id = backup("dc:a6:32:00:97:02", `,"facts":{"emmc_bytes":8388608}`)
	f, _ := os.Open(bomb)
	req, _ := http.NewRequest("PUT", p.UploadURL, f)
	req.Header.Set("Content-Encoding", "zstd")
	resp, err := http.DefaultClient.Do(req)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("zstd bomb = %d %s", resp.StatusCode, body)
	}
	b.assertNothingComplete("dc:a6:32:00:97:02", id, "larger than the board's eMMC")
	b.stop()

	// A reserve larger than the free space refuses any backup at once.
	b = startServer(t, dir, "", func(s *api.Server) { s.DiskReserve = 1 << 60 })
	p, id = backup("dc:a6:32:00:97:03", "")
	code, out = send(t, http.DefaultClient, "PUT", p.UploadURL, "some disk")
	if code != http.StatusInsufficientStorage || !strings.Contains(out, "reserve") {
		t.Errorf("upload past the reserve = %d %s", code, out)
	}
	b.assertNothingComplete("dc:a6:32:00:97:03", id, "reserve")
	bs, _ := b.st.Backups(ctx)
	if len(bs) != 0 {
		t.Errorf("backups recorded: %+v", bs)
	}
}

func requireTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not installed (scripts/deps.sh installs it): %v", name, err)
	}
	return p
}

// Security item 9: the login cookie is a server-side session, never the
// admin token; logout revokes it; a rotation ends every session and the
// old token; failed logins are events; a cookie write must come from the
// dashboard's origin with a non-form content type.
func TestSessions(t *testing.T) {
	dir := t.TempDir()
	b := startServer(t, dir, "")
	login := func() *http.Cookie {
		t.Helper()
		resp, err := http.Post(b.base+contract.PathLogin, "application/json", strings.NewReader(`{"token":"`+b.token+`"}`))
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("login: %v %v", resp.StatusCode, err)
		}
		resp.Body.Close()
		for _, c := range resp.Cookies() {
			if c.Name == contract.CookieSession {
				return c
			}
		}
		t.Fatal("no session cookie")
		return nil
	}
	withCookie := func(c *http.Cookie, method, path, ctype, origin, body string) int {
		req, _ := http.NewRequest(method, b.base+path, strings.NewReader(body))
		req.AddCookie(c)
		if ctype != "" {
			req.Header.Set("Content-Type", ctype)
		}
		if origin != "" {
			req.Header.Set("Origin", origin)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	ck := login()
	if ck.Value == b.token || strings.Contains(ck.Value, b.token) {
		t.Fatal("the session cookie carries the admin token")
	}
	if code := withCookie(ck, "GET", "/api/v1/status", "", "", ""); code != 200 {
		t.Errorf("status with the session = %d", code)
	}
	// writes: same origin and JSON only
	host := strings.TrimPrefix(b.base, "http://")
	if code := withCookie(ck, "PUT", "/api/v1/netboot", "application/json", "http://evil.example", `{"enabled":true}`); code != 403 {
		t.Errorf("cross-origin write = %d, want 403", code)
	}
	if code := withCookie(ck, "PUT", "/api/v1/netboot", "text/plain", "http://"+host, `{"enabled":true}`); code != 403 {
		t.Errorf("text/plain write = %d, want 403", code)
	}
	if code := withCookie(ck, "PUT", "/api/v1/netboot", "application/json", "http://"+host, `{"enabled":true}`); code != 200 {
		t.Errorf("same-origin JSON write = %d, want 200", code)
	}
	// logout revokes the session: replaying the cookie fails
	if code := withCookie(ck, "POST", contract.PathLogout, "application/json", "", ""); code != 200 {
		t.Fatalf("logout = %d", code)
	}
	if code := withCookie(ck, "GET", "/api/v1/status", "", "", ""); code != 401 {
		t.Errorf("status with the logged-out cookie = %d, want 401", code)
	}
	// a failed login is an event
	resp, _ := http.Post(b.base+contract.PathLogin, "application/json", strings.NewReader(`{"token":"guess"}`))
	resp.Body.Close()
	evs, _ := b.st.Events(context.Background(), 0, 1000)
	failed := false
	for _, e := range evs {
		failed = failed || e.Kind == contract.EventAuthFailed
	}
	if !failed {
		t.Error("no auth.failed event after a wrong login")
	}
	// rotation: a new token, the old one and every session dead
	ck2 := login()
	c := &client.Client{BaseURL: b.base, Token: b.token}
	tok, err := c.RotateToken(context.Background())
	if err != nil || tok == b.token {
		t.Fatalf("rotate: %q %v", tok, err)
	}
	if onDisk, _ := os.ReadFile(filepath.Join(dir, contract.FileAdminToken)); strings.TrimSpace(string(onDisk)) != tok {
		t.Error("admin-token file not rewritten")
	}
	if code, _ := b.call("GET", "/api/v1/status", nil, b.token); code != 401 {
		t.Errorf("old token after rotation = %d, want 401", code)
	}
	if code, _ := b.call("GET", "/api/v1/status", nil, tok); code != 200 {
		t.Errorf("new token = %d", code)
	}
	if code := withCookie(ck2, "GET", "/api/v1/status", "", "", ""); code != 401 {
		t.Errorf("session after rotation = %d, want 401", code)
	}
}

// Security item 13: /metrics is served only on the admin address, and a
// request naming a host that is not the server's (DNS rebinding through
// 127.0.0.1) is refused.
func TestMetricsAndHostGuard(t *testing.T) {
	b := startServer(t, t.TempDir(), "")
	req, _ := http.NewRequest("GET", b.base+"/api/v1/status", nil)
	req.Host = "rebind.example:5000"
	req.Header.Set("Authorization", "Bearer "+b.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMisdirectedRequest {
		t.Errorf("request with a foreign Host = %d, want 421", resp.StatusCode)
	}
	for _, h := range []string{"localhost:5000", "127.0.0.1:5000", "[::1]:5000", "10.42.0.1"} {
		req.Host = h
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("Host %s = %d", h, resp.StatusCode)
		}
	}
	if code, out := b.call("GET", contract.PathMetrics, nil, ""); code != 200 || !strings.Contains(string(out), "cm4bench_devices") {
		t.Errorf("metrics on loopback = %d", code)
	}
}

// Security item 6: slow clients. Half-sent JSON bodies are cut off after
// the body timeout; one address cannot hold more than its share of
// connections; an upload that trickles (a byte a while) is failed.
func TestHostileSlowClients(t *testing.T) {
	dir := t.TempDir()
	b := startServer(t, dir, "", func(s *api.Server) {
		s.BodyTimeout, s.MaxConnsPerIP = 500*time.Millisecond, 8
		s.UploadIdle, s.MinUploadRate = time.Second, 1000
	})
	addr := strings.TrimPrefix(b.base, "http://")
	dialFrom := func(ip string) net.Conn {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 2 * time.Second}
		c, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	// closedWithin reports whether the server closes c within d.
	closedWithin := func(c net.Conn, d time.Duration) bool {
		c.SetReadDeadline(time.Now().Add(d))
		buf := make([]byte, 4096)
		for {
			if _, err := c.Read(buf); err != nil {
				var ne net.Error
				return !(errors.As(err, &ne) && ne.Timeout())
			}
		}
	}
	// a half-sent body is cut off
	c := dialFrom("127.0.0.7")
	fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"mac\":", contract.PathRegister, addr)
	if !closedWithin(c, 5*time.Second) {
		t.Error("a half-sent body held its connection past the body timeout")
	}
	c.Close()
	// the ninth connection from one address is closed at once; another address is served
	var held []net.Conn
	for range 8 {
		held = append(held, dialFrom("127.0.0.8"))
	}
	extra := dialFrom("127.0.0.8")
	if !closedWithin(extra, 2*time.Second) {
		t.Error("a ninth connection from one address was kept")
	}
	extra.Close()
	if code, out := send(t, clientFrom("127.0.0.9"), "GET", b.base+contract.PathPoll+"?mac=dc:a6:32:00:98:09", ""); code != 404 {
		t.Errorf("another address while one is at its cap: %d %s", code, out)
	}
	for _, h := range held {
		h.Close()
	}
	// a trickling upload is failed
	const mac = "dc:a6:32:00:98:01"
	b.register(mac)
	var a contract.Action
	b.admin("POST", "/api/v1/devices/"+mac+"/action", contract.SetActionRequest{Action: "backup"}, 200, &a)
	p := b.poll(mac)
	pr, pw := io.Pipe()
	go func() {
		defer pw.Close()
		for range 20 {
			if _, err := pw.Write([]byte{1}); err != nil {
				return
			}
			time.Sleep(300 * time.Millisecond)
		}
	}()
	req, _ := http.NewRequest("PUT", p.UploadURL, pr)
	resp, err := http.DefaultClient.Do(req)
	if err == nil {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusCreated {
			t.Fatalf("a trickling upload was stored: %s", body)
		}
	}
	b.waitFor("the trickling upload to be failed", func() bool {
		got, _ := b.st.ActionByID(context.Background(), a.ID)
		return got.State == contract.StateFailed
	})
	b.assertNothingComplete(mac, a.ID, "slower than the minimum")
}

// Security item 4: one address posting logs and registers as fast as it
// can is rate-limited, stored facts and log posts are capped, and the event
// log is pruned to its bound.
func TestHostileFloodBounded(t *testing.T) {
	dir := t.TempDir()
	b := startServer(t, dir, "", func(s *api.Server) { s.EventMaxCount, s.PruneEvery = 300, 50*time.Millisecond })
	const mac = "dc:a6:32:00:99:01"
	b.register(mac)
	flood := clientFrom("127.0.0.11")
	limited := 0
	for i := range 1000 {
		code, _ := send(t, flood, "POST", b.base+contract.PathLog, `{"mac":"`+mac+`","lines":["line `+strconv.Itoa(i)+` `+strings.Repeat("x", 500)+`"]}`)
		if code == http.StatusTooManyRequests {
			limited++
		}
	}
	if limited < 800 {
		t.Errorf("only %d of 1000 flood posts were rate-limited", limited)
	}
	// another address is still served
	if code, out := send(t, clientFrom("127.0.0.12"), "POST", b.base+contract.PathRegister, `{"mac":"dc:a6:32:00:99:02"}`); code != 200 {
		t.Errorf("another address during the flood: %d %s", code, out)
	}
	for i := range 500 {
		b.st.Emit(context.Background(), contract.Event{Kind: contract.EventDeviceLog, MAC: mac, Message: "filler " + strconv.Itoa(i)})
	}
	b.waitFor("the event log to be pruned", func() bool {
		n, _ := b.st.EventCount(context.Background())
		return n <= 300
	})
	// caps
	big := `{"mac":"dc:a6:32:00:99:03","facts":{"model":"` + strings.Repeat("m", 5000) + `"}}`
	if code, _ := send(t, clientFrom("127.0.0.13"), "POST", b.base+contract.PathRegister, big); code != http.StatusRequestEntityTooLarge {
		t.Errorf("5 KB of facts = %d, want 413", code)
	}
	var lines []string
	for range 201 {
		lines = append(lines, `"l"`)
	}
	if code, _ := send(t, clientFrom("127.0.0.14"), "POST", b.base+contract.PathLog, `{"mac":"`+mac+`","lines":[`+strings.Join(lines, ",")+`]}`); code != http.StatusRequestEntityTooLarge {
		t.Errorf("201 log lines = %d, want 413", code)
	}
}
