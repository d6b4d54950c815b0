package pisim_test

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/cm4bench/cm4bench/internal/repotest"
	"github.com/cm4bench/cm4bench/netboot/pcap"
	"github.com/cm4bench/cm4bench/netboot/sim/pisim"
)

// The exact option 43 dnsmasq sends for pxe-service=0,"Raspberry Pi Boot"
// (netboot.md §1.3), and the Pi 4 DISCOVER facts of §1.2.
const dnsmasqOpt43 = "0601030a0400505845091400001152617370626572727920506920426f6f74ff"

var testBoard = pisim.Board{
	MAC:      net.HardwareAddr{0xdc, 0xa6, 0x32, 0x01, 0x36, 0xc2},
	Serial:   0xabcd1234,
	Revision: 0x00c03141,
}

// rawOptions walks the option area of a BOOTP packet by hand, independently
// of the dhcpv4 library that built it, and returns code -> value plus the
// order the codes appear in.
func rawOptions(t *testing.T, pkt []byte) (map[byte][]byte, []byte) {
	t.Helper()
	if len(pkt) < 240 || !bytes.Equal(pkt[236:240], []byte{99, 130, 83, 99}) {
		t.Fatalf("no DHCP magic cookie at byte 236")
	}
	opts := map[byte][]byte{}
	var order []byte
	for i := 240; i < len(pkt); {
		c := pkt[i]
		if c == 0 {
			i++
			continue
		}
		if c == 255 {
			return opts, order
		}
		n := int(pkt[i+1])
		opts[c] = pkt[i+2 : i+2+n]
		order = append(order, c)
		i += 2 + n
	}
	t.Fatal("option area has no end option")
	return nil, nil
}

func mustHex(s string) []byte {
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		panic(err)
	}
	return b
}

func TestDiscoverOnTheWire(t *testing.T) {
	xid := dhcpv4.TransactionID{0x11, 0x22, 0x33, 0x44}
	d, err := testBoard.Discover(xid)
	if err != nil {
		t.Fatal(err)
	}
	pkt := d.ToBytes()
	if len(pkt) < 300 {
		t.Errorf("packet is %d bytes, BOOTP minimum is 300", len(pkt))
	}
	// Fixed header: op 1, htype 1, hlen 6, hops 0, xid, secs 0, flags 0
	// (broadcast bit NOT set), ciaddr/yiaddr/siaddr/giaddr 0, chaddr.
	hdr := []byte{1, 1, 6, 0, 0x11, 0x22, 0x33, 0x44, 0, 0, 0, 0}
	if !bytes.Equal(pkt[:12], hdr) {
		t.Errorf("header = % x, want % x", pkt[:12], hdr)
	}
	if !bytes.Equal(pkt[12:28], make([]byte, 16)) {
		t.Errorf("ciaddr..giaddr = % x, want zeros", pkt[12:28])
	}
	if !bytes.Equal(pkt[28:34], testBoard.MAC) {
		t.Errorf("chaddr = % x", pkt[28:34])
	}
	opts, _ := rawOptions(t, pkt)
	want := map[byte][]byte{
		53: {1},
		55: {1, 3, 43, 60, 66, 67, 128, 129, 130, 131, 132, 133, 134, 135},
		60: []byte("PXEClient:Arch:00000:UNDI:002001"),
		93: {0, 0},
		94: {1, 2, 1},
		// type 0, "RPi4" (52 50 69 34), revision 0x00c03141 little-endian,
		// MAC low 4 bytes (32 01 36 c2), serial abcd1234 little-endian (N1).
		97: mustHex("00 52506934 4131c000 320136c2 3412cdab"),
	}
	if !reflect.DeepEqual(opts, want) {
		for c, v := range opts {
			if !bytes.Equal(v, want[c]) {
				t.Errorf("option %d = % x, want % x", c, v, want[c])
			}
		}
		for c := range want {
			if _, ok := opts[c]; !ok {
				t.Errorf("option %d missing", c)
			}
		}
	}
	if len(opts[60]) != 32 {
		t.Errorf("option 60 is %d bytes, the Pi sends 32", len(opts[60]))
	}
}

