package gousbdev_test

import (
	"errors"
	"testing"

	"github.com/cm4bench/cm4bench/usbboot"
	"github.com/cm4bench/cm4bench/usbboot/gousbdev"
)

// On a machine without a USB subsystem (CI containers) Open must fail
// plainly with ErrNoUSB, or work and list nothing; it must never panic.
func TestOpenWithoutUSB(t *testing.T) {
	if gousbdev.SubsystemPresent() {
		t.Skip("this machine has /dev/bus/usb; the no-USB path cannot be exercised here")
	}
	bus, err := gousbdev.Open()
	if err != nil {
		if !errors.Is(err, usbboot.ErrNoUSB) {
			t.Fatalf("Open: %v, want ErrNoUSB", err)
		}
		t.Logf("Open: %v", err)
		return
	}
	defer bus.Close()
	list, err := bus.List(t.Context())
	t.Logf("libusb initialised without /dev/bus/usb; List = %v, %v", list, err)
	if len(list) != 0 {
		t.Errorf("listed %d devices without a USB subsystem", len(list))
	}
	if gousbdev.SubsystemPresent() {
		t.Error("SubsystemPresent() = true on a machine without /dev/bus/usb and /sys/bus/usb")
	}
}
