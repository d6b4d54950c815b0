package gousbdev

import (
	"os"
	"runtime"
)

// SubsystemPresent reports whether this machine has a USB subsystem at all
// (on Linux: /sys/bus/usb or /dev/bus/usb). libusb initialises without one
// and simply lists nothing, so callers use this to say why.
func SubsystemPresent() bool {
	if runtime.GOOS != "linux" {
		return true
	}
	for _, p := range []string{"/sys/bus/usb", "/dev/bus/usb"} {
		if _, err := os.Stat(p); err == nil {
			return true
		}
	}
	return false
}
