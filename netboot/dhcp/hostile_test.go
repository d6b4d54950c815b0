package dhcp

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// leaseFor runs DISCOVER and REQUEST for mac and returns the address.
func leaseFor(t *testing.T, s *Server, mac net.HardwareAddr) netip.Addr {
	t.Helper()
	offer, err := s.Reply(piDiscover(t, mac, nil))
	if err != nil || offer == nil {
		t.Fatalf("offer for %s: %v %v", mac, offer, err)
	}
	ack, err := s.Reply(piRequest(t, offer))
	if err != nil || ack.MessageType() != dhcpv4.MessageTypeAck {
		t.Fatalf("ack for %s: %v %v", mac, ack, err)
	}
	a, _ := netip.AddrFromSlice(ack.YourIPAddr.To4())
	return a
}

// Security item 8: a RELEASE or DECLINE forged with a victim's MAC from
// another address does not drop its lease; the victim's own one does.
func TestForgedReleaseDeclineIgnored(t *testing.T) {
	s := newTestServer(t, nil)
	victim := net.HardwareAddr{0xdc, 0xa6, 0x32, 0, 0xa0, 1}
	ip := leaseFor(t, s, victim)
	attacker := netip.MustParseAddr("10.42.0.200")
	for _, typ := range []dhcpv4.MessageType{dhcpv4.MessageTypeDecline, dhcpv4.MessageTypeRelease} {
		m, _ := dhcpv4.New(dhcpv4.WithHwAddr(victim), dhcpv4.WithMessageType(typ),
			dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(ip.AsSlice())), dhcpv4.WithClientIP(ip.AsSlice()))
		if _, err := s.ReplyFrom(m, attacker); err != nil {
			t.Fatal(err)
		}
		if owner, ok := s.MACForIP(ip); !ok || owner.String() != victim.String() {
			t.Fatalf("a forged %s from %s dropped the victim's lease", typ, attacker)
		}
	}
	expiry := func() time.Time {
		for _, l := range s.Leases() {
			if l.MAC == victim.String() {
				return l.Expiry
			}
		}
		return time.Time{}
	}
	if !expiry().After(s.now()) {
		t.Fatal("the victim's lease ended after the forged packets")
	}
	m, _ := dhcpv4.New(dhcpv4.WithHwAddr(victim), dhcpv4.WithMessageType(dhcpv4.MessageTypeRelease), dhcpv4.WithClientIP(ip.AsSlice()))
	s.ReplyFrom(m, ip)
	if expiry().After(s.now()) {
		t.Error("the victim's own RELEASE was ignored")
	}
}

// Security item 8: a flood of random MACs gets answers for at most the
// burst a bench powering on needs; a known board is still answered; with
// PiOnly nothing but a Pi gets a lease.
func TestNewMACFloodAndPiOnly(t *testing.T) {
	s := newTestServer(t, nil)
	s.Range = [2]netip.Addr{netip.MustParseAddr("10.42.0.2"), netip.MustParseAddr("10.42.0.254")}
	board := net.HardwareAddr{0xdc, 0xa6, 0x32, 0, 0xa1, 1}
	leaseFor(t, s, board)
	answered := 0
	for i := range 300 {
		mac := net.HardwareAddr{0x02, 0x11, 0x22, 0x33, byte(i >> 8), byte(i)}
		if o, _ := s.Reply(plainDiscover(t, mac)); o != nil {
			answered++
		}
	}
	if answered > newMACBurst {
		t.Errorf("%d of 300 random MACs answered, want at most %d", answered, newMACBurst)
	}
	if o, err := s.Reply(piDiscover(t, board, nil)); err != nil || o == nil {
		t.Errorf("the known board during the flood: %v %v", o, err)
	}

	p := newTestServer(t, nil)
	p.PiOnly = true
	if o, _ := p.Reply(plainDiscover(t, net.HardwareAddr{0x02, 0, 0, 0, 0, 9})); o != nil {
		t.Error("PiOnly answered a non-Pi")
	}
	if o, _ := p.Reply(piDiscover(t, board, nil)); o == nil {
		t.Error("PiOnly ignored a Pi")
	}
}

type panicPolicy struct{}

func (panicPolicy) NetbootEnabled(net.HardwareAddr) bool { panic("policy bug") }

type nullConn struct{ net.PacketConn }

func (nullConn) WriteTo(b []byte, a net.Addr) (int, error) { return len(b), nil }

// Security item 8: a panic while deciding one packet loses that packet,
// not the process.
func TestHandleRecoversPerPacket(t *testing.T) {
	s := newTestServer(t, panicPolicy{})
	s.setup()
	pkt := piDiscover(t, net.HardwareAddr{0xdc, 0xa6, 0x32, 0, 0xa2, 1}, nil).ToBytes()
	s.handle(nullConn{}, &net.UDPAddr{IP: net.IPv4zero, Port: 68}, pkt) // must not panic
	if s.Stats().Malformed == 0 {
		t.Error("the panicking packet was not counted")
	}
	for range 1000 { // garbage: counted, logged rarely
		s.handle(nullConn{}, &net.UDPAddr{IP: net.IPv4zero, Port: 68}, []byte{1, 2, 3})
	}
}
