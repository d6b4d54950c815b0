package usbboottest

import (
	"encoding/binary"
	"fmt"
	"time"
	"unicode/utf16"

	"github.com/cm4bench/cm4bench/usbboot"
)

// Enumeration describes the board as the bus sees it now.
func (b *Board) Enumeration() (usbboot.Desc, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.advance()
	return b.descLocked(), b.present
}

func (b *Board) descLocked() usbboot.Desc {
	bus, _ := busOf(b.cfg.Port)
	d := usbboot.Desc{Bus: bus, Port: b.cfg.Port, Address: b.address, VID: b.vid, PID: b.pid,
		SerialIndex: b.serialIdx, Speed: b.speed, NumInterfaces: b.numIfaces()}
	if s, ok := b.stringLocked(b.serialIdx); ok && b.serialIdx != 0 {
		d.Serial = s
	}
	return d
}

func (b *Board) numIfaces() int {
	if b.cfg.TwoInterfaces && b.vid == usbboot.VendorID {
		return 2
	}
	return 1
}

// Changes signals (coalesced) every attach and detach.
func (b *Board) Changes() <-chan struct{} { return b.changes }

// Open models libusb_open on the current enumeration.
func (b *Board) Open(address int) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.advance()
	if !b.present || address != b.address {
		b.record(Record{Kind: "open", Err: ErrNoDevice.Error(), Note: fmt.Sprintf("address %d", address)})
		return fmt.Errorf("usbboottest: open %s address %d: %w", b.cfg.Port, address, ErrNoDevice)
	}
	if b.peekFault(FaultAccessDenied) {
		b.record(Record{Kind: "open", Err: ErrAccess.Error()})
		return fmt.Errorf("usbboottest: open %s: %w", b.cfg.Port, ErrAccess)
	}
	if f, ok := b.faultOf(FaultAccessDeniedBriefly); ok {
		d := f.Duration
		if d == 0 {
			d = 500 * time.Millisecond
		}
		if b.clock.Now().Before(b.enumeratedAt.Add(d)) {
			b.record(Record{Kind: "open", Err: ErrAccess.Error(), Note: "udev rules not applied yet"})
			return fmt.Errorf("usbboottest: open %s: %w", b.cfg.Port, ErrAccess)
		}
	}
	if b.peekFault(FaultOpenFailsOnce) && b.gen > 1 && !b.openFails[b.gen] {
		b.openFails[b.gen] = true
		b.record(Record{Kind: "open", Err: ErrIO.Error(), Note: "fails once after re-enumeration"})
		return fmt.Errorf("usbboottest: open %s: %w", b.cfg.Port, ErrIO)
	}
	if b.phase <= phROMStatus && (b.armed || b.phase != phROMMsg) {
		// The host gave up on a ROM transfer and opens the device again:
		// the ROM takes a new boot message (rpiboot's retry loop relies on
		// this; usbboot #73, #87).
		b.phase, b.armed = phROMMsg, false
		b.record(Record{Kind: "open", Note: "ROM restarts its transfer"})
		return nil
	}
	b.record(Record{Kind: "open"})
	return nil
}

// Close models libusb_close.
func (b *Board) Close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.record(Record{Kind: "close"})
}

// DeviceDescriptor is the 18-byte device descriptor of the current stage.
func (b *Board) DeviceDescriptor() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.advance()
	return b.deviceDescLocked()
}

func (b *Board) deviceDescLocked() []byte {
	d := []byte{18, 1, 0x00, 0x02, 0, 0, 0, 64, 0, 0, 0, 0, 0x00, 0x00, 1, 2, b.serialIdx, 1}
	binary.LittleEndian.PutUint16(d[8:], b.vid)
	binary.LittleEndian.PutUint16(d[10:], b.pid)
	return d
}

// ConfigDescriptor is the full configuration descriptor (the stable one:
// the 2711 ROM's first, 55-byte claim is served only through Control).
func (b *Board) ConfigDescriptor() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.advance()
	return b.configDescLocked(b.numIfaces())
}

func (b *Board) configDescLocked(ifaces int) []byte {
	mps := uint16(512)
	if b.speed == usbboot.SpeedFull {
		mps = 64
	}
	total := 9 + ifaces*23
	d := []byte{9, 2, byte(total), byte(total >> 8), byte(ifaces), 1, 0, 0x80, 250}
	for i := range ifaces {
		class := byte(0xff)
		if ifaces == 2 && i == 0 {
			class = 0x08 // mass storage
		}
		out, in := byte(0x01+2*i), byte(0x82+2*i)
		d = append(d, 9, 4, byte(i), 0, 2, class, 0, 0, 0)
		d = append(d, 7, 5, out, 2, byte(mps), byte(mps>>8), 0)
		d = append(d, 7, 5, in, 2, byte(mps), byte(mps>>8), 0)
	}
	return d
}

// StringDescriptor returns string descriptor index in UTF-16LE form.
func (b *Board) StringDescriptor(index uint8, langID uint16) ([]byte, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.advance()
	return b.stringDescLocked(index)
}

func (b *Board) stringDescLocked(index uint8) ([]byte, error) {
	if index == 0 {
		return []byte{4, 3, 0x09, 0x04}, nil
	}
	s, ok := b.stringLocked(index)
	if !ok {
		return nil, fmt.Errorf("usbboottest: no string descriptor %d: %w", index, ErrStall)
	}
	u := utf16.Encode([]rune(s))
	d := []byte{byte(2 + 2*len(u)), 3}
	for _, c := range u {
		d = append(d, byte(c), byte(c>>8))
	}
	return d, nil
}

func (b *Board) stringLocked(index uint8) (string, bool) {
	switch index {
	case 1:
		return "Broadcom", true
	case 2:
		switch b.pid {
		case usbboot.PID2835ROM:
			return "BCM2708 Boot", true
		case usbboot.PID2835Boot:
			return "BCM2710 Boot", true
		case usbboot.PID2711:
			return "BCM2711 Boot", true
		case usbboot.PID2712:
			return "BCM2712D0 Boot", true
		}
		return "Mass Storage", true
	case 3, 4:
		if b.serialIdx == index {
			return b.cfg.Serial, true
		}
	}
	return "", false
}
