package firmware

import (
	"os"
	"testing"

	"github.com/cm4bench/cm4bench/internal/repotest"
)

// sharedPath is a file under ../shared; a missing one fails the test.
func sharedPath(t testing.TB, rel string) string {
	t.Helper()
	return repotest.Shared(t, rel)
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
