// Package nettest builds throwaway Linux network-namespace topologies for
// tests: a bench ("server") namespace joined to one or more client namespaces,
// so real DHCP/TFTP/HTTP servers and real client programs (udhcpc, dhclient,
// atftp, curl, dnsmasq, the cm4agent) talk over a real link without touching
// the host's network.
//
// Two shapes:
//
//   - Clients == 1: the server namespace and one client namespace joined by a
//     veth pair (server side "bench0", client side "eth0").
//   - Clients > 1: a third "switch" namespace holds a Linux bridge; the server
//     and every client hang off it through veth pairs, like a bench switch.
//
// Usage:
//
//	func TestSomething(t *testing.T) {
//		nettest.Require(t) // skips unless root with ip(8); CI is root
//		topo := nettest.New(t, nettest.Options{Prefix: "cbn", Clients: 1})
//		srv, cli := topo.Server, topo.Clients[0]
//		// Run Go code inside a namespace. Sockets opened by fn belong to that
//		// namespace for their whole life, whatever thread later uses them.
//		errc := make(chan error, 1)
//		go func() { errc <- srv.Do(func() error { return server.Serve(ctx) }) }()
//		// Run a real program inside a namespace.
//		out := cli.Run(t, "busybox", "udhcpc", "-i", cli.Iface, "-q", "-n")
//		_ = out
//	}
//
// Namespace names are Options.Prefix + a random suffix + a role ("-srv",
// "-sw", "-c0", ...), so parallel test runs never collide; every namespace is
// deleted by t.Cleanup. Processes started with NS.Start are killed (and
// reaped) before the namespaces go away.
//
// NS.Do runs fn on a goroutine locked to a fresh OS thread that is switched
// into the namespace; the thread is discarded afterwards (never returned to
// the Go scheduler), so the namespace can not leak into unrelated code.
// Goroutines that fn starts run on other threads, in the host namespace:
// only sockets and interface lookups made directly by fn (or by code it
// calls synchronously) happen inside the namespace. cm4bench's servers open
// every socket on the goroutine that calls Serve, so
// ns.Do(func() error { return srv.Serve(ctx) }) works.
package nettest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cm4bench/cm4bench/internal/syncbuf"
	"github.com/cm4bench/cm4bench/netboot/sim/netns"
)

// Interface names inside the namespaces.
const (
	ServerIface = "bench0" // the server namespace's link
	ClientIface = "eth0"   // every client namespace's link
	BridgeName  = "br0"    // the bridge in the switch namespace (Clients > 1)
)

// Options shape a topology. The zero value of every field but Prefix is a
// sensible default.
type Options struct {
	// Prefix starts every namespace name (required; each engineer's tests use
	// their own, e.g. "cbn" for netboot).
	Prefix string
	// Clients is the number of client namespaces (default 1). 1 joins server
	// and client with a direct veth pair; more put a bridge between them.
	Clients int
	// ServerAddr is assigned to the server's interface (default 10.42.0.1/24).
	// Set NoServerAddr to leave it unaddressed.
	ServerAddr   netip.Prefix
	NoServerAddr bool
	// ClientAddrs gives each client a static address in ServerAddr's subnet
	// (.100, .101, ...) for tests that skip DHCP (TFTP, HTTP). Leave false for
	// DHCP tests, where the client must start without an address.
	ClientAddrs bool
	// ClientMACs sets the clients' MACs (default: Raspberry Pi OUI dc:a6:32
	// plus random bytes, distinct per client).
	ClientMACs []net.HardwareAddr
	// MTU for every link (default 1500).
	MTU int
}

// Topology is a created set of namespaces.
type Topology struct {
	Server  *NS   // the bench namespace; its Iface is ServerIface
	Clients []*NS // client namespaces; each Iface is ClientIface
	Switch  *NS   // the bridge namespace, nil for a direct veth pair
}

