// Package pisim models the network side of the Raspberry Pi 4 / CM4 EEPROM
// bootloader: the DHCP exchange with its exact option set, the TFTP firmware
// sequence with its prefix fallback and "Early terminate" probes, and the
// BOOT_ORDER walk that moves on to the eMMC when network boot fails.
//
// It exists because the bench has no CM4: the simulated bench
// (netboot/sim/simbench) runs one Bootloader per device namespace against the real
// cm4bench server, then hands over to the real cm4agent. Every wire detail
// here follows the real bootloader (public captures and upstream notes, summarised in README and HARDWARE.md); the tests check the packets
// byte for byte against those facts.
//
// Packet building and parsing are pure functions (Discover, Request,
// ParseOffer, HasBootMenu, the TFTP codec); only Bootloader touches sockets,
// and it does so through the Link interface so the caller decides which
// network namespace they live in.
package pisim

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
)

// VendorClass is option 60 of the Pi 4 bootloader's DHCPDISCOVER (32 bytes).
const VendorClass = "PXEClient:Arch:00000:UNDI:002001"

// DefaultMenuText is the PXE boot-menu item the bootloader looks for in
// option 43 (EEPROM property PXE_OPTION43).
const DefaultMenuText = "Raspberry Pi Boot"

// RevisionCM4 is the board revision code of a CM4 (4 GB, rev 1.0), as sent in
// option 97.
const RevisionCM4 = 0x00c03141

// guidFourCC is the "RPi4" marker at the start of option 97 (EEPROM property
// DHCP_OPTION97 = 0x34695052, sent little-endian: 52 50 69 34).
const guidFourCC = 0x34695052

// DHCP option codes the bootloader uses that dhcpv4 has no constant for in
// the form we need.
var (
	optClientNDI  = dhcpv4.GenericOptionCode(94)
	optClientGUID = dhcpv4.GenericOptionCode(97)
)

// RequestedOptions is option 55 of the Pi 4 / CM4 DISCOVER and REQUEST, in
// the order the bootloader lists them (README, "DHCP: what a Pi gets").
var requestedOptions = []uint8{1, 3, 43, 60, 66, 67, 128, 129, 130, 131, 132, 133, 134, 135}

// RequestedOptions returns option 55 of the Pi 4 / CM4 bootloader.
func RequestedOptions() []uint8 { return append([]uint8(nil), requestedOptions...) }

// Board is the identity of one simulated CM4: what its bootloader puts on the
// wire.
type Board struct {
	MAC      net.HardwareAddr // chaddr; a Raspberry Pi OUI such as dc:a6:32 or e4:5f:01
	Serial   uint32           // the 8-hex-digit serial number (TFTP prefix, option 97)
	Revision uint32           // board revision code; 0 means RevisionCM4
}

// SerialString is the serial as the bootloader prints it and uses it as the
// TFTP prefix: 8 lowercase hex digits.
func (b Board) SerialString() string { return fmt.Sprintf("%08x", b.Serial) }

// MACPrefix is the TFTP prefix of TFTP_PREFIX=2: the MAC with dashes.
func (b Board) MACPrefix() string { return strings.ReplaceAll(b.MAC.String(), ":", "-") }

func (b Board) revision() uint32 {
	if b.Revision == 0 {
		return RevisionCM4
	}
	return b.Revision
}

// GUID is option 97 (17 bytes): type 0, the FourCC "RPi4" (52 50 69 34),
// the board revision and the 4-byte serial, both little-endian like the
// FourCC, and between them the least significant 4 bytes of the MAC in wire
// order. A real capture of the board with TFTP prefix 5b154510 shows
// 00:52:50:69:34:11:31:a0:00:32:2e:f8:ed:10… (netboot/dhcp's golden test).
func (b Board) GUID() []byte {
	g := make([]byte, 17)
	binary.LittleEndian.PutUint32(g[1:5], guidFourCC)
	binary.LittleEndian.PutUint32(g[5:9], b.revision())
	if len(b.MAC) == 6 {
		copy(g[9:13], b.MAC[2:6])
	}
	binary.LittleEndian.PutUint32(g[13:17], b.Serial)
	return g
}

// ParseGUID decodes option 97 as the Pi 4 bootloader sends it. It accepts the
// FourCC in either byte order, as cmprovision does after the bootloader's
// endianness change.
func ParseGUID(g []byte) (rev uint32, macLow []byte, serial uint32, err error) {
	if len(g) != 17 {
		return 0, nil, 0, fmt.Errorf("option 97: %d bytes, want 17", len(g))
	}
	if g[0] != 0 {
		return 0, nil, 0, fmt.Errorf("option 97: type %d, want 0", g[0])
	}
	fcc := g[1:5]
	if !bytes.Equal(fcc, []byte("RPi4")) && !bytes.Equal(fcc, []byte("4iPR")) {
		return 0, nil, 0, fmt.Errorf("option 97: no RPi4 marker (% x)", fcc)
	}
	return binary.LittleEndian.Uint32(g[5:9]), append([]byte(nil), g[9:13]...), binary.LittleEndian.Uint32(g[13:17]), nil
}

