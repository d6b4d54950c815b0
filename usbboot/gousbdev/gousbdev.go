//go:build cgo

// Package gousbdev implements usbboot.Bus and usbboot.Device over libusb
// with github.com/google/gousb. It is the only cgo package of cm4bench and
// is a thin pass-through: every protocol decision lives in usbboot.
//
//	bus, err := gousbdev.Open()
//	if err != nil { return err } // usbboot.ErrNoUSB on a machine without USB
//	defer bus.Close()
//	srv := &usbboot.Server{Bus: bus, Files: dir}
//
// Built without cgo (CGO_ENABLED=0), the package keeps its API but Open
// fails with usbboot.ErrNoUSB, so importers still build.
package gousbdev

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/gousb"

	"github.com/cm4bench/cm4bench/usbboot"
)

// Bus is the host's USB bus through libusb.
type Bus struct {
	ctx *gousb.Context
	// SysfsRoot is where Linux exposes device attributes; List reads the
	// serial string there so a --serial filter never opens a device.
	SysfsRoot string
}

var _ usbboot.Bus = (*Bus)(nil)

// Open initialises libusb. On a machine without a USB subsystem libusb
// fails to initialise (gousb panics); that comes back as usbboot.ErrNoUSB.
func Open() (bus *Bus, err error) {
	defer func() {
		if r := recover(); r != nil {
			bus, err = nil, fmt.Errorf("gousbdev: libusb init: %v: %w", r, usbboot.ErrNoUSB)
		}
	}()
	return &Bus{ctx: gousb.NewContext(), SysfsRoot: "/sys/bus/usb/devices"}, nil
}

// Close releases libusb.
func (b *Bus) Close() error { return b.ctx.Close() }

func portPath(d *gousb.DeviceDesc) string {
	var sb strings.Builder
	sb.WriteString(strconv.Itoa(d.Bus))
	sb.WriteByte('-')
	for i, p := range d.Path {
		if i > 0 {
			sb.WriteByte('.')
		}
		sb.WriteString(strconv.Itoa(p))
	}
	return sb.String()
}

// serialIndex reads the unexported iSerialNumber field (as upstream rpiboot, main.c)).
// usbboot confirms it with GET_DESCRIPTOR after opening.
func serialIndex(d *gousb.DeviceDesc) uint8 {
	f := reflect.ValueOf(d).Elem().FieldByName("iSerialNumber")
	if !f.IsValid() {
		return 0
	}
	return uint8(f.Int())
}

func (b *Bus) desc(d *gousb.DeviceDesc) usbboot.Desc {
	out := usbboot.Desc{Bus: d.Bus, Port: portPath(d), Address: d.Address, VID: uint16(d.Vendor), PID: uint16(d.Product),
		SerialIndex: serialIndex(d)}
	switch d.Speed {
	case gousb.SpeedLow:
		out.Speed = usbboot.SpeedLow
	case gousb.SpeedFull:
		out.Speed = usbboot.SpeedFull
	case gousb.SpeedHigh:
		out.Speed = usbboot.SpeedHigh
	case gousb.SpeedSuper:
		out.Speed = usbboot.SpeedSuper
	}
	// RPIBOOT devices have one configuration; take the lowest-numbered.
	best := -1
	for n, c := range d.Configs {
		if best < 0 || n < best {
			best, out.NumInterfaces = n, len(c.Interfaces)
		}
	}
	if b.SysfsRoot != "" && out.SerialIndex != 0 {
		if s, err := os.ReadFile(filepath.Join(b.SysfsRoot, out.Port, "serial")); err == nil {
			out.Serial = strings.TrimSpace(string(s))
		}
	}
	return out
}

// List enumerates devices without opening any.
func (b *Bus) List(ctx context.Context) ([]usbboot.Desc, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	out := []usbboot.Desc{} // non-nil: what was listed stays usable beside an error
	_, err := b.ctx.OpenDevices(func(d *gousb.DeviceDesc) bool {
		out = append(out, b.desc(d))
		return false
	})
	if err != nil {
		// gousb fails the whole call when any device's descriptors do not
		// parse, but still calls us for the others: return both.
		return out, fmt.Errorf("gousbdev: list: %w", mapErr(ctx, err))
	}
	return out, nil
}

// Open opens exactly the device at d.Port with address d.Address.
func (b *Bus) Open(ctx context.Context, d usbboot.Desc) (usbboot.Device, error) {
	devs, err := b.ctx.OpenDevices(func(g *gousb.DeviceDesc) bool {
		return g.Bus == d.Bus && g.Address == d.Address && portPath(g) == d.Port
	})
	if len(devs) == 0 {
		if err != nil {
			return nil, fmt.Errorf("gousbdev: open %s: %w", d.Port, mapErr(ctx, err))
		}
		return nil, fmt.Errorf("gousbdev: open %s address %d: not present: %w", d.Port, d.Address, usbboot.ErrDisconnected)
	}
	for _, extra := range devs[1:] {
		extra.Close()
	}
	return &device{dev: devs[0], desc: d}, nil
}

