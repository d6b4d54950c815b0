package api_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cm4bench/cm4bench/api"
	"github.com/cm4bench/cm4bench/internal/contract"
)

// poll polls as the device and returns the answer.
func (b *bench) poll(mac string) contract.PollResponse {
	b.t.Helper()
	code, out := b.call("GET", contract.PathPoll+"?mac="+mac, nil, "")
	var p contract.PollResponse
	if code != 200 || json.Unmarshal(out, &p) != nil {
		b.t.Fatalf("poll %s = %d %s", mac, code, out)
	}
	return p
}

// download fetches the image of the deploy p announced, as a board does.
func (b *bench) download(p contract.PollResponse) []byte {
	b.t.Helper()
	resp, err := http.Get(p.URL)
	if err != nil {
		b.t.Fatal(err)
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	if err != nil {
		b.t.Fatal(err)
	}
	return got
}

func (b *bench) register(mac string) {
	b.t.Helper()
	if code, out := b.call("POST", contract.PathRegister, []byte(`{"mac":"`+mac+`","ip":"127.0.0.1"}`), ""); code != 200 {
		b.t.Fatalf("register %s = %d %s", mac, code, out)
	}
}

// assertNothingComplete checks the aftermath of a refused or failed
// action: the action is failed with a reason, no backup is recorded, no
// file (not even a temp file) is left in the backups dir, and netboot is
// still on for the MAC.
func (b *bench) assertNothingComplete(mac, actionID, reason string) {
	b.t.Helper()
	a, err := b.st.ActionByID(context.Background(), actionID)
	if err != nil {
		b.t.Fatal(err)
	}
	if a.State != contract.StateFailed || !strings.Contains(a.Error, reason) {
		b.t.Errorf("action %s = %s %q, want failed with %q", actionID, a.State, a.Error, reason)
	}
	bs, _ := b.st.Backups(context.Background())
	for _, bk := range bs {
		if bk.ActionID == actionID {
			b.t.Errorf("backup %+v recorded for the failed action", bk)
		}
	}
	if des, _ := os.ReadDir(filepath.Join(b.dir, "backups")); len(des) > 0 {
		var names []string
		for _, de := range des {
			names = append(names, de.Name())
		}
		b.t.Errorf("files left in the backups dir: %v", names)
	}
	if !b.st.NetbootEnabled(hwAddr(b.t, mac)) {
		b.t.Errorf("netboot of %s was switched off by a failed action", mac)
	}
}

func TestBadDeviceInput(t *testing.T) {
	dir := t.TempDir()
	makeImage(t, filepath.Join(dir, "golden.img"), 1<<20)
	b := startServer(t, dir, filepath.Join(dir, "golden.img"))
	const mac = "dc:a6:32:00:50:01"
	b.register(mac)
	var a contract.Action
	b.admin("POST", "/api/v1/devices/"+mac+"/action", contract.SetActionRequest{Action: "deploy"}, 200, &a)
	p := b.poll(mac)
	imgPath := strings.TrimPrefix(p.URL, b.base)
	imgBase, _, _ := strings.Cut(imgPath, "?")
	big := []byte(`{"mac":"` + mac + `","ip":"127.0.0.1","facts":{"model":"` + strings.Repeat("x", 100<<10) + `"}}`)

	for _, tt := range []struct {
		name, method, path string
		body               string
		raw                []byte
		token              string
		want               int
		msg                string
	}{
		{"register malformed mac json", "POST", contract.PathRegister, `{"mac":"dc:a6:32:zz:00:01"}`, nil, "", 400, "malformed MAC"},
		{"register malformed mac form", "POST", contract.PathRegister, `mac=12345&ip=1.2.3.4`, nil, "", 400, "malformed MAC"},
		{"register missing mac", "POST", contract.PathRegister, `ip=1.2.3.4`, nil, "", 400, "missing mac"},
		{"register malformed ip", "POST", contract.PathRegister, `{"mac":"` + mac + `","ip":"1.2.3"}`, nil, "", 400, "malformed ip"},
		{"register broken json", "POST", contract.PathRegister, `{"mac":`, nil, "", 400, "malformed JSON"},
		{"register oversized json", "POST", contract.PathRegister, "", big, "", 413, "larger than"},
		{"register bad serial", "POST", contract.PathRegister, `{"mac":"` + mac + `","facts":{"serial":"../../x"}}`, nil, "", 400, "malformed serial"},
		{"poll malformed mac", "GET", contract.PathPoll + "?mac=nonsense", "", nil, "", 400, "malformed MAC"},
		{"poll unknown mac", "GET", contract.PathPoll + "?mac=dc:a6:32:ff:ff:ff", "", nil, "", 404, "register first"},
		{"done unknown mac", "POST", contract.PathActionDone, `{"mac":"dc:a6:32:ff:ff:fe"}`, nil, "", 404, "unknown device"},
		{"done wrong action type", "POST", contract.PathActionDone, `{"mac":"` + mac + `","action":"backup"}`, nil, "", 409, "is a deploy"},
		{"done wrong token", "POST", contract.PathActionDone, `{"mac":"` + mac + `","token":"0123456789abcdef0123456789abcdef"}`, nil, "", 403, "wrong token"},
		{"progress wrong token", "POST", contract.PathProgress, `{"mac":"` + mac + `","action_id":"` + a.ID + `","token":"bad","phase":"write","done":1,"total":2}`, nil, "", 403, "wrong token"},
		{"progress other device", "POST", contract.PathProgress, `{"mac":"dc:a6:32:00:50:02","action_id":"` + a.ID + `","token":"` + a.ID + `","phase":"write"}`, nil, "", 403, "another device"},
		{"progress unknown field", "POST", contract.PathProgress, `{"mac":"` + mac + `","bogus":1}`, nil, "", 400, "unknown field"},
		{"image wrong token", "GET", imgBase + "?token=00000000000000000000000000000000", "", nil, "", 403, "wrong or missing token"},
		{"image no token", "GET", imgBase, "", nil, "", 403, "wrong or missing token"},
		{"image unknown action", "GET", contract.PathImage + "/999?token=x", "", nil, "", 404, "no action"},
		{"backup url of a deploy", "PUT", strings.Replace(imgPath, contract.PathImage, contract.PathBackup, 1), "data", nil, "", 409, "not a backup"},
		{"tech malformed mac", "POST", "/api/v1/devices/xx/action", `{"action":"deploy"}`, nil, b.token, 400, "malformed MAC"},
		{"tech unknown mac", "POST", "/api/v1/devices/dc:a6:32:ff:ff:fd/action", `{"action":"deploy"}`, nil, b.token, 404, "unknown device"},
		{"tech unknown action", "POST", "/api/v1/devices/" + mac + "/action", `{"action":"format"}`, nil, b.token, 400, "unknown action"},
		{"tech unknown image", "POST", "/api/v1/devices/" + mac + "/action", `{"action":"deploy","image":"nope.img"}`, nil, b.token, 404, "no such image"},
		{"tech bad image name", "POST", "/api/v1/images?name=../evil.img", "x", nil, b.token, 400, "bad image name"},
		{"tech oversized json", "PUT", "/api/v1/netboot", "", big, b.token, 413, "larger than"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b.t = t
			body := tt.raw
			if body == nil && tt.body != "" {
				body = []byte(tt.body)
			}
			code, out := b.call(tt.method, tt.path, body, tt.token)
			var e contract.APIError
			if code != tt.want || json.Unmarshal(out, &e) != nil || !strings.Contains(e.Error, tt.msg) {
				t.Errorf("%s %s = %d %s, want %d with %q", tt.method, tt.path, code, out, tt.want, tt.msg)
			}
		})
	}
	b.t = t
	// None of that touched the action or the switch.
	if got, _ := b.st.ActionByID(context.Background(), a.ID); got.State != contract.StateRunning {
		t.Errorf("action after bad input = %s, want running", got.State)
	}
	if !b.st.NetbootEnabled(hwAddr(t, mac)) {
		t.Error("netboot switched off by bad input")
	}

	// Only the device that polled may fetch: another loopback address is refused.
	cl := &http.Client{Transport: &http.Transport{DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}).DialContext}}
	resp, err := cl.Get(p.URL)
	if err != nil {
		t.Fatal(err)
	}
	msg, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 403 || !strings.Contains(string(msg), "127.0.0.2") {
		t.Errorf("image from another address = %d %s, want 403", resp.StatusCode, msg)
	}

	// The shell client reporting done without ever receiving the whole image
	// is not a success.
	code, out := b.call("POST", contract.PathActionDone, []byte("mac="+mac), "")
	if code != 200 {
		t.Fatalf("action-done = %d %s", code, out)
	}
	b.assertNothingComplete(mac, a.ID, "a deploy is done only after the whole image went out")

	// The token expired with the action.
	resp, err = http.Get(p.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusGone {
		t.Errorf("image after the action ended = %d, want 410", resp.StatusCode)
	}
	if code, out := b.call("POST", contract.PathActionDone, []byte("mac="+mac), ""); code != 409 {
		t.Errorf("second action-done = %d %s, want 409", code, out)
	}
}

