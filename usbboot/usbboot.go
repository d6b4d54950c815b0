// Package usbboot speaks the Raspberry Pi RPIBOOT USB-boot protocol (the one
// rpiboot implements) over a small device seam that the package defines
// itself, so the protocol is tested without cgo or hardware.
//
// A board in RPIBOOT mode first enumerates as its boot ROM (iSerialNumber
// index 0 or 3). The host sends a 24-byte boot message and the second-stage
// image (bootcode4.bin for a CM4), reads a 4-byte status, and the ROM
// re-enumerates on the same port path as the second stage, which then asks
// for files by name (GetFileSize, ReadFile, Done) and may report metadata as
// "*KEY*VALUE" names.
//
// Usage sketch:
//
//	src, err := usbboot.NewDir("/srv/rpiboot/msd", false)
//	srv := &usbboot.Server{Bus: bus, Files: src, Timeout: 2 * time.Minute}
//	results, err := srv.Serve(ctx)
//
// Bus and Device are implemented by usbboot/gousbdev (real USB through
// libusb) and by usbboot/usbboottest (simulated boards).
package usbboot

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// VendorID is the Broadcom vendor id every RPIBOOT device uses.
const VendorID uint16 = 0x0a5c

// Product ids of RPIBOOT devices (as upstream rpiboot, main.c).
const (
	PID2835ROM  uint16 = 0x2763 // BCM2835/6/7 boot ROM (full speed)
	PID2835Boot uint16 = 0x2764 // bootcode.bin second stage on 283x
	PID2711     uint16 = 0x2711 // BCM2711 ROM and second stage (CM4)
	PID2712     uint16 = 0x2712 // BCM2712 ROM and second stage (CM5)
)

// Speed is the negotiated USB speed of a device.
type Speed int

// USB speeds, numbered like libusb's.
const (
	SpeedUnknown Speed = iota
	SpeedLow
	SpeedFull
	SpeedHigh
	SpeedSuper
)

func (s Speed) String() string {
	switch s {
	case SpeedLow:
		return "low"
	case SpeedFull:
		return "full"
	case SpeedHigh:
		return "high"
	case SpeedSuper:
		return "super"
	}
	return "unknown"
}

// Stage says which program answers on an RPIBOOT device.
type Stage int

// Stages. The only discriminator is the iSerialNumber index (as upstream rpiboot, main.c).
const (
	StageROM    Stage = iota // boot ROM: wants the boot message and bootcode
	StageSecond              // second stage: a file server session
)

func (s Stage) String() string {
	if s == StageROM {
		return "rom"
	}
	return "second-stage"
}

// SoC is the chip family, decided by the product id.
type SoC string

// Chip families and their file-name prefixes in bootfiles.bin.
const (
	SoC2835 SoC = "2710" // BCM2835/6/7 (prefix "2710" in rpiboot)
	SoC2711 SoC = "2711"
	SoC2712 SoC = "2712"
)

// Desc identifies one device on the bus without opening it.
type Desc struct {
	Bus           int
	Port          string // port path "<bus>-<p1>.<p2>...", e.g. "1-1.3"; stable across re-enumeration
	Address       int    // changes on every enumeration
	VID, PID      uint16
	SerialIndex   uint8  // iSerialNumber index: 0 or 3 = ROM
	Serial        string // serial string when known without opening ("" otherwise)
	Speed         Speed
	NumInterfaces int // interfaces of the active configuration
}

// IsRPIBoot reports whether d is one of the four RPIBOOT vid:pid pairs.
func (d Desc) IsRPIBoot() bool {
	if d.VID != VendorID {
		return false
	}
	switch d.PID {
	case PID2835ROM, PID2835Boot, PID2711, PID2712:
		return true
	}
	return false
}

// Stage decides ROM versus second stage from the iSerialNumber index.
func (d Desc) Stage() Stage {
	if d.SerialIndex == 0 || d.SerialIndex == 3 {
		return StageROM
	}
	return StageSecond
}

// SoC returns the chip family from the product id.
func (d Desc) SoC() SoC {
	switch d.PID {
	case PID2711:
		return SoC2711
	case PID2712:
		return SoC2712
	}
	return SoC2835
}

