package dhcp

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"github.com/cm4bench/cm4bench/internal/privilege"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/mdlayher/packet"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"

	"github.com/cm4bench/cm4bench/internal/contract"
)

// Rival is another DHCP server seen answering on the bench link.
type Rival struct {
	ServerID netip.Addr       // its option 54 (or the packet's source address)
	MAC      net.HardwareAddr // Ethernet source of its reply
	Offered  netip.Addr       // the yiaddr it offered, when it did
}

func (r Rival) String() string {
	s := fmt.Sprintf("server id %s, MAC %s", r.ServerID, r.MAC)
	if r.Offered.IsValid() && !r.Offered.IsUnspecified() {
		s += fmt.Sprintf(", offering %s", r.Offered)
	}
	return s
}

// DetectRival broadcasts a DHCPDISCOVER (broadcast flag set, chaddr = the
// interface's MAC) on iface and waits up to timeout for an OFFER from any
// server. It returns the first one that answers, or nil when none does. It
// needs CAP_NET_RAW (it listens with a packet socket, so it sees replies
// whatever their IP destination).
func DetectRival(ctx context.Context, iface string, timeout time.Duration) (*Rival, error) {
	ifi, err := net.InterfaceByName(iface)
	if err != nil {
		return nil, fmt.Errorf("dhcp: detect rival: interface %s: %w", iface, err)
	}
	w, err := newWatcher(ifi)
	if err != nil {
		return nil, fmt.Errorf("dhcp: detect rival on %s: %w", iface, err)
	}
	defer w.close()
	return w.probe(ctx, timeout, netip.Addr{})
}

// watcher reads every DHCP reply (UDP to port 68) on one interface through
// an AF_PACKET socket with a BPF filter, and sends probe DISCOVERs.
type watcher struct {
	ifi  *net.Interface
	conn *packet.Conn
	buf  []byte
}

// replyFilter accepts IPv4 UDP packets to port 68 (unfragmented), so bulk
// traffic such as TFTP never reaches the watcher.
func replyFilter() ([]bpf.RawInstruction, error) {
	return bpf.Assemble([]bpf.Instruction{
		bpf.LoadAbsolute{Off: 9, Size: 1},                                    // IP protocol
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.IPPROTO_UDP, SkipFalse: 6}, // else drop
		bpf.LoadAbsolute{Off: 6, Size: 2},                                    // flags + fragment offset
		bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: 0x1fff, SkipTrue: 4},          // not the first fragment
		bpf.LoadMemShift{Off: 0},                                             // X = IP header length
		bpf.LoadIndirect{Off: 2, Size: 2},                                    // UDP destination port
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: dhcpv4.ClientPort, SkipFalse: 1},
		bpf.RetConstant{Val: 0xffff},
		bpf.RetConstant{Val: 0},
	})
}

func newWatcher(ifi *net.Interface) (*watcher, error) {
	filter, err := replyFilter()
	if err != nil {
		return nil, fmt.Errorf("assemble filter: %w", err)
	}
	conn, err := packet.Listen(ifi, packet.Datagram, unix.ETH_P_IP, &packet.Config{Filter: filter})
	if err != nil {
		return nil, fmt.Errorf("packet socket: %w",
			privilege.Explain(err, "watching "+ifi.Name+" for other DHCP servers (an AF_PACKET socket)", privilege.NetRaw))
	}
	return &watcher{ifi: ifi, conn: conn, buf: make([]byte, 4096)}, nil
}

func (w *watcher) close() { w.conn.Close() }

// sendDiscover broadcasts a DISCOVER from 0.0.0.0:68 with the broadcast
// flag, so every server answers with a broadcast we can see.
func (w *watcher) sendDiscover() (dhcpv4.TransactionID, error) {
	d, err := dhcpv4.NewDiscovery(w.ifi.HardwareAddr, dhcpv4.WithBroadcast(true))
	if err != nil {
		return dhcpv4.TransactionID{}, fmt.Errorf("build discover: %w", err)
	}
	pkt := udp4Broadcast(d.ToBytes(), dhcpv4.ClientPort, dhcpv4.ServerPort)
	if _, err := w.conn.WriteTo(pkt, &packet.Addr{HardwareAddr: net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}}); err != nil {
		return dhcpv4.TransactionID{}, fmt.Errorf("send discover: %w", err)
	}
	return d.TransactionID, nil
}

// next returns the next DHCP reply on the link that was not sent by ours
// (our own replies are looped back to packet sockets), or a timeout error
// at deadline.
func (w *watcher) next(deadline time.Time, ours netip.Addr) (*dhcpv4.DHCPv4, Rival, error) {
	if err := w.conn.SetReadDeadline(deadline); err != nil {
		return nil, Rival{}, err
	}
	for {
		n, from, err := w.conn.ReadFrom(w.buf)
		if err != nil {
			return nil, Rival{}, err
		}
		src, payload, ok := parseUDP4(w.buf[:n])
		if !ok {
			continue
		}
		m, err := dhcpv4.FromBytes(payload)
		if err != nil || m.OpCode != dhcpv4.OpcodeBootReply {
			continue
		}
		r := Rival{ServerID: src}
		if sid, ok := netip.AddrFromSlice(m.ServerIdentifier().To4()); ok {
			r.ServerID = sid
		}
		if ours.IsValid() && r.ServerID == ours {
			continue
		}
		if pa, ok := from.(*packet.Addr); ok {
			if bytesEqual(pa.HardwareAddr, w.ifi.HardwareAddr) {
				continue // sent by this host
			}
			r.MAC = pa.HardwareAddr
		}
		r.Offered, _ = netip.AddrFromSlice(m.YourIPAddr.To4())
		return m, r, nil
	}
}

