package debpkg

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cm4bench/cm4bench/internal/repotest"
	"github.com/cm4bench/cm4bench/netboot/sim/nettest"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("installs a package and runs servers as another user: needs root (CI runs as root)")
	}
}

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// cm4benchBinary builds cm4bench from this checkout, as `go install` would
// (without the embedded agents), once per test run. It lives in a 0755
// directory so the unprivileged service user can run it.
func cm4benchBinary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "cm4bench-debpkg-")
		if err != nil {
			binErr = err
			return
		}
		os.Chmod(dir, 0o755)
		binPath = filepath.Join(dir, "cm4bench")
		cmd := exec.Command("go", "build", "-o", binPath, "./cmd/cm4bench")
		cmd.Dir = repotest.Root(t)
		if out, err := cmd.CombinedOutput(); err != nil {
			binErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// buildPackage makes the .deb as `make deb` does, from the plain binary.
func buildPackage(t *testing.T) string {
	t.Helper()
	bin := cm4benchBinary(t)
	stage := t.TempDir()
	run := func(out string, args ...string) {
		t.Helper()
		b, err := exec.Command(bin, args...).Output()
		if err != nil {
			t.Fatalf("cm4bench %s: %v", strings.Join(args, " "), err)
		}
		if out != "" {
			os.WriteFile(out, b, 0o644)
		}
	}
	man := filepath.Join(stage, "man")
	run("", "man", "--dir", man)
	compl := map[string]string{}
	for _, sh := range []string{"bash", "zsh", "fish"} {
		compl[sh] = filepath.Join(stage, "cm4bench."+sh)
		run(compl[sh], "completion", sh)
	}
	rules := filepath.Join(stage, "60-cm4bench.rules")
	run(rules, "usbboot", "udev-rules")
	p, err := Build(Options{Binary: bin, ScriptsDir: filepath.Join(repotest.Root(t), "scripts", "deb"), ManDir: man,
		Completions: compl, UdevRules: rules, Version: "v0.9.1-2-gabc1234", Arch: runtime.GOARCH, OutDir: stage})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func sh(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestInstallRemovePurge installs the built package with dpkg on this
// machine: the files land where the unit expects them, the user exists,
// the binary runs, the unit passes systemd-analyze verify and scores
// "OK" or better in systemd-analyze security; remove keeps
// /var/lib/cm4bench, purge removes it and the user.
func TestInstallRemovePurge(t *testing.T) {
	requireRoot(t)
	for _, tool := range []string{"dpkg", "systemd-analyze", "man"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not installed (scripts/deps.sh installs it)", tool)
		}
	}
	deb := buildPackage(t)
	if !strings.HasSuffix(deb, "cm4bench_0.9.1+2.gabc1234_"+runtime.GOARCH+".deb") {
		t.Errorf("package name %s", deb)
	}
	exec.Command("dpkg", "--purge", "cm4bench").Run() // a leftover of an earlier run
	t.Cleanup(func() { exec.Command("dpkg", "--purge", "cm4bench").Run() })
	sh(t, "dpkg", "-i", deb)

	for _, p := range []string{BinaryPath, UnitPath, DefaultsPath, UdevPath, completionPaths["bash"], completionPaths["zsh"],
		completionPaths["fish"], "/usr/share/man/man1/cm4bench-usbboot.1.gz", "/usr/share/man/man1/cm4bench-netboot-serve.1.gz"} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("installed package lacks %s", p)
		}
	}
	if out := sh(t, "id", "-un", "cm4bench"); strings.TrimSpace(out) != "cm4bench" {
		t.Errorf("user: %q", out)
	}
	if out := sh(t, "getent", "passwd", "cm4bench"); !strings.Contains(out, ":/var/lib/cm4bench:/usr/sbin/nologin") {
		t.Errorf("passwd entry %q", out)
	}
	fi, err := os.Stat("/var/lib/cm4bench")
	if err != nil || fi.Mode().Perm() != 0o750 {
		t.Errorf("/var/lib/cm4bench: %v %v, want mode 0750", fi, err)
	}
	if out := sh(t, "stat", "-c", "%U:%G", "/var/lib/cm4bench", "/srv/cm4bench/tftp"); out != "cm4bench:cm4bench\ncm4bench:cm4bench\n" {
		t.Errorf("owners: %q", out)
	}
	// a `go install`-style binary says what it lacks and how to get it
	if out := sh(t, BinaryPath, "--version"); !strings.HasPrefix(out, "cm4bench ") || !strings.Contains(out, "cm4agent: not embedded") ||
		!strings.Contains(out, "install the .deb (make deb) or build with `make build`") {
		t.Errorf("--version does not say how to get the agents: %q", out)
	}
	if out := sh(t, "man", "-w", "cm4bench-usbboot"); !strings.Contains(out, "cm4bench-usbboot.1.gz") {
		t.Errorf("man -w: %q", out)
	}
	if out := sh(t, "systemd-analyze", "verify", UnitPath); strings.Contains(out, "cm4bench.service") {
		t.Errorf("systemd-analyze verify complains:\n%s", out)
	}
	sec := sh(t, "systemd-analyze", "security", "--offline=true", UnitPath)
	m := regexp.MustCompile(`Overall exposure level for cm4bench.service: ([0-9.]+) (\S+)`).FindStringSubmatch(sec)
	if m == nil {
		t.Fatalf("no exposure level in:\n%s", sec)
	}
	score, _ := strconv.ParseFloat(m[1], 64)
	t.Logf("systemd-analyze security: exposure %s %s", m[1], m[2])
	if score > 2.0 {
		t.Errorf("exposure %s %s, want 2.0 or less:\n%s", m[1], m[2], sec)
	}
	if rules, _ := os.ReadFile(UdevPath); !strings.Contains(string(rules), `ATTR{idVendor}=="0a5c"`) || !strings.Contains(string(rules), `GROUP="plugdev"`) {
		t.Errorf("udev rules:\n%s", rules)
	}

	// remove: the data stays (the database, images, backups)
	os.WriteFile("/var/lib/cm4bench/cm4bench.db", []byte("the line's records"), 0o640)
	os.WriteFile(DefaultsPath, []byte("CM4BENCH_SERVE_ARGS=\"--iface eth9\"\n"), 0o644)
	sh(t, "dpkg", "-r", "cm4bench")
	if _, err := os.Stat(BinaryPath); err == nil {
		t.Error("remove left the binary")
	}
	if b, err := os.ReadFile("/var/lib/cm4bench/cm4bench.db"); err != nil || string(b) != "the line's records" {
		t.Errorf("remove lost /var/lib/cm4bench: %v", err)
	}
	if b, _ := os.ReadFile(DefaultsPath); !strings.Contains(string(b), "eth9") {
		t.Error("remove lost the edited /etc/default/cm4bench (a conffile)")
	}
	// purge: everything the package added goes
	sh(t, "dpkg", "-P", "cm4bench")
	for _, p := range []string{"/var/lib/cm4bench", DefaultsPath, UnitPath, "/srv/cm4bench"} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("purge left %s", p)
		}
	}
	if err := exec.Command("id", "cm4bench").Run(); err == nil {
		t.Error("purge left the cm4bench user")
	}
}

