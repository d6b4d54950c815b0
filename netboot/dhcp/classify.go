package dhcp

import (
	"bytes"
	"net"
	"strings"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// PXEMenu is option 43 exactly as dnsmasq sends it for
// pxe-service=0,"Raspberry Pi Boot" (README, "DHCP: what a Pi gets"): discovery control 3,
// menu prompt "PXE" with timeout 0, one boot menu item of type 0 named
// "Raspberry Pi Boot", end. The Pi 4 bootloader netboots only when it finds
// that menu item.
var pxeMenu = [32]byte{
	0x06, 0x01, 0x03, // PXE_DISCOVERY_CONTROL = 3
	0x0a, 0x04, 0x00, 'P', 'X', 'E', // PXE_MENU_PROMPT: timeout 0, "PXE"
	0x09, 0x14, 0x00, 0x00, 0x11, // PXE_BOOT_MENU: type 0, 17 bytes of text
	'R', 'a', 's', 'p', 'b', 'e', 'r', 'r', 'y', ' ', 'P', 'i', ' ', 'B', 'o', 'o', 't',
	0xff, // end of sub-options
}

// PXEMenu returns a copy of the 32-byte option 43 sent to a Pi whose netboot
// is enabled.
func PXEMenu() []byte { b := pxeMenu; return b[:] }

// piOUIs are the Raspberry Pi Ltd / Trading OUIs seen on Pi boards. MACs can
// be overridden in EEPROM/OTP, so this is a fallback heuristic.
var piOUIs = [][3]byte{
	{0xb8, 0x27, 0xeb}, // Pi 1-3
	{0xdc, 0xa6, 0x32}, // Pi 4, CM4
	{0xe4, 0x5f, 0x01}, // Pi 4, CM4, Pi 400
	{0xd8, 0x3a, 0xdd}, // Pi 4/5, CM4/5
	{0x2c, 0xcf, 0x67}, // Pi 5
	{0x28, 0xcd, 0xc1}, // Pico W / newer boards
}

// Why a request was taken for a Raspberry Pi (or not). Reported in events.
const (
	ReasonGUID       = "guid"       // option 97 carries the RPi4 FourCC (either byte order)
	ReasonVendor     = "pxe-vendor" // option 60 starts with PXEClient
	ReasonOUI        = "oui"        // the MAC has a Raspberry Pi OUI
	ReasonRemembered = "lease"      // an earlier packet from this MAC was recognised
	ReasonNone       = ""           // not a Pi
	vendorPXE        = "PXEClient"  // option 60 prefix of PXE clients; also sent back
	guidLen          = 17           // option 97: type 0 + 16 bytes
	fourCC           = "RPi4"       // bytes 52 50 69 34 as the bootloader sends them
	fourCCSwapped    = "4iPR"       // the other byte order (firmware endianness change)
)

// classify tells whether req comes from a Raspberry Pi bootloader and why.
// It looks at option 97 (the RPi4 GUID), option 60 (PXEClient...) and the
// OUI, in that order of confidence.
func classify(req *dhcpv4.DHCPv4) string {
	if g := req.GetOneOption(dhcpv4.OptionClientMachineIdentifier); len(g) == guidLen && g[0] == 0 {
		if bytes.Equal(g[1:5], []byte(fourCC)) || bytes.Equal(g[1:5], []byte(fourCCSwapped)) {
			return ReasonGUID
		}
	}
	if strings.HasPrefix(req.ClassIdentifier(), vendorPXE) {
		return ReasonVendor
	}
	if IsPiMAC(req.ClientHWAddr) {
		return ReasonOUI
	}
	return ReasonNone
}

// IsPiMAC reports whether mac starts with a Raspberry Pi OUI.
func IsPiMAC(mac net.HardwareAddr) bool {
	if len(mac) != 6 {
		return false
	}
	for _, o := range piOUIs {
		if mac[0] == o[0] && mac[1] == o[1] && mac[2] == o[2] {
			return true
		}
	}
	return false
}

// SerialFromGUID extracts the board serial (8 lowercase hex digits) from a
// new-format option 97, or "" when the option is absent or not a Pi GUID.
// Layout: 0x00, "RPi4", 4 bytes board revision (little-endian), the 4 low
// bytes of the MAC in wire order, 4 bytes serial (little-endian). A real
// capture (a Pi 4 netboot log from an LTSP guide) shows option 97
// 00:52:50:69:34:11:31:a0:00:32:2e:f8:ed:10… from the board whose TFTP
// prefix is 5b154510: the serial field starts with its low byte 0x10.
func SerialFromGUID(req *dhcpv4.DHCPv4) string {
	g := req.GetOneOption(dhcpv4.OptionClientMachineIdentifier)
	if len(g) != guidLen || g[0] != 0 {
		return ""
	}
	if !bytes.Equal(g[1:5], []byte(fourCC)) && !bytes.Equal(g[1:5], []byte(fourCCSwapped)) {
		return ""
	}
	const hexdigits = "0123456789abcdef"
	out := make([]byte, 0, 8)
	for i := 16; i >= 13; i-- { // little-endian: most significant byte last
		b := g[i]
		out = append(out, hexdigits[b>>4], hexdigits[b&0xf])
	}
	return string(out)
}