func bytesEqual(a, b []byte) bool {
	return len(a) == len(b) && string(a) == string(b)
}

// probe sends a DISCOVER and waits up to timeout for an OFFER to it from a
// server other than ours.
func (w *watcher) probe(ctx context.Context, timeout time.Duration, ours netip.Addr) (*Rival, error) {
	xid, err := w.sendDiscover()
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	stop := context.AfterFunc(ctx, func() { _ = w.conn.SetReadDeadline(time.Now()) })
	defer stop()
	resent := false
	for {
		wait := deadline
		if !resent {
			if half := time.Now().Add(timeout / 2); half.Before(wait) {
				wait = half // one retransmission, as clients do
			}
		}
		m, r, err := w.next(wait, ours)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			if time.Now().Before(deadline) && !resent {
				resent = true
				if _, err := w.sendDiscover(); err != nil {
					return nil, err
				}
				continue
			}
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read replies: %w", err)
		}
		if m.TransactionID == xid && m.MessageType() == dhcpv4.MessageTypeOffer {
			return &r, nil
		}
	}
}

// watchRivals runs while the server serves: it reports every other server
// seen answering on the link (at most once per server per 10 minutes) and
// probes again every RivalInterval.
func (s *Server) watchRivals(ctx context.Context, w *watcher) {
	stop := context.AfterFunc(ctx, func() { _ = w.conn.SetReadDeadline(time.Now()) })
	defer stop()
	interval := s.RivalInterval
	if interval == 0 {
		interval = DefaultRivalInterval
	}
	seen := map[netip.Addr]time.Time{}
	nextProbe := time.Now().Add(interval)
	for ctx.Err() == nil {
		deadline := time.Now().Add(time.Hour)
		if interval > 0 {
			deadline = nextProbe
		}
		m, r, err := w.next(deadline, s.Addr.Addr())
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			if interval > 0 {
				if _, err := w.sendDiscover(); err != nil {
					s.log().Warn("dhcp: rival probe", "err", err)
				}
				nextProbe = time.Now().Add(interval)
			}
			continue
		}
		if err != nil {
			s.log().Error("dhcp: rival watch stopped", "err", err)
			return
		}
		t := m.MessageType()
		if t != dhcpv4.MessageTypeOffer && t != dhcpv4.MessageTypeAck {
			continue
		}
		if last, ok := seen[r.ServerID]; ok && time.Since(last) < 10*time.Minute {
			continue
		}
		if len(seen) >= 64 { // forged offers from ever new addresses: bounded
			for k, v := range seen {
				if time.Since(v) >= 10*time.Minute || len(seen) >= 64 {
					delete(seen, k)
				}
			}
		}
		seen[r.ServerID] = time.Now()
		s.reportRival(r)
	}
}

func (s *Server) reportRival(r Rival) {
	s.count(func(st *Stats) { st.Rivals++ })
	s.log().Warn("dhcp: another DHCP server answers on this link", "iface", s.Iface, "server_id", r.ServerID, "mac", r.MAC, "offered", r.Offered)
	s.emit(contract.EventDHCPRival, "warn", "", "", "another DHCP server answers on the bench link: "+r.String(), map[string]any{
		"server_id": r.ServerID.String(), "rival_mac": r.MAC.String(), "iface": s.Iface,
	})
}

// parseUDP4 returns the source address and UDP payload of an IPv4 packet.
func parseUDP4(b []byte) (netip.Addr, []byte, bool) {
	if len(b) < 20 || b[0]>>4 != 4 {
		return netip.Addr{}, nil, false
	}
	ihl := int(b[0]&0xf) * 4
	total := int(binary.BigEndian.Uint16(b[2:4]))
	if ihl < 20 || total < ihl+8 || total > len(b) || b[9] != unix.IPPROTO_UDP {
		return netip.Addr{}, nil, false
	}
	src := netip.AddrFrom4([4]byte(b[12:16]))
	udp := b[ihl:total]
	ulen := int(binary.BigEndian.Uint16(udp[4:6]))
	if ulen < 8 || ulen > len(udp) {
		return netip.Addr{}, nil, false
	}
	return src, udp[8:ulen], true
}

// udp4Broadcast wraps payload in IPv4 (0.0.0.0 -> 255.255.255.255) and UDP
// headers. The UDP checksum is left 0 (allowed for IPv4).
func udp4Broadcast(payload []byte, srcPort, dstPort uint16) []byte {
	pkt := make([]byte, 28+len(payload))
	ip := pkt[:20]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:4], uint16(len(pkt)))
	ip[8] = 64
	ip[9] = unix.IPPROTO_UDP
	copy(ip[16:20], []byte{255, 255, 255, 255})
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ip[i : i+2]))
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	binary.BigEndian.PutUint16(ip[10:12], ^uint16(sum))
	udp := pkt[20:28]
	binary.BigEndian.PutUint16(udp[0:2], srcPort)
	binary.BigEndian.PutUint16(udp[2:4], dstPort)
	binary.BigEndian.PutUint16(udp[4:6], uint16(8+len(payload)))
	copy(pkt[28:], payload)
	return pkt
}
