//go:build !cgo

package gousbdev

import (
	"context"
	"fmt"

	"github.com/cm4bench/cm4bench/usbboot"
)

// Bus is unavailable without cgo: Open always fails.
type Bus struct{}

var _ usbboot.Bus = (*Bus)(nil)

// Open fails: this binary was built without cgo, so without libusb.
func Open() (*Bus, error) {
	return nil, fmt.Errorf("gousbdev: built without cgo (CGO_ENABLED=0), so without libusb: %w", usbboot.ErrNoUSB)
}

// Close does nothing.
func (b *Bus) Close() error { return nil }

// List fails without libusb.
func (b *Bus) List(ctx context.Context) ([]usbboot.Desc, error) {
	return nil, fmt.Errorf("gousbdev: built without cgo: %w", usbboot.ErrNoUSB)
}

// Open fails without libusb.
func (b *Bus) Open(ctx context.Context, d usbboot.Desc) (usbboot.Device, error) {
	return nil, fmt.Errorf("gousbdev: built without cgo: %w", usbboot.ErrNoUSB)
}
