package doctor_test

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cm4bench/cm4bench/firmware"
	"github.com/cm4bench/cm4bench/internal/doctor"
	"github.com/cm4bench/cm4bench/netboot/sim/nettest"
	"github.com/cm4bench/cm4bench/usbboot"
	"github.com/cm4bench/cm4bench/usbboot/usbboottest"
)

// only runs d with every check but the one named skipped or harmless, and
// returns that check's result.
func check(t *testing.T, d *doctor.Doctor, name string) doctor.Result {
	t.Helper()
	for _, r := range d.Run(context.Background()) {
		if r.Check == name {
			return r
		}
	}
	t.Fatalf("no check %q", name)
	return doctor.Result{}
}

func want(t *testing.T, r doctor.Result, st doctor.Status, detail string) {
	t.Helper()
	if r.Status != st || !strings.Contains(r.Detail, detail) {
		t.Errorf("%s: %s %q, want %s with %q", r.Check, r.Status, r.Detail, st, detail)
	}
	if st != doctor.OK && st != doctor.Skip && r.Fix == "" && r.Check != "data-dir" {
		t.Errorf("%s: %s without a fix", r.Check, st)
	}
}

func TestUSBChecks(t *testing.T) {
	root := t.TempDir()
	d := &doctor.Doctor{Root: root, UdevDirs: []string{t.TempDir()}}
	want(t, check(t, d, "usb-subsystem"), doctor.Fail, "no USB subsystem")
	os.MkdirAll(filepath.Join(root, "sys/bus/usb"), 0o755)
	want(t, check(t, d, "usb-subsystem"), doctor.OK, "/sys/bus/usb")

	want(t, check(t, d, "udev-rule"), doctor.Warn, "no udev rule")
	rules := t.TempDir()
	os.WriteFile(filepath.Join(rules, "70-cm4bench.rules"), []byte(`# x
SUBSYSTEM=="usb", ATTR{idVendor}=="0a5c", ATTR{idProduct}=="2763|2764|2711|2712", MODE="0660", GROUP="plugdev", TAG+="uaccess"
`), 0o644)
	d.UdevDirs = []string{rules}
	want(t, check(t, d, "udev-rule"), doctor.OK, "70-cm4bench.rules")

	want(t, check(t, d, "rpiboot-devices"), doctor.Skip, "")
	bus := usbboottest.NewBus(nil)
	bus.AddOther(usbboot.Desc{Port: "1-2", VID: 0x046d, PID: 0xc52b})
	d.ListUSB = bus.List
	want(t, check(t, d, "rpiboot-devices"), doctor.Warn, "no board in RPIBOOT mode among 1")
	b, err := usbboottest.NewBoard(usbboottest.BoardConfig{Port: "1-1.3"})
	if err != nil {
		t.Fatal(err)
	}
	bus.Add(b)
	want(t, check(t, d, "rpiboot-devices"), doctor.OK, "1-1.3 (2711, rom)")
	d.ListUSB = func(context.Context) ([]usbboot.Desc, error) { return nil, errors.New("libusb init failed") }
	want(t, check(t, d, "rpiboot-devices"), doctor.Fail, "libusb init failed")
}

// The interface and other-DHCP checks, in namespaces: a client link with no
// address, one that is down, and a real dnsmasq answering on the link.
func TestInterfaceAndRivalChecks(t *testing.T) {
	nettest.Require(t)
	dnsmasq := nettest.RequireTool(t, "dnsmasq")
	topo := nettest.New(t, nettest.Options{Prefix: "cbd"})
	cli := topo.Clients[0]
	in := func(ns *nettest.NS, d *doctor.Doctor, name string) (r doctor.Result) {
		t.Helper()
		if err := ns.Do(func() error { r = check(t, d, name); return nil }); err != nil {
			t.Fatal(err)
		}
		return r
	}
	d := &doctor.Doctor{Iface: "nosuch0", Rival: doctor.DHCPProbe(2 * time.Second)}
	want(t, in(cli, d, "interface"), doctor.Fail, "no interface nosuch0")
	d.Iface = nettest.ClientIface
	want(t, in(cli, d, "interface"), doctor.Fail, "no IPv4 address")
	want(t, in(topo.Server, &doctor.Doctor{Iface: nettest.ServerIface}, "interface"), doctor.OK, "10.42.0.1/24")
	want(t, in(cli, d, "other-dhcp"), doctor.OK, "no other DHCP server")

	dir := t.TempDir()
	cf := filepath.Join(dir, "dnsmasq.conf")
	os.WriteFile(cf, []byte("port=0\ninterface="+nettest.ServerIface+"\nbind-interfaces\nno-ping\nno-resolv\nno-hosts\n"+
		"dhcp-range=10.42.0.100,10.42.0.200,255.255.255.0,1h\ndhcp-leasefile="+filepath.Join(dir, "leases")+"\nuser=root\n"), 0o644)
	_, out := topo.Server.Start(t, dnsmasq, "-k", "-C", cf, "--log-facility=-")
	for deadline := time.Now().Add(5 * time.Second); !strings.Contains(out.String(), "DHCP, IP range"); {
		if time.Now().After(deadline) {
			t.Fatalf("dnsmasq did not start:\n%s", out)
		}
		time.Sleep(20 * time.Millisecond)
	}
	want(t, in(cli, d, "other-dhcp"), doctor.Fail, "server 10.42.0.1")

	cli.Run(t, "ip", "link", "set", nettest.ClientIface, "down")
	want(t, in(cli, d, "interface"), doctor.Fail, "is down")
}

