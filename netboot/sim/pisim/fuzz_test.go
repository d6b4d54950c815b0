package pisim_test

import (
	"bytes"
	"net"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/cm4bench/cm4bench/netboot/sim/pisim"
)

// FuzzBootMenu: any option-43 bytes give a menu decision, never a panic; and
// whenever a menu item is found, re-encoding it as the one sub-option 9
// entry dnsmasq sends is found again (round trip of the item text).
func FuzzBootMenu(f *testing.F) {
	f.Add(mustHex(dnsmasqOpt43))
	f.Add(mustHex("060108 0a0400505845 ff"))
	f.Add([]byte("Raspberry Pi Boot"))
	f.Add(mustHex("09140000115261"))
	f.Fuzz(func(t *testing.T, b []byte) {
		items, _ := pisim.BootMenu(b)
		for _, it := range items {
			if len(it) > 252 {
				continue
			}
			enc := append([]byte{9, byte(3 + len(it)), 0, 0, byte(len(it))}, it...)
			enc = append(enc, 0xff)
			again, err := pisim.BootMenu(enc)
			if err != nil || len(again) != 1 || again[0] != it {
				t.Fatalf("re-encoded item %q parsed as %q, %v", it, again, err)
			}
		}
	})
}

// FuzzParsePacket: server packets never panic the client, and a DATA packet
// re-encoded gives the same block and payload.
func FuzzParsePacket(f *testing.F) {
	f.Add([]byte("\x00\x06tsize\x00123\x00blksize\x001024\x00"))
	f.Add([]byte("\x00\x03\x00\x07abc"))
	f.Add([]byte("\x00\x05\x00\x01File not found\x00"))
	f.Add([]byte{0, 4, 0, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := pisim.ParsePacket(b)
		if err != nil || p.Op != 3 {
			return
		}
		enc := append([]byte{0, 3, byte(p.Block >> 8), byte(p.Block)}, p.Data...)
		q, err := pisim.ParsePacket(enc)
		if err != nil || q.Block != p.Block || !bytes.Equal(q.Data, p.Data) {
			t.Fatalf("DATA round trip: %+v -> %+v, %v", p, q, err)
		}
	})
}

// FuzzParseConfigTxt: config.txt never panics the firmware model, and the
// kernel name is never empty.
func FuzzParseConfigTxt(f *testing.F) {
	f.Add([]byte("initramfs initrd.img followkernel\n[pi5]\nkernel=x\n[all]\ndtoverlay=dwc2,dr_mode=host\n"))
	f.Add([]byte("kernel=\n"))
	f.Add([]byte("[\n=\n#"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c := pisim.ParseConfigTxt(b)
		if c.Kernel == "" || c.Cmdline == "" || c.DeviceTree == "" {
			t.Fatalf("empty default in %+v", c)
		}
	})
}

// FuzzParseOffer: any bytes from the wire are a reply for this board or an
// error, never a panic; a well-formed offer keeps its address.
func FuzzParseOffer(f *testing.F) {
	f.Add(reply(f, dhcpv4.MessageTypeOffer, dhcpv4.WithYourIP(net.IPv4(10, 9, 0, 100)),
		dhcpv4.WithGeneric(dhcpv4.OptionVendorSpecificInformation, mustHex(dnsmasqOpt43))))
	f.Add(reply(f, dhcpv4.MessageTypeAck, dhcpv4.WithOption(dhcpv4.OptTFTPServerName("not-an-ip"))))
	f.Add([]byte{2, 1, 6, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		o, err := pisim.ParseOffer(b, testBoard.MAC, pisim.DefaultMenuText)
		if err != nil {
			return
		}
		if o.YourIP != nil && len(o.YourIP) != 4 {
			t.Fatalf("yiaddr %v is not IPv4", o.YourIP)
		}
	})
}
