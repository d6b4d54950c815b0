package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/cm4bench/cm4bench/internal/contract"
	"github.com/cm4bench/cm4bench/internal/syncbuf"
)

func TestSimFlagErrors(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"sim", "--devices", "0"}, "--devices 0"},
		{[]string{"sim", "--devices", "251"}, "--devices 251"},
		{[]string{"sim", "--boot-order", "zz"}, "--boot-order"},
		{[]string{"sim", "--dhcp-timeout", "1s"}, "EEPROM minimum"},
		{[]string{"sim", "--agent", "/nonexistent/cm4agent"}, "--agent"},
	} {
		t.Run(strings.Join(tt.args[1:], " "), func(t *testing.T) {
			if !isRoot() && tt.want == "--agent" {
				t.Skip("the --agent check comes after the root check")
			}
			var out bytes.Buffer
			err := Context{Stdout: &out, Stderr: &out, Args: tt.args}.Execute(context.Background())
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want it to mention %q", err, tt.want)
			}
		})
	}
}

// TestSimDemoNeedsRoot runs `netboot serve --demo` and `sim` as uid nobody
// (a copy of this test binary under setpriv): both refuse, saying why and
// how to run them.
func TestSimDemoNeedsRoot(t *testing.T) {
	if os.Getenv("CM4BENCH_SIM_CHILD") == "1" {
		for _, args := range [][]string{{"netboot", "serve", "--demo"}, {"sim"}} {
			err := Context{Stdout: io.Discard, Stderr: io.Discard, Args: args}.Execute(context.Background())
			var ee *ExitError
			if err == nil || !errors.As(err, &ee) || ee.Code != 2 {
				t.Fatalf("%v as uid %d: %v", args, os.Geteuid(), err)
			}
			os.Stdout.WriteString(err.Error() + "\n")
		}
		return
	}
	if !isRoot() {
		t.Skip("needs root to switch to uid nobody (CI runs as root)")
	}
	exe, _ := os.Executable()
	dir, err := os.MkdirTemp("", "cli-nonroot-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o755)
	data, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "cli.test")
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", bin, "-test.run=^TestSimDemoNeedsRoot$")
	cmd.Env = append(os.Environ(), "CM4BENCH_SIM_CHILD=1")
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	if strings.Count(string(out), "needs root") != 2 || !strings.Contains(string(out), "sudo") {
		t.Errorf("refusals do not say why and how:\n%s", out)
	}
}

