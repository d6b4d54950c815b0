package dhcp

import (
	"bytes"
	"encoding/hex"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"

	"github.com/cm4bench/cm4bench/internal/repotest"
	"github.com/cm4bench/cm4bench/netboot/sim/nettest"
)

// menuHex is option 43 from the issue and netboot.md §1.3, byte for byte.
const menuHex = "0601030a0400505845091400001152617370626572727920506920426f6f74ff"

func TestPXEMenuBytes(t *testing.T) {
	if got := hex.EncodeToString(PXEMenu()); got != menuHex {
		t.Fatalf("PXEMenu() = %s, want %s", got, menuHex)
	}
}

var (
	piMAC    = net.HardwareAddr{0xdc, 0xa6, 0x32, 0x01, 0x36, 0xc2}
	otherMAC = net.HardwareAddr{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}
	// guid is option 97 as in netboot.md §6.2: 00, "RPi4", board rev, MAC low 4, serial.
	guid, _        = hex.DecodeString("0052506934414131c0320136c23412cdab")
	guidSwapped, _ = hex.DecodeString("0034695052414131c0320136c23412cdab")
)

// piDiscover is what the Pi 4 bootloader sends (netboot.md §1.2).
func piDiscover(t testing.TB, mac net.HardwareAddr, g []byte) *dhcpv4.DHCPv4 {
	t.Helper()
	m, err := dhcpv4.NewDiscovery(mac,
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00000:UNDI:002001")),
		dhcpv4.WithOption(dhcpv4.OptClientArch(iana.INTEL_X86PC)),
		dhcpv4.WithGeneric(dhcpv4.OptionClientNetworkInterfaceIdentifier, []byte{1, 2, 1}),
		dhcpv4.WithGeneric(dhcpv4.OptionClientMachineIdentifier, g),
		dhcpv4.WithRequestedOptions(dhcpv4.OptionSubnetMask, dhcpv4.OptionRouter, dhcpv4.OptionVendorSpecificInformation,
			dhcpv4.OptionClassIdentifier, dhcpv4.OptionTFTPServerName, dhcpv4.OptionBootfileName),
	)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// piRequest is the Pi's REQUEST for an offer: no option 60.
func piRequest(t testing.TB, offer *dhcpv4.DHCPv4) *dhcpv4.DHCPv4 {
	t.Helper()
	m, err := dhcpv4.NewRequestFromOffer(offer)
	if err != nil {
		t.Fatal(err)
	}
	m.UpdateOption(dhcpv4.OptGeneric(dhcpv4.OptionClientMachineIdentifier, guid))
	m.Options.Del(dhcpv4.OptionClassIdentifier)
	return m
}

func plainDiscover(t testing.TB, mac net.HardwareAddr) *dhcpv4.DHCPv4 {
	t.Helper()
	m, err := dhcpv4.NewDiscovery(mac)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func newTestServer(t testing.TB, p Policy) *Server {
	return &Server{
		Addr:      netip.MustParsePrefix("10.42.0.1/24"),
		Range:     [2]netip.Addr{netip.MustParseAddr("10.42.0.100"), netip.MustParseAddr("10.42.0.110")},
		Policy:    p,
		LeaseFile: filepath.Join(t.TempDir(), "leases.json"),
	}
}

// wantMenu checks the Pi netboot options on a reply, or their absence.
func wantMenu(t *testing.T, r *dhcpv4.DHCPv4, menu bool, echo []byte) {
	t.Helper()
	o43 := r.GetOneOption(dhcpv4.OptionVendorSpecificInformation)
	if !menu {
		if o43 != nil || r.ClassIdentifier() != "" || r.TFTPServerName() != "" || !r.ServerIPAddr.IsUnspecified() {
			t.Errorf("%s carries netboot options: 43=%x 60=%q 66=%q siaddr=%s", r.MessageType(), o43, r.ClassIdentifier(), r.TFTPServerName(), r.ServerIPAddr)
		}
		return
	}
	if hex.EncodeToString(o43) != menuHex {
		t.Errorf("option 43 = %x, want %s", o43, menuHex)
	}
	if r.ClassIdentifier() != "PXEClient" {
		t.Errorf("option 60 = %q, want PXEClient", r.ClassIdentifier())
	}
	if !r.ServerIPAddr.Equal(net.IPv4(10, 42, 0, 1)) || !r.ServerIdentifier().Equal(net.IPv4(10, 42, 0, 1)) || r.TFTPServerName() != "10.42.0.1" {
		t.Errorf("siaddr %s, option 54 %s, option 66 %q: want all 10.42.0.1", r.ServerIPAddr, r.ServerIdentifier(), r.TFTPServerName())
	}
	if got := r.GetOneOption(dhcpv4.OptionClientMachineIdentifier); !bytes.Equal(got, echo) {
		t.Errorf("option 97 = %x, want echo %x", got, echo)
	}
}

func TestReplyDORA(t *testing.T) {
	for _, tt := range []struct {
		name     string
		mac      net.HardwareAddr
		discover func(t testing.TB) *dhcpv4.DHCPv4
		enabled  bool
		menu     bool
		echo     []byte
		fast     bool
	}{
		{"pi enabled", piMAC, func(t testing.TB) *dhcpv4.DHCPv4 { return piDiscover(t, piMAC, guid) }, true, true, guid, false},
		{"pi guid swapped, foreign MAC", otherMAC, func(t testing.TB) *dhcpv4.DHCPv4 { return piDiscover(t, otherMAC, guidSwapped) }, true, true, guidSwapped, false},
		{"pi disabled", piMAC, func(t testing.TB) *dhcpv4.DHCPv4 { return piDiscover(t, piMAC, guid) }, false, false, nil, false},
		// N2: with FastFallthrough a disabled Pi gets the menu (TFTP refuses its firmware).
		{"pi disabled, fast fallthrough", piMAC, func(t testing.TB) *dhcpv4.DHCPv4 { return piDiscover(t, piMAC, guid) }, false, true, guid, true},
		{"not a pi, fast fallthrough", otherMAC, func(t testing.TB) *dhcpv4.DHCPv4 { return plainDiscover(t, otherMAC) }, true, false, nil, true},
		{"pi by OUI only", piMAC, func(t testing.TB) *dhcpv4.DHCPv4 { return plainDiscover(t, piMAC) }, true, true, nil, false},
		{"not a pi", otherMAC, func(t testing.TB) *dhcpv4.DHCPv4 { return plainDiscover(t, otherMAC) }, true, false, nil, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := &nettest.Switch{}
			p.Set(tt.mac.String(), tt.enabled)
			s := newTestServer(t, p)
			s.FastFallthrough = tt.fast
			offer, err := s.Reply(tt.discover(t))
			if err != nil || offer == nil {
				t.Fatalf("Reply(DISCOVER) = %v, %v", offer, err)
			}
			if offer.MessageType() != dhcpv4.MessageTypeOffer || !offer.YourIPAddr.Equal(net.IPv4(10, 42, 0, 100)) {
				t.Fatalf("offer: type %s yiaddr %s, want OFFER 10.42.0.100", offer.MessageType(), offer.YourIPAddr)
			}
			wantMenu(t, offer, tt.menu, tt.echo)
			req := piRequest(t, offer)
			if tt.echo == nil {
				req.Options.Del(dhcpv4.OptionClientMachineIdentifier)
			} else {
				req.UpdateOption(dhcpv4.OptGeneric(dhcpv4.OptionClientMachineIdentifier, tt.echo))
			}
			ack, err := s.Reply(req)
			if err != nil || ack == nil || ack.MessageType() != dhcpv4.MessageTypeAck {
				t.Fatalf("Reply(REQUEST) = %v, %v; want ACK", ack, err)
			}
			if !ack.YourIPAddr.Equal(offer.YourIPAddr) {
				t.Errorf("ack yiaddr %s, offer %s", ack.YourIPAddr, offer.YourIPAddr)
			}
			wantMenu(t, ack, tt.menu, tt.echo)
			if ack.IPAddressLeaseTime(0) != DefaultLeaseTime || net.IP(ack.SubnetMask()).String() != "255.255.255.0" {
				t.Errorf("lease %v mask %v", ack.IPAddressLeaseTime(0), ack.SubnetMask())
			}
		})
	}
}

func TestReplyStableLeasesAndPersistence(t *testing.T) {
	s := newTestServer(t, nil)
	dora := func(s *Server, mac net.HardwareAddr) net.IP {
		t.Helper()
		offer, err := s.Reply(plainDiscover(t, mac))
		if err != nil {
			t.Fatal(err)
		}
		ack, err := s.Reply(piRequest(t, offer))
		if err != nil || ack.MessageType() != dhcpv4.MessageTypeAck {
			t.Fatalf("ack %v %v", ack, err)
		}
		return ack.YourIPAddr
	}
	a := dora(s, otherMAC)
	if again := dora(s, otherMAC); !again.Equal(a) {
		t.Fatalf("same MAC got %s then %s", a, again)
	}
	if err := s.SaveLeases(); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(s.LeaseFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("leases file mode %v (%v), want 0600", fi.Mode(), err) // security item 12
	}
	// A new server on the same file: a different MAC first must not get A's address.
	s2 := &Server{Addr: s.Addr, Range: s.Range, LeaseFile: s.LeaseFile}
	mac2 := net.HardwareAddr{0x52, 0x54, 0, 0, 0, 2}
	if b := dora(s2, mac2); b.Equal(a) {
		t.Fatalf("after restart, %s got %s which belongs to %s", mac2, b, otherMAC)
	}
	if again := dora(s2, otherMAC); !again.Equal(a) {
		t.Fatalf("after restart %s got %s, want its old %s", otherMAC, again, a)
	}
}

func TestReplyPoolExhaustionAndReclaim(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	s := newTestServer(t, nil)
	s.Now = func() time.Time { return now }
	s.Range[1] = netip.MustParseAddr("10.42.0.101") // two addresses
	for i := byte(1); i <= 2; i++ {
		offer, err := s.Reply(plainDiscover(t, net.HardwareAddr{2, 0, 0, 0, 0, i}))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Reply(piRequest(t, offer)); err != nil {
			t.Fatal(err)
		}
	}
	if r, err := s.Reply(plainDiscover(t, net.HardwareAddr{2, 0, 0, 0, 0, 3})); err == nil {
		t.Fatalf("third client in a 2-address pool got %v, want pool exhausted", r)
	}
	now = now.Add(2 * DefaultLeaseTime) // both leases expire
	r, err := s.Reply(plainDiscover(t, net.HardwareAddr{2, 0, 0, 0, 0, 3}))
	if err != nil || r == nil {
		t.Fatalf("after expiry: %v %v, want a reclaimed address", r, err)
	}
}

func TestReplyRequestEdgeCases(t *testing.T) {
	s := newTestServer(t, nil)
	offer, err := s.Reply(plainDiscover(t, otherMAC))
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		mod  func(m *dhcpv4.DHCPv4)
		want dhcpv4.MessageType // 0 = no reply
	}{
		{"other server chosen", func(m *dhcpv4.DHCPv4) {
			m.UpdateOption(dhcpv4.OptServerIdentifier(net.IPv4(10, 42, 0, 2)))
		}, dhcpv4.MessageTypeNone},
		{"wrong address", func(m *dhcpv4.DHCPv4) {
			m.UpdateOption(dhcpv4.OptRequestedIPAddress(net.IPv4(10, 42, 0, 105)))
		}, dhcpv4.MessageTypeNak},
		{"off link", func(m *dhcpv4.DHCPv4) {
			m.UpdateOption(dhcpv4.OptRequestedIPAddress(net.IPv4(192, 168, 1, 5)))
		}, dhcpv4.MessageTypeNak},
		{"right", func(m *dhcpv4.DHCPv4) {}, dhcpv4.MessageTypeAck},
	} {
		t.Run(tt.name, func(t *testing.T) {
			req := piRequest(t, offer)
			tt.mod(req)
			r, err := s.Reply(req)
			if err != nil {
				t.Fatal(err)
			}
			got := dhcpv4.MessageTypeNone
			if r != nil {
				got = r.MessageType()
			}
			if got != tt.want {
				t.Fatalf("reply %s, want %s", got, tt.want)
			}
		})
	}
}

