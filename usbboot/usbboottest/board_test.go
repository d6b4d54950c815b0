package usbboottest_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/cm4bench/cm4bench/usbboot"
	"github.com/cm4bench/cm4bench/usbboot/usbboottest"
)

func newBoard(t *testing.T, cfg usbboottest.BoardConfig) (*usbboottest.Board, *usbboottest.Clock) {
	t.Helper()
	clk := usbboottest.NewClock()
	cfg.Clock = clk
	if cfg.Port == "" {
		cfg.Port = "1-1"
	}
	b, err := usbboottest.NewBoard(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return b, clk
}

func size(n uint32) usbboottest.Setup {
	v, i := usbboot.SizeFields(n)
	return usbboottest.Setup{RequestType: 0x40, Value: v, Index: i}
}

func read(n uint16) usbboottest.Setup {
	return usbboottest.Setup{RequestType: 0xC0, Value: n, Length: n}
}

func TestDescriptors(t *testing.T) {
	b, _ := newBoard(t, usbboottest.BoardConfig{Serial: "af04b2da"})
	dd := b.DeviceDescriptor()
	want := []byte{18, 1, 0, 2, 0, 0, 0, 64, 0x5c, 0x0a, 0x11, 0x27, 0, 0, 1, 2, 3, 1}
	if !bytes.Equal(dd, want) {
		t.Errorf("2711 ROM device descriptor\n got % x\nwant % x", dd, want)
	}
	// the 55 -> 32 byte config descriptor flip (rpi-eeprom#255)
	buf := make([]byte, 64)
	n, err := b.Control(context.Background(), usbboottest.Setup{RequestType: 0x80, Request: 6, Value: 0x0200, Length: 64}, buf, time.Second)
	if err != nil || binary.LittleEndian.Uint16(buf[2:]) != 55 || buf[4] != 2 || n != 32 {
		t.Errorf("first config read: n %d wTotalLength %d interfaces %d, %v", n, binary.LittleEndian.Uint16(buf[2:]), buf[4], err)
	}
	n, _ = b.Control(context.Background(), usbboottest.Setup{RequestType: 0x80, Request: 6, Value: 0x0200, Length: 64}, buf, time.Second)
	if binary.LittleEndian.Uint16(buf[2:]) != 32 || buf[4] != 1 || n != 32 {
		t.Errorf("second config read: n %d wTotalLength %d", n, binary.LittleEndian.Uint16(buf[2:]))
	}
	cd := b.ConfigDescriptor()
	if len(cd) != 32 || cd[9+2] != 0 || cd[9+9+2] != 0x01 || binary.LittleEndian.Uint16(cd[9+9+4:]) != 512 || cd[9+9+7+2] != 0x82 {
		t.Errorf("config descriptor % x", cd)
	}
	s, err := b.StringDescriptor(3, 0x0409)
	if err != nil || string(bytes.ReplaceAll(s[2:], []byte{0}, nil)) != "af04b2da" || s[0] != byte(len(s)) {
		t.Errorf("serial string descriptor % x, %v", s, err)
	}
	two, _ := newBoard(t, usbboottest.BoardConfig{TwoInterfaces: true})
	cd = two.ConfigDescriptor()
	if len(cd) != 55 || cd[4] != 2 || cd[9+5] != 0x08 || cd[9+23+9+2] != 0x03 {
		t.Errorf("two-interface config descriptor % x", cd)
	}
	old, _ := newBoard(t, usbboottest.BoardConfig{SoC: usbboot.SoC2835})
	d, _ := old.Enumeration()
	if d.PID != 0x2763 || d.SerialIndex != 0 || d.Speed != usbboot.SpeedFull || d.Serial != "" {
		t.Errorf("2835 ROM enumeration %+v", d)
	}
	if cd := old.ConfigDescriptor(); binary.LittleEndian.Uint16(cd[9+9+4:]) != 64 {
		t.Errorf("full-speed bulk wMaxPacketSize %d, want 64", binary.LittleEndian.Uint16(cd[9+9+4:]))
	}
}

// The board must catch a host that breaks the protocol.
func TestBoardFlagsProtocolViolations(t *testing.T) {
	ctx := context.Background()
	bootmsg := func(b *usbboottest.Board) {
		if _, err := b.Control(ctx, size(24), nil, time.Second); err != nil {
			t.Fatal(err)
		}
		if _, err := b.BulkOut(ctx, 1, usbboot.BootMessage(1000, [20]byte{})); err != nil {
			t.Fatal(err)
		}
	}
	for _, tt := range []struct {
		name string
		do   func(b *usbboottest.Board) error
		want string
	}{
		{"bulk without SIZE", func(b *usbboottest.Board) error { _, err := b.BulkOut(ctx, 1, make([]byte, 24)); return err }, "without a SIZE"},
		{"image before boot message", func(b *usbboottest.Board) error { _, err := b.Control(ctx, size(1000), nil, time.Second); return err }, "boot message first"},
		{"bulk overrun", func(b *usbboottest.Board) error {
			b.Control(ctx, size(24), nil, time.Second)
			_, err := b.BulkOut(ctx, 1, make([]byte, 25))
			return err
		}, "only 24 of bootmsg remain"},
		{"SIZE while bytes outstanding", func(b *usbboottest.Board) error {
			b.Control(ctx, size(24), nil, time.Second)
			b.BulkOut(ctx, 1, make([]byte, 10))
			_, err := b.Control(ctx, size(24), nil, time.Second)
			return err
		}, "14 of 24 bulk bytes"},
		{"image length differs from the boot message", func(b *usbboottest.Board) error {
			bootmsg(b)
			_, err := b.Control(ctx, size(999), nil, time.Second)
			return err
		}, "announced 1000"},
		{"status before the image", func(b *usbboottest.Board) error {
			_, err := b.Control(ctx, read(4), make([]byte, 4), time.Second)
			return err
		}, "before the image was loaded"},
		{"wrong endpoint", func(b *usbboottest.Board) error {
			b.Control(ctx, size(24), nil, time.Second)
			_, err := b.BulkOut(ctx, 3, make([]byte, 24))
			return err
		}, "endpoint 0x03"},
		{"wLength mismatch", func(b *usbboottest.Board) error {
			_, err := b.Control(ctx, usbboottest.Setup{RequestType: 0xC0, Value: 4, Length: 4}, make([]byte, 8), time.Second)
			return err
		}, "wLength 4 but 8-byte"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b, _ := newBoard(t, usbboottest.BoardConfig{})
			err := tt.do(b)
			if !errors.Is(err, usbboottest.ErrStall) {
				t.Errorf("error %v, want a stall", err)
			}
			v := b.Violations()
			if len(v) == 0 || !strings.Contains(strings.Join(v, "; "), tt.want) {
				t.Errorf("violations %q, want one mentioning %q", v, tt.want)
			}
		})
	}
}

