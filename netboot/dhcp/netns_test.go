package dhcp_test

import (
	"context"
	"encoding/hex"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"github.com/insomniacslk/dhcp/iana"

	"github.com/cm4bench/cm4bench/internal/contract"
	"github.com/cm4bench/cm4bench/netboot/dhcp"
	"github.com/cm4bench/cm4bench/netboot/sim/nettest"
)

const (
	menuHex  = "0601030a0400505845091400001152617370626572727920506920426f6f74ff"
	piGUID   = "0052506934414131c0320136c23412cdab"
	piVendor = "PXEClient:Arch:00000:UNDI:002001"
)

// eventLog records events for assertions.
type eventLog struct {
	mu  sync.Mutex
	evs []contract.Event
}

func (l *eventLog) add(e contract.Event) { l.mu.Lock(); l.evs = append(l.evs, e); l.mu.Unlock() }
func (l *eventLog) kinds(kind string) []contract.Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []contract.Event
	for _, e := range l.evs {
		if e.Kind == kind {
			out = append(out, e)
		}
	}
	return out
}

// serve runs srv inside the topology's server namespace until the test ends
// and waits until it listens. It returns a stop function that returns
// Serve's error (also called at cleanup).
func serve(t testing.TB, ns *nettest.NS, srv *dhcp.Server) func() error {
	t.Helper()
	ready := make(chan struct{})
	srv.Ready = func() { close(ready) }
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- ns.Do(func() error { return srv.Serve(ctx) }) }()
	select {
	case <-ready:
	case err := <-errc:
		cancel()
		t.Fatalf("Serve returned before listening: %v", err)
	case <-time.After(20 * time.Second):
		cancel()
		t.Fatal("Serve did not start listening within 20s")
	}
	var once sync.Once
	var err error
	stop := func() error {
		once.Do(func() { cancel(); err = <-errc })
		return err
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return stop
}

func newServer(t *testing.T, p dhcp.Policy, ev *eventLog) *dhcp.Server {
	return &dhcp.Server{
		Iface:        nettest.ServerIface,
		Range:        [2]netip.Addr{netip.MustParseAddr("10.42.0.100"), netip.MustParseAddr("10.42.0.199")},
		LeaseFile:    filepath.Join(t.TempDir(), "leases.json"),
		Policy:       p,
		Events:       ev.add,
		RivalTimeout: 300 * time.Millisecond,
		Logger:       testLogger(t),
	}
}

// udhcpcScript dumps udhcpc's environment for the "bound" event.
func udhcpcScript(t *testing.T) (script, out string) {
	dir := t.TempDir()
	script, out = filepath.Join(dir, "dump.sh"), filepath.Join(dir, "env")
	body := "#!/bin/sh\nif [ \"$1\" = bound ]; then env > " + out + "; fi\nexit 0\n"
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	return script, out
}

func readEnv(t *testing.T, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("client script wrote nothing: %v", err)
	}
	env := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			env[k] = v
		}
	}
	return env
}

// udhcpcPi runs busybox udhcpc sending the Pi 4 bootloader's option set
// (netboot.md §6.2) and returns the lease environment.
func udhcpcPi(t *testing.T, c *nettest.NS, pi bool) map[string]string {
	t.Helper()
	nettest.RequireTool(t, "busybox")
	script, out := udhcpcScript(t)
	args := []string{"udhcpc", "-i", c.Iface, "-f", "-q", "-n", "-t", "4", "-T", "2", "-C", "-o", "-s", script,
		"-O", "1", "-O", "3", "-O", "43", "-O", "60", "-O", "66", "-O", "67", "-O", "97"}
	if pi {
		args = append(args, "-V", piVendor, "-x", "0x5d:0000", "-x", "0x5e:010201", "-x", "0x61:"+piGUID)
	}
	c.Run(t, "busybox", args...)
	return readEnv(t, out)
}