func TestReplyProxy(t *testing.T) {
	p := &nettest.Switch{}
	s := newTestServer(t, p)
	s.Proxy = true
	r, err := s.Reply(piDiscover(t, piMAC, guid))
	if err != nil || r == nil {
		t.Fatalf("proxy reply %v %v", r, err)
	}
	if !r.YourIPAddr.IsUnspecified() || r.IPAddressLeaseTime(0) != 0 || !r.IsBroadcast() {
		t.Errorf("proxy offer gives an address: yiaddr %s lease %v broadcast %v", r.YourIPAddr, r.IPAddressLeaseTime(0), r.IsBroadcast())
	}
	wantMenu(t, r, true, guid)
	if r, _ := s.Reply(plainDiscover(t, otherMAC)); r != nil {
		t.Errorf("proxy answered a non-PXE client: %v", r)
	}
	if r, _ := s.Reply(piRequest(t, r)); r != nil {
		t.Errorf("proxy answered a REQUEST: %v", r)
	}
	p.Set(piMAC.String(), false)
	if r, _ := s.Reply(piDiscover(t, piMAC, guid)); r != nil {
		t.Errorf("proxy offered the menu to a disabled Pi")
	}
}

// ltspCapture reads testdata/netboot/ltsp-pi4-option97.txt: option 97 of
// a real Pi 4 and the TFTP prefix the same board asked for.
func ltspCapture(t *testing.T) (opt97 []byte, prefix string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repotest.Root(t), "testdata", "netboot", "ltsp-pi4-option97.txt"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(line, " ")
		switch k {
		case "option97":
			opt97, err = hex.DecodeString(strings.ReplaceAll(v, ":", ""))
			if err != nil {
				t.Fatal(err)
			}
		case "tftp-prefix":
			prefix = v
		}
	}
	if len(opt97) != 17 || prefix == "" {
		t.Fatalf("capture file incomplete: %x %q", opt97, prefix)
	}
	return opt97, prefix
}