// NS is one network namespace of a topology.
type NS struct {
	netns.NS                  // Name under /run/netns; Iface, the link to the rest of the topology
	MAC      net.HardwareAddr // MAC of Iface
	Addr     netip.Prefix     // static address of Iface; invalid if none

	mu    sync.Mutex
	procs []*exec.Cmd
}

// Require skips the test unless it can create network namespaces: it needs
// root and ip(8). CI runs as root, so these tests run there.
func Require(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("nettest: needs root to create network namespaces (CI runs as root)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		tb.Skip("nettest: ip(8) not installed (scripts/deps.sh installs iproute2)")
	}
}

// RequireTool fails the test when a client program is missing: the programs
// are installed by scripts/deps.sh, so a missing one is a broken setup, not
// a reason to skip.
func RequireTool(tb testing.TB, name string) string {
	tb.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		tb.Fatalf("nettest: %s not installed: run scripts/deps.sh", name)
	}
	return p
}

// New creates the topology described by opt and registers its removal with
// tb.Cleanup. Any failure fails the test (after removing what was made).
func New(tb testing.TB, opt Options) *Topology {
	tb.Helper()
	Require(tb)
	if opt.Prefix == "" {
		tb.Fatal("nettest: Options.Prefix is required")
	}
	if opt.Clients <= 0 {
		opt.Clients = 1
	}
	if !opt.ServerAddr.IsValid() {
		opt.ServerAddr = netip.MustParsePrefix("10.42.0.1/24")
	}
	if opt.MTU == 0 {
		opt.MTU = 1500
	}
	id := randomHex(3)
	topo := &Topology{Server: &NS{NS: netns.NS{Name: opt.Prefix + id + "-srv", Iface: ServerIface}}}
	var all []*NS
	tb.Cleanup(func() {
		// Kill processes first (they may hold the namespaces), then delete.
		for _, ns := range all {
			ns.killAll()
		}
		for _, ns := range all {
			_ = exec.Command("ip", "netns", "del", ns.Name).Run()
		}
	})
	add := func(ns *NS) {
		ip(tb, "netns", "add", ns.Name)
		all = append(all, ns)
		ip(tb, "-n", ns.Name, "link", "set", "lo", "up")
	}
	add(topo.Server)
	for i := 0; i < opt.Clients; i++ {
		c := &NS{NS: netns.NS{Name: fmt.Sprintf("%s%s-c%d", opt.Prefix, id, i), Iface: ClientIface}}
		if i < len(opt.ClientMACs) {
			c.MAC = opt.ClientMACs[i]
		} else {
			c.MAC = piMAC(i)
		}
		add(c)
		topo.Clients = append(topo.Clients, c)
	}
	mtu := fmt.Sprint(opt.MTU)
	if opt.Clients == 1 {
		c := topo.Clients[0]
		ip(tb, "link", "add", "name", ServerIface, "netns", topo.Server.Name, "mtu", mtu, "type", "veth",
			"peer", "name", ClientIface, "netns", c.Name, "mtu", mtu)
	} else {
		sw := &NS{NS: netns.NS{Name: opt.Prefix + id + "-sw", Iface: BridgeName}}
		add(sw)
		topo.Switch = sw
		ip(tb, "-n", sw.Name, "link", "add", BridgeName, "mtu", mtu, "type", "bridge", "stp_state", "0", "forward_delay", "0")
		ip(tb, "-n", sw.Name, "link", "set", BridgeName, "up")
		port := func(ns *NS, portName string) {
			ip(tb, "link", "add", "name", ns.Iface, "netns", ns.Name, "mtu", mtu, "type", "veth",
				"peer", "name", portName, "netns", sw.Name, "mtu", mtu)
			ip(tb, "-n", sw.Name, "link", "set", portName, "master", BridgeName)
			ip(tb, "-n", sw.Name, "link", "set", portName, "up")
		}
		port(topo.Server, "psrv")
		for i, c := range topo.Clients {
			port(c, fmt.Sprintf("p%d", i))
		}
	}
	if !opt.NoServerAddr {
		topo.Server.Addr = opt.ServerAddr
		ip(tb, "-n", topo.Server.Name, "addr", "add", opt.ServerAddr.String(), "dev", ServerIface)
	}
	ip(tb, "-n", topo.Server.Name, "link", "set", ServerIface, "up")
	topo.Server.MAC = linkMAC(tb, topo.Server)
	for i, c := range topo.Clients {
		ip(tb, "-n", c.Name, "link", "set", ClientIface, "address", c.MAC.String())
		if opt.ClientAddrs {
			a := opt.ServerAddr.Masked().Addr()
			for j := 0; j < 100+i; j++ {
				a = a.Next()
			}
			c.Addr = netip.PrefixFrom(a, opt.ServerAddr.Bits())
			ip(tb, "-n", c.Name, "addr", "add", c.Addr.String(), "dev", ClientIface)
		}
		ip(tb, "-n", c.Name, "link", "set", ClientIface, "up")
	}
	return topo
}

