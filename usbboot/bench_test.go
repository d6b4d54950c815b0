package usbboot_test

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/cm4bench/cm4bench/usbboot"
	"github.com/cm4bench/cm4bench/usbboot/usbboottest"
)

// BenchmarkBootGadget64 serves a whole mass-storage-gadget64 boot
// (bootcode4.bin, mcb/memsys/bootmain from the real bootfiles.bin, a
// 3 MiB boot.img) through the host state machine to a simulated board:
// host-side throughput, and bytes allocated per boot, which stay far below
// the bytes served (files are streamed in 16 KiB chunks, never loaded).
// There is no peer to run side by side: rpiboot needs real libusb, and the
// simulated board speaks only to usbboot's seam here.
func BenchmarkBootGadget64(b *testing.B) {
	dir := usbboottest.BootDir(b, filepath.Join(b.TempDir(), "boot"), usbboot.SoC2711, usbboottest.ModeGadget)
	src, err := usbboot.NewDir(dir, false)
	if err != nil {
		b.Fatal(err)
	}
	var served int64
	b.ReportAllocs()
	for b.Loop() {
		clk := usbboottest.NewClock()
		board, err := usbboottest.NewBoard(usbboottest.BoardConfig{Port: "1-1", Mode: usbboottest.ModeGadget, Clock: clk})
		if err != nil {
			b.Fatal(err)
		}
		srv := &usbboot.Server{Bus: usbboottest.NewBus(clk, board), Files: src, Clock: clk, Timeout: time.Minute}
		res, err := srv.Serve(b.Context())
		if err != nil || len(res) != 1 || res[0].Err != nil {
			b.Fatalf("boot: %v %+v", err, res)
		}
		served = 0
		for _, f := range res[0].Files {
			served += f.Size
		}
	}
	b.SetBytes(served) // B/op (allocated per boot) stays far below this: streamed
	b.Logf("served %d bytes per boot", served)
}

func BenchmarkParseRequest(b *testing.B) {
	rec := record(1, "memsys00.bin")
	b.SetBytes(int64(len(rec)))
	for b.Loop() {
		if _, err := usbboot.ParseRequest(rec); err != nil {
			b.Fatal(err)
		}
	}
}