func TestUdhcpc(t *testing.T) {
	nettest.Require(t)
	for _, tt := range []struct {
		name     string
		mac      string
		pi       bool // send the Pi's options
		disabled bool
		menu     bool
	}{
		{"pi netboot enabled", "dc:a6:32:01:36:c2", true, false, true},
		{"pi netboot disabled", "dc:a6:32:01:36:c2", true, true, false},
		{"not a pi", "52:54:00:12:34:56", false, false, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			mac, _ := net.ParseMAC(tt.mac)
			topo := nettest.New(t, nettest.Options{Prefix: "cbn", ClientMACs: []net.HardwareAddr{mac}})
			p := &nettest.Switch{}
			if tt.disabled {
				p.Disable(mac)
			}
			ev := &eventLog{}
			serve(t, topo.Server, newServer(t, p, ev))
			env := udhcpcPi(t, topo.Clients[0], tt.pi)
			t.Logf("udhcpc lease: ip=%s siaddr=%s tftp=%s opt43=%s opt97=%s vendor=%s", env["ip"], env["siaddr"], env["tftp"], env["opt43"], env["opt97"], env["vendor"])
			ip := netip.MustParseAddr(env["ip"])
			if ip.Less(netip.MustParseAddr("10.42.0.100")) || netip.MustParseAddr("10.42.0.199").Less(ip) {
				t.Errorf("ip = %s, want inside the range", ip)
			}
			if env["serverid"] != "10.42.0.1" || env["subnet"] != "255.255.255.0" {
				t.Errorf("serverid %q subnet %q", env["serverid"], env["subnet"])
			}
			if tt.menu {
				if env["opt43"] != menuHex {
					t.Errorf("opt43 = %q, want %s", env["opt43"], menuHex)
				}
				if env["siaddr"] != "10.42.0.1" || env["tftp"] != "10.42.0.1" {
					t.Errorf("siaddr %q tftp(66) %q, want 10.42.0.1", env["siaddr"], env["tftp"])
				}
				if env["opt97"] != piGUID {
					t.Errorf("opt97 = %q, want echo %s", env["opt97"], piGUID)
				}
				if env["vendor"] != "" && env["vendor"] != "PXEClient" {
					t.Errorf("vendor (60) = %q, want PXEClient", env["vendor"])
				}
			} else {
				for _, k := range []string{"opt43", "tftp", "opt97", "vendor"} {
					if env[k] != "" {
						t.Errorf("%s = %q in a lease without the menu", k, env[k])
					}
				}
				if s := env["siaddr"]; s != "" && s != "0.0.0.0" {
					t.Errorf("siaddr = %q in a lease without the menu", s)
				}
			}
			acks := ev.kinds("dhcp.ack")
			if len(acks) != 1 || acks[0].MAC != tt.mac || acks[0].Fields["netboot"] != tt.menu {
				t.Errorf("ack events %+v", acks)
			}
		})
	}
}