// device is one opened libusb device.
type device struct {
	mu   sync.Mutex
	dev  *gousb.Device
	desc usbboot.Desc
	cfg  *gousb.Config
	intf *gousb.Interface
	out  *gousb.OutEndpoint
}

var _ usbboot.Device = (*device)(nil)

func (d *device) Desc() usbboot.Desc { return d.desc }

// Control sets gousb's ControlTimeout (default infinite) for this call.
func (d *device) Control(rType, req uint8, val, idx uint16, data []byte, timeout time.Duration) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.dev.ControlTimeout = timeout
	n, err := d.dev.Control(rType, req, val, idx, data)
	if err != nil {
		return n, fmt.Errorf("gousbdev: control 0x%02x: %w", rType, mapErr(context.Background(), err))
	}
	return n, nil
}

// Claim claims interface iface of the active configuration (no
// SET_CONFIGURATION when it is already active) and its OUT endpoint.
func (d *device) Claim(iface int, outEP uint8) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	num, err := d.dev.ActiveConfigNum()
	if err != nil {
		return fmt.Errorf("gousbdev: active config: %w", mapErr(context.Background(), err))
	}
	if num == 0 {
		// Just after enumeration the kernel may not have configured the
		// device yet (libusb reports configuration 0, which no descriptor
		// has): use the one configuration an RPIBOOT device offers, as
		// libusb_set_configuration would. The caller retries failures
		// for a moment (usbboot.Server.AccessGrace).
		for n := range d.dev.Desc.Configs {
			if num == 0 || n < num {
				num = n
			}
		}
	}
	if d.cfg == nil {
		if d.cfg, err = d.dev.Config(num); err != nil {
			return fmt.Errorf("gousbdev: config %d: %w", num, mapErr(context.Background(), err))
		}
	}
	if d.intf, err = d.cfg.Interface(iface, 0); err != nil {
		return fmt.Errorf("gousbdev: claim interface %d: %w", iface, mapErr(context.Background(), err))
	}
	if d.out, err = d.intf.OutEndpoint(int(outEP & 0x0f)); err != nil {
		return fmt.Errorf("gousbdev: endpoint 0x%02x: %w", outEP, mapErr(context.Background(), err))
	}
	return nil
}

// WriteBulk is one bulk OUT transfer, cancelled when ctx ends.
func (d *device) WriteBulk(ctx context.Context, p []byte) (int, error) {
	if d.out == nil {
		return 0, fmt.Errorf("gousbdev: bulk write before Claim: %w", usbboot.ErrIO)
	}
	n, err := d.out.WriteContext(ctx, p)
	if err != nil {
		return n, fmt.Errorf("gousbdev: bulk write: %w", mapErr(ctx, err))
	}
	return n, nil
}

func (d *device) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.intf != nil {
		d.intf.Close()
		d.intf = nil
	}
	if d.cfg != nil {
		d.cfg.Close()
		d.cfg = nil
	}
	return d.dev.Close()
}

// mapErr adds the usbboot seam sentinel for a libusb error or transfer
// status, keeping the original in the chain.
func mapErr(ctx context.Context, err error) error {
	var (
		ge gousb.Error
		ts gousb.TransferStatus
		s  error
	)
	switch {
	case errors.As(err, &ge):
		switch ge {
		case gousb.ErrorTimeout:
			s = usbboot.ErrTimeout
		case gousb.ErrorNoDevice, gousb.ErrorNotFound:
			s = usbboot.ErrDisconnected
		case gousb.ErrorPipe:
			s = usbboot.ErrStall
		case gousb.ErrorAccess:
			s = usbboot.ErrAccess
		case gousb.ErrorIO:
			s = usbboot.ErrIO
		}
	case errors.As(err, &ts):
		switch ts {
		case gousb.TransferTimedOut:
			s = usbboot.ErrTimeout
		case gousb.TransferNoDevice:
			s = usbboot.ErrDisconnected
		case gousb.TransferStall:
			s = usbboot.ErrStall
		case gousb.TransferError:
			s = usbboot.ErrIO
		case gousb.TransferCancelled:
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				s = usbboot.ErrTimeout // our per-chunk deadline
			}
		}
	}
	if s == nil {
		return err
	}
	return fmt.Errorf("%w: %w", s, err)
}
