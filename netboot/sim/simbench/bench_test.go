package simbench_test

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cm4bench/cm4bench/internal/contract"
	"github.com/cm4bench/cm4bench/netboot/dhcp"
	"github.com/cm4bench/cm4bench/netboot/sim/netns"
	"github.com/cm4bench/cm4bench/netboot/sim/nettest"
	"github.com/cm4bench/cm4bench/netboot/sim/pisim"
	"github.com/cm4bench/cm4bench/netboot/sim/simbench"
	"github.com/cm4bench/cm4bench/netboot/tftp"
)

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("simbench: needs root for network namespaces (CI runs as root)")
	}
}

// TestBenchTeardown: Close kills and reaps what runs in the namespaces and
// leaves none of the bench's namespaces behind.
func TestBenchTeardown(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	b, err := simbench.Create(ctx, simbench.Options{Devices: 3})
	if err != nil {
		t.Fatal(err)
	}
	prefix := simbench.DefaultPrefix + b.ID
	names, err := netns.Namespaces(prefix)
	if err != nil {
		t.Fatal(err)
	}
	if len(names) != 4 {
		t.Errorf("namespaces %v, want bench + 3 devices", names)
	}
	var procs []*simbench.Proc
	for _, ns := range []*netns.NS{b.Server, b.Devices[2].NS} {
		p, err := b.Start(ns.Command(ctx, "sleep", "600"))
		if err != nil {
			t.Fatal(err)
		}
		procs = append(procs, p)
	}
	// The device side is really isolated: eth0 with the Pi MAC, no address.
	out, err := b.Devices[1].NS.Command(ctx, "ip", "-o", "addr", "show", "dev", "eth0").CombinedOutput()
	if err != nil || strings.Contains(string(out), "inet ") {
		t.Errorf("device eth0 before boot: %s %v", out, err)
	}
	dir := b.Dir
	if err := b.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	for _, p := range procs {
		select {
		case <-p.Done():
			if p.Cmd.ProcessState == nil {
				t.Errorf("pid %d not reaped", p.Cmd.Process.Pid)
			}
		default:
			t.Errorf("pid %d still running after Close", p.Cmd.Process.Pid)
		}
	}
	if left, _ := netns.Namespaces(prefix); len(left) != 0 {
		t.Errorf("namespaces left behind: %v", left)
	}
	ipOut, _ := exec.Command("ip", "netns", "list").CombinedOutput()
	if strings.Contains(string(ipOut), prefix) {
		t.Errorf("ip netns list still shows %s:\n%s", prefix, ipOut)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("work dir %s not removed: %v", dir, err)
	}
	if err := b.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := b.Start(b.Server.Command(ctx, "true")); err == nil {
		t.Error("Start after Close succeeded")
	}
}