// Drive a 2711 board by hand through the ROM and a file-server exchange,
// checking the second-stage rules: a READ before the previous request is
// answered, and a ReadFile answered with a size other than GetFileSize's.
func TestBoardSecondStageRules(t *testing.T) {
	ctx := context.Background()
	b, clk := newBoard(t, usbboottest.BoardConfig{Mode: usbboottest.ModeMSD})
	img := bytes.Repeat([]byte{7}, 40000)
	b.Control(ctx, size(24), nil, time.Second)
	b.BulkOut(ctx, 1, usbboot.BootMessage(uint32(len(img)), [20]byte{}))
	b.Control(ctx, size(uint32(len(img))), nil, time.Second)
	for off := 0; off < len(img); off += 16384 {
		if _, err := b.BulkOut(ctx, 1, img[off:min(off+16384, len(img))]); err != nil {
			t.Fatal(err)
		}
	}
	st := make([]byte, 4)
	if _, err := b.Control(ctx, read(4), st, 20*time.Second); err != nil || binary.LittleEndian.Uint32(st) != 0 {
		t.Fatalf("status % x, %v", st, err)
	}
	d1, present := b.Enumeration()
	if present {
		t.Fatal("the ROM did not detach after the status")
	}
	clk.Advance(1500 * time.Millisecond)
	d2, present := b.Enumeration()
	if !present || d2.SerialIndex != 4 || d2.Address == d1.Address || d2.Port != d1.Port {
		t.Fatalf("second stage %+v (present %v), ROM was %+v", d2, present, d1)
	}
	req := make([]byte, 260)
	rd := usbboottest.Setup{RequestType: 0xC0, Value: 260, Length: 260}
	if _, err := b.Control(ctx, rd, req, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	if r, _ := usbboot.ParseRequest(req); r.Name != "config.txt" || r.Command != usbboot.GetFileSize {
		t.Fatalf("first request %+v", r)
	}
	if _, err := b.Control(ctx, rd, req, 20*time.Second); !errors.Is(err, usbboottest.ErrStall) {
		t.Errorf("READ before answering: %v, want stall", err)
	}
	b.Control(ctx, size(10), nil, time.Second) // config.txt is 10 bytes
	b.Control(ctx, rd, req, 20*time.Second)
	if r, _ := usbboot.ParseRequest(req); r.Name != "config.txt" || r.Command != usbboot.ReadFile {
		t.Fatalf("second request %+v", r)
	}
	if _, err := b.Control(ctx, size(11), nil, time.Second); !errors.Is(err, usbboottest.ErrStall) {
		t.Errorf("ReadFile answered with another size: %v, want stall", err)
	}
	v := strings.Join(b.Violations(), "; ")
	for _, want := range []string{"READ before the host answered", "SIZE(11) but GetFileSize answered 10"} {
		if !strings.Contains(v, want) {
			t.Errorf("violations %q lack %q", v, want)
		}
	}
	if files := b.Files(); files[0].Name != "bootcode4.bin" || !files[0].Received {
		t.Errorf("files %+v", files)
	}
}
