// Package dhcp is cm4bench's DHCPv4 server for a Raspberry Pi 4 / CM4
// netboot bench. It hands out stable per-MAC leases from a pool and, to a
// Raspberry Pi whose netboot is enabled, adds the PXE boot menu the Pi 4
// bootloader requires (option 43 with the "Raspberry Pi Boot" item, option 60
// PXEClient, option 97 echoed, siaddr = option 54 = option 66 = our address).
// The README section "DHCP: what a Pi gets" says why each byte is there.
//
// Usage:
//
//	srv := &dhcp.Server{
//		Iface:     "eth1",                 // the bench interface
//		LeaseFile: filepath.Join(data, "leases.json"),
//		Policy:    store,                  // NetbootEnabled(mac) per packet
//		Logger:    logger,                 // nil = silent
//		Events:    func(e contract.Event) {},  // dhcp.offer, dhcp.ack, dhcp.rival, ...
//	}
//	if rival, err := dhcp.DetectRival(ctx, "eth1", 3*time.Second); err != nil { ... }
//	err := srv.Serve(ctx) // refuses to start when another DHCP server answers
//
// Decisions are made by Reply, a pure function of the request and the lease
// table (no sockets), which tests and the fuzzer drive directly. Serve owns
// the socket: a UDP socket on port 67 bound to Iface (SO_BINDTODEVICE);
// replies are broadcast to 255.255.255.255:68 through it (unicast to the
// relay for relayed requests, to ciaddr for renewals). Every socket is
// opened on the goroutine that calls Serve.
//
// Pi recognition, strongest first: option 97 with the RPi4 FourCC (either
// byte order); option 60 starting with "PXEClient"; a Raspberry Pi OUI; a
// MAC recognised earlier (the Pi's REQUEST carries no option 60).
//
// Proxy mode (Server.Proxy) behaves like dnsmasq's dhcp-range=...,proxy:
// only DISCOVERs whose option 60 starts with PXEClient, from a Pi whose
// netboot is enabled, get an OFFER with yiaddr 0 and just the PXE options;
// addresses come from the network's own DHCP server and REQUESTs are left
// to it. Rival detection is off in proxy mode.
//
// Events (contract.Event.Kind): "dhcp.offer", "dhcp.ack", "dhcp.nak",
// "dhcp.release", "dhcp.decline", "dhcp.rival" (level warn), "dhcp.error".
// Fields: ip, xid, pi (recognition reason or ""), netboot (menu sent),
// serial (from option 97), server_id/rival_mac for rivals.
package dhcp

import (
	"context"
	"errors"
	"fmt"
	"github.com/cm4bench/cm4bench/internal/privilege"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/server4"

	"github.com/cm4bench/cm4bench/internal/contract"
)

// Policy answers whether a MAC may netboot now (the global switch AND the
// per-MAC switch). The store implements it; it is called once per packet, so
// it must be cheap and must not block.
type Policy interface {
	NetbootEnabled(mac net.HardwareAddr) bool
}

// Defaults.
const (
	DefaultLeaseTime = time.Hour
	offerHold        = time.Minute // how long an offered address is held for the REQUEST
	// DefaultRivalInterval is how often a running server re-probes for rival
	// servers (it also listens for their replies all the time).
	DefaultRivalInterval = time.Minute
	saveDelay            = 200 * time.Millisecond // coalesces lease-file writes
)

