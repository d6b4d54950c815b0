package cli_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"github.com/cm4bench/cm4bench/internal/repotest"
	"github.com/cm4bench/cm4bench/internal/syncbuf"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/u-root/u-root/pkg/cpio"

	"github.com/cm4bench/cm4bench/cmd/cm4bench/cli"
	"github.com/cm4bench/cm4bench/firmware"
	"github.com/cm4bench/cm4bench/internal/contract"
	"github.com/cm4bench/cm4bench/netboot/initramfs"
	"github.com/cm4bench/cm4bench/netboot/initramfs/agentbin"
)

// fetchNetbootFirmware runs `cm4bench firmware fetch netboot` against a
// loopback mirror serving made-up netboot files (the catalogue does not pin
// them: the first fetch pins them in the cache's lock file) and returns the
// cache dir and the served content by served name.
func fetchNetbootFirmware(t *testing.T) (string, map[string][]byte) {
	t.Helper()
	cat, err := firmware.Default()
	if err != nil {
		t.Fatal(err)
	}
	files, err := cat.SetFiles("netboot")
	if err != nil {
		t.Fatal(err)
	}
	byPath, byName := map[string][]byte{}, map[string][]byte{}
	for _, sf := range files {
		b := bytes.Repeat([]byte(sf.Name+" from the mirror\n"), 500)
		byName[sf.Name] = b
		byPath[strings.TrimPrefix(sf.File.URL, "https://raw.githubusercontent.com")] = b
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if b, ok := byPath[r.URL.Path]; ok {
			w.Write(b)
			return
		}
		http.NotFound(w, r)
	}))
	defer srv.Close()
	cache := t.TempDir()
	var out bytes.Buffer
	if err := (cli.Context{Stdout: &out, Stderr: &out, Args: []string{"firmware", "fetch", "netboot", "--cache", cache, "--mirror", srv.URL}}).Execute(context.Background()); err != nil {
		t.Fatalf("firmware fetch netboot: %v\n%s", err, out.String())
	}
	return cache, byName
}