// piModifiers are the options common to DISCOVER and REQUEST.
func (b Board) piModifiers() []dhcpv4.Modifier {
	codes := make([]dhcpv4.OptionCode, len(requestedOptions))
	for i, c := range requestedOptions {
		codes[i] = dhcpv4.GenericOptionCode(c)
	}
	return []dhcpv4.Modifier{
		dhcpv4.WithHwAddr(b.MAC),
		dhcpv4.WithOption(dhcpv4.OptParameterRequestList(codes...)),
		dhcpv4.WithOption(dhcpv4.OptClientArch(iana.INTEL_X86PC)),
		dhcpv4.WithGeneric(optClientNDI, []byte{1, 2, 1}),
		dhcpv4.WithGeneric(optClientGUID, b.GUID()),
	}
}

// Discover builds the DHCPDISCOVER of the Pi 4 / CM4 bootloader
// (README, "DHCP: what a Pi gets"): flags 0 (no broadcast bit), hops 0, chaddr = MAC,
// options 53, 55 (1 3 43 60 66 67 128-135), 60 = VendorClass, 93 = 0x0000,
// 94 = 01 02 01, 97 = GUID; no option 61 and no option 57.
func (b Board) Discover(xid dhcpv4.TransactionID) (*dhcpv4.DHCPv4, error) {
	if len(b.MAC) != 6 {
		return nil, fmt.Errorf("pisim: discover: MAC %q is not 6 bytes", b.MAC)
	}
	mods := append([]dhcpv4.Modifier{
		dhcpv4.WithTransactionID(xid),
		dhcpv4.WithMessageType(dhcpv4.MessageTypeDiscover),
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier(VendorClass)),
	}, b.piModifiers()...)
	return dhcpv4.New(mods...)
}

// Request builds the broadcast DHCPREQUEST for an address offer. It carries
// options 50 (the offered address) and 54 (the offering server) and, like the
// real bootloader (rpi-eeprom#82), no option 60.
func (b Board) Request(xid dhcpv4.TransactionID, addr, server net.IP) (*dhcpv4.DHCPv4, error) {
	if len(b.MAC) != 6 {
		return nil, fmt.Errorf("pisim: request: MAC %q is not 6 bytes", b.MAC)
	}
	if addr.To4() == nil || server.To4() == nil {
		return nil, fmt.Errorf("pisim: request: need IPv4 addresses, got %v from %v", addr, server)
	}
	mods := append([]dhcpv4.Modifier{
		dhcpv4.WithTransactionID(xid),
		dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(addr)),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(server)),
	}, b.piModifiers()...)
	return dhcpv4.New(mods...)
}

// PXE sub-option codes inside option 43.
const (
	pxeDiscoveryControl = 6
	pxeBootMenu         = 9
	pxeMenuPrompt       = 10
	pxeEnd              = 255
	pxePad              = 0
)

// ErrMalformed43 is wrapped by HasBootMenu for option-43 bytes that are not a
// valid PXE sub-option list.
var ErrMalformed43 = errors.New("malformed PXE option 43")

// BootMenu returns the descriptions of the PXE boot-menu items (sub-option 9)
// carried in option 43. A list that runs past its end is an error; an
// absent 0xff terminator is tolerated (smee omits it and Pis accept that).
func BootMenu(opt43 []byte) ([]string, error) {
	var items []string
	for i := 0; i < len(opt43); {
		code := opt43[i]
		if code == pxeEnd {
			return items, nil
		}
		if code == pxePad {
			i++
			continue
		}
		if i+1 >= len(opt43) {
			return items, fmt.Errorf("%w: sub-option %d at byte %d has no length", ErrMalformed43, code, i)
		}
		n := int(opt43[i+1])
		val := opt43[i+2:]
		if n > len(val) {
			return items, fmt.Errorf("%w: sub-option %d at byte %d: length %d, only %d bytes left", ErrMalformed43, code, i, n, len(val))
		}
		val = val[:n]
		if code == pxeBootMenu {
			// Items: type (2 bytes), description length (1), description.
			for j := 0; j < len(val); {
				if j+3 > len(val) {
					return items, fmt.Errorf("%w: boot menu item at byte %d truncated", ErrMalformed43, i+2+j)
				}
				dl := int(val[j+2])
				if j+3+dl > len(val) {
					return items, fmt.Errorf("%w: boot menu description at byte %d: length %d, only %d bytes left", ErrMalformed43, i+2+j, dl, len(val)-j-3)
				}
				items = append(items, string(val[j+3:j+3+dl]))
				j += 3 + dl
			}
		}
		i += 2 + n
	}
	return items, nil
}