func TestRequestOnTheWire(t *testing.T) {
	xid := dhcpv4.TransactionID{1, 2, 3, 4}
	r, err := testBoard.Request(xid, net.IPv4(10, 9, 0, 100), net.IPv4(10, 9, 0, 1))
	if err != nil {
		t.Fatal(err)
	}
	pkt := r.ToBytes()
	if pkt[10] != 0 || pkt[11] != 0 {
		t.Errorf("flags = %02x%02x, want 0", pkt[10], pkt[11])
	}
	opts, _ := rawOptions(t, pkt)
	if _, ok := opts[60]; ok {
		t.Error("REQUEST carries option 60; the Pi 4's does not (rpi-eeprom#82)")
	}
	for c, v := range map[byte][]byte{53: {3}, 50: {10, 9, 0, 100}, 54: {10, 9, 0, 1}, 97: testBoard.GUID()} {
		if !bytes.Equal(opts[c], v) {
			t.Errorf("option %d = % x, want % x", c, opts[c], v)
		}
	}
	if _, err := testBoard.Request(xid, nil, net.IPv4(10, 9, 0, 1)); err == nil {
		t.Error("Request without an address: no error")
	}
	if _, err := (pisim.Board{MAC: net.HardwareAddr{1, 2}}).Discover(xid); err == nil {
		t.Error("Discover with a 2-byte MAC: no error")
	}
}

// N1: pisim's option 97 is byte for byte what a real Pi 4 sent
// (testdata/netboot/ltsp-pi4-option97.txt), and decodes to the serial the
// same board used as its TFTP prefix.
func TestGUIDMatchesRealCapture(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(repotest.Root(t), "testdata", "netboot", "ltsp-pi4-option97.txt"))
	if err != nil {
		t.Fatal(err)
	}
	var want []byte
	var prefix string
	for _, line := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(line, " ")
		switch k {
		case "option97":
			want, _ = hex.DecodeString(strings.ReplaceAll(v, ":", ""))
		case "tftp-prefix":
			prefix = v
		}
	}
	serial, err := pisim.ParseSerial(prefix)
	if err != nil {
		t.Fatal(err)
	}
	board := pisim.Board{MAC: net.HardwareAddr{0xdc, 0xa6, 0x32, 0x2e, 0xf8, 0xed}, Serial: serial, Revision: 0x00a03111}
	if got := board.GUID(); !bytes.Equal(got, want) {
		t.Errorf("GUID()\n got % x\nwant % x (the real capture)", got, want)
	}
	rev, low, s, err := pisim.ParseGUID(want)
	if err != nil || rev != 0x00a03111 || !bytes.Equal(low, []byte{0x32, 0x2e, 0xf8, 0xed}) || fmt.Sprintf("%08x", s) != prefix {
		t.Errorf("ParseGUID(capture) = %x % x %08x %v; want a03111, 32 2e f8 ed, %s", rev, low, s, err, prefix)
	}
	if board.SerialString() != prefix {
		t.Errorf("TFTP prefix %q, want %q", board.SerialString(), prefix)
	}
}

func TestGUIDRoundTrip(t *testing.T) {
	rev, low, serial, err := pisim.ParseGUID(testBoard.GUID())
	if err != nil {
		t.Fatal(err)
	}
	if rev != 0x00c03141 || !bytes.Equal(low, testBoard.MAC[2:]) || serial != 0xabcd1234 {
		t.Errorf("ParseGUID = %x % x %x", rev, low, serial)
	}
	swapped := testBoard.GUID()
	copy(swapped[1:5], "4iPR")
	if _, _, _, err := pisim.ParseGUID(swapped); err != nil {
		t.Errorf("FourCC in the other byte order refused: %v", err)
	}
	for _, bad := range [][]byte{nil, make([]byte, 17), append([]byte{1}, testBoard.GUID()[1:]...)} {
		if _, _, _, err := pisim.ParseGUID(bad); err == nil {
			t.Errorf("ParseGUID(% x): no error", bad)
		}
	}
}

func TestBootMenu(t *testing.T) {
	for _, tt := range []struct {
		name    string
		opt43   []byte
		menu    bool
		wantErr bool
	}{
		{"dnsmasq 32 bytes", mustHex(dnsmasqOpt43), true, false},
		{"smee: no terminator, discovery control 8", mustHex("060108 0a0400505845 091400001152617370626572727920506920426f6f74"), true, false},
		{"Pi 3 ROM padded text", append(mustHex("0601030917000014"), []byte("Raspberry Pi Boot   ff")[:20]...), true, false},
		{"dnsmasq untagged: no menu item", mustHex("060108 0a0400505845 ff"), false, false},
		{"other menu text", append(mustHex("0914000011"), []byte("Windows PXE Boot!")...), false, false},
		{"bare text, not sub-options", []byte("Raspberry Pi Boot"), false, true},
		{"truncated menu", mustHex("09140000115261"), false, true},
		{"empty", nil, false, false},
		{"pad bytes", mustHex("0000" + dnsmasqOpt43), true, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := pisim.HasBootMenu(tt.opt43, pisim.DefaultMenuText)
			if got != tt.menu {
				t.Errorf("HasBootMenu = %v, want %v", got, tt.menu)
			}
			if (err != nil) != tt.wantErr {
				t.Errorf("err = %v, want error %v", err, tt.wantErr)
			}
			if err != nil && !errors.Is(err, pisim.ErrMalformed43) {
				t.Errorf("err %v does not wrap ErrMalformed43", err)
			}
		})
	}
}

