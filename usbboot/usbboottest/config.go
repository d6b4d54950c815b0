package usbboottest

import (
	"time"

	"github.com/cm4bench/cm4bench/usbboot"
)

// Mode is what the second stage does, i.e. which request script it runs.
type Mode string

// Modes (as upstream rpiboot, main.c).
const (
	ModeMSD      Mode = "msd"      // legacy VPU mass-storage firmware
	ModeGadget   Mode = "gadget"   // mass-storage-gadget64 (Linux boot.img)
	ModeRecovery Mode = "recovery" // recovery.bin EEPROM updater
)

// FaultKind names a scripted fault.
type FaultKind int

// Faults (as upstream rpiboot, main.c). Each fires once unless noted.
const (
	// FaultSizeTimeout: the SIZE control transfer for At times out.
	FaultSizeTimeout FaultKind = iota + 1
	// FaultStall: the SIZE control transfer for At stalls.
	FaultStall
	// FaultShortBulk: the device takes only half of the first bulk chunk of At.
	FaultShortBulk
	// FaultDisconnect: the device is unplugged half-way through the bulk of At.
	FaultDisconnect
	// FaultFullSpeed: the ROM enumerates at full speed; its bulk transfers
	// time out (wMaxPacketSize clamped to 64, usbboot #226). Persistent.
	FaultFullSpeed
	// FaultOpenFailsOnce: the first open after every re-enumeration fails
	// with an I/O error.
	FaultOpenFailsOnce
	// FaultROMTwice: after the status read the ROM re-enumerates once more
	// as the ROM (new address) and wants the bootcode again (usbboot PR #63).
	FaultROMTwice
	// FaultSilentFlash: recovery stays silent for Duration (default 25 s)
	// after reading pieeprom.bin while it "flashes".
	FaultSilentFlash
	// FaultRejectBootcode: the ROM answers status 1 after the bootcode.
	FaultRejectBootcode
	// FaultAccessDenied: every open fails with access denied. Persistent.
	FaultAccessDenied
	// FaultWrongHash: recovery reports an EEPROM_HASH that is not the
	// sha256 of the image it received.
	FaultWrongHash
	// FaultFlashFails: recovery reports EEPROM_UPDATE=fail.
	FaultFlashFails
	// FaultNoSecondStage: the ROM takes the bootcode, detaches and never
	// comes back (usbboot #306: power or cable).
	FaultNoSecondStage
	// FaultStatusLost: the 4-byte status READ after the bootcode fails
	// with an I/O error, but the ROM has taken the image and starts the
	// second stage anyway (rpiboot prints "Failed" and carries on).
	FaultStatusLost
	// FaultAccessDeniedBriefly: every open fails with access denied for
	// Duration (default 500 ms) after each enumeration, as before udev has
	// applied its rules.
	FaultAccessDeniedBriefly
	// FaultUnconfigured: the first claim after each enumeration fails with
	// an I/O error (the device is not configured yet: libusb reports
	// configuration 0).
	FaultUnconfigured
	// FaultWrongKeyHash: recovery reports a CUSTOMER_KEY_HASH that is not
	// the one in its OTP.
	FaultWrongKeyHash
)

// Fault is one scripted fault.
type Fault struct {
	Kind FaultKind
	// At names the transfer: "bootmsg", the bootcode name or a requested
	// file name. Empty means the first transfer the fault can apply to.
	At string
	// Duration of FaultSilentFlash and FaultAccessDeniedBriefly.
	Duration time.Duration
	// Times is how often a one-shot fault fires (0: once; < 0: always).
	Times int
}

// BoardConfig describes one simulated board.
type BoardConfig struct {
	Port   string      // port path, e.g. "1-1.3" (required)
	SoC    usbboot.SoC // default SoC2711
	Mode   Mode        // default ModeMSD
	Serial string      // SoC serial (8 hex digits); default derived from Port
	Faults []Fault
	Clock  usbboot.Clock // nil: the real clock
	// TwoInterfaces makes the vendor interface the second one (EP 0x03),
	// like some 2837 boards.
	TwoInterfaces bool
	// DoneName, when set, ends the session with command Done carrying this
	// name (no reply expected) instead of an empty-name request.
	DoneName string
	// FlashTime is how long recovery is silent while flashing (default 2 s).
	FlashTime time.Duration
	// Address is the first bus address (default assigned by Bus.Add).
	Address int
	// DetachAfterUpdate: recovery.bin leaves the bus after its metadata
	// instead of sending Done (which one it does is not settled).
	DetachAfterUpdate bool
	// HashStamped: recovery.bin reports as EEPROM_HASH the sha256 of the
	// image with the update timestamp of pieeprom.sig stamped in, as a
	// read-back of the flash would give.
	HashStamped bool
	// RecoveryDDR: recovery.bin first asks for mcb.bin, memsys*.bin and
	// bootmain (builds from 2026-04-14 on, rpi-sb-provisioner#338), and
	// hangs when one is missing.
	RecoveryDDR bool
	// ShortRequests: the second stage's requests carry the command and the
	// NUL-terminated name only, not the whole 260-byte record.
	ShortRequests bool
	// ScriptOnly: the second stage issues only Extra (then Done), no mode
	// script: a recorded session replayed.
	ScriptOnly bool
	// Extra requests the second stage issues, as is, before its mode's
	// script: a ReadFile without a GetFileSize, a name with "..", odd
	// metadata. Their answers are recorded in Files (a ReadFile answered
	// with n > 0 bytes is then received in full).
	Extra []usbboot.Request
	// OTP is the board's one-time-programmable memory (secure boot). Nil:
	// a fresh, unprogrammed one of its own. Pass the same OTP to a new
	// Board to model the same chip in a later session.
	OTP *OTP
}

// Setup is a USB setup packet.
type Setup struct {
	RequestType uint8
	Request     uint8
	Value       uint16
	Index       uint16
	Length      uint16
}

// Record is one transcript line.
type Record struct {
	Time    time.Time
	Kind    string // "enumerate", "detach", "open", "close", "control", "bulk"
	Setup   Setup  // control only
	EP      uint8  // bulk only
	Len     int    // bytes offered (bulk) or wLength (control)
	N       int    // bytes transferred
	Err     string
	Address int
	Note    string
}

// FileRecord is what the board learnt about one requested file.
type FileRecord struct {
	Command  usbboot.Command // the request answered (ReadFile for the ROM image)
	Name     string
	Size     int64  // size answered to GetFileSize (0 = missing)
	Received bool   // ReadFile completed
	SHA256   string // hex sha256 of the bytes received
}
