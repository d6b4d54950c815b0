package cli

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cm4bench/cm4bench/internal/contract"
	"github.com/cm4bench/cm4bench/internal/syncbuf"
)

// TestNetbootServeAndClients runs `netboot serve` (HTTP only) in-process and
// drives it with the device, backup and netboot commands, as a technician
// would, plus a device speaking the shell client's protocol.
func TestNetbootServeAndClients(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	golden := make([]byte, 3<<20+5)
	rand.Read(golden)
	img := filepath.Join(dir, "golden.img")
	os.WriteFile(img, golden, 0o644)

	ctx, cancel := context.WithCancel(context.Background())
	var serveOut syncbuf.Buffer // written by the server's announcement goroutine
	done := make(chan error, 1)
	go func() {
		done <- Context{Stdout: &serveOut, Stderr: io.Discard, Args: []string{"netboot", "serve", "--no-dhcp", "--no-tftp",
			"--http", "127.0.0.1:0", "--data", data, "--image", img, "--poll-interval", "100ms"}}.Execute(ctx)
	}()
	var info contract.ServerInfo
	deadline := time.Now().Add(20 * time.Second)
	for {
		b, err := os.ReadFile(filepath.Join(data, contract.FileServerInfo))
		if err == nil && json.Unmarshal(b, &info) == nil && info.URL != "" {
			break
		}
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("server.json never appeared: %v\n%v", err, <-done)
		}
		time.Sleep(20 * time.Millisecond)
	}
	tok, _ := os.ReadFile(filepath.Join(data, contract.FileAdminToken))
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(serveOut.String(), "one-click login") && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(serveOut.String(), strings.TrimSpace(string(tok))) {
		t.Errorf("the new admin token was not printed: %q", serveOut.String())
	}
	if !strings.Contains(serveOut.String(), info.URL+"/?login=") {
		t.Errorf("no one-click login link for %s: %q", info.URL, serveOut.String())
	}

	cli := func(args ...string) (string, error) {
		t.Helper()
		out, _, err := runCLI(t, append(args, "--data", data)...)
		return out, err
	}
	const mac = "dc:a6:32:0a:0b:0c"
	post := func(path, body string) []byte {
		t.Helper()
		resp, err := http.Post(info.URL+path, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("POST %s = %d %s", path, resp.StatusCode, b)
		}
		return b
	}
	post(contract.PathRegister, `{"mac":"`+mac+`","ip":"127.0.0.1","facts":{"serial":"10000abc"}}`)

	out, err := cli("device", "list")
	if err != nil || !strings.Contains(out, mac) || !strings.Contains(out, "10000abc") || !strings.Contains(out, "idle") {
		t.Fatalf("device list = %q, %v", out, err)
	}
	// A board named by the serial on its label.
	if out, err := cli("device", "show", "10000abc"); err != nil || !strings.Contains(out, mac) {
		t.Errorf("device show by serial = %q, %v", out, err)
	}
	if _, err := cli("device", "deploy", "not-a-mac"); ExitCode(err) != 2 || !strings.Contains(err.Error(), "neither a MAC") {
		t.Errorf("deploy with a malformed MAC: exit %d (%v), want 2", ExitCode(err), err)
	}
	if _, err := cli("device", "deploy", "dc:a6:32:ff:ff:ff"); err == nil || !strings.Contains(err.Error(), "unknown device") {
		t.Errorf("deploy to an unknown MAC: %v", err)
	}

	// The bench default image: shown, listed with its mark, chosen and cleared.
	for _, tt := range []struct {
		args []string
		want string
		code int
	}{
		{[]string{"image", "default"}, "bench default image: golden.img", 0},
		{[]string{"image", "list"}, "*        golden.img  raw     3145733", 0},
		{[]string{"image", "default", "golden.img"}, "bench default image: golden.img", 0},
		{[]string{"image", "default", "missing.img"}, "missing.img", 1},
		{[]string{"image", "default", "golden.img", "--clear"}, "not both", 2},
		{[]string{"image", "default", "--clear"}, "bench default image: golden.img", 0},
	} {
		out, err := cli(tt.args...)
		if err != nil {
			out = err.Error()
		}
		if ExitCode(err) != tt.code || !strings.Contains(out, tt.want) {
			t.Errorf("%v: exit %d %q, want exit %d and %q", tt.args, ExitCode(err), out, tt.code, tt.want)
		}
	}

	// Deploy with --wait while a device fetches the image and reports done.
	type result struct {
		out string
		err error
	}
	waited := make(chan result, 1)
	go func() {
		out, _, err := runCLI(t, "device", "deploy", mac, "--wait", "--json", "--data", data)
		waited <- result{out, err}
	}()
	var p contract.PollResponse
	for p.Action != contract.ActionDeploy {
		resp, err := http.Get(info.URL + contract.PathPoll + "?mac=" + mac)
		if err != nil {
			t.Fatal(err)
		}
		json.NewDecoder(resp.Body).Decode(&p)
		resp.Body.Close()
		time.Sleep(20 * time.Millisecond)
	}
	resp, err := http.Get(p.URL)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !bytes.Equal(got, golden) {
		t.Fatalf("image stream: %d bytes", len(got))
	}
	post(contract.PathActionDone, `{"mac":"`+mac+`"}`)
	r := <-waited
	var final []contract.Action
	if r.err != nil || json.Unmarshal([]byte(r.out), &final) != nil || len(final) != 1 || final[0].State != contract.StateDone {
		t.Fatalf("deploy --wait = %q, %v", r.out, r.err)
	}

	// The finished job reads as done in the table, with 100 % in --json.
	if out, err := cli("device", "list"); err != nil || !(strings.Contains(out, "verified ") || strings.Contains(out, " done")) || strings.Contains(out, "polled") {
		t.Errorf("device list after the deploy = %q, %v", out, err)
	}
	if final[0].Total > 0 && final[0].Done != final[0].Total {
		t.Errorf("--json says done at %d of %d bytes", final[0].Done, final[0].Total)
	}

	// After the deploy the board's switch is off.
	out, err = cli("netboot", "status", mac, "--json")
	var st netbootStatus
	if err != nil || json.Unmarshal([]byte(out), &st) != nil || !st.Global || len(st.Devices) != 1 || st.Devices[0].Enabled {
		t.Fatalf("netboot status = %q, %v", out, err)
	}
	if out, err := cli("netboot", "enable", mac); err != nil || !strings.Contains(out, mac+": netboot on") {
		t.Errorf("netboot enable MAC = %q, %v", out, err)
	}
	if out, err := cli("netboot", "disable"); err != nil || !strings.Contains(out, "global netboot off") {
		t.Errorf("netboot disable = %q, %v", out, err)
	}
	out, _ = cli("netboot", "status")
	if !strings.Contains(out, "global netboot: off") || !strings.Contains(out, mac) {
		t.Errorf("netboot status = %q", out)
	}
	cli("netboot", "enable")

	// Backup through the device protocol, then list, get, rm.
	if out, err := cli("device", "backup", mac); err != nil || !strings.Contains(out, "backup requested") {
		t.Fatalf("device backup = %q, %v", out, err)
	}
	if out, err := cli("device", "cancel", mac); err != nil || !strings.Contains(out, "cancelled") {
		t.Fatalf("device cancel = %q, %v", out, err)
	}
	cli("device", "backup", mac)
	resp, _ = http.Get(info.URL + contract.PathPoll + "?mac=" + mac)
	json.NewDecoder(resp.Body).Decode(&p)
	resp.Body.Close()
	content := bytes.Repeat([]byte("eMMC"), 300000)
	req, _ := http.NewRequest("PUT", p.UploadURL, bytes.NewReader(content))
	resp, err = http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 201 {
		t.Fatalf("upload: %v %v", resp.StatusCode, err)
	}
	resp.Body.Close()
	post(contract.PathActionDone, `{"mac":"`+mac+`"}`)

	out, err = cli("backup", "list", "--json")
	var bs []contract.Backup
	if err != nil || json.Unmarshal([]byte(out), &bs) != nil || len(bs) != 1 {
		t.Fatalf("backup list = %q, %v", out, err)
	}
	sum := sha256.Sum256(content)
	if bs[0].SHA256 != hex.EncodeToString(sum[:]) {
		t.Errorf("backup sha %s", bs[0].SHA256)
	}
	dst := filepath.Join(dir, "b.img")
	if out, err := cli("backup", "get", bs[0].ID, "-o", dst); err != nil || !strings.Contains(out, "wrote "+dst) {
		t.Fatalf("backup get = %q, %v", out, err)
	}
	if b, _ := os.ReadFile(dst); !bytes.Equal(b, content) {
		t.Errorf("fetched backup differs (%d bytes)", len(b))
	}
	if fi, err := os.Stat(dst); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("backup get wrote mode %v, want 0600", fi.Mode()) // a whole disk: owner only
	}
	if _, err := cli("backup", "get", "999", "-o", filepath.Join(dir, "x")); ExitCode(err) != 2 {
		t.Errorf("backup get of a missing id: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "x")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a failed get left a file")
	}
	if out, err := cli("backup", "rm", bs[0].ID); err != nil || !strings.Contains(out, "deleted backup "+bs[0].ID) {
		t.Errorf("backup rm = %q, %v", out, err)
	}
	out, _ = cli("backup", "list", "--json")
	if strings.TrimSpace(out) != "[]" {
		t.Errorf("backup list after rm = %q", out)
	}
	// The ledger holds the deploy (and the cancelled one); list, show and
	// a CSV export written whole to a file.
	if out, err := cli("ledger", "list", "--result", "done"); err != nil || !strings.Contains(out, mac) || !strings.Contains(out, "admin token") {
		t.Errorf("ledger list = %q, %v", out, err)
	}
	if out, err := cli("ledger", "show", "1"); err != nil || !strings.Contains(out, `"serial": "10000abc"`) {
		t.Errorf("ledger show = %q, %v", out, err)
	}
	ledgerCSV := filepath.Join(dir, "shift.csv")
	if _, err := cli("ledger", "export", "--format", "csv", "-o", ledgerCSV, "--since", "1h"); err != nil {
		t.Errorf("ledger export: %v", err)
	} else if b, _ := os.ReadFile(ledgerCSV); !bytes.HasPrefix(b, []byte("id,time,station,")) || !bytes.Contains(b, []byte(mac)) {
		t.Errorf("ledger CSV: %s", b)
	}
	// Webhooks from the CLI: a bad URL is refused, a good one prints its secret once.
	if _, err := cli("webhook", "add", "ftp://x/y"); err == nil || !strings.Contains(err.Error(), "want http(s)") {
		t.Errorf("webhook add ftp: %v", err)
	}
	if out, err := cli("webhook", "add", "http://127.0.0.1:9/hook", "--event", "ledger.row", "--secret", "abc"); err != nil || !strings.Contains(out, "secret (shown once): abc") {
		t.Errorf("webhook add = %q, %v", out, err)
	}
	if out, err := cli("webhook", "list"); err != nil || !strings.Contains(out, "http://127.0.0.1:9/hook") || strings.Contains(out, "abc") {
		t.Errorf("webhook list = %q, %v", out, err)
	}
	if out, err := cli("webhook", "rm", "1"); err != nil || !strings.Contains(out, "removed") {
		t.Errorf("webhook rm = %q, %v", out, err)
	}
	if _, err := cli("ledger", "export", "--format", "xml"); ExitCode(err) != 2 {
		t.Errorf("ledger export --format xml: exit %d", ExitCode(err))
	}
	out, err = cli("device", "show", mac)
	if err != nil || !strings.Contains(out, "Recent actions:") || !strings.Contains(out, "cancelled") {
		t.Errorf("device show = %q, %v", out, err)
	}

	// A job for a board that does not poll (it booted its eMMC): --wait
	// gives up with the job named as still queued and how to cancel it.
	const quiet = "dc:a6:32:0a:0b:0d"
	post(contract.PathRegister, `{"mac":"`+quiet+`","ip":"127.0.0.1"}`)
	_, stderr, err := runCLI(t, "device", "backup", quiet, "--wait", "--timeout", "2s", "--data", data)
	if err == nil || !strings.Contains(err.Error(), "still queued for "+quiet) || !strings.Contains(err.Error(), "cm4bench device cancel "+quiet) ||
		strings.Contains(err.Error(), "deadline exceeded") {
		t.Errorf("--wait on a board that never polls: %v (stderr %q)", err, stderr)
	}
	if _, err := cli("device", "cancel", quiet); err != nil {
		t.Errorf("cancel: %v", err)
	}

	// Wrong token: a clear refusal.
	if _, _, err := runCLI(t, "device", "list", "--server", info.URL, "--token", "wrong"); err == nil || !strings.Contains(err.Error(), "401") {
		t.Errorf("wrong token: %v", err)
	}

	cancel()
	if err := <-done; err != nil {
		t.Errorf("serve after Ctrl-C: %v", err)
	}
	if _, err := os.Stat(filepath.Join(data, contract.FileServerInfo)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("server.json left behind after a clean stop")
	}
	if _, err := cli("device", "list"); err == nil || !strings.Contains(err.Error(), "is `cm4bench netboot serve") {
		t.Errorf("device list with no server: %v", err)
	}
}

func TestNetbootServeFlags(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--no-tftp", "--data", "x"}, "name the network interface that goes to the bench switch with --iface"},
		{[]string{"--no-dhcp", "--data", "x"}, "--tftp-root is required"},
		{[]string{"--no-dhcp", "--no-tftp", "--addr", "10.0.0.1", "--data", "x"}, "--addr"},
		{[]string{"--no-dhcp", "--no-tftp", "--range", "10.0.0.9-10.0.0.1", "--data", "x"}, "--range"},
		{[]string{"--no-dhcp", "--no-tftp", "--image", "disk.iso", "--data", "x"}, "bad image name"},
		{[]string{"--iface", "cba-nonexistent0", "--tftp-root", ".", "--data", "x"}, "interface cba-nonexistent0"},
	} {
		dir := t.TempDir()
		for i, a := range tt.args {
			if a == "x" {
				tt.args[i] = filepath.Join(dir, "data")
			}
		}
		_, _, err := runCLI(t, append([]string{"netboot", "serve"}, tt.args...)...)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("netboot serve %v = %v, want an error with %q", tt.args, err, tt.want)
		}
	}
}