// reply builds a server answer for testBoard with the given modifiers.
func reply(t testing.TB, mt dhcpv4.MessageType, mods ...dhcpv4.Modifier) []byte {
	d, err := testBoard.Discover(dhcpv4.TransactionID{9, 9, 9, 9})
	if err != nil {
		t.Fatal(err)
	}
	r, err := dhcpv4.NewReplyFromRequest(d, append([]dhcpv4.Modifier{dhcpv4.WithMessageType(mt)}, mods...)...)
	if err != nil {
		t.Fatal(err)
	}
	return r.ToBytes()
}

func TestParseOffer(t *testing.T) {
	srv := net.IPv4(10, 9, 0, 1).To4()
	full := reply(t, dhcpv4.MessageTypeOffer,
		dhcpv4.WithYourIP(net.IPv4(10, 9, 0, 100)),
		dhcpv4.WithServerIP(srv),
		dhcpv4.WithNetmask(net.CIDRMask(24, 32)),
		dhcpv4.WithRouter(srv),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(srv)),
		dhcpv4.WithOption(dhcpv4.OptTFTPServerName("10.9.0.1")),
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient")),
		dhcpv4.WithGeneric(dhcpv4.OptionVendorSpecificInformation, mustHex(dnsmasqOpt43)),
		dhcpv4.WithGeneric(dhcpv4.GenericOptionCode(97), testBoard.GUID()),
	)
	o, err := pisim.ParseOffer(full, testBoard.MAC, pisim.DefaultMenuText)
	if err != nil {
		t.Fatal(err)
	}
	if !o.Menu || o.Proxy() || !o.TFTP.Equal(srv) || !o.SIAddr.Equal(srv) || !o.ServerID.Equal(srv) || o.Opt60 != "PXEClient" || !bytes.Equal(o.Opt97, testBoard.GUID()) {
		t.Errorf("offer = %+v", o)
	}
	if got := o.TFTPServer(nil); !got.Equal(srv) {
		t.Errorf("TFTPServer = %v", got)
	}
	if got := o.TFTPServer(net.IPv4(10, 9, 0, 7)); !got.Equal(net.IPv4(10, 9, 0, 7)) {
		t.Errorf("TFTP_IP does not override: %v", got)
	}
	plain := reply(t, dhcpv4.MessageTypeOffer, dhcpv4.WithYourIP(net.IPv4(10, 9, 0, 100)), dhcpv4.WithOption(dhcpv4.OptServerIdentifier(srv)))
	if o, err := pisim.ParseOffer(plain, testBoard.MAC, pisim.DefaultMenuText); err != nil || o.Menu {
		t.Errorf("plain offer: menu %v, err %v", o.Menu, err)
	}
	other := net.HardwareAddr{0xdc, 0xa6, 0x32, 0, 0, 1}
	if _, err := pisim.ParseOffer(full, other, pisim.DefaultMenuText); err == nil {
		t.Error("offer for another MAC accepted")
	}
	d, _ := testBoard.Discover(dhcpv4.TransactionID{})
	if _, err := pisim.ParseOffer(d.ToBytes(), testBoard.MAC, pisim.DefaultMenuText); err == nil {
		t.Error("a BOOTREQUEST accepted as a reply")
	}
}

func TestRRQOnTheWire(t *testing.T) {
	want := "\x00\x01abcd1234/start4.elf\x00octet\x00tsize\x000\x00blksize\x001024\x00"
	if got := string(pisim.RRQ("abcd1234/start4.elf", 1024)); got != want {
		t.Errorf("RRQ = %q, want %q", got, want)
	}
}