func TestDhclientPi(t *testing.T) {
	nettest.Require(t)
	nettest.RequireTool(t, "dhclient")
	topo := nettest.New(t, nettest.Options{Prefix: "cbn"})
	ev := &eventLog{}
	serve(t, topo.Server, newServer(t, nil, ev))
	dir := t.TempDir()
	out := filepath.Join(dir, "env")
	script := filepath.Join(dir, "dump.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\nif [ \"$reason\" = BOUND ]; then env > "+out+"; fi\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	guidColon := strings.Join(splitHex(piGUID), ":")
	conf := `option pxe-arch code 93 = unsigned integer 16;
option pxe-undi code 94 = { unsigned integer 8, unsigned integer 8, unsigned integer 8 };
option pxe-guid code 97 = string;
send vendor-class-identifier "` + piVendor + `";
send pxe-arch 0;
send pxe-undi 1 2 1;
send pxe-guid ` + guidColon + `;
request subnet-mask, routers, vendor-encapsulated-options, vendor-class-identifier, tftp-server-name, bootfile-name, pxe-guid;
`
	cf := filepath.Join(dir, "pi.conf")
	if err := os.WriteFile(cf, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	pid := filepath.Join(dir, "dhclient.pid")
	c := topo.Clients[0]
	t.Cleanup(func() {
		_, _ = c.Command(context.Background(), "dhclient", "-x", "-pf", pid, "-cf", cf, "-lf", filepath.Join(dir, "leases"), "-sf", script).CombinedOutput()
	})
	c.Run(t, "dhclient", "-4", "-1", "-v", "-cf", cf, "-lf", filepath.Join(dir, "leases"), "-pf", pid, "-sf", script, c.Iface)
	env := readEnv(t, out)
	if got := strings.ReplaceAll(env["new_vendor_encapsulated_options"], ":", ""); got != menuHex && !sameHexBytes(env["new_vendor_encapsulated_options"], menuHex) {
		t.Errorf("vendor-encapsulated-options = %q, want %s", env["new_vendor_encapsulated_options"], menuHex)
	}
	if env["new_next_server"] != "10.42.0.1" || env["new_tftp_server_name"] != "10.42.0.1" || env["new_dhcp_server_identifier"] != "10.42.0.1" {
		t.Errorf("next_server %q tftp_server_name %q server_identifier %q, want 10.42.0.1", env["new_next_server"], env["new_tftp_server_name"], env["new_dhcp_server_identifier"])
	}
	if env["new_vendor_class_identifier"] != "PXEClient" {
		t.Errorf("vendor_class_identifier = %q", env["new_vendor_class_identifier"])
	}
	if !sameHexBytes(env["new_pxe_guid"], piGUID) {
		t.Errorf("pxe_guid (97) = %q, want echo of %s", env["new_pxe_guid"], piGUID)
	}
	if !strings.HasPrefix(env["new_ip_address"], "10.42.0.") {
		t.Errorf("ip %q", env["new_ip_address"])
	}
}

func splitHex(h string) []string {
	var out []string
	for i := 0; i+1 < len(h); i += 2 {
		out = append(out, h[i:i+2])
	}
	return out
}

// sameHexBytes compares dhclient's colon hex (leading zeros dropped, e.g.
// "6:1:3:a") with a plain hex string.
func sameHexBytes(colon, plain string) bool {
	parts := strings.Split(colon, ":")
	want, err := hex.DecodeString(plain)
	if err != nil || len(parts) != len(want) {
		return false
	}
	for i, p := range parts {
		if len(p) == 1 {
			p = "0" + p
		}
		b, err := hex.DecodeString(p)
		if err != nil || len(b) != 1 || b[0] != want[i] {
			return false
		}
	}
	return true
}

// piModifiers make nclient4 look like the Pi 4 bootloader.
func piModifiers() []dhcpv4.Modifier {
	g, _ := hex.DecodeString(piGUID)
	return []dhcpv4.Modifier{
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier(piVendor)),
		dhcpv4.WithOption(dhcpv4.OptClientArch(iana.INTEL_X86PC)),
		dhcpv4.WithGeneric(dhcpv4.OptionClientNetworkInterfaceIdentifier, []byte{1, 2, 1}),
		dhcpv4.WithGeneric(dhcpv4.OptionClientMachineIdentifier, g),
	}
}

// lease runs a full DORA with nclient4 inside ns for chaddr mac.
func lease(t *testing.T, ns *nettest.NS, mac net.HardwareAddr, mods ...dhcpv4.Modifier) *nclient4.Lease {
	t.Helper()
	var l *nclient4.Lease
	err := ns.Do(func() error {
		c, err := nclient4.New(ns.Iface, nclient4.WithHWAddr(mac), nclient4.WithTimeout(2*time.Second), nclient4.WithRetry(3))
		if err != nil {
			return err
		}
		defer c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		l, err = c.Request(ctx, mods...)
		return err
	})
	if err != nil {
		t.Fatalf("DORA for %s: %v", mac, err)
	}
	return l
}

// TestNetbootSwitchAndRestart: the menu follows the Policy at once, and
// leases survive a server restart (same MAC, same address; the address is
// not handed to another MAC meanwhile).
func TestNetbootSwitchAndRestart(t *testing.T) {
	nettest.Require(t)
	topo := nettest.New(t, nettest.Options{Prefix: "cbn"})
	p := &nettest.Switch{}
	ev := &eventLog{}
	srv := newServer(t, p, ev)
	stop := serve(t, topo.Server, srv)
	piA := net.HardwareAddr{0xdc, 0xa6, 0x32, 0xaa, 0x00, 0x01}
	l1 := lease(t, topo.Clients[0], piA, piModifiers()...)
	if o := l1.ACK.GetOneOption(dhcpv4.OptionVendorSpecificInformation); hex.EncodeToString(o) != menuHex {
		t.Fatalf("enabled Pi: option 43 = %x", o)
	}
	p.Disable(piA) // e.g. action-done switched netboot off
	l2 := lease(t, topo.Clients[0], piA, piModifiers()...)
	if o := l2.ACK.GetOneOption(dhcpv4.OptionVendorSpecificInformation); o != nil {
		t.Fatalf("disabled Pi still gets option 43 %x", o)
	}
	if !l2.ACK.YourIPAddr.Equal(l1.ACK.YourIPAddr) {
		t.Fatalf("same MAC got %s then %s", l1.ACK.YourIPAddr, l2.ACK.YourIPAddr)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	srv2 := newServer(t, p, ev)
	srv2.LeaseFile = srv.LeaseFile
	serve(t, topo.Server, srv2)
	other := lease(t, topo.Clients[0], net.HardwareAddr{0x52, 0x54, 0, 0, 0, 9})
	if other.ACK.YourIPAddr.Equal(l1.ACK.YourIPAddr) {
		t.Fatalf("after restart another MAC got %s, the Pi's address", other.ACK.YourIPAddr)
	}
	l3 := lease(t, topo.Clients[0], piA, piModifiers()...)
	if !l3.ACK.YourIPAddr.Equal(l1.ACK.YourIPAddr) {
		t.Fatalf("after restart the Pi got %s, want its old %s", l3.ACK.YourIPAddr, l1.ACK.YourIPAddr)
	}
}

// TestProxyOfferOnTheWire: in proxy mode a Pi's DISCOVER gets a broadcast
// OFFER without an address, carrying only the boot menu.
func TestProxyOfferOnTheWire(t *testing.T) {
	nettest.Require(t)
	topo := nettest.New(t, nettest.Options{Prefix: "cbn"})
	srv := newServer(t, nil, &eventLog{})
	srv.Proxy = true
	serve(t, topo.Server, srv)
	c := topo.Clients[0]
	var offer *dhcpv4.DHCPv4
	err := c.Do(func() error {
		cl, err := nclient4.New(c.Iface, nclient4.WithTimeout(2*time.Second), nclient4.WithRetry(3))
		if err != nil {
			return err
		}
		defer cl.Close()
		offer, err = cl.DiscoverOffer(context.Background(), piModifiers()...)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if !offer.YourIPAddr.IsUnspecified() || hex.EncodeToString(offer.GetOneOption(dhcpv4.OptionVendorSpecificInformation)) != menuHex ||
		!offer.ServerIPAddr.Equal(net.IPv4(10, 42, 0, 1)) || offer.ClassIdentifier() != "PXEClient" {
		t.Fatalf("proxy offer: %s", offer.Summary())
	}
}

// startDnsmasq runs dnsmasq answering DHCP in ns (which must have an
// address in 10.42.0.0/24).
func startDnsmasq(t *testing.T, ns *nettest.NS) {
	t.Helper()
	nettest.RequireTool(t, "dnsmasq")
	dir := t.TempDir()
	ns.Start(t, "dnsmasq", "-k", "--conf-file=/dev/null", "--port=0", "--interface="+ns.Iface, "--bind-interfaces",
		"--dhcp-range=10.42.0.150,10.42.0.160,1h", "--dhcp-leasefile="+filepath.Join(dir, "leases"),
		"--pid-file="+filepath.Join(dir, "pid"), "--log-facility=-", "--user=root", "--dhcp-authoritative")
}

func TestRivalRefusesStart(t *testing.T) {
	nettest.Require(t)
	topo := nettest.New(t, nettest.Options{Prefix: "cbn", ClientAddrs: true})
	rival := topo.Clients[0] // 10.42.0.100, runs dnsmasq
	startDnsmasq(t, rival)
	var r *dhcp.Rival
	// dnsmasq needs a moment to start; DetectRival retransmits once.
	deadline := time.Now().Add(10 * time.Second)
	for r == nil && time.Now().Before(deadline) {
		err := topo.Server.Do(func() error {
			var err error
			r, err = dhcp.DetectRival(context.Background(), nettest.ServerIface, 3*time.Second)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if r == nil {
		t.Fatal("DetectRival found no server while dnsmasq answers on the link")
	}
	if r.ServerID != rival.Addr.Addr() || r.MAC.String() != rival.MAC.String() {
		t.Fatalf("rival %s, want server id %s MAC %s", r, rival.Addr.Addr(), rival.MAC)
	}

	ev := &eventLog{}
	srv := newServer(t, nil, ev)
	srv.RivalTimeout = 3 * time.Second
	err := topo.Server.Do(func() error { return srv.Serve(context.Background()) })
	var re *dhcp.RivalError
	if !errors.As(err, &re) {
		t.Fatalf("Serve with a rival = %v, want *RivalError", err)
	}
	if !strings.Contains(err.Error(), rival.Addr.Addr().String()) || !strings.Contains(err.Error(), rival.MAC.String()) {
		t.Errorf("error does not name the rival: %v", err)
	}
	if len(ev.kinds("dhcp.rival")) != 1 {
		t.Errorf("rival events %+v", ev.kinds("dhcp.rival"))
	}

	// --allow-other-dhcp: it starts, and keeps reporting the rival.
	ev2 := &eventLog{}
	srv2 := newServer(t, nil, ev2)
	srv2.RivalTimeout = 3 * time.Second
	srv2.AllowOtherDHCP = true
	serve(t, topo.Server, srv2)
	if n := len(ev2.kinds("dhcp.rival")); n != 1 {
		t.Errorf("allowed start: %d rival events, want 1", n)
	}
}

// TestRivalWatchWhileRunning: a rival that appears after start is reported
// by the running server (warn log + dhcp.rival event).
func TestRivalWatchWhileRunning(t *testing.T) {
	nettest.Require(t)
	topo := nettest.New(t, nettest.Options{Prefix: "cbn", ClientAddrs: true})
	ev := &eventLog{}
	srv := newServer(t, nil, ev)
	srv.RivalInterval = 500 * time.Millisecond
	serve(t, topo.Server, srv)
	if n := len(ev.kinds("dhcp.rival")); n != 0 {
		t.Fatalf("rival events before any rival: %d", n)
	}
	startDnsmasq(t, topo.Clients[0])
	deadline := time.Now().Add(15 * time.Second)
	for len(ev.kinds("dhcp.rival")) == 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond) // polling an event log filled by the server's goroutine
	}
	evs := ev.kinds("dhcp.rival")
	if len(evs) == 0 {
		t.Fatal("running server did not report dnsmasq answering on the link")
	}
	if evs[0].Level != "warn" || evs[0].Fields["server_id"] != topo.Clients[0].Addr.Addr().String() {
		t.Errorf("rival event %+v", evs[0])
	}
	if srv.Stats().Rivals == 0 {
		t.Error("Stats().Rivals = 0")
	}
}