func TestPortCheck(t *testing.T) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	d := &doctor.Doctor{Iface: "lo", BindAddr: "127.0.0.1", Ports: []doctor.Port{{Net: "tcp", Port: port, What: "HTTP"}}}
	name := "port-tcp-" + strings.TrimPrefix(l.Addr().String(), "127.0.0.1:")
	want(t, check(t, d, name), doctor.Fail, "in use by another program")
	l.Close()
	want(t, check(t, d, name), doctor.OK, "free for HTTP")
	u, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	up := u.LocalAddr().(*net.UDPAddr).Port
	d.Ports = []doctor.Port{{Net: "udp", Port: up, What: "TFTP"}}
	want(t, check(t, d, "port-udp-"+strings.TrimPrefix(u.LocalAddr().String(), "127.0.0.1:")), doctor.Fail, "in use")
}

func TestFirmwareAndTFTPRootChecks(t *testing.T) {
	cache := &firmware.Cache{Dir: t.TempDir(), Offline: true}
	root := t.TempDir()
	d := &doctor.Doctor{Firmware: cache, FirmwareSets: []string{"netboot"}, TFTPRoot: root}
	r := check(t, d, "firmware-cache")
	want(t, r, doctor.Fail, "not usable")
	if !strings.Contains(r.Fix, "cm4bench firmware fetch netboot") {
		t.Errorf("fix %q", r.Fix)
	}
	r = check(t, d, "tftp-root")
	want(t, r, doctor.Fail, "initrd.img missing")
	for _, s := range []string{"start4.elf: not in the firmware cache", "config.txt does not load initrd.img", "cmdline.txt has no cm4bench.server="} {
		if !strings.Contains(r.Detail, s) {
			t.Errorf("tftp-root detail lacks %q: %s", s, r.Detail)
		}
	}
	// The files of a prepared root, without a cache to compare with.
	os.WriteFile(filepath.Join(root, "initrd.img"), []byte("cpio"), 0o644)
	os.WriteFile(filepath.Join(root, "config.txt"), []byte("[all]\ninitramfs initrd.img followkernel\n"), 0o644)
	os.WriteFile(filepath.Join(root, "cmdline.txt"), []byte("console=tty1 cm4bench.server=http://10.42.0.1:5000\n"), 0o644)
	d.Firmware = nil
	want(t, check(t, d, "tftp-root"), doctor.OK, "prepared")
	os.WriteFile(filepath.Join(root, "cmdline.txt"), []byte("console=tty1\n"), 0o644)
	want(t, check(t, d, "tftp-root"), doctor.Fail, "cmdline.txt has no cm4bench.server=")
}

func TestDataDirCheck(t *testing.T) {
	dir := t.TempDir()
	notDir := filepath.Join(dir, "file")
	os.WriteFile(notDir, []byte("x"), 0o644)
	d := &doctor.Doctor{DataDir: filepath.Join(notDir, "data")}
	want(t, check(t, d, "data-dir"), doctor.Fail, "cannot create")

	d.DataDir = filepath.Join(dir, "data")
	d.FreeBytes = func(string) (int64, error) { return 4 << 30, nil }
	want(t, check(t, d, "data-dir"), doctor.Fail, "CM4's smallest eMMC needs 8.0 GiB")
	d.FreeBytes = func(string) (int64, error) { return 20 << 30, nil }
	want(t, check(t, d, "data-dir"), doctor.OK, "writable, 20.0 GiB free")
	d.LargestEMMC = func(context.Context) (int64, error) { return 32 << 30, nil }
	want(t, check(t, d, "data-dir"), doctor.Fail, "largest eMMC a board here reported needs 32.0 GiB")
	d.FreeBytes = nil // the real file system
	d.LargestEMMC, d.MinFree = nil, 1
	want(t, check(t, d, "data-dir"), doctor.OK, "writable")
	if doctor.Failed([]doctor.Result{{Status: doctor.Warn}, {Status: doctor.OK}}) || !doctor.Failed([]doctor.Result{{Status: doctor.Fail}}) {
		t.Error("Failed")
	}
}
