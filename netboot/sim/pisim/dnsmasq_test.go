package pisim_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cm4bench/cm4bench/netboot/sim/nettest"
	"github.com/cm4bench/cm4bench/netboot/sim/pisim"
)

// nsLink runs a HostLink's socket and address calls inside a test namespace.
type nsLink struct {
	ns *nettest.NS
	l  *pisim.HostLink
}

func (n nsLink) DHCPConn() (net.PacketConn, error) {
	var c net.PacketConn
	err := n.ns.Do(func() (err error) { c, err = n.l.DHCPConn(); return err })
	return c, err
}

func (n nsLink) UDPConn() (net.PacketConn, error) {
	var c net.PacketConn
	err := n.ns.Do(func() (err error) { c, err = n.l.UDPConn(); return err })
	return c, err
}

func (n nsLink) Configure(a net.IPNet, gw net.IP) error {
	return n.ns.Do(func() error { return n.l.Configure(a, gw) })
}

func (n nsLink) Reset() error { return n.ns.Do(n.l.Reset) }

// tftpTree writes files (name -> content) under dir.
func tftpTree(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, body := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// startDnsmasq runs dnsmasq (the reference peer of netboot.md §2.2) in the
// server namespace: full DHCP, and the Pi boot menu unless menu is false.
func startDnsmasq(t *testing.T, srv *nettest.NS, root string, menu bool) *nettest.SyncBuffer {
	t.Helper()
	nettest.RequireTool(t, "dnsmasq")
	dir := t.TempDir()
	conf := []string{
		"port=0", "interface=" + srv.Iface, "bind-interfaces", "no-ping", "no-resolv", "no-hosts",
		"dhcp-range=10.42.0.100,10.42.0.200,255.255.255.0,1h",
		"dhcp-leasefile=" + filepath.Join(dir, "leases"),
		"enable-tftp", "tftp-root=" + root, "log-dhcp", "user=root",
		"pid-file=" + filepath.Join(dir, "pid"),
	}
	if menu {
		conf = append(conf, `pxe-service=0,"Raspberry Pi Boot"`)
	}
	cf := filepath.Join(dir, "dnsmasq.conf")
	if err := os.WriteFile(cf, []byte(strings.Join(conf, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, out := srv.Start(t, "dnsmasq", "-k", "-C", cf, "--log-facility=-")
	// Wait until it listens (TFTP socket bound) before the device powers on.
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(out.String(), "TFTP root is") {
		if time.Now().After(deadline) {
			t.Fatalf("dnsmasq did not start:\n%s", out)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return out
}

type rrq struct {
	name  string
	probe bool
}

func sequence(o *pisim.Outcome) []rrq {
	var s []rrq
	for _, f := range o.Files {
		s = append(s, rrq{f.Name, f.Probe})
	}
	return s
}

// TestBootAgainstDnsmasq powers a simulated CM4 on against dnsmasq in a
// namespace pair: the whole DHCP exchange and TFTP sequence must work with
// the reference server, with the exact file order of netboot.md §1.6.
func TestBootAgainstDnsmasq(t *testing.T) {
	nettest.Require(t)
	kernel := strings.Repeat("kernel8 ", 40000) // 320000 bytes: 313 blocks of 1024
	rootFiles := map[string]string{
		"start4.elf":          strings.Repeat("S", 5000),
		"fixup4.dat":          strings.Repeat("F", 2048), // an exact multiple of blksize: needs the empty last block
		"config.txt":          "arm_64bit=1\ninitramfs initrd.img followkernel\n[pi5]\nkernel=kernel_2712.img\n[all]\ndtoverlay=dwc2,dr_mode=host\n",
		"cmdline.txt":         "console=serial0,115200 cm4bench.server=http://10.42.0.1:5000\n",
		"bcm2711-rpi-cm4.dtb": "dtb",
		"kernel8.img":         kernel,
		"initrd.img":          strings.Repeat("I", 3000),
		"overlays/dwc2.dtbo":  "dwc2",
	}
	sum := sha256.Sum256([]byte(kernel))
	for _, tt := range []struct {
		name       string
		extra      map[string]string
		wantPrefix string
		wantFirst  []rrq
	}{
		{
			name:       "root fallback",
			wantPrefix: "",
			// The order of a real Pi 4's requests (a dnsmasq log from a Pi 4
			// LTSP guide, rpi-eeprom#74/#87): initrd before the dtb, recovery
			// probes, armstub last.
			wantFirst: []rrq{
				{"abcd1234/start4.elf", true}, {"abcd1234/start.elf", true},
				{"config.txt", false}, {"recover4.elf", true}, {"recovery.elf", true},
				{"start4.elf", false}, {"fixup4.dat", false}, {"recovery.elf", true}, {"config.txt", false},
				{"dt-blob.bin", true}, {"bootcfg.txt", true},
				{"initrd.img", true}, {"initrd.img", false},
				{"bcm2711-rpi-cm4.dtb", true}, {"bcm2711-rpi-cm4.dtb", false},
				{"overlays/overlay_map.dtb", true},
				{"overlays/dwc2.dtbo", true}, {"overlays/dwc2.dtbo", false},
				{"cmdline.txt", true}, {"cmdline.txt", false},
				{"kernel8.img", true}, {"kernel8.img", false},
				{"armstub8-gic.bin", true},
			},
		},
		{
			name:       "serial prefix",
			extra:      map[string]string{"abcd1234/start4.elf": "per-device", "abcd1234/config.txt": "[all]\n", "abcd1234/fixup4.dat": "x", "abcd1234/kernel8.img": kernel, "abcd1234/cmdline.txt": rootFiles["cmdline.txt"]},
			wantPrefix: "abcd1234",
			wantFirst: []rrq{
				{"abcd1234/start4.elf", true},
				{"abcd1234/config.txt", false}, {"abcd1234/recover4.elf", true}, {"abcd1234/recovery.elf", true},
				{"abcd1234/start4.elf", false}, {"abcd1234/fixup4.dat", false}, {"abcd1234/recovery.elf", true}, {"abcd1234/config.txt", false},
			},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			topo := nettest.New(t, nettest.Options{Prefix: "cbs", ClientMACs: []net.HardwareAddr{testBoard.MAC}})
			root := t.TempDir()
			tftpTree(t, root, rootFiles)
			tftpTree(t, root, tt.extra)
			log := startDnsmasq(t, topo.Server, root, true)
			cli := topo.Clients[0]
			bl := &pisim.Bootloader{
				Board:  testBoard,
				EEPROM: pisim.EEPROM{BootOrder: 0xe2, DHCPTimeout: 20 * time.Second},
				Link:   nsLink{cli, &pisim.HostLink{Name: cli.Iface}},
			}
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			out, err := bl.Boot(ctx)
			if err != nil {
				t.Fatalf("boot: %v\nattempts: %q\ndnsmasq:\n%s", err, out.Attempts, log)
			}
			if out.Mode != "network" || out.Prefix != tt.wantPrefix {
				t.Errorf("mode %q prefix %q, want network %q", out.Mode, out.Prefix, tt.wantPrefix)
			}
			if !out.Lease.Menu || !out.TFTP.Equal(net.IPv4(10, 42, 0, 1)) || out.Lease.YourIP == nil {
				t.Errorf("lease = %+v, tftp %v", out.Lease, out.TFTP)
			}
			got := sequence(out)
			if len(got) < len(tt.wantFirst) || fmt.Sprint(got[:len(tt.wantFirst)]) != fmt.Sprint(tt.wantFirst) {
				t.Errorf("RRQ sequence\n got %v\nwant %v...", got, tt.wantFirst)
			}
			if out.KernelSHA != hex.EncodeToString(sum[:]) {
				t.Errorf("kernel sha256 %s, want %x", out.KernelSHA, sum)
			}
			if pisim.KernelArg(out.Cmdline, "cm4bench.server") != "http://10.42.0.1:5000" {
				t.Errorf("cmdline = %q", out.Cmdline)
			}
			if out.Probes == 0 {
				t.Error("no Early-terminate probes")
			}
			// dnsmasq saw the probes as the Pi's aborts on the wire.
			if !strings.Contains(log.String(), "Early terminate") {
				t.Errorf("dnsmasq log has no Early terminate:\n%s", log)
			}
			for _, f := range out.Files {
				if !f.Probe && f.Bytes > 0 && f.BlkSize != 1024 {
					t.Errorf("%s: blksize %d, want 1024", f.Name, f.BlkSize)
				}
			}
		})
	}
}

// TestNoMenuFallsBackToEMMC: a server that gives a plain lease (no boot
// menu) makes the bootloader give up after DHCP_TIMEOUT (NETBOOT init
// failed) and boot the eMMC; the booted OS then takes a plain lease.
func TestNoMenuFallsBackToEMMC(t *testing.T) {
	nettest.Require(t)
	topo := nettest.New(t, nettest.Options{Prefix: "cbs", ClientMACs: []net.HardwareAddr{testBoard.MAC}})
	root := t.TempDir()
	tftpTree(t, root, map[string]string{"start4.elf": "x"})
	log := startDnsmasq(t, topo.Server, root, false)
	cli := topo.Clients[0]
	link := nsLink{cli, &pisim.HostLink{Name: cli.Iface}}

	t.Run("network only", func(t *testing.T) {
		bl := &pisim.Bootloader{Board: testBoard, Link: link,
			EEPROM: pisim.EEPROM{BootOrder: 0xe2, DHCPTimeout: 5 * time.Second, DHCPReqTimeout: time.Second}}
		out, err := bl.Boot(context.Background())
		if !errors.Is(err, pisim.ErrNoBootMedia) {
			t.Fatalf("err = %v, want ErrNoBootMedia; attempts %q", err, out.Attempts)
		}
		if out.NoMenu == 0 || len(out.Attempts) < 1 || !strings.Contains(out.Attempts[0], "NETBOOT init failed") {
			t.Errorf("noMenu %d, attempts %q\n%s", out.NoMenu, out.Attempts, log)
		}
		if len(out.Files) != 0 {
			t.Errorf("TFTP without a menu: %v", sequence(out))
		}
	})
	t.Run("network then eMMC", func(t *testing.T) {
		bl := &pisim.Bootloader{Board: testBoard, Link: link, EMMC: fileDisk(t, mbr(0x0c, true)), ModeDelay: 10 * time.Millisecond,
			EEPROM: pisim.EEPROM{BootOrder: 0xf12, DHCPTimeout: 5 * time.Second, DHCPReqTimeout: time.Second}}
		out, err := bl.Boot(context.Background())
		if err != nil || out.Mode != "emmc" {
			t.Fatalf("mode %q err %v attempts %q", out.Mode, err, out.Attempts)
		}
		ack, err := bl.OSDHCP(context.Background(), "cm4-abcd1234")
		if err != nil {
			t.Fatalf("OS DHCP: %v\n%s", err, log)
		}
		if ack.Menu || ack.YourIP == nil {
			t.Errorf("OS lease %+v", ack)
		}
	})
}

func fileDisk(t *testing.T, b []byte) *os.File {
	t.Helper()
	p := filepath.Join(t.TempDir(), "emmc.img")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}