// unitCaps reads AmbientCapabilities= from the unit, in setpriv's form
// (net_bind_service, net_raw).
func unitCaps(t *testing.T) []string {
	t.Helper()
	f, err := os.Open(filepath.Join(repotest.Root(t), "scripts", "deb", "cm4bench.service"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var caps []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "AmbientCapabilities="); ok {
			for _, c := range strings.Fields(v) {
				caps = append(caps, strings.ToLower(strings.TrimPrefix(c, "CAP_")))
			}
		}
	}
	if len(caps) == 0 {
		t.Fatal("the unit has no AmbientCapabilities=")
	}
	return caps
}

// serviceDirs makes a data directory and a TFTP root the unprivileged user
// owns, under a 0755 parent it can reach.
func serviceDirs(t *testing.T) (data, tftp string) {
	t.Helper()
	base, err := os.MkdirTemp("", "cm4bench-svc-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	os.Chmod(base, 0o755)
	data, tftp = filepath.Join(base, "data"), filepath.Join(base, "tftp")
	for _, d := range []string{data, tftp} {
		os.Mkdir(d, 0o750)
		os.Chown(d, 65534, 65534)
	}
	os.WriteFile(filepath.Join(tftp, "start4.elf"), []byte(strings.Repeat("firmware ", 5000)), 0o644)
	return data, tftp
}

func setpriv(caps []string, bin string, args ...string) []string {
	set := "-all"
	for _, c := range caps {
		set += ",+" + c
	}
	return append([]string{"--reuid", "65534", "--regid", "65534", "--clear-groups", "--inh-caps", set, "--ambient-caps", set,
		"--bounding-set", set, "--no-new-privs", "--", bin}, args...)
}

// TestServeWithTheUnitsCapabilities runs `netboot serve` as nobody with
// exactly the unit's ambient capabilities (setpriv) in a bench namespace:
// it detects no rival, binds 67 and 69, and a Pi-like client gets its
// lease with the boot menu and its firmware over TFTP. Without one of the
// capabilities serve stops at once and names the capability it lacks.
func TestServeWithTheUnitsCapabilities(t *testing.T) {
	requireRoot(t)
	nettest.Require(t)
	nettest.RequireTool(t, "setpriv")
	nettest.RequireTool(t, "busybox")
	caps := unitCaps(t)
	if strings.Join(caps, " ") != "net_bind_service net_raw" {
		t.Fatalf("the unit grants %q; this test expects net_bind_service and net_raw", caps)
	}
	bin := cm4benchBinary(t)
	mac, _ := net.ParseMAC("dc:a6:32:01:36:c2")
	topo := nettest.New(t, nettest.Options{Prefix: "cbp", ClientMACs: []net.HardwareAddr{mac}})
	data, tftp := serviceDirs(t)
	serve := []string{"netboot", "serve", "--iface", nettest.ServerIface, "--data", data, "--tftp-root", tftp, "--http", "10.42.0.1:5000"}
	srv, out := topo.Server.Start(t, "setpriv", setpriv(caps, bin, serve...)...)
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(out.String(), "bench ready") {
		if time.Now().After(deadline) {
			t.Fatalf("serve as nobody never got ready:\n%s", out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	// the Pi's DHCP identity (busybox udhcpc), then its firmware over TFTP
	dir := t.TempDir()
	script, env := filepath.Join(dir, "lease.sh"), filepath.Join(dir, "env")
	os.WriteFile(script, []byte("#!/bin/sh\nif [ \"$1\" = bound ]; then env > "+env+"; busybox ifconfig \"$interface\" \"$ip\" netmask \"$subnet\" up; fi\nexit 0\n"), 0o755)
	cli := topo.Clients[0]
	cli.Run(t, "busybox", "udhcpc", "-i", cli.Iface, "-f", "-q", "-n", "-t", "4", "-T", "2", "-C", "-s", script,
		"-O", "43", "-V", "PXEClient:Arch:00000:UNDI:002001", "-x", "0x61:0052506934414131c0320136c23412cdab")
	lease, err := os.ReadFile(env)
	if err != nil || !strings.Contains(string(lease), "siaddr=10.42.0.1") || !strings.Contains(string(lease), "opt43=") {
		t.Fatalf("lease: %v\n%s\nserver:\n%s", err, lease, out.String())
	}
	got := filepath.Join(dir, "start4.elf")
	cli.Run(t, "busybox", "tftp", "-g", "-r", "start4.elf", "-l", got, "10.42.0.1")
	if a, b := mustRead(t, got), mustRead(t, filepath.Join(tftp, "start4.elf")); a != b {
		t.Errorf("start4.elf over TFTP: %d bytes, want %d", len(a), len(b))
	}
	if b, err := os.ReadFile(filepath.Join(data, "server.json")); err != nil || !strings.Contains(string(b), "10.42.0.1:5000") {
		t.Errorf("server.json written by the service user: %v %s", err, b)
	}

	// one capability short: a plain error naming it, and no server (the
	// full one is stopped first, so its ports are free)
	srv.Process.Signal(os.Interrupt)
	srv.Wait()
	for _, tt := range []struct {
		drop, want string
	}{
		{"net_bind_service", "CAP_NET_BIND_SERVICE"},
		{"net_raw", "CAP_NET_RAW"},
	} {
		t.Run("without "+tt.drop, func(t *testing.T) {
			var fewer []string
			for _, c := range caps {
				if c != tt.drop {
					fewer = append(fewer, c)
				}
			}
			data, tftp := serviceDirs(t)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			cmd := topo.Server.Command(ctx, "setpriv", setpriv(fewer, bin, "netboot", "serve", "--iface", nettest.ServerIface,
				"--data", data, "--tftp-root", tftp, "--http", "10.42.0.1:5001")...)
			b, err := cmd.CombinedOutput()
			if err == nil || ctx.Err() != nil {
				t.Fatalf("serve without %s: %v (timed out: %v)\n%s", tt.drop, err, ctx.Err() != nil, b)
			}
			if !strings.Contains(string(b), tt.want) || !strings.Contains(string(b), "cm4bench.service") {
				t.Errorf("serve without %s does not name %s:\n%s", tt.drop, tt.want, b)
			}
		})
	}
}

func mustRead(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
