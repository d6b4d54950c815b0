package firmware

import (
	"os"
	"path/filepath"
	"testing"
)

// sharedPath is a file under ../shared (seen from the repository root). A
// missing file fails the test: CI has ../shared.
func sharedPath(t testing.TB, rel string) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			break
		}
		if filepath.Dir(dir) == dir {
			t.Fatal("no go.mod above the test directory")
		}
		dir = filepath.Dir(dir)
	}
	p := filepath.Join(dir, "..", "shared", rel)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("shared fixture missing (../shared must be present): %v", err)
	}
	return p
}

func readShared(t testing.TB, rel string) []byte {
	t.Helper()
	b, err := os.ReadFile(sharedPath(t, rel))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// fixtures maps catalogue file IDs to the real files in ../shared.
var fixtures = map[string]string{
	"usbboot/firmware/bootfiles.bin":                           "firmware-fixtures/bootfiles.bin",
	"usbboot/msd/bootcode.bin":                                 "firmware-fixtures/msd-bootcode.bin",
	"usbboot/recovery/config.txt":                              "firmware-fixtures/recovery-config.txt",
	"usbboot/recovery/boot.conf":                               "firmware-fixtures/recovery-boot.conf",
	"rpi-eeprom/firmware-2711/latest/recovery.bin":             "eeprom-vectors/recovery.bin",
	"rpi-eeprom/firmware-2711/default/pieeprom-2026-05-17.bin": "eeprom-vectors/pieeprom-2026-05-17.bin",
}