// HasBootMenu reports whether option 43 carries a boot-menu item whose text
// starts with match (the bootloader ignores trailing characters, so the Pi 3
// ROM's padded "Raspberry Pi Boot   " also matches).
func HasBootMenu(opt43 []byte, match string) (bool, error) {
	items, err := BootMenu(opt43)
	for _, it := range items {
		if strings.HasPrefix(it, match) {
			return true, nil
		}
	}
	return false, err
}

// Offer is what the bootloader takes from one DHCPOFFER or DHCPACK.
type Offer struct {
	Type     dhcpv4.MessageType
	XID      dhcpv4.TransactionID
	YourIP   net.IP // zero for a proxyDHCP offer
	Mask     net.IPMask
	Router   net.IP
	ServerID net.IP // option 54
	SIAddr   net.IP // siaddr
	TFTP     net.IP // option 66 as a dotted quad, nil when absent or not an address
	Opt66    string // option 66 as sent
	Menu     bool   // option 43 carries the boot-menu item
	Opt43    []byte
	Opt60    string
	Opt97    []byte
	Lease    uint32 // seconds, option 51
}

// Proxy reports whether this is a proxyDHCP offer (menu, no address).
func (o *Offer) Proxy() bool { return o.YourIP == nil || o.YourIP.IsUnspecified() }

// ParseOffer decodes a server reply as the bootloader does. It returns an
// error for bytes that are not a BOOTREPLY for this board; a reply without
// the menu is not an error (Menu is false).
func ParseOffer(pkt []byte, mac net.HardwareAddr, match string) (*Offer, error) {
	m, err := dhcpv4.FromBytes(pkt)
	if err != nil {
		return nil, fmt.Errorf("pisim: parse reply: %w", err)
	}
	if m.OpCode != dhcpv4.OpcodeBootReply {
		return nil, fmt.Errorf("pisim: parse reply: opcode %v is not a BOOTREPLY", m.OpCode)
	}
	if !bytes.Equal(m.ClientHWAddr, mac) {
		return nil, fmt.Errorf("pisim: parse reply: for %v, not %v", m.ClientHWAddr, mac)
	}
	o := &Offer{
		Type:     m.MessageType(),
		XID:      m.TransactionID,
		YourIP:   m.YourIPAddr.To4(),
		ServerID: m.ServerIdentifier().To4(),
		SIAddr:   m.ServerIPAddr.To4(),
		Opt43:    m.Options.Get(dhcpv4.OptionVendorSpecificInformation),
		Opt60:    m.ClassIdentifier(),
		Opt97:    m.Options.Get(optClientGUID),
		Opt66:    m.TFTPServerName(),
	}
	if mask := m.SubnetMask(); mask != nil {
		o.Mask = mask
	}
	if r := m.Router(); len(r) > 0 {
		o.Router = r[0].To4()
	}
	if v := m.Options.Get(dhcpv4.OptionIPAddressLeaseTime); len(v) == 4 {
		o.Lease = binary.BigEndian.Uint32(v)
	}
	if o.Opt66 != "" {
		// The bootloader parses option 66 as a dotted quad, never a DNS name.
		if ip := net.ParseIP(strings.TrimRight(o.Opt66, "\x00")); ip != nil {
			o.TFTP = ip.To4()
		}
	}
	if o.Opt43 != nil {
		// A malformed list still counts if the menu item came before the damage.
		o.Menu, _ = HasBootMenu(o.Opt43, match)
	}
	return o, nil
}

// TFTPServer is where the bootloader will send its RRQs: TFTP_IP if set in
// the EEPROM, else option 66, else siaddr, else the server identifier.
func (o *Offer) TFTPServer(tftpIP net.IP) net.IP {
	for _, ip := range []net.IP{tftpIP, o.TFTP, o.SIAddr, o.ServerID} {
		if ip != nil && !ip.IsUnspecified() {
			return ip
		}
	}
	return nil
}

// ParseSerial parses an 8-hex-digit serial such as "9ffefdef".
func ParseSerial(s string) (uint32, error) {
	if len(s) != 8 {
		return 0, fmt.Errorf("serial %q: want 8 hex digits", s)
	}
	v, err := strconv.ParseUint(s, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("serial %q: %w", s, err)
	}
	return uint32(v), nil
}