// Server is a DHCPv4 server for one bench interface. Zero values of the
// optional fields are sensible defaults. A Server must not be copied after
// first use.
type Server struct {
	// Iface is the bench interface. Serve binds its socket to it and
	// broadcasts replies through it. Required by Serve.
	Iface string
	// Addr is the server's address on that link, e.g. 10.42.0.1/24: the
	// server id (option 54), siaddr and option 66, and the subnet (option 1).
	// Default: the first IPv4 address of Iface.
	Addr netip.Prefix
	// Range is the first and last address of the pool. Default: every host
	// address of Addr's subnet except Addr itself.
	Range [2]netip.Addr
	// Router, when valid, is sent as option 3. Default: none (the bench link
	// needs no gateway).
	Router netip.Addr
	// Proxy switches to proxyDHCP: PXE options only, no addresses.
	Proxy bool
	// AllowOtherDHCP starts even when another DHCP server answers on Iface
	// (it is still reported by events and logs while running).
	AllowOtherDHCP bool
	// RivalTimeout is how long Serve listens for other servers before it
	// starts (default 3 s; dnsmasq pings about 1 s before it offers).
	RivalTimeout time.Duration
	// RivalInterval is how often a running server probes again (default
	// DefaultRivalInterval; negative disables the periodic probe).
	RivalInterval time.Duration
	// LeaseFile persists bound leases (JSON, written atomically). Empty: leases
	// live in memory only.
	LeaseFile string
	// LeaseTime is option 51 (default DefaultLeaseTime).
	LeaseTime time.Duration
	// PiOnly answers only clients recognised as Raspberry Pis (option 97,
	// PXEClient in option 60, a Pi OUI, or a MAC recognised earlier). Off by
	// default: a board's own OS on a non-Pi NIC and the technician's laptop
	// on the bench switch need addresses too.
	PiOnly bool
	// FastFallthrough sends the boot menu to every recognised Pi, also to
	// one whose netboot is off; the TFTP server then answers its
	// start4.elf "not found" and the bootloader moves to its next boot mode
	// at once. Without it a disabled board gets a plain lease, which the Pi
	// bootloader ignores until DHCP_TIMEOUT (45 s by default) runs out
	// (rpi-eeprom#559). Not yet confirmed on a real board: see HARDWARE.md.
	FastFallthrough bool
	// Policy decides per MAC whether a Pi gets the boot menu. nil: every Pi
	// does.
	Policy Policy
	// Logger receives logs; nil is silent.
	Logger *slog.Logger
	// Events receives one event per decision; nil drops them. It is called
	// synchronously from the packet path, so it must not block.
	Events func(contract.Event)
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Ready, if set, is called once Serve listens (after the rival probe).
	Ready func()

	initOnce sync.Once
	initErr  error
	pool     *pool
	ownMAC   net.HardwareAddr // Iface's MAC: our own rival probes are ignored
	saveCh   chan struct{}
	statsMu  sync.Mutex
	stats    Stats

	newMACs newMACLimit
}

// Stats counts what the server did since it started.
type Stats struct {
	Offers, Acks, Naks, Dropped, Malformed, Rivals int64
}

// Stats returns a snapshot of the counters.
func (s *Server) Stats() Stats {
	s.statsMu.Lock()
	defer s.statsMu.Unlock()
	return s.stats
}

func (s *Server) count(f func(*Stats)) {
	s.statsMu.Lock()
	f(&s.stats)
	s.statsMu.Unlock()
}

func (s *Server) log() *slog.Logger {
	if s.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Logger
}

func (s *Server) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

func (s *Server) leaseTime() time.Duration {
	if s.LeaseTime > 0 {
		return s.LeaseTime
	}
	return DefaultLeaseTime
}

func (s *Server) emit(kind, level, mac, serial, msg string, fields map[string]any) {
	if s.Events == nil {
		return
	}
	s.Events(contract.Event{Time: s.now(), Kind: kind, Level: level, MAC: mac, Serial: serial, Message: msg, Fields: fields})
}

// setup resolves defaults and loads the lease file. Called by Serve, and
// lazily by Reply when it is used on its own (then Addr must be set).
func (s *Server) setup() error {
	s.initOnce.Do(func() { s.initErr = s.doSetup() })
	return s.initErr
}

func (s *Server) doSetup() error {
	if !s.Addr.IsValid() {
		if s.Iface == "" {
			return errors.New("dhcp: setup: no server address and no interface")
		}
		a, err := ifaceIPv4(s.Iface)
		if err != nil {
			return err
		}
		s.Addr = a
	}
	if !s.Addr.Addr().Is4() {
		return fmt.Errorf("dhcp: setup: server address %s is not IPv4", s.Addr)
	}
	if s.Addr.Bits() > 30 {
		return fmt.Errorf("dhcp: setup: subnet %s is too small for a pool", s.Addr)
	}
	subnet := s.Addr.Masked()
	if !s.Range[0].IsValid() || !s.Range[1].IsValid() {
		first := subnet.Addr().Next()
		last := lastHost(subnet)
		s.Range = [2]netip.Addr{first, last}
	}
	if !subnet.Contains(s.Range[0]) || !subnet.Contains(s.Range[1]) || s.Range[1].Less(s.Range[0]) {
		return fmt.Errorf("dhcp: setup: range %s-%s is not inside %s in order", s.Range[0], s.Range[1], subnet)
	}
	s.pool = newPool(s.Range[0], s.Range[1], s.Addr.Addr())
	if s.LeaseFile != "" {
		if err := s.pool.load(s.LeaseFile); err != nil {
			return err
		}
	}
	s.saveCh = make(chan struct{}, 1)
	return nil
}

