package tftp_test

import (
	"context"
	"crypto/sha256"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cm4bench/cm4bench/netboot/dhcp"
	"github.com/cm4bench/cm4bench/netboot/sim/nettest"
	"github.com/cm4bench/cm4bench/netboot/tftp"
)

// TestPiBootFlow runs DHCP and TFTP together the way serve composes them:
// a Pi-exact udhcpc gets the netboot lease and configures its link, then
// atftp (the Pi's RRQ) fetches <serial>/start4.elf from siaddr; TFTP knows
// the device by the DHCP lease. After its netboot is switched off, the next
// lease has no menu and start4.elf is "not found" while other files are
// still served.
func TestPiBootFlow(t *testing.T) {
	nettest.Require(t)
	nettest.RequireTool(t, "busybox")
	nettest.RequireTool(t, "atftp")
	topo := nettest.New(t, nettest.Options{Prefix: "cbn"})
	pi := topo.Clients[0]
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	start4 := randomBytes(t, 2<<20)
	writeFile(t, filepath.Join(root, "start4.elf"), start4)
	writeFile(t, filepath.Join(root, "config.txt"), []byte("[all]\n"))

	sw := &nettest.Switch{}
	ds := &dhcp.Server{Iface: nettest.ServerIface, Policy: sw, RivalTimeout: 300 * time.Millisecond,
		LeaseFile: filepath.Join(dir, "leases.json")}
	ev := &evLog{}
	ts := &tftp.Server{Root: root, Policy: sw, MACForIP: ds.MACForIP, Events: ev.add}
	ready := make(chan struct{})
	ds.Ready = func() { close(ready) }
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- topo.Server.Do(func() error { return ds.Serve(ctx) }) }()
	t.Cleanup(func() {
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("dhcp Serve: %v", err)
		}
	})
	<-ready
	serveIn(t, topo.Server, ts, topo.Server.Addr.Addr().String()+":69")

	// udhcpc with the Pi's options; the script configures the link like an
	// initramfs would and records the lease.
	leaseEnv := filepath.Join(dir, "env")
	script := filepath.Join(dir, "udhcpc.sh")
	body := `#!/bin/sh
case "$1" in
bound|renew) ip addr flush dev "$interface"; ip addr add "$ip/$mask" dev "$interface"; env > ` + leaseEnv + ` ;;
esac
exit 0
`
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	lease := func() map[string]string {
		t.Helper()
		os.Remove(leaseEnv)
		pi.Run(t, "busybox", "udhcpc", "-i", pi.Iface, "-f", "-q", "-n", "-t", "4", "-T", "2", "-C", "-o", "-s", script,
			"-V", "PXEClient:Arch:00000:UNDI:002001", "-x", "0x5d:0000", "-x", "0x5e:010201",
			"-x", "0x61:0052506934414131c0320136c2abcd1234", "-O", "1", "-O", "3", "-O", "43", "-O", "60", "-O", "66", "-O", "67")
		b, err := os.ReadFile(leaseEnv)
		if err != nil {
			t.Fatal(err)
		}
		env := map[string]string{}
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, "="); ok {
				env[k] = v
			}
		}
		return env
	}
	fetch := func(remote string) ([]byte, string, error) {
		local := filepath.Join(t.TempDir(), "out")
		out, err := pi.Command(context.Background(), "atftp", "--get", "-r", remote, "-l", local,
			"--option", "tsize 0", "--option", "blksize 1024", "10.42.0.1").CombinedOutput()
		b, _ := os.ReadFile(local)
		return b, string(out), err
	}

	env := lease()
	if env["opt43"] == "" || env["siaddr"] != "10.42.0.1" {
		t.Fatalf("netboot lease without menu: %v", env)
	}
	got, out, err := fetch("abcd1234/start4.elf")
	if err != nil || sha256.Sum256(got) != sha256.Sum256(start4) {
		t.Fatalf("start4.elf: %v (%d bytes)\n%s", err, len(got), out)
	}
	var sawMAC bool
	ev.mu.Lock()
	for _, e := range ev.evs {
		if e.Kind == "tftp.transfer" && e.MAC == pi.MAC.String() && e.Serial == "abcd1234" {
			sawMAC = true
		}
	}
	ev.mu.Unlock()
	if !sawMAC {
		t.Errorf("transfer event does not name the device %s: %+v", pi.MAC, ev.evs)
	}

	sw.Disable(pi.MAC) // what action-done does
	env = lease()
	if env["opt43"] != "" || env["tftp"] != "" {
		t.Fatalf("lease after disable still carries the menu: opt43=%q tftp=%q", env["opt43"], env["tftp"])
	}
	if got, out, err := fetch("abcd1234/start4.elf"); err == nil || len(got) != 0 || !strings.Contains(out, "file not found") {
		t.Fatalf("start4.elf for a disabled device: err %v, %d bytes\n%s", err, len(got), out)
	}
	if got, out, err := fetch("config.txt"); err != nil || string(got) != "[all]\n" {
		t.Fatalf("config.txt for a disabled device: %v %q\n%s", err, got, out)
	}
}