func TestParsePacket(t *testing.T) {
	for _, tt := range []struct {
		name string
		in   []byte
		want pisim.Packet
		err  bool
	}{
		{"oack", []byte("\x00\x06tsize\x00123\x00BLKSIZE\x001024\x00"), pisim.Packet{Op: 6, Options: map[string]string{"tsize": "123", "blksize": "1024"}}, false},
		{"data", []byte("\x00\x03\x00\x07abc"), pisim.Packet{Op: 3, Block: 7, Data: []byte("abc")}, false},
		{"not found", []byte("\x00\x05\x00\x01File not found\x00"), pisim.Packet{Op: 5, Code: 1, Message: "File not found"}, false},
		{"short", []byte{0}, pisim.Packet{}, true},
		{"oack odd", []byte("\x00\x06tsize\x00"), pisim.Packet{}, true},
		{"error unterminated", []byte("\x00\x05\x00\x01oops"), pisim.Packet{}, true},
		{"rrq from a server", pisim.RRQ("x", 512), pisim.Packet{}, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := pisim.ParsePacket(tt.in)
			if (err != nil) != tt.err {
				t.Fatalf("err = %v, want error %v", err, tt.err)
			}
			if !tt.err && !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestParseConfigTxt(t *testing.T) {
	for _, tt := range []struct {
		name, in string
		want     pisim.BootConfig
	}{
		{"defaults", "", pisim.BootConfig{Kernel: "kernel8.img", Cmdline: "cmdline.txt", DeviceTree: "bcm2711-rpi-cm4.dtb"}},
		{"initramfs and overlays", "# bench\narm_64bit=1\ninitramfs initrd.img followkernel\ndtoverlay=dwc2,dr_mode=host\n[pi5]\nkernel=kernel_2712.img\n[cm4]\ncmdline=cm4.txt\n[all]\ndtoverlay=vc4-kms-v3d # gpu\n",
			pisim.BootConfig{Kernel: "kernel8.img", Initramfs: "initrd.img", Cmdline: "cm4.txt", DeviceTree: "bcm2711-rpi-cm4.dtb", Overlays: []string{"dwc2", "vc4-kms-v3d"}}},
		{"garbage lines", "=\n[\nkernel\n initramfs \nKERNEL = vmlinuz\n", pisim.BootConfig{Kernel: "vmlinuz", Cmdline: "cmdline.txt", DeviceTree: "bcm2711-rpi-cm4.dtb"}},
		{"auto_initramfs", "auto_initramfs=1\n[none]\ninitramfs x.img\n", pisim.BootConfig{Kernel: "kernel8.img", Cmdline: "cmdline.txt", DeviceTree: "bcm2711-rpi-cm4.dtb", AutoInitramfs: true}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := pisim.ParseConfigTxt([]byte(tt.in)); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %+v\nwant %+v", got, tt.want)
			}
		})
	}
	if got := pisim.KernelArg("console=serial0 cm4bench.server=http://10.9.0.1:5000 quiet", "cm4bench.server"); got != "http://10.9.0.1:5000" {
		t.Errorf("KernelArg = %q", got)
	}
}

// mbr builds a disk image with a partition table whose first entry has the
// given type, starting at sector 8192, and a boot sector there.
func mbr(typ byte, bootSig bool) []byte {
	d := make([]byte, 8192*512+512)
	d[510], d[511] = 0x55, 0xaa
	p := d[446:462]
	p[4] = typ
	binary.LittleEndian.PutUint32(p[8:], 8192)
	binary.LittleEndian.PutUint32(p[12:], 1)
	if bootSig {
		d[8192*512+510], d[8192*512+511] = 0x55, 0xaa
	}
	return d
}

func TestEMMCBootable(t *testing.T) {
	for _, tt := range []struct {
		name string
		disk []byte
		ok   bool
		why  string
	}{
		{"blank", make([]byte, 1<<20), false, "blank"},
		{"fat32 lba", mbr(0x0c, true), true, "sector 8192"},
		{"linux first", mbr(0x83, true), false, "not FAT"},
		{"no boot sector", mbr(0x0c, false), false, "no FAT boot sector"},
		{"too small", []byte{1, 2, 3}, false, "read MBR"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			why, ok := pisim.EMMCBootable(bytes.NewReader(tt.disk))
			if ok != tt.ok || !strings.Contains(why, tt.why) {
				t.Errorf("EMMCBootable = %v %q, want %v ~%q", ok, why, tt.ok, tt.why)
			}
		})
	}
}

// FuzzReplayCapture: any pcap input decodes without panicking, and what a
// well-formed RRQ says survives.
func FuzzReplayCapture(f *testing.F) {
	var buf bytes.Buffer
	w, _ := pcap.NewWriter(&buf, 0, pcap.LinkEthernet)
	frame := make([]byte, 14+20+8)
	frame[12], frame[13] = 0x08, 0x00
	ip := frame[14:]
	ip[0], ip[9] = 0x45, 17
	rrq := pisim.RRQ("start4.elf", 1024)
	binary.BigEndian.PutUint16(ip[2:], uint16(28+len(rrq)))
	copy(ip[12:], []byte{10, 42, 0, 100, 10, 42, 0, 1})
	binary.BigEndian.PutUint16(ip[20:], 50000)
	binary.BigEndian.PutUint16(ip[22:], 69)
	binary.BigEndian.PutUint16(ip[24:], uint16(8+len(rrq)))
	w.WritePacket(time.Unix(1, 0), append(frame, rrq...))
	f.Add(buf.Bytes())
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := pisim.ReplayCapture(bytes.NewReader(b), "")
		if err != nil || s == nil {
			return
		}
		for _, tr := range s.Transfers {
			if tr.Name == "" {
				t.Fatal("transfer without a name")
			}
		}
	})
}