// TestCreateRefusesNonRoot runs Create as uid nobody in a child process:
// it must refuse with the message that says how to run it.
func TestCreateRefusesNonRoot(t *testing.T) {
	if os.Getenv("SIMBENCH_CHILD") == "1" {
		_, err := simbench.Create(context.Background(), simbench.Options{Devices: 1})
		if !errors.Is(err, simbench.ErrNotRoot) {
			t.Fatalf("Create as uid %d: %v", os.Geteuid(), err)
		}
		os.Stdout.WriteString(err.Error())
		return
	}
	requireRoot(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// The test binary lives in a 0700 temp dir: copy it where nobody can run it.
	dir, err := os.MkdirTemp("", "simbench-nonroot-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o755)
	bin := filepath.Join(dir, "simbench.test")
	data, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", bin, "-test.run=^TestCreateRefusesNonRoot$")
	cmd.Env = append(os.Environ(), "SIMBENCH_CHILD=1")
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "needs root") || !strings.Contains(string(out), "sudo") {
		t.Errorf("refusal does not say why and how: %s", out)
	}
}

// startServers runs cm4bench's DHCP and TFTP servers in the bench
// namespace, on the bridge and the bench address, until ctx ends, and
// waits until DHCP is ready.
func startServers(tb testing.TB, ctx context.Context, b *simbench.Bench, ds *dhcp.Server, ts *tftp.Server) {
	tb.Helper()
	ready := make(chan struct{})
	ds.Iface, ds.RivalTimeout, ds.Ready = simbench.BridgeName, 300*time.Millisecond, func() { close(ready) }
	ts.Addr, ts.MACForIP = b.ServerAddr.Addr().String()+":69", ds.MACForIP
	errc := make(chan error, 2)
	go func() { errc <- b.Server.Do(func() error { return ds.Serve(ctx) }) }()
	go func() { errc <- b.Server.Do(func() error { return ts.Serve(ctx) }) }()
	select {
	case <-ready:
	case err := <-errc:
		tb.Fatalf("server: %v", err)
	case <-time.After(10 * time.Second):
		tb.Fatal("dhcp server not ready")
	}
}

// benchWithTFTPRoot creates a bench of n devices (removed at cleanup) and a
// TFTP root with the placeholder netboot files naming the bench server.
func benchWithTFTPRoot(t *testing.T, ctx context.Context, n int, emmc int64) (*simbench.Bench, string) {
	t.Helper()
	requireRoot(t)
	b, err := simbench.Create(ctx, simbench.Options{Devices: n, EMMCBytes: emmc})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	root := t.TempDir()
	if err := simbench.WriteTFTPRoot(root, "http://10.61.0.1:5000"); err != nil {
		t.Fatal(err)
	}
	return b, root
}

// TestPisimAgainstCm4benchServers: every simulated CM4 of a 4-device bench
// netboots from cm4bench's own DHCP and TFTP servers (run in the bench
// namespace on the bridge, as `netboot serve` runs them), with the exact
// option 43, prefix fallback and probes; a MAC switched off gets a lease
// without the menu and moves on to its eMMC.
func TestPisimAgainstCm4benchServers(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b, root := benchWithTFTPRoot(t, ctx, 4, 32<<20)
	pol := &nettest.Switch{}
	var evMu sync.Mutex
	var events []contract.Event
	record := func(e contract.Event) { evMu.Lock(); events = append(events, e); evMu.Unlock() }
	ds := &dhcp.Server{Policy: pol, Events: record}
	ts := &tftp.Server{Root: root, Policy: pol, Events: record}
	startServers(t, ctx, b, ds, ts)
	// A golden image on one eMMC so the switched-off device has something to boot.
	off := b.Devices[3]
	f, err := os.OpenFile(off.EMMC(), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := simbench.GoldenImage(f, 16<<20, 1); err != nil {
		t.Fatal(err)
	}
	f.Close()
	pol.Disable(off.Board.MAC)

	var wg sync.WaitGroup
	outs := make([]*pisim.Outcome, len(b.Devices))
	errs := make([]error, len(b.Devices))
	for i, d := range b.Devices {
		wg.Add(1)
		go func() {
			defer wg.Done()
			emmc, err := os.Open(d.EMMC())
			if err != nil {
				errs[i] = err
				return
			}
			defer emmc.Close()
			bl := &pisim.Bootloader{Board: d.Board, Link: d.Link(), EMMC: emmc,
				EEPROM: pisim.EEPROM{BootOrder: 0xf12, DHCPTimeout: 5 * time.Second, DHCPReqTimeout: time.Second}, ModeDelay: 10 * time.Millisecond}
			bctx, bcancel := context.WithTimeout(ctx, 60*time.Second)
			defer bcancel()
			outs[i], errs[i] = bl.Boot(bctx)
		}()
	}
	wg.Wait()
	for i, d := range b.Devices {
		out, err := outs[i], errs[i]
		if err != nil {
			t.Errorf("device %d: %v (attempts %q)", i, err, out.Attempts)
			continue
		}
		if d == off {
			if out.Mode != "emmc" || out.NoMenu == 0 || len(out.Files) != 0 {
				t.Errorf("switched-off device: mode %q, answers without menu %d, files %d, attempts %q", out.Mode, out.NoMenu, len(out.Files), out.Attempts)
			}
			continue
		}
		// cm4bench's TFTP serves <serial>/start4.elf from the root when the
		// folder lacks it, so the bootloader keeps its serial prefix.
		if out.Mode != "network" || !out.Lease.Menu || out.Prefix != d.Board.SerialString() {
			t.Errorf("device %d: mode %q menu %v prefix %q", i, out.Mode, out.Lease != nil && out.Lease.Menu, out.Prefix)
			continue
		}
		if got := out.Lease.Opt43; string(got) != "\x06\x01\x03\x0a\x04\x00PXE\x09\x14\x00\x00\x11Raspberry Pi Boot\xff" {
			t.Errorf("device %d: option 43 % x", i, got)
		}
		if !out.TFTP.Equal(net.IPv4(10, 61, 0, 1)) || !out.Lease.SIAddr.Equal(out.TFTP) || !out.Lease.ServerID.Equal(out.TFTP) {
			t.Errorf("device %d: tftp %v siaddr %v server id %v", i, out.TFTP, out.Lease.SIAddr, out.Lease.ServerID)
		}
		if out.Files[0].Name != d.Board.SerialString()+"/start4.elf" || out.Probes < 5 || pisim.KernelArg(out.Cmdline, "cm4bench.server") != "http://10.61.0.1:5000" {
			t.Errorf("device %d: first RRQ %q, probes %d, cmdline %q", i, out.Files[0].Name, out.Probes, out.Cmdline)
		}
	}
	st := ts.Stats()
	if st.Probes == 0 || st.Failures != 0 {
		t.Errorf("tftp server stats %+v: want probes counted and no failures", st)
	}
	t.Logf("tftp server: %+v; dhcp server: %+v; %d events", st, ds.Stats(), len(events))
}
