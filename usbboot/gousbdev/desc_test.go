//go:build cgo

package gousbdev

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"unsafe"

	"github.com/google/gousb"

	"github.com/cm4bench/cm4bench/usbboot"
)

// setSerialIndex writes gousb's unexported iSerialNumber, as libusb would.
func setSerialIndex(d *gousb.DeviceDesc, idx int) {
	f := reflect.ValueOf(d).Elem().FieldByName("iSerialNumber")
	reflect.NewAt(f.Type(), unsafe.Pointer(f.UnsafeAddr())).Elem().SetInt(int64(idx))
}

func TestDescFromGousb(t *testing.T) {
	sysfs := t.TempDir()
	if err := os.MkdirAll(filepath.Join(sysfs, "1-1.3"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(sysfs, "1-1.3", "serial"), []byte("af04b2da\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	b := &Bus{SysfsRoot: sysfs}
	rom := &gousb.DeviceDesc{Bus: 1, Address: 7, Path: []int{1, 3}, Port: 3, Speed: gousb.SpeedHigh, Vendor: 0x0a5c, Product: 0x2711,
		Configs: map[int]gousb.ConfigDesc{1: {Number: 1, Interfaces: make([]gousb.InterfaceDesc, 1)}}}
	setSerialIndex(rom, 3)
	got := b.desc(rom)
	want := usbboot.Desc{Bus: 1, Port: "1-1.3", Address: 7, VID: 0x0a5c, PID: 0x2711, SerialIndex: 3, Serial: "af04b2da",
		Speed: usbboot.SpeedHigh, NumInterfaces: 1}
	if got != want {
		t.Errorf("desc = %+v\nwant   %+v", got, want)
	}
	if got.Stage() != usbboot.StageROM {
		t.Errorf("stage %v", got.Stage())
	}
	two := &gousb.DeviceDesc{Bus: 2, Address: 9, Path: []int{4}, Speed: gousb.SpeedFull, Vendor: 0x0a5c, Product: 0x2763,
		Configs: map[int]gousb.ConfigDesc{1: {Number: 1, Interfaces: make([]gousb.InterfaceDesc, 2)}}}
	got = b.desc(two)
	if got.Port != "2-4" || got.NumInterfaces != 2 || got.Speed != usbboot.SpeedFull || got.SerialIndex != 0 || got.Serial != "" {
		t.Errorf("283x ROM desc %+v", got)
	}
}