// standInAgent is a real ELF executable for this GOARCH to stand in for
// cm4agent: /bin/true when it is one (small, so the initramfs builds stay
// quick), else the test binary.
func standInAgent(t *testing.T) string {
	t.Helper()
	if b, err := os.ReadFile("/bin/true"); err == nil {
		if arch, err := initramfs.ELFArch(b); err == nil && arch == runtime.GOARCH {
			return "/bin/true"
		}
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return exe
}

// TestNetbootServePrepareTFTPRoot runs `netboot serve --prepare-tftp-root`
// (HTTP only) in-process: before the server is up, the TFTP root holds the
// cached firmware, an initrd.img that is a gzip newc cpio whose /init is the
// agent, and config.txt / cmdline.txt that load it and name the server.
func TestNetbootServePrepareTFTPRoot(t *testing.T) {
	cache, fw := fetchNetbootFirmware(t)
	exe := standInAgent(t)
	agent, _ := os.ReadFile(exe)
	dir := t.TempDir()
	root, data := filepath.Join(dir, "tftp"), filepath.Join(dir, "data")
	os.Mkdir(root, 0o755)
	os.WriteFile(filepath.Join(root, "cmdline.txt"), []byte("console=serial0,115200 quiet\n"), 0o644)
	const url = "http://10.0.2.2:5000"
	args := []string{"netboot", "serve", "--prepare-tftp-root", "--no-dhcp", "--no-tftp", "--http", "127.0.0.1:0",
		"--data", data, "--tftp-root", root, "--firmware-cache", cache, "--agent", exe,
		"--initramfs-arch", runtime.GOARCH, "--advertise-url", url}

	serveOnce := func() string {
		t.Helper()
		os.Remove(filepath.Join(data, contract.FileServerInfo))
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		var out syncbuf.Buffer // the announcement is written by another goroutine
		done := make(chan error, 1)
		go func() { done <- cli.Context{Stdout: &out, Stderr: io.Discard, Args: args}.Execute(ctx) }()
		deadline := time.Now().Add(20 * time.Second)
		for {
			var info contract.ServerInfo
			b, err := os.ReadFile(filepath.Join(data, contract.FileServerInfo))
			if err == nil && json.Unmarshal(b, &info) == nil && info.URL != "" {
				break
			}
			select {
			case err := <-done:
				t.Fatalf("serve ended before it was up: %v\n%s", err, out.String())
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("server.json never appeared\n%s", out.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
		// server.json is written as the HTTP server listens; the token and
		// the login link are printed once every server is up, a moment later.
		for deadline := time.Now().Add(10 * time.Second); !strings.Contains(out.String(), "dashboard:") && time.Now().Before(deadline); {
			time.Sleep(20 * time.Millisecond)
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("serve: %v", err)
		}
		return out.String()
	}

	out := serveOnce()
	for _, want := range []string{"TFTP root " + root + " prepared (all) for boards reaching " + url, "placed", "start4.elf", "initrd.img", "admin token"} {
		if !strings.Contains(out, want) {
			t.Errorf("serve output lacks %q:\n%s", want, out)
		}
	}
	for name, b := range fw {
		if got, _ := os.ReadFile(filepath.Join(root, name)); !bytes.Equal(got, b) {
			t.Errorf("%s in the TFTP root is not the cached firmware", name)
		}
	}
	img, err := os.ReadFile(filepath.Join(root, "initrd.img"))
	if err != nil {
		t.Fatal(err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(img))
	if err != nil {
		t.Fatalf("initrd.img is not gzip: %v", err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(bytes.NewReader(raw)))
	if err != nil {
		t.Fatalf("initrd.img is not a newc cpio: %v", err)
	}
	var init []byte
	for _, r := range recs {
		if r.Name == "init" {
			init = make([]byte, r.FileSize)
			r.ReadAt(init, 0)
		}
	}
	if !bytes.Equal(init, agent) {
		t.Errorf("/init is not the agent (%d bytes, want %d)", len(init), len(agent))
	}
	cl, _ := os.ReadFile(filepath.Join(root, "cmdline.txt"))
	if string(cl) != "console=serial0,115200 quiet cm4bench.server="+url+"\n" {
		t.Errorf("cmdline.txt %q", cl)
	}
	cfg, _ := os.ReadFile(filepath.Join(root, "config.txt"))
	if !strings.Contains(string(cfg), "\ninitramfs initrd.img followkernel\n") {
		t.Errorf("config.txt %q", cfg)
	}

	// A restart changes nothing.
	out = serveOnce()
	if strings.Contains(out, "placed") || strings.Contains(out, "written") || strings.Count(out, "unchanged") != 8 {
		t.Errorf("second start:\n%s", out)
	}

	// --signed: boot.img holds what was prepared, boot.sig verifies with
	// openssl and the public key, fsck.fat and mtype read the image.
	sb := func(n string) string { return repotest.Shared(t, filepath.Join("secure-boot-vectors", n)) }
	args = append(args, "--signed", "--key", sb("private.pem"), "--pubkey", sb("public.pem"))
	out = serveOnce()
	if !strings.Contains(out, "boot.img") || !strings.Contains(out, "boot.sig") {
		t.Errorf("--signed output:\n%s", out)
	}
	bootImg, bootSig := filepath.Join(root, "boot.img"), filepath.Join(root, "boot.sig")
	readFile := func(t *testing.T, p string) []byte {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	sha256Hex := func(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }
	sigText := string(readFile(t, bootSig))
	var rsaHex string
	for _, l := range strings.Split(sigText, "\n") {
		if v, ok := strings.CutPrefix(l, "rsa2048: "); ok {
			rsaHex = v
		}
	}
	rawRSA, _ := hex.DecodeString(rsaHex)
	rawSig := filepath.Join(t.TempDir(), "sig.bin")
	os.WriteFile(rawSig, rawRSA, 0o644)
	if o, err := exec.Command("openssl", "dgst", "-sha256", "-verify", sb("public.pem"), "-signature", rawSig, bootImg).CombinedOutput(); err != nil || !strings.Contains(string(o), "Verified OK") {
		t.Errorf("openssl does not verify boot.sig: %v %s", err, o)
	}
	if !strings.HasPrefix(sigText, sha256Hex(readFile(t, bootImg))+"\n") {
		t.Errorf("boot.sig %q is not of boot.img", sigText)
	}
	if o, err := exec.Command("fsck.fat", "-n", bootImg).CombinedOutput(); err != nil {
		t.Errorf("fsck.fat -n boot.img: %v\n%s", err, o)
	}
	for _, name := range []string{"cmdline.txt", "config.txt", "initrd.img", "start4.elf", "kernel8.img"} {
		if o, err := exec.Command("mtype", "-i", bootImg, "::"+name).Output(); err != nil || !bytes.Equal(o, readFile(t, filepath.Join(root, name))) {
			t.Errorf("boot.img %s differs from the TFTP root's: %v", name, err)
		}
	}
	args = args[:len(args)-5]

	// Refusals: serve does not start, and the root is left as it was.
	other := t.TempDir()
	os.WriteFile(filepath.Join(other, "start4.elf"), []byte("a start4.elf the technician put here"), 0o644)
	for _, tc := range []struct {
		name string
		args []string
		want string
		code int
	}{
		{"different start4.elf", []string{"--tftp-root", other, "--firmware-cache", cache, "--agent", exe, "--initramfs-arch", runtime.GOARCH}, "start4.elf (sha256", 1},
		{"empty cache", []string{"--tftp-root", other, "--firmware-cache", t.TempDir(), "--agent", exe, "--initramfs-arch", runtime.GOARCH}, "cm4bench firmware fetch netboot", 1},
		{"no tftp root", []string{"--agent", exe}, "--prepare-tftp-root needs --tftp-root", 2},
		{"modules without dir", []string{"--tftp-root", other, "--agent", exe, "--initramfs-arch", runtime.GOARCH, "--initramfs-modules", "virtio_net"}, "--initramfs-modules needs --initramfs-modules-dir", 2},
		{"missing module", []string{"--tftp-root", other, "--agent", exe, "--initramfs-arch", runtime.GOARCH, "--initramfs-modules-dir", other, "--initramfs-modules", "virtio_net"}, "module virtio_net not found", 1},
		{"agent for another arch", []string{"--tftp-root", other, "--firmware-cache", cache, "--agent", exe, "--initramfs-arch", map[string]string{"amd64": "arm64", "arm64": "amd64"}[runtime.GOARCH]}, "the boards need", 1},
		{"bad mode", []string{"--prepare-tftp-root=kernel", "--tftp-root", other}, "want all (the default) or initramfs-only", 2},
		{"key without --signed", []string{"--tftp-root", other, "--agent", exe, "--key", sb("private.pem")}, "add --signed", 2},
		{"signed without a key", []string{"--tftp-root", other, "--agent", exe, "--initramfs-arch", runtime.GOARCH, "--signed"}, "no signing key", 2},
		{"loopback http only", []string{"--tftp-root", other, "--prepare-tftp-root=initramfs-only", "--agent", exe, "--initramfs-arch", runtime.GOARCH, "--http", "127.0.0.1:5999"}, "loopback only", 1},
	} {
		args := []string{"netboot", "serve", "--prepare-tftp-root", "--no-dhcp", "--no-tftp", "--data", filepath.Join(t.TempDir(), "d")}
		if tc.name != "loopback http only" {
			args = append(args, "--advertise-url", url)
		}
		args = append(args, tc.args...)
		var buf bytes.Buffer
		err := cli.Context{Stdout: &buf, Stderr: &buf, Args: args}.Execute(context.Background())
		if err == nil || !strings.Contains(err.Error(), tc.want) || cli.ExitCode(err) != tc.code {
			t.Errorf("%s: err %v (exit %d), want %q (exit %d)", tc.name, err, cli.ExitCode(err), tc.want, tc.code)
		}
		if ents, _ := os.ReadDir(other); len(ents) != 1 {
			t.Errorf("%s: the refused run wrote into the TFTP root: %v", tc.name, ents)
		}
	}

	// Without --agent, a build without the embedded agent says what to do.
	if !agentbin.Embedded {
		var buf bytes.Buffer
		err := cli.Context{Stdout: &buf, Stderr: &buf, Args: []string{"netboot", "serve", "--prepare-tftp-root=initramfs-only",
			"--no-dhcp", "--no-tftp", "--data", filepath.Join(t.TempDir(), "d"), "--tftp-root", other, "--advertise-url", url}}.Execute(context.Background())
		if err == nil || !strings.Contains(err.Error(), "--agent FILE") || cli.ExitCode(err) != 2 {
			t.Errorf("no embedded agent, no --agent: %v (exit %d)", err, cli.ExitCode(err))
		}
	}
}