// N1: the serial in option 97 is little-endian, as the real capture shows:
// the serial DHCP records is the board's TFTP prefix.
func TestSerialFromGUIDRealCapture(t *testing.T) {
	opt97, prefix := ltspCapture(t)
	mac := net.HardwareAddr{0xdc, 0xa6, 0x32, 0x2e, 0xf8, 0xed}
	if got := SerialFromGUID(piDiscover(t, mac, opt97)); got != prefix {
		t.Fatalf("SerialFromGUID(real option 97) = %q, want the TFTP prefix %q", got, prefix)
	}
}

func TestSerialFromGUID(t *testing.T) {
	if got := SerialFromGUID(piDiscover(t, piMAC, guid)); got != "abcd1234" {
		t.Fatalf("SerialFromGUID = %q, want abcd1234", got)
	}
	if got := SerialFromGUID(plainDiscover(t, piMAC)); got != "" {
		t.Fatalf("SerialFromGUID(no 97) = %q", got)
	}
}

// FuzzHandle feeds arbitrary bytes through the packet path: parse, decide,
// serialize. Malformed packets must be dropped, never crash, and any reply
// must re-parse with the request's xid.
func FuzzHandle(f *testing.F) {
	f.Add(piDiscover(f, piMAC, guid).ToBytes())
	f.Add(plainDiscover(f, otherMAC).ToBytes())
	req, _ := dhcpv4.NewRequestFromOffer(mustOffer(f))
	f.Add(req.ToBytes())
	f.Add([]byte{1, 1, 6, 0})
	f.Add(bytes.Repeat([]byte{0xff}, 300))
	s := newTestServer(f, nil)
	s.Range[1] = netip.MustParseAddr("10.42.0.254")
	f.Fuzz(func(t *testing.T, b []byte) {
		c := &capture{}
		s.handle(c, &net.UDPAddr{IP: net.IPv4zero, Port: 68}, b)
		if c.sent == nil {
			return
		}
		in, err := dhcpv4.FromBytes(b)
		if err != nil {
			t.Fatalf("replied to a packet that does not parse: %v", err)
		}
		out, err := dhcpv4.FromBytes(c.sent)
		if err != nil {
			t.Fatalf("reply does not parse: %v", err)
		}
		if out.TransactionID != in.TransactionID || out.OpCode != dhcpv4.OpcodeBootReply {
			t.Fatalf("reply xid %s op %s for request xid %s", out.TransactionID, out.OpCode, in.TransactionID)
		}
		if o := out.GetOneOption(dhcpv4.OptionVendorSpecificInformation); o != nil && hex.EncodeToString(o) != menuHex {
			t.Fatalf("option 43 = %x", o)
		}
	})
}