// lastHost is the last address of p before its broadcast address.
func lastHost(p netip.Prefix) netip.Addr {
	a := p.Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := (uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])) | host
	v-- // broadcast
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func ifaceIPv4(name string) (netip.Prefix, error) {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("dhcp: interface %s: %w", name, err)
	}
	addrs, err := ifi.Addrs()
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("dhcp: addresses of %s: %w", name, err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil {
			ip, _ := netip.AddrFromSlice(n.IP.To4())
			ones, _ := n.Mask.Size()
			return netip.PrefixFrom(ip, ones), nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("dhcp: interface %s has no IPv4 address (give it one, or set --addr)", name)
}

// Leases returns every lease (bound or offered), sorted by address.
func (s *Server) Leases() []Lease {
	if s.setup() != nil {
		return nil
	}
	return s.pool.leases()
}

// MACForIP returns the MAC that holds ip. It has the shape of
// tftp.Server.MACForIP, so TFTP can map a request to its device.
func (s *Server) MACForIP(ip netip.Addr) (net.HardwareAddr, bool) {
	if s.setup() != nil {
		return nil, false
	}
	return s.pool.macForIP(ip)
}

// SaveLeases writes the lease file now if the table changed. Serve calls it
// in the background and when it stops.
func (s *Server) SaveLeases() error {
	if s.setup() != nil || s.LeaseFile == "" {
		return nil
	}
	return s.pool.save(s.LeaseFile)
}

// RivalError is returned by Serve when another DHCP server answers on the
// interface and AllowOtherDHCP is false.
type RivalError struct{ Rival Rival }

func (e *RivalError) Error() string {
	return fmt.Sprintf("dhcp: another DHCP server answers on this link: %s (stop it, or start with --allow-other-dhcp / use --proxy)", e.Rival)
}

// Serve runs the server until ctx is done. It first probes for a rival DHCP
// server (unless Proxy) and refuses to start with a *RivalError when one
// answers and AllowOtherDHCP is false. It returns nil after ctx is done.
func (s *Server) Serve(ctx context.Context) error {
	if s.Iface == "" {
		return errors.New("dhcp: serve: no interface")
	}
	if err := s.setup(); err != nil {
		return err
	}
	ifi, err := net.InterfaceByName(s.Iface)
	if err != nil {
		return fmt.Errorf("dhcp: serve: interface %s: %w", s.Iface, err)
	}
	s.ownMAC = ifi.HardwareAddr
	var watch *watcher
	if !s.Proxy {
		watch, err = newWatcher(ifi)
		if err != nil {
			return fmt.Errorf("dhcp: serve: rival watch on %s: %w", s.Iface, err)
		}
		defer watch.close()
		timeout := s.RivalTimeout
		if timeout <= 0 {
			timeout = 3 * time.Second
		}
		r, err := watch.probe(ctx, timeout, s.Addr.Addr())
		if ctx.Err() != nil {
			return nil // stopped while probing
		}
		if err != nil {
			return fmt.Errorf("dhcp: serve: probe for other DHCP servers: %w", err)
		}
		if r != nil {
			s.reportRival(*r)
			if !s.AllowOtherDHCP {
				return &RivalError{Rival: *r}
			}
		}
	}
	conn, err := server4.NewIPv4UDPConn(s.Iface, &net.UDPAddr{Port: dhcpv4.ServerPort})
	if err != nil {
		return fmt.Errorf("dhcp: serve: listen on %s:67: %w", s.Iface,
			privilege.Explain(err, "binding UDP port 67 on "+s.Iface, privilege.NetBindService))
	}
	s.log().Info("dhcp: serving", "iface", s.Iface, "addr", s.Addr, "range", fmt.Sprintf("%s-%s", s.Range[0], s.Range[1]), "proxy", s.Proxy)
	if s.Ready != nil {
		s.Ready()
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		<-ctx.Done()
		conn.Close()
	}()
	wg.Add(1)
	go func() { defer wg.Done(); s.saver(ctx) }()
	if watch != nil {
		wg.Add(1)
		go func() { defer wg.Done(); s.watchRivals(ctx, watch) }()
	}
	err = s.readLoop(ctx, conn)
	cancel()
	wg.Wait()
	if serr := s.SaveLeases(); serr != nil {
		s.log().Error("dhcp: save leases on stop", "err", serr)
		if err == nil {
			err = serr
		}
	}
	return err
}

func (s *Server) readLoop(ctx context.Context, conn *net.UDPConn) error {
	buf := make([]byte, 4096)
	for {
		n, peer, err := conn.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("dhcp: read: %w", err)
		}
		s.handle(conn, peer, buf[:n])
	}
}