// Run runs name inside the namespace, waits for it and returns its combined
// output; a non-zero exit fails the test with that output.
func (n *NS) Run(tb testing.TB, name string, args ...string) string {
	tb.Helper()
	out, err := n.Command(context.Background(), name, args...).CombinedOutput()
	if err != nil {
		tb.Fatalf("nettest: %s in %s: %v\n%s", strings.Join(append([]string{name}, args...), " "), n.Name, err, out)
	}
	return string(out)
}

// Start starts name inside the namespace in the background with its output
// collected into the returned buffer. The process is killed and reaped at
// test cleanup (before the namespaces are removed) unless it has exited.
// It also gets SIGKILL if the thread that started it exits (so a crashed
// test binary leaves no dnsmasq behind): call Start from test code, never
// from inside NS.Do, whose thread is discarded when fn returns.
func (n *NS) Start(tb testing.TB, name string, args ...string) (*exec.Cmd, *SyncBuffer) {
	tb.Helper()
	var buf SyncBuffer
	cmd := n.Command(context.Background(), name, args...)
	cmd.Stdout, cmd.Stderr = &buf, &buf
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	if err := cmd.Start(); err != nil {
		tb.Fatalf("nettest: start %s in %s: %v", name, n.Name, err)
	}
	n.mu.Lock()
	n.procs = append(n.procs, cmd)
	n.mu.Unlock()
	tb.Cleanup(func() { n.kill(cmd) })
	return cmd, &buf
}

func (n *NS) kill(cmd *exec.Cmd) {
	if cmd.Process == nil || cmd.ProcessState != nil {
		return
	}
	_ = cmd.Process.Kill()
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
	}
}

func (n *NS) killAll() {
	n.mu.Lock()
	procs := n.procs
	n.procs = nil
	n.mu.Unlock()
	for _, p := range procs {
		n.kill(p)
	}
}

// SyncBuffer is a bytes.Buffer safe for concurrent writes and reads.
type SyncBuffer = syncbuf.Buffer

func ip(tb testing.TB, args ...string) {
	tb.Helper()
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		tb.Fatalf("nettest: ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func linkMAC(tb testing.TB, ns *NS) net.HardwareAddr {
	tb.Helper()
	var mac net.HardwareAddr
	err := ns.Do(func() error {
		ifi, err := net.InterfaceByName(ns.Iface)
		if err != nil {
			return err
		}
		mac = ifi.HardwareAddr
		return nil
	})
	if err != nil {
		tb.Fatalf("nettest: read MAC of %s in %s: %v", ns.Iface, ns.Name, err)
	}
	return mac
}

// piMAC returns a random MAC in the Raspberry Pi OUI dc:a6:32 whose last
// byte encodes i, so clients of one topology never share a MAC.
func piMAC(i int) net.HardwareAddr {
	b := make([]byte, 2)
	_, _ = rand.Read(b)
	return net.HardwareAddr{0xdc, 0xa6, 0x32, b[0], b[1], byte(i)}
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