// cutUpload sends headers announcing size bytes, then only half, then
// closes the connection.
func cutUpload(t *testing.T, rawURL string, size int) {
	t.Helper()
	u := strings.TrimPrefix(rawURL, "http://")
	host, path, _ := strings.Cut(u, "/")
	c, err := net.Dial("tcp", host)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "PUT /%s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\nUser-Agent: curl/8\r\n\r\n", path, host, size)
	c.Write(bytes.Repeat([]byte{0xa5}, size/2))
	c.(*net.TCPConn).CloseWrite()
	bufio.NewReader(c).ReadString('\n') // the server's answer, if any
}

func TestBackupFailures(t *testing.T) {
	dir := t.TempDir()
	// No reserve: the disk-full case below fills a small tmpfs for real.
	b := startServer(t, dir, "", func(s *api.Server) { s.DiskReserve = -1 })
	ctx := context.Background()

	t.Run("cut mid-stream", func(t *testing.T) {
		b.t = t
		const mac = "dc:a6:32:00:60:01"
		b.register(mac)
		var a contract.Action
		b.admin("POST", "/api/v1/devices/"+mac+"/action", contract.SetActionRequest{Action: "backup"}, 200, &a)
		p := b.poll(mac)
		cutUpload(t, p.UploadURL, 4<<20)
		b.waitFor("the action to fail", func() bool {
			got, _ := b.st.ActionByID(ctx, a.ID)
			return got.State == contract.StateFailed
		})
		b.assertNothingComplete(mac, a.ID, "cut after")
		// The device then reports done, as the shell client does: refused.
		if code, out := b.call("POST", contract.PathActionDone, []byte(`{"mac":"`+mac+`"}`), ""); code != 409 {
			t.Errorf("action-done after a cut upload = %d %s, want 409", code, out)
		}
	})

	t.Run("stalled mid-stream", func(t *testing.T) {
		// A board whose link goes down sends nothing more and never closes
		// its side: the idle timeout fails the action in seconds.
		sb := startServer(t, t.TempDir(), "", func(s *api.Server) { s.UploadIdle = 300 * time.Millisecond })
		const mac = "dc:a6:32:00:60:09"
		sb.register(mac)
		var a contract.Action
		sb.admin("POST", "/api/v1/devices/"+mac+"/action", contract.SetActionRequest{Action: "backup"}, 200, &a)
		p := sb.poll(mac)
		host, path, _ := strings.Cut(strings.TrimPrefix(p.UploadURL, "http://"), "/")
		c, err := net.Dial("tcp", host)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "PUT /%s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\nUser-Agent: curl/8\r\n\r\n", path, host, 4<<20)
		c.Write(bytes.Repeat([]byte{0xa5}, 1<<20))
		sb.waitFor("the stalled upload to fail", func() bool {
			got, _ := sb.st.ActionByID(ctx, a.ID)
			return got.State == contract.StateFailed
		})
		sb.assertNothingComplete(mac, a.ID, "no data from the board for 300ms")
	})

	t.Run("done without upload", func(t *testing.T) {
		b.t = t
		const mac = "dc:a6:32:00:60:02"
		b.register(mac)
		var a contract.Action
		b.admin("POST", "/api/v1/devices/"+mac+"/action", contract.SetActionRequest{Action: "backup"}, 200, &a)
		b.poll(mac)
		b.call("POST", contract.PathActionDone, []byte(`{"mac":"`+mac+`","action":"backup"}`), "")
		b.assertNothingComplete(mac, a.ID, "backup upload did not complete")
	})

	t.Run("not zstd", func(t *testing.T) {
		b.t = t
		const mac = "dc:a6:32:00:60:03"
		b.register(mac)
		var a contract.Action
		b.admin("POST", "/api/v1/devices/"+mac+"/action", contract.SetActionRequest{Action: "backup"}, 200, &a)
		p := b.poll(mac)
		req, _ := http.NewRequest("PUT", p.UploadURL, bytes.NewReader(bytes.Repeat([]byte("not zstd"), 1000)))
		req.Header.Set("Content-Encoding", "zstd")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 400 {
			t.Errorf("garbage zstd upload = %d, want 400", resp.StatusCode)
		}
		b.assertNothingComplete(mac, a.ID, "not a valid zstd stream")
	})

	t.Run("raw sha256 trailer", func(t *testing.T) {
		b.t = t
		const mac = "dc:a6:32:00:60:05"
		b.register(mac)
		zst, err := exec.Command("sh", "-c", "head -c 300000 /dev/zero | tr '\\0' k | zstd -c").Output()
		if err != nil {
			t.Fatal(err)
		}
		for _, tt := range []struct {
			sum  string
			want int
		}{
			{sha(bytes.Repeat([]byte("k"), 300000)), 201},
			{sha([]byte("something else")), 400},
		} {
			var a contract.Action
			b.admin("POST", "/api/v1/devices/"+mac+"/action", contract.SetActionRequest{Action: "backup"}, 200, &a)
			p := b.poll(mac)
			// As the agent sends it: zstd, chunked, raw sha256 in a trailer.
			req, _ := http.NewRequest("PUT", p.UploadURL, io.MultiReader(bytes.NewReader(zst)))
			req.ContentLength = -1
			req.Trailer = http.Header{contract.HeaderRawSHA256: []string{tt.sum}}
			req.Header.Set("Content-Encoding", "zstd")
			req.Header.Set("User-Agent", contract.AgentUserAgent+"/test")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			msg, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.want {
				t.Errorf("upload with trailer sha %s = %d %s, want %d", tt.sum, resp.StatusCode, msg, tt.want)
			}
			if tt.want != 201 {
				got, _ := b.st.ActionByID(ctx, a.ID)
				if got.State != contract.StateFailed || !strings.Contains(got.Error, "raw sha256") {
					t.Errorf("action after a sha mismatch = %s %q", got.State, got.Error)
				}
			} else {
				b.call("POST", contract.PathActionDone, []byte(`{"mac":"`+mac+`"}`), "")
			}
		}
		bs, _ := b.st.Backups(ctx)
		for _, bk := range bs { // keep the dir clean for the next subtests
			if bk.MAC == mac {
				b.st.DeleteBackup(ctx, bk.ID)
				os.Remove(filepath.Join(dir, "backups", bk.File))
			}
		}
	})

	t.Run("disk full", func(t *testing.T) {
		b.t = t
		if os.Geteuid() != 0 {
			t.Skip("needs root to mount a small tmpfs (CI runs as root)")
		}
		bdir := filepath.Join(dir, "backups")
		os.MkdirAll(bdir, 0o750)
		if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=8m", "cba-full", bdir).CombinedOutput(); err != nil {
			t.Fatalf("mount tmpfs: %v %s", err, out)
		}
		t.Cleanup(func() { exec.Command("umount", bdir).Run() })
		// An earlier backup on the same disk must survive.
		const mac = "dc:a6:32:00:60:04"
		b.register(mac)
		b.admin("POST", "/api/v1/devices/"+mac+"/action", contract.SetActionRequest{Action: "backup"}, 200, nil)
		p := b.poll(mac)
		small := bytes.Repeat([]byte{1, 2, 3, 4}, 256<<10)
		resp, err := http.Post(p.UploadURL, "application/octet-stream", bytes.NewReader(small))
		if err != nil || resp.StatusCode != 201 {
			t.Fatalf("first backup: %v %v", resp.StatusCode, err)
		}
		resp.Body.Close()
		b.call("POST", contract.PathActionDone, []byte(`{"mac":"`+mac+`"}`), "")
		before, _ := os.ReadDir(bdir)

		var a contract.Action
		b.admin("POST", "/api/v1/devices/"+mac+"/action", contract.SetActionRequest{Action: "backup"}, 200, &a)
		p = b.poll(mac)
		req, _ := http.NewRequest("PUT", p.UploadURL, io.LimitReader(zeroReader{}, 16<<20))
		resp, err = http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		msg, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusInsufficientStorage || !strings.Contains(string(msg), "disk full") || strings.Contains(string(msg), dir) {
			t.Errorf("upload to a full disk = %d %s, want 507 saying disk full without server paths", resp.StatusCode, msg)
		}
		got, _ := b.st.ActionByID(ctx, a.ID)
		if got.State != contract.StateFailed || !strings.Contains(got.Error, "disk full") {
			t.Errorf("action = %s %q", got.State, got.Error)
		}
		after, _ := os.ReadDir(bdir)
		if len(after) != len(before) || len(before) != 1 {
			t.Errorf("backups dir before %v after %v: want the one earlier backup only", before, after)
		}
		bs, _ := b.st.Backups(ctx)
		if len(bs) != 1 || fileSHA(t, filepath.Join(bdir, bs[0].File)) != sha(small) {
			t.Errorf("earlier backup damaged or extra records: %+v", bs)
		}
		// The switch was turned back on by the new action and a failure
		// leaves it on.
		if !b.st.NetbootEnabled(hwAddr(t, mac)) {
			t.Error("netboot off after a failed backup")
		}
	})
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// TestLeaseCheck: with the DHCP leases known, a board cannot register or
// poll as another MAC from its address.
func TestLeaseCheck(t *testing.T) {
	dir := t.TempDir()
	const owner, other = "dc:a6:32:00:90:01", "dc:a6:32:00:90:02"
	b := startServer(t, dir, "", func(s *api.Server) {
		s.MACForIP = func(a netip.Addr) (net.HardwareAddr, bool) {
			if a == netip.MustParseAddr("127.0.0.1") {
				return hwAddr(t, owner), true
			}
			return nil, false
		}
	})
	b.register(owner)
	for _, tt := range []struct{ method, path, body string }{
		{"POST", contract.PathRegister, `{"mac":"` + other + `"}`},
		{"GET", contract.PathPoll + "?mac=" + other, ""},
	} {
		code, out := b.call(tt.method, tt.path, []byte(tt.body), "")
		if code != 403 || !strings.Contains(string(out), "leased to "+owner) {
			t.Errorf("%s %s as another MAC = %d %s, want 403", tt.method, tt.path, code, out)
		}
	}
	// An address without a lease (static, NAT) is not refused.
	cl := &http.Client{Transport: &http.Transport{DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.3")}}).DialContext}}
	resp, err := cl.Post(b.base+contract.PathRegister, "application/json", strings.NewReader(`{"mac":"`+other+`"}`))
	if err != nil || resp.StatusCode != 200 {
		t.Errorf("register from an unleased address: %v %v", resp.StatusCode, err)
	}
	resp.Body.Close()
}