// handle parses, decides and sends; it never panics on bad input, and a
// panic in the decision loses that packet only, never the process that
// also serves TFTP and HTTP.
func (s *Server) handle(conn net.PacketConn, peer net.Addr, b []byte) {
	defer func() {
		if v := recover(); v != nil {
			s.count(func(st *Stats) { st.Malformed++ })
			s.log().Error("dhcp: packet handling panicked; packet dropped", "from", fmt.Sprint(peer), "panic", fmt.Sprint(v))
		}
	}()
	req, err := dhcpv4.FromBytes(b)
	if err != nil {
		var n int64
		s.count(func(st *Stats) { st.Malformed++; n = st.Malformed })
		if n == 1 || n%100 == 0 { // a flood of garbage must not flood the log
			s.log().Warn("dhcp: malformed packet dropped", "from", fmt.Sprint(peer), "len", len(b), "err", err, "malformed_so_far", n)
		}
		return
	}
	if req.OpCode != dhcpv4.OpcodeBootRequest {
		return // another server's reply, seen because of broadcast
	}
	var from netip.Addr
	if ua, ok := peer.(*net.UDPAddr); ok {
		from, _ = netip.AddrFromSlice(ua.IP.To4())
	}
	resp, err := s.ReplyFrom(req, from)
	if err != nil {
		s.log().Warn("dhcp: request dropped", "mac", req.ClientHWAddr.String(), "type", req.MessageType(), "err", err)
		s.emit(contract.EventDHCPError, contract.LevelWarn, req.ClientHWAddr.String(), "", err.Error(), nil)
		return
	}
	if resp == nil {
		return
	}
	dst := replyAddr(req, resp, peer)
	if _, err := conn.WriteTo(resp.ToBytes(), dst); err != nil {
		s.log().Error("dhcp: send reply", "mac", req.ClientHWAddr.String(), "to", dst, "err", err)
		s.emit(contract.EventDHCPError, contract.LevelError, req.ClientHWAddr.String(), "", fmt.Sprintf("send %s: %v", resp.MessageType(), err), nil)
	}
}

// replyAddr picks where a reply goes (RFC 2131 §4.1, minus the raw unicast
// to chaddr that the Pi does not need): the relay, a renewing client's
// ciaddr, else broadcast on the interface.
func replyAddr(req, resp *dhcpv4.DHCPv4, peer net.Addr) net.Addr {
	if !req.GatewayIPAddr.IsUnspecified() && req.GatewayIPAddr != nil {
		return &net.UDPAddr{IP: req.GatewayIPAddr, Port: dhcpv4.ServerPort}
	}
	if resp.MessageType() != dhcpv4.MessageTypeNak && !req.ClientIPAddr.IsUnspecified() && req.ClientIPAddr != nil {
		return &net.UDPAddr{IP: req.ClientIPAddr, Port: dhcpv4.ClientPort}
	}
	return &net.UDPAddr{IP: net.IPv4bcast, Port: dhcpv4.ClientPort}
}

// saver writes the lease file shortly after changes, off the packet path.
func (s *Server) saver(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.saveCh:
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(saveDelay):
		}
		if err := s.SaveLeases(); err != nil {
			s.log().Error("dhcp: save leases", "err", err)
			s.emit(contract.EventDHCPError, contract.LevelError, "", "", err.Error(), nil)
		}
	}
}

func (s *Server) leasesChanged() {
	if s.saveCh == nil {
		return
	}
	select {
	case s.saveCh <- struct{}{}:
	default:
	}
}