// TestSimCommand runs `cm4bench --json sim` in-process with two boards
// against the real server binary: the JSON banner carries a working
// dashboard forward and token, both boards report running their agent, and
// cancelling tears everything down.
func TestSimCommand(t *testing.T) {
	if !isRoot() {
		t.Skip("sim needs root for network namespaces (CI runs as root)")
	}
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	root, err := filepath.Abs("../../..")
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range []struct{ out, pkg, cgo string }{{"cm4bench", "./cmd/cm4bench", "1"}, {"cm4agent", "./cmd/cm4agent", "0"}} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, b.out), b.pkg)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED="+b.cgo)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", b.pkg, err, out)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	inR, inW := io.Pipe()
	defer inW.Close()
	var errBuf syncbuf.Buffer
	done := make(chan error, 1)
	go func() {
		done <- Context{Stdin: inR, Stdout: pw, Stderr: &errBuf, Args: []string{"--json", "sim", "--devices", "2", "--http", "127.0.0.1:0",
			"--image-size", "16", "--emmc-size", "32", "--agent", filepath.Join(dir, "cm4agent"),
			"--server-binary", filepath.Join(dir, "cm4bench"), "--poll", "1s"}}.Execute(ctx)
		pw.Close()
	}()
	dec := json.NewDecoder(bufio.NewReader(pr))
	var banner struct {
		D    string `json:"dashboard"`
		T    string `json:"admin_token"`
		NS   string `json:"namespace"`
		Data string `json:"data"`
	}
	if err := dec.Decode(&banner); err != nil {
		t.Fatalf("banner: %v\n%s", err, errBuf.String())
	}
	if banner.D == "" || len(banner.T) < 16 || banner.NS == "" {
		t.Fatalf("banner %+v", banner)
	}
	// The server's one-click login link points at the host's forwarded
	// dashboard (--dashboard-url), and it logs in there.
	linkRe := regexp.MustCompile(regexp.QuoteMeta(banner.D) + `/\?login=([0-9a-f]+)`)
	var code64 []string
	for end := time.Now().Add(20 * time.Second); code64 == nil && time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		code64 = linkRe.FindStringSubmatch(errBuf.String())
	}
	if code64 == nil {
		t.Errorf("no login link for %s in the demo's output:\n%s", banner.D, errBuf.String())
	} else {
		resp, err := http.Post(banner.D+contract.PathLogin, "application/json", strings.NewReader(`{"code":"`+code64[1]+`"}`))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("the printed login link, used on the host: HTTP %d", resp.StatusCode)
		}
	}
	// The dashboard forward reaches the server inside the namespace.
	req, _ := http.NewRequest("GET", banner.D+"/api/v1/devices", nil)
	req.Header.Set("Authorization", "Bearer "+banner.T)
	agents := map[int]bool{}
	deadline := time.Now().Add(90 * time.Second)
	for len(agents) < 2 && time.Now().Before(deadline) {
		var st struct {
			Index int    `json:"index"`
			State string `json:"state"`
		}
		if err := dec.Decode(&st); err != nil {
			t.Fatalf("state line: %v\n%s", err, errBuf.String())
		}
		if st.State == "agent" {
			agents[st.Index] = true
		}
	}
	if len(agents) != 2 {
		t.Fatalf("boards running their agent: %v", agents)
	}
	// The agents register through the bench; the host sees them through the forward.
	var body []byte
	code := 0
	for end := time.Now().Add(30 * time.Second); time.Now().Before(end); time.Sleep(300 * time.Millisecond) {
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		code = resp.StatusCode
		if code == 200 && strings.Count(string(body), `"mac"`) >= 2 {
			break
		}
	}
	if code != 200 || strings.Count(string(body), `"mac"`) < 2 {
		t.Errorf("devices through the forward: HTTP %d %s", code, body)
	}
	// The CLI on the host finds the server through --data: server.json names
	// the address the host reaches (never the namespace's, where the admin
	// token would go out of the default route).
	if si, err := os.ReadFile(filepath.Join(banner.Data, "server.json")); err != nil || !strings.Contains(string(si), banner.D) {
		t.Errorf("server.json %s (%v), want the host URL %s", si, err, banner.D)
	}
	if out, _, err := runCLI(t, "device", "list", "--data", banner.Data, "--json"); err != nil || strings.Count(out, `"mac"`) < 2 {
		t.Errorf("device list --data %s: %v\n%s", banner.Data, err, out)
	}
	// The technician power-cycles board 1 from the terminal: it boots again.
	io.WriteString(inW, "cycle 9\ncycle 1\n")
	var cycled []string
	for len(cycled) < 2 {
		var st struct {
			Index int    `json:"index"`
			State string `json:"state"`
			Boots int    `json:"boots"`
		}
		if err := dec.Decode(&st); err != nil {
			t.Fatalf("state line after the power cycle: %v\n%s", err, errBuf.String())
		}
		if st.Index == 1 && st.Boots == 2 {
			cycled = append(cycled, st.State)
		}
	}
	if cycled[0] != "netbooting" || cycled[1] != "agent" {
		t.Errorf("board 1 after the power cycle: %v", cycled)
	}
	if !strings.Contains(errBuf.String(), "no board 9") || !strings.Contains(errBuf.String(), "power-cycling board 1") {
		t.Errorf("stderr after the cycle commands:\n%s", errBuf.String())
	}
	cancel()
	go io.Copy(io.Discard, pr)
	if err := <-done; err != nil {
		t.Errorf("sim after cancel: %v", err)
	}
	out, _ := exec.Command("ip", "netns", "list").CombinedOutput()
	if strings.Contains(string(out), banner.NS) {
		t.Errorf("namespace %s left behind:\n%s", banner.NS, out)
	}
}