func mustOffer(t testing.TB) *dhcpv4.DHCPv4 {
	s := newTestServer(t, nil)
	o, err := s.Reply(piDiscover(t, piMAC, guid))
	if err != nil {
		t.Fatal(err)
	}
	return o
}

// capture is a net.PacketConn that records the last write.
type capture struct {
	net.PacketConn
	sent []byte
	to   net.Addr
}

func (c *capture) WriteTo(b []byte, addr net.Addr) (int, error) {
	c.sent = append([]byte(nil), b...)
	c.to = addr
	return len(b), nil
}

// FuzzLeaseFile: any lease file either fails to load with an error or loads
// leases that are all inside the pool, one per address and per MAC.
func FuzzLeaseFile(f *testing.F) {
	f.Add([]byte(`{"version":1,"leases":[{"mac":"dc:a6:32:01:36:c2","ip":"10.42.0.100","expiry":"2026-01-01T00:00:00Z","bound":true}]}`))
	f.Add([]byte(`{"version":1,"leases":[{"mac":"dc:a6:32:01:36:c2","ip":"10.42.0.100"},{"mac":"dc:a6:32:01:36:c3","ip":"10.42.0.100"}]}`))
	f.Add([]byte(`{"version":1,"leases":[{"mac":"dc:a6:32:01:36:c2","ip":"10.42.0.100"},{"mac":"DC-A6-32-01-36-C2","ip":"10.42.0.101"}]}`))
	f.Add([]byte(`{"version":2}`))
	f.Add([]byte(`{"version":1,"leases":[{"mac":"zz","ip":"1.2.3.4"}]}`))
	f.Add([]byte(`not json`))
	f.Fuzz(func(t *testing.T, b []byte) {
		path := filepath.Join(t.TempDir(), "leases.json")
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
		s := newTestServer(t, nil)
		s.LeaseFile = path
		if err := s.setup(); err != nil {
			if !strings.Contains(err.Error(), path) {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		seenIP, seenMAC := map[netip.Addr]bool{}, map[string]bool{}
		for _, l := range s.Leases() {
			if !s.pool.inRange(l.IP) || seenIP[l.IP] || seenMAC[l.MAC] {
				t.Fatalf("bad lease loaded: %+v", l)
			}
			seenIP[l.IP], seenMAC[l.MAC] = true, true
		}
	})
}

func TestReplyAddr(t *testing.T) {
	s := newTestServer(t, nil)
	offer, err := s.Reply(plainDiscover(t, otherMAC))
	if err != nil {
		t.Fatal(err)
	}
	bcast := &net.UDPAddr{IP: net.IPv4bcast, Port: 68}
	for _, tt := range []struct {
		name string
		mod  func(m *dhcpv4.DHCPv4)
		want string
	}{
		{"selecting: broadcast on the link", func(m *dhcpv4.DHCPv4) {}, bcast.String()},
		{"relayed: to the relay's server port", func(m *dhcpv4.DHCPv4) { m.GatewayIPAddr = net.IPv4(10, 42, 0, 254) }, "10.42.0.254:67"},
		{"renewing: unicast to ciaddr", func(m *dhcpv4.DHCPv4) {
			m.ClientIPAddr = offer.YourIPAddr
			m.Options.Del(dhcpv4.OptionRequestedIPAddress)
			m.Options.Del(dhcpv4.OptionServerIdentifier)
		}, offer.YourIPAddr.String() + ":68"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			req := piRequest(t, offer)
			tt.mod(req)
			c := &capture{}
			s.handle(c, &net.UDPAddr{IP: net.IPv4zero, Port: 68}, req.ToBytes())
			if c.sent == nil {
				t.Fatal("no reply")
			}
			if c.to.String() != tt.want {
				t.Fatalf("reply sent to %s, want %s", c.to, tt.want)
			}
		})
	}
}

func TestReleaseDeclineInform(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	s := newTestServer(t, nil)
	s.Now = func() time.Time { return now }
	offer, _ := s.Reply(plainDiscover(t, otherMAC))
	ack, err := s.Reply(piRequest(t, offer))
	if err != nil || ack == nil {
		t.Fatal(err)
	}
	ip := ack.YourIPAddr

	// RELEASE ends the lease but keeps the address for this MAC.
	rel, _ := dhcpv4.New(dhcpv4.WithMessageType(dhcpv4.MessageTypeRelease), dhcpv4.WithHwAddr(otherMAC),
		dhcpv4.WithClientIP(ip), dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IPv4(10, 42, 0, 1))))
	if r, _ := s.Reply(rel); r != nil {
		t.Fatalf("reply to RELEASE: %v", r)
	}
	if again, _ := s.Reply(plainDiscover(t, otherMAC)); !again.YourIPAddr.Equal(ip) {
		t.Fatalf("after release offered %s, want %s again", again.YourIPAddr, ip)
	}

	// DECLINE: the address is in use by someone else; the client moves.
	dec, _ := dhcpv4.New(dhcpv4.WithMessageType(dhcpv4.MessageTypeDecline), dhcpv4.WithHwAddr(otherMAC),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(ip)), dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IPv4(10, 42, 0, 1))))
	if r, _ := s.Reply(dec); r != nil {
		t.Fatalf("reply to DECLINE: %v", r)
	}
	moved, _ := s.Reply(plainDiscover(t, otherMAC))
	if moved.YourIPAddr.Equal(ip) {
		t.Fatalf("declined address %s offered again", ip)
	}
	if other, _ := s.Reply(plainDiscover(t, net.HardwareAddr{2, 0, 0, 0, 0, 7})); other.YourIPAddr.Equal(ip) {
		t.Fatalf("declined address %s offered to another client", ip)
	}

	// INFORM: configuration only, no address.
	inf, _ := dhcpv4.New(dhcpv4.WithMessageType(dhcpv4.MessageTypeInform), dhcpv4.WithHwAddr(otherMAC), dhcpv4.WithClientIP(net.IPv4(10, 42, 0, 50)))
	r, err := s.Reply(inf)
	if err != nil || r == nil || r.MessageType() != dhcpv4.MessageTypeAck || !r.YourIPAddr.IsUnspecified() || r.IPAddressLeaseTime(0) != 0 {
		t.Fatalf("INFORM reply %v %v", r, err)
	}
}
