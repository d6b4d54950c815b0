package pisim

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/cm4bench/cm4bench/netboot/capture"
	"github.com/cm4bench/cm4bench/netboot/pcap"
)

// CaptureSummary is what a bench capture (netboot serve --capture, or a
// tcpdump of a real board) says, decoded with pisim's own decoders: the
// bootloader's identity from its DISCOVER (option 97), the boot menu in the
// server's answers, and every TFTP transfer.
type CaptureSummary struct {
	Boards    map[string]*CapturedBoard // by MAC
	Transfers []*CapturedTransfer       // in RRQ order
	Packets   int                       // DHCP and TFTP packets decoded
}

// CapturedBoard is one client seen in DHCP.
type CapturedBoard struct {
	MAC       string
	Serial    string // from option 97 (8 hex digits), "" without one
	Revision  uint32
	Discovers int
	Offers    int // OFFERs to it
	Acks      int
	Menu      bool // an answer carried the boot menu item
	Server    netip.Addr
}

// CapturedTransfer is one TFTP read request and what came back.
type CapturedTransfer struct {
	Client   netip.AddrPort
	Name     string
	Options  map[string]string // requested
	OACK     map[string]string // granted
	Bytes    int64
	SHA256   string // of the data, when Complete
	Complete bool   // a short last block arrived
	Error    string // the server's ERROR message
	data     []byte
	blksize  int
	next     uint16
	hash     bool
}

// ReplayCapture decodes a pcap stream of Ethernet frames. menu is the
// option 43 item the bootloader looks for ("" = DefaultMenuText).
func ReplayCapture(r io.Reader, menu string) (*CaptureSummary, error) {
	if menu == "" {
		menu = DefaultMenuText
	}
	rd, err := pcap.NewReader(r)
	if err != nil {
		return nil, fmt.Errorf("pisim: replay: %w", err)
	}
	if rd.LinkType != pcap.LinkEthernet {
		return nil, fmt.Errorf("pisim: replay: link type %d, want Ethernet (1)", rd.LinkType)
	}
	s := &CaptureSummary{Boards: map[string]*CapturedBoard{}}
	flows := map[netip.AddrPort]*CapturedTransfer{} // by client endpoint, the current transfer
	for {
		p, err := rd.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return s, fmt.Errorf("pisim: replay: packet %d: %w", s.Packets+1, err)
		}
		src, dst, payload, ok := capture.DecodeUDP(p.Data)
		if !ok {
			continue
		}
		switch {
		case dst.Port() == 67 || src.Port() == 67:
			if s.dhcp(payload, menu) {
				s.Packets++
			}
		case dst.Port() == 69:
			if name, opts, ok := parseRRQ(payload); ok {
				t := &CapturedTransfer{Client: src, Name: name, Options: opts, blksize: 512, next: 1}
				if v, err := strconv.Atoi(opts["blksize"]); err == nil && v >= 8 {
					t.blksize = v
				}
				flows[src] = t
				s.Transfers = append(s.Transfers, t)
				s.Packets++
			}
		default:
			t := flows[dst]
			if t == nil {
				continue // client to server (ACKs) or unrelated
			}
			pk, err := ParsePacket(payload)
			if err != nil {
				continue
			}
			s.Packets++
			t.add(pk)
		}
	}
	for _, t := range s.Transfers {
		if t.Complete {
			sum := sha256.Sum256(t.data)
			t.SHA256 = hex.EncodeToString(sum[:])
		}
		t.data = nil
	}
	return s, nil
}

func (t *CapturedTransfer) add(pk Packet) {
	switch pk.Op {
	case opOACK:
		t.OACK = pk.Options
		if v, err := strconv.Atoi(pk.Options["blksize"]); err == nil && v >= 8 {
			t.blksize = v
		}
	case opERROR:
		t.Error = pk.Message
	case opDATA:
		if pk.Block != t.next || t.Complete {
			return // a retransmission
		}
		t.next++
		t.Bytes += int64(len(pk.Data))
		t.data = append(t.data, pk.Data...)
		if len(pk.Data) < t.blksize {
			t.Complete = true
		}
	}
}

func (s *CaptureSummary) dhcp(payload []byte, menu string) bool {
	m, err := dhcpv4.FromBytes(payload)
	if err != nil || len(m.ClientHWAddr) != 6 {
		return false
	}
	mac := m.ClientHWAddr.String()
	b := s.Boards[mac]
	if b == nil {
		b = &CapturedBoard{MAC: mac}
		s.Boards[mac] = b
	}
	if m.OpCode == dhcpv4.OpcodeBootRequest {
		if m.MessageType() == dhcpv4.MessageTypeDiscover {
			b.Discovers++
		}
		if g := m.GetOneOption(dhcpv4.OptionClientMachineIdentifier); len(g) > 0 {
			if rev, _, serial, err := ParseGUID(g); err == nil {
				b.Serial, b.Revision = fmt.Sprintf("%08x", serial), rev
			}
		}
		return true
	}
	o, err := ParseOffer(payload, m.ClientHWAddr, menu)
	if err != nil {
		return false
	}
	switch o.Type {
	case dhcpv4.MessageTypeOffer:
		b.Offers++
	case dhcpv4.MessageTypeAck:
		b.Acks++
	}
	b.Menu = b.Menu || o.Menu
	if a, ok := netip.AddrFromSlice(o.ServerID.To4()); ok {
		b.Server = a
	}
	return true
}

// parseRRQ decodes a TFTP read request: name, mode, then option pairs.
func parseRRQ(p []byte) (name string, opts map[string]string, ok bool) {
	if len(p) < 4 || binary.BigEndian.Uint16(p) != 1 || p[len(p)-1] != 0 {
		return "", nil, false
	}
	f := bytes.Split(p[2:len(p)-1], []byte{0})
	if len(f) < 2 || len(f[0]) == 0 {
		return "", nil, false
	}
	opts = map[string]string{}
	for i := 2; i+1 < len(f); i += 2 {
		opts[strings.ToLower(string(f[i]))] = string(f[i+1])
	}
	return string(f[0]), opts, true
}
