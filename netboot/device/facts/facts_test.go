package facts

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/cm4bench/cm4bench/internal/contract"
)

func write(t *testing.T, root, p string, data []byte) {
	t.Helper()
	full := filepath.Join(root, p)
	if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(full, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// A fake CM4: /proc/cpuinfo as Raspberry Pi OS shows it on a CM4, the device
// tree nodes the firmware fills in, and sysfs for the eMMC, two NICs and the
// thermal zone.
func TestReadFakeCM4(t *testing.T) {
	proc, sys := t.TempDir(), t.TempDir()
	write(t, proc, "cpuinfo", []byte("processor\t: 0\nBogoMIPS\t: 108.00\n\nprocessor\t: 1\n\nHardware\t: BCM2835\nRevision\t: C03141\nSerial\t\t: 10000000abcdef12\nModel\t\t: Raspberry Pi Compute Module 4 Rev 1.1\n"))
	write(t, proc, "device-tree/model", []byte("Raspberry Pi Compute Module 4 Rev 1.1\x00"))
	write(t, proc, "device-tree/chosen/bootloader/version", []byte("2f1b5a7b1c3e\x00"))
	write(t, proc, "device-tree/chosen/bootloader/build-timestamp", []byte{0x66, 0x4a, 0x1e, 0x00})
	write(t, proc, "device-tree/chosen/bootloader/signed", []byte{0, 0, 0, 0x0d})
	write(t, sys, "block/mmcblk0/size", []byte("61071360\n"))
	write(t, sys, "block/mmcblk0/device/cid", []byte("150100424a54443452000e1a2e04a500\n"))
	write(t, sys, "block/mmcblk0/device/csd", []byte("d0270132070f5903ff2f7f8b92400001\n"))
	write(t, sys, "class/net/eth0/address", []byte("DC:A6:32:01:02:03\n"))
	write(t, sys, "class/net/eth0/type", []byte("1\n"))
	write(t, sys, "class/net/wlan0/address", []byte("dc:a6:32:01:02:04\n"))
	write(t, sys, "class/net/wlan0/type", []byte("1\n"))
	write(t, sys, "class/net/lo/address", []byte("00:00:00:00:00:00\n"))
	write(t, sys, "class/net/can0/type", []byte("280\n"))
	write(t, sys, "class/thermal/thermal_zone0/temp", []byte("47236\n"))

	got := Reader{Proc: proc, Sys: sys}.Read()
	signed := uint32(0x0d)
	want := &contract.Facts{
		Serial: "abcdef12", Revision: "c03141", Model: "Raspberry Pi Compute Module 4 Rev 1.1",
		MACs: []string{"dc:a6:32:01:02:03", "dc:a6:32:01:02:04"}, EMMCBytes: 61071360 * 512,
		EMMCCID: "150100424a54443452000e1a2e04a500", EMMCCSD: "d0270132070f5903ff2f7f8b92400001",
		Bootloader: "2f1b5a7b1c3e (2024-05-19T15:42:56Z)", TempMilliC: 47236, SignedBoot: &signed,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("facts\n%+v\nwant\n%+v", got, want)
	}
}

func TestReadDeviceTreeOnly(t *testing.T) {
	proc := t.TempDir()
	write(t, proc, "cpuinfo", []byte("processor\t: 0\n"))
	write(t, proc, "device-tree/serial-number", []byte("10000000deadbeef\x00"))
	write(t, proc, "device-tree/system/linux,revision", []byte{0x00, 0xc0, 0x31, 0x41})
	got := Reader{Proc: proc, Sys: t.TempDir()}.Read()
	if got.Serial != "deadbeef" || got.Revision != "c03141" || got.MACs != nil || got.EMMCBytes != 0 || got.SignedBoot != nil || got.Locked() {
		t.Errorf("facts %+v", got)
	}
}

func TestNormalizeSerial(t *testing.T) {
	for in, want := range map[string]string{"10000000abcdef12": "abcdef12", "ABCDEF12": "abcdef12", " x ": "x", "": "", "not-hex-but-long": "not-hex-but-long"} {
		if got := NormalizeSerial(in); got != want {
			t.Errorf("NormalizeSerial(%q) = %q, want %q", in, got, want)
		}
	}
}

func FuzzParseCPUInfo(f *testing.F) {
	f.Add("Serial\t\t: 10000000abcdef12\nRevision\t: c03141\n")
	f.Add(":\n::\nk:v:w\n")
	f.Fuzz(func(t *testing.T, s string) {
		m := ParseCPUInfo(s)
		for k, v := range m {
			if k == "" || k != trim(k) || v != trim(v) {
				t.Fatalf("untrimmed %q: %q", k, v)
			}
		}
	})
}

func trim(s string) string {
	for len(s) > 0 && (s[0] == ' ' || s[0] == '\t' || s[0] == '\n' || s[0] == '\r' || s[0] == '\v' || s[0] == '\f') {
		s = s[1:]
	}
	for len(s) > 0 && (s[len(s)-1] == ' ' || s[len(s)-1] == '\t' || s[len(s)-1] == '\n' || s[len(s)-1] == '\r' || s[len(s)-1] == '\v' || s[len(s)-1] == '\f') {
		s = s[:len(s)-1]
	}
	return s
}
