package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/cm4bench/cm4bench/usbboot"
	"github.com/cm4bench/cm4bench/usbboot/libusbfake"
	"github.com/cm4bench/cm4bench/usbboot/usbboottest"
)

func TestParseScenario(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want scenario
		err  string
	}{
		{in: "msd", want: scenario{mode: usbboottest.ModeMSD}},
		{in: "recovery", want: scenario{mode: usbboottest.ModeRecovery}},
		{in: "gadget", want: scenario{mode: usbboottest.ModeGadget}},
		{in: "disconnect", want: scenario{mode: usbboottest.ModeMSD,
			faults: []usbboottest.Fault{{Kind: usbboottest.FaultDisconnect, At: "start4.elf"}}}},
		{in: "silent", want: scenario{mode: usbboottest.ModeRecovery,
			faults: []usbboottest.Fault{{Kind: usbboottest.FaultSilentFlash, Duration: 21 * time.Second}}}},
		{in: "gadget,stall=boot.img,shortbulk=mcb.bin", want: scenario{mode: usbboottest.ModeGadget,
			faults: []usbboottest.Fault{{Kind: usbboottest.FaultStall, At: "boot.img"}, {Kind: usbboottest.FaultShortBulk, At: "mcb.bin"}}}},
		{in: "reject=", want: scenario{mode: usbboottest.ModeMSD,
			faults: []usbboottest.Fault{{Kind: usbboottest.FaultRejectBootcode}}}},
		{in: "flash", err: `unknown mode or fault "flash"`},
		{in: "stall,msd", err: `mode "msd" must come first`},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := parseScenario(tc.in)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("parseScenario(%q) = %+v, %v; want error %q", tc.in, got, err, tc.err)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("parseScenario(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
			}
		})
	}
}

func TestRunBadFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "--socket is required"},
		{[]string{"--socket", "x", "--boards", "0"}, "--boards 0"},
		{[]string{"--socket", "x", "--scenario", "nope"}, "unknown mode or fault"},
		{[]string{"--socket", "x", "--soc", "2712", "--scenario", "msd"}, "legacy msd is not supported on 2712"},
		{[]string{"--socket", "x", "extra"}, "unexpected arguments"},
	} {
		var out bytes.Buffer
		err := run(context.Background(), tc.args, &out, &out)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("run(%q) = %v, want error containing %q", tc.args, err, tc.want)
		}
	}
}

func TestMapErr(t *testing.T) {
	for _, tc := range []struct {
		in   error
		want int32 // libusb code the host sees
	}{
		{fmt.Errorf("board: %w", usbboot.ErrTimeout), -7},
		{fmt.Errorf("board: %w", usbboot.ErrStall), -9},
		{fmt.Errorf("board: %w", usbboot.ErrDisconnected), -4},
		{fmt.Errorf("board: %w", usbboot.ErrAccess), -3},
		{fmt.Errorf("board: %w", usbboot.ErrIO), -1},
		{errors.New("anything else"), -1},
		{nil, 0},
	} {
		if got := libusbfake.Code(mapErr(tc.in)); got != tc.want {
			t.Errorf("Code(mapErr(%v)) = %d, want %d", tc.in, got, tc.want)
		}
	}
}

// TestRunServesAndReports starts the simulator in-process, lists the
// boards over its socket and checks the report written on shutdown.
func TestRunServesAndReports(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "s.sock")
	report := filepath.Join(dir, "report.json")
	ctx, cancel := context.WithCancel(context.Background())
	var out bytes.Buffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--socket", sock, "--boards", "3", "--report", report, "--transcript", filepath.Join(dir, "t.jsonl")}, &out, &out)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no socket after 10 s: %s", out.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	c, err := netDial(sock)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write((&libusbfake.Request{Op: libusbfake.OpList}).Encode()); err != nil {
		t.Fatal(err)
	}
	var hdr [10]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if status, n := int32(hdr[4])|int32(hdr[5])<<8, int(hdr[8])|int(hdr[9])<<8; status != 0 || n != 3 {
		t.Fatalf("list: status %d, %d devices; want 0 and 3", status, n)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(report)
	if err != nil {
		t.Fatal(err)
	}
	for _, port := range []string{`"1-1.1"`, `"1-1.2"`, `"1-1.3"`} {
		if !bytes.Contains(data, []byte(port)) {
			t.Errorf("report lacks %s:\n%s", port, data)
		}
	}
}

func netDial(path string) (net.Conn, error) { return net.DialTimeout("unix", path, 5*time.Second) }

func TestFormatRecord(t *testing.T) {
	u8 := func(v uint8) *uint8 { return &v }
	u16 := func(v uint16) *uint16 { return &v }
	req := make([]byte, 260)
	req[0] = 1
	copy(req[4:], "start4.elf")
	ep, n, iface := uint8(1), 16384, 1
	for _, tc := range []struct {
		r    libusbfake.Record
		want string
	}{
		{libusbfake.Record{MS: 5, Port: "1-1.1", Addr: 2, Kind: "control", RequestType: u8(0x40), Request: u8(0), Value: u16(0x1da0), Index: u16(1), Length: u16(0), TimeoutMS: 1000, Result: "ok"},
			"      5ms 1-1.1   addr 2   ctrl 40 00 1da0 0001 0      1000ms SIZE(73120)"},
		{libusbfake.Record{MS: 6, Port: "1-1.1", Addr: 3, Kind: "control", RequestType: u8(0xc0), Request: u8(0), Value: u16(260), Index: u16(0), Length: u16(260), TimeoutMS: 20000, Result: "ok", In: req},
			`      6ms 1-1.1   addr 3   ctrl c0 00 0104 0000 260   20000ms READ(260) = ReadFile "start4.elf"`},
		{libusbfake.Record{MS: 7, Port: "1-1.1", Addr: 3, Kind: "control", RequestType: u8(0xc0), Request: u8(0), Value: u16(260), Index: u16(0), Length: u16(260), TimeoutMS: 20000, Result: "LIBUSB_ERROR_TIMEOUT", DurMS: 20001},
			"      7ms 1-1.1   addr 3   ctrl c0 00 0104 0000 260   20000ms READ(260) -> LIBUSB_ERROR_TIMEOUT after 20001ms"},
		{libusbfake.Record{MS: 8, Port: "1-1.2", Addr: 4, Kind: "bulk", Endpoint: &ep, Len: &n, Actual: 8192, Result: "LIBUSB_ERROR_NO_DEVICE"},
			"      8ms 1-1.2   addr 4   bulk ep 01 len 16384 (8192 sent) -> LIBUSB_ERROR_NO_DEVICE"},
		{libusbfake.Record{MS: 9, Port: "1-1.2", Addr: 4, By: "kernel", Kind: "control", RequestType: u8(0x80), Request: u8(6), Value: u16(0x200), Index: u16(0), Length: u16(55), TimeoutMS: 5000, Actual: 32, Result: "ok"},
			"      9ms 1-1.2   addr 4   kernel: ctrl 80 06 0200 0000 55     5000ms GET_DESCRIPTOR(config) -> 32 bytes"},
		{libusbfake.Record{MS: 10, Port: "1-1.2", Addr: 4, Kind: "claim", Arg: &iface, Result: "ok"},
			"     10ms 1-1.2   addr 4   claim 1"},
	} {
		if got := formatRecord(tc.r); got != tc.want {
			t.Errorf("formatRecord:\n got %q\nwant %q", got, tc.want)
		}
	}
}