// BootcodeName is the second-stage file the ROM of this device is sent.
func (d Desc) BootcodeName() string {
	switch d.SoC() {
	case SoC2711:
		return "bootcode4.bin"
	case SoC2712:
		return "bootcode5.bin"
	}
	return "bootcode.bin"
}

func (d Desc) String() string {
	return fmt.Sprintf("%s addr %d %04x:%04x %s %s-speed", d.Port, d.Address, d.VID, d.PID, d.Stage(), d.Speed)
}

// Device is one opened USB device. Implementations return errors that wrap
// the seam sentinels below (ErrTimeout, ErrStall, ErrDisconnected, ErrAccess,
// ErrIO) so usbboot can tell "keep waiting" from "device gone".
type Device interface {
	// Desc is the identity the device was opened with.
	Desc() Desc
	// Control performs one control transfer on endpoint 0. For IN requests
	// (rType&0x80) data receives the reply; for OUT requests data is sent
	// (nil = no data stage). timeout 0 is not allowed.
	Control(rType, req uint8, val, idx uint16, data []byte, timeout time.Duration) (int, error)
	// Claim selects interface iface of the active configuration and its bulk
	// OUT endpoint outEP for WriteBulk.
	Claim(iface int, outEP uint8) error
	// WriteBulk writes p to the claimed OUT endpoint as one transfer.
	WriteBulk(ctx context.Context, p []byte) (int, error)
	Close() error
}

// Bus finds and opens devices.
type Bus interface {
	// List describes the devices present now. It never opens anything.
	// When some devices could not be described, it returns the others (a
	// non-nil slice, maybe empty) together with the error; a nil slice with
	// an error means the listing itself failed.
	List(ctx context.Context) ([]Desc, error)
	// Open opens exactly the device described by d (same port path and
	// address); it never opens another device.
	Open(ctx context.Context, d Desc) (Device, error)
}

// Clock is the time source of the state machines. Tests inject a fake one
// (usbboottest.Clock) so deadlines and the 20 s silences never really sleep.
type Clock interface {
	Now() time.Time
	// Sleep waits d or until ctx is done (then it returns ctx.Err()).
	Sleep(ctx context.Context, d time.Duration) error
}

// SystemClock is the real time.
type SystemClock struct{}

// Now returns time.Now().
func (SystemClock) Now() time.Time { return time.Now() }

// Sleep waits d or until ctx is done.
func (SystemClock) Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Seam errors: what a Device or Bus reports, by kind (libusb error codes).
var (
	ErrTimeout      = errors.New("transfer timed out")                   // LIBUSB_ERROR_TIMEOUT
	ErrStall        = errors.New("endpoint stalled")                     // LIBUSB_ERROR_PIPE
	ErrDisconnected = errors.New("device disconnected")                  // LIBUSB_ERROR_NO_DEVICE
	ErrIO           = errors.New("input/output error")                   // LIBUSB_ERROR_IO
	ErrAccess       = errors.New("access denied to the USB device node") // LIBUSB_ERROR_ACCESS
	ErrNoUSB        = errors.New("no USB subsystem on this machine")
)

// Boot errors: what a board session ends with. All are wrapped with the
// step ("usbboot: 1-1.3: send bootcode4.bin: ...") and errors.Is-able.
var (
	ErrNoDevice         = errors.New("no RPIBOOT device found")
	ErrFullSpeed        = errors.New("device enumerated at full speed (bad cable, hub or board?); a 2711/2712 ROM must be high-speed")
	ErrBootcodeRejected = errors.New("boot ROM rejected the second stage (status != 0)")
	ErrVanished         = errors.New("device vanished mid-file")
	ErrDeadline         = errors.New("deadline passed")
	ErrShortWrite       = errors.New("device accepted fewer bytes than sent")
	ErrProtocol         = errors.New("protocol violation by the device")
	ErrIncomplete       = errors.New("session ended without Done")
	ErrEEPROMUpdate     = errors.New("EEPROM update not reported as success")
)

// AccessHint is appended to access-denied errors.
const AccessHint = "install the rules from `cm4bench usbboot udev-rules` (or run as root)"
