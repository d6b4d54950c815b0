// Package usbboottest simulates Raspberry Pi boards in RPIBOOT mode: the
// BCM2711 (CM4) and BCM2712 boot ROM and second stage, and the BCM2835/7
// variant, as state machines that check every protocol rule of
// upstream rpiboot (main.c) and record a transcript.
//
// A Board works at the raw USB level (setup packets, descriptors, bulk OUT
// on an endpoint), so it can sit below libusb as well as below the
// usbboot.Bus seam; Bus adapts a set of boards to usbboot.Bus.
//
//	clk := usbboottest.NewClock()
//	b, _ := usbboottest.NewBoard(usbboottest.BoardConfig{Port: "1-1.3", SoC: usbboot.SoC2711, Mode: usbboottest.ModeMSD, Clock: clk})
//	bus := usbboottest.NewBus(clk, b)
//	srv := &usbboot.Server{Bus: bus, Files: files, Clock: clk}
package usbboottest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf16"

	"github.com/cm4bench/cm4bench/usbboot"
)

// Errors a board returns, for the libusb fake to map to LIBUSB_ERROR_*
// codes. They are the usbboot seam sentinels.
var (
	ErrTimeout  = usbboot.ErrTimeout      // LIBUSB_ERROR_TIMEOUT
	ErrStall    = usbboot.ErrStall        // LIBUSB_ERROR_PIPE
	ErrNoDevice = usbboot.ErrDisconnected // LIBUSB_ERROR_NO_DEVICE
	ErrIO       = usbboot.ErrIO           // LIBUSB_ERROR_IO
	ErrAccess   = usbboot.ErrAccess       // LIBUSB_ERROR_ACCESS
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

type phase int

const (
	phROMMsg    phase = iota // ROM: waiting for the boot message
	phROMImage               // ROM: waiting for the second-stage image
	phROMStatus              // ROM: image loaded, waiting for READ(4)
	phSecond                 // second stage file server
	phHalted                 // second stage finished or stuck: READ times out
	phGone                   // detached, maybe re-enumerating later
)

type step struct {
	req      usbboot.Request
	readIt   bool // issue ReadFile when GetFileSize answers > 0
	required bool // stop (hang) when missing, like the real firmware
	raw      bool // from BoardConfig.Extra: issued as is, any answer accepted
}

// Board is one simulated board on one port path. All methods are safe for
// concurrent use.
type Board struct {
	cfg   BoardConfig
	clock usbboot.Clock

	mu sync.Mutex
	// enumeration
	present   bool
	address   int
	pid       uint16
	vid       uint16
	serialIdx uint8
	speed     usbboot.Speed
	nextAt    time.Time
	next      func() // pending transition, applied at nextAt
	gen       int    // enumeration generation
	openFails map[int]bool
	// claimFailed: generations whose first claim failed (FaultUnconfigured)
	claimFailed  map[int]bool
	enumeratedAt time.Time
	cfgReads     int

	phase    phase
	romLoads int
	bootLen  uint32

	// bulk receive armed by SIZE
	armed     bool
	armLen    int
	armGot    int
	armName   string
	armHash   hash.Hash
	armBuf    *bytes.Buffer // kept for small files the board parses (pieeprom.sig)
	onArmDone func(sum string)

	// second stage
	script    []step
	stepIdx   int
	curReq    *usbboot.Request
	awaiting  bool
	busyUntil time.Time
	files     []FileRecord
	sigHash   string
	sigText   []byte
	eepromSum string
	eepromImg []byte // the image received, for HashStamped
	readFile  bool   // the pending ReadFile of the current step
	metaAdded bool   // recovery metadata appended to the script

	faults     []Fault
	note       string // transcript note of the transfer being handled
	transcript []Record
	violations []string
	changes    chan struct{}
	state      string
}

// NewBoard builds a board in its ROM stage, attached.
func NewBoard(cfg BoardConfig) (*Board, error) {
	if cfg.Port == "" {
		return nil, errors.New("usbboottest: board needs a port path")
	}
	if _, err := busOf(cfg.Port); err != nil {
		return nil, err
	}
	if cfg.SoC == "" {
		cfg.SoC = usbboot.SoC2711
	}
	if cfg.Mode == "" {
		cfg.Mode = ModeMSD
	}
	switch cfg.SoC {
	case usbboot.SoC2711, usbboot.SoC2712:
	case usbboot.SoC2835:
		if cfg.Mode != ModeMSD {
			return nil, fmt.Errorf("usbboottest: %s boards only support mode msd, not %s", cfg.SoC, cfg.Mode)
		}
	default:
		return nil, fmt.Errorf("usbboottest: unknown SoC %q", cfg.SoC)
	}
	switch cfg.Mode {
	case ModeMSD, ModeGadget, ModeRecovery:
	default:
		return nil, fmt.Errorf("usbboottest: unknown mode %q", cfg.Mode)
	}
	if cfg.SoC == usbboot.SoC2712 && cfg.Mode == ModeMSD {
		return nil, errors.New("usbboottest: legacy msd is not supported on 2712")
	}
	if cfg.Serial == "" {
		s := sha256.Sum256([]byte(cfg.Port))
		cfg.Serial = hex.EncodeToString(s[:4])
	}
	if cfg.Clock == nil {
		cfg.Clock = usbboot.SystemClock{}
	}
	if cfg.FlashTime == 0 {
		cfg.FlashTime = 2 * time.Second
	}
	b := &Board{cfg: cfg, clock: cfg.Clock, faults: append([]Fault(nil), cfg.Faults...),
		changes: make(chan struct{}, 1), openFails: map[int]bool{}, claimFailed: map[int]bool{}, address: cfg.Address}
	if b.address == 0 {
		b.address = 1
	}
	b.address-- // enumerateROM increments
	b.enumerateROM()
	return b, nil
}

// Config returns the board's configuration.
func (b *Board) Config() BoardConfig { return b.cfg }

func busOf(port string) (int, error) {
	head, _, _ := strings.Cut(port, "-")
	n, err := strconv.Atoi(head)
	if err != nil || n <= 0 || !strings.Contains(port, "-") {
		return 0, fmt.Errorf("usbboottest: bad port path %q, want <bus>-<port>[.<port>...]", port)
	}
	return n, nil
}

// hasFault consumes a matching one-shot fault (persistent ones stay).
func (b *Board) hasFault(k FaultKind, at string) (Fault, bool) {
	for i, f := range b.faults {
		if f.Kind != k || (f.At != "" && f.At != at) {
			continue
		}
		switch {
		case k == FaultFullSpeed || k == FaultAccessDenied || k == FaultOpenFailsOnce || k == FaultAccessDeniedBriefly || k == FaultUnconfigured:
		case f.Times < 0:
		case f.Times > 1:
			b.faults[i].Times--
		default:
			b.faults = append(b.faults[:i:i], b.faults[i+1:]...)
		}
		return f, true
	}
	return Fault{}, false
}

func (b *Board) faultOf(k FaultKind) (Fault, bool) {
	for _, f := range b.faults {
		if f.Kind == k {
			return f, true
		}
	}
	return Fault{}, false
}

// ClaimFails reports (once per enumeration) whether the first claim after
// an enumeration fails: FaultUnconfigured.
func (b *Board) ClaimFails() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.peekFault(FaultUnconfigured) || b.claimFailed[b.gen] {
		return false
	}
	b.claimFailed[b.gen] = true
	b.record(Record{Kind: "claim", Err: ErrIO.Error(), Note: "not configured yet (configuration 0)"})
	return true
}

func (b *Board) peekFault(k FaultKind) bool {
	for _, f := range b.faults {
		if f.Kind == k {
			return true
		}
	}
	return false
}

func (b *Board) signal() {
	select {
	case b.changes <- struct{}{}:
	default:
	}
}

func (b *Board) record(r Record) {
	r.Time = b.clock.Now()
	r.Address = b.address
	b.transcript = append(b.transcript, r)
}

// insertRecord puts a transfer's record before the records its handling
// produced (a detach, a violation), stamped with the address it went to.
func (b *Board) insertRecord(at, addr int, r Record) {
	r.Time = b.clock.Now()
	r.Address = addr
	b.transcript = append(b.transcript, Record{})
	copy(b.transcript[at+1:], b.transcript[at:])
	b.transcript[at] = r
}

func (b *Board) violate(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	b.violations = append(b.violations, msg)
	b.transcript = append(b.transcript, Record{Time: b.clock.Now(), Kind: "violation", Note: msg, Address: b.address})
}

func (b *Board) newAddress() {
	b.address = b.address%127 + 1
	b.gen++
	b.enumeratedAt = b.clock.Now()
}

func (b *Board) enumerateROM() {
	b.newAddress()
	b.present = true
	b.vid = usbboot.VendorID
	switch b.cfg.SoC {
	case usbboot.SoC2711:
		b.pid, b.serialIdx, b.speed = usbboot.PID2711, 3, usbboot.SpeedHigh
	case usbboot.SoC2712:
		b.pid, b.serialIdx, b.speed = usbboot.PID2712, 3, usbboot.SpeedHigh
	default:
		b.pid, b.serialIdx, b.speed = usbboot.PID2835ROM, 0, usbboot.SpeedFull
	}
	if b.peekFault(FaultFullSpeed) {
		b.speed = usbboot.SpeedFull
	}
	b.phase = phROMMsg
	b.cfgReads = 0
	b.armed = false
	b.state = "rom"
	b.record(Record{Kind: "enumerate", Note: fmt.Sprintf("%04x:%04x iSerial=%d %s-speed (ROM)", b.vid, b.pid, b.serialIdx, b.speed)})
	b.signal()
}

func (b *Board) enumerateSecond() {
	b.newAddress()
	b.present = true
	switch b.cfg.SoC {
	case usbboot.SoC2711:
		b.pid, b.serialIdx = usbboot.PID2711, 4
	case usbboot.SoC2712:
		b.pid, b.serialIdx = usbboot.PID2712, 4
	default:
		b.pid, b.serialIdx = usbboot.PID2835Boot, 1
	}
	b.speed = usbboot.SpeedHigh
	b.phase = phSecond
	b.script = nil
	for _, r := range b.cfg.Extra {
		b.script = append(b.script, step{req: r, raw: true})
	}
	b.script = append(b.script, b.buildScript()...)
	b.stepIdx = 0
	b.curReq = nil
	b.awaiting = false
	b.state = "second-stage"
	b.record(Record{Kind: "enumerate", Note: fmt.Sprintf("%04x:%04x iSerial=%d high-speed (second stage)", b.vid, b.pid, b.serialIdx)})
	b.signal()
}

func (b *Board) detach(note string) {
	b.present = false
	b.armed = false
	b.phase = phGone
	b.record(Record{Kind: "detach", Note: note})
	b.signal()
}

func (b *Board) schedule(after time.Duration, f func()) {
	b.nextAt = b.clock.Now().Add(after)
	b.next = f
}

// advance applies a due transition. Called with mu held.
func (b *Board) advance() {
	if b.next != nil && !b.clock.Now().Before(b.nextAt) {
		f := b.next
		b.next = nil
		f()
	}
}

// BootcodeName is the second-stage file this board's ROM loads.
func (b *Board) BootcodeName() string {
	switch b.cfg.SoC {
	case usbboot.SoC2711:
		return "bootcode4.bin"
	case usbboot.SoC2712:
		return "bootcode5.bin"
	}
	return "bootcode.bin"
}

func (b *Board) buildScript() []step {
	gfs := func(name string, readIt, required bool) step {
		return step{req: usbboot.Request{Command: usbboot.GetFileSize, Name: name}, readIt: readIt, required: required}
	}
	var s []step
	if b.cfg.ScriptOnly {
		return nil
	}
	ddr := func() {
		n := 9
		if b.cfg.SoC == usbboot.SoC2712 {
			n = 4
		}
		s = append(s, gfs("mcb.bin", true, true))
		for i := range n {
			s = append(s, gfs(fmt.Sprintf("memsys%02d.bin", i), true, true))
		}
		s = append(s, gfs("bootmain", true, true))
	}
	switch {
	case b.cfg.SoC == usbboot.SoC2835:
		s = append(s, gfs("autoboot.txt", true, false), gfs("config.txt", true, false),
			gfs("recovery.elf", true, false), gfs("start.elf", true, true), gfs("fixup.dat", true, false))
	case b.cfg.Mode == ModeMSD:
		s = append(s, gfs("config.txt", true, false), gfs("pieeprom.sig", false, false),
			gfs("start4.elf", true, true), gfs("fixup4.dat", true, false))
	case b.cfg.Mode == ModeGadget:
		ddr()
		s = append(s, gfs("config.txt", true, false), gfs("boot.img", true, true))
	case b.cfg.Mode == ModeRecovery:
		if b.cfg.RecoveryDDR {
			ddr()
		}
		// Without image files recovery.bin flashes nothing but still reports
		// its metadata (usbboot #735, EEPROM_UPDATE=none: inferred).
		if b.cfg.SoC == usbboot.SoC2712 {
			// CM5 (usbboot#386): config.txt, pieeprom.bin asked twice, the
			// .sig, then the image read.
			s = append(s, gfs("config.txt", true, false), gfs("pieeprom.bin", false, false), gfs("pieeprom.bin", false, false),
				gfs("pieeprom.sig", true, false), gfs("pieeprom.bin", true, false))
		} else {
			s = append(s, gfs("config.txt", true, false), gfs("pieeprom.sig", true, false), gfs("pieeprom.bin", true, false))
		}
		// metadata steps are appended when the script runs out (read)
	}
	return s
}

func (b *Board) metadataSteps() []step {
	update := "success"
	sum := b.eepromSum
	switch {
	case b.eepromSum == "":
		update = "none" // no image served: nothing flashed
	case b.sigHash != b.eepromSum:
		update = "fail" // recovery.bin checks the image against pieeprom.sig
	}
	if _, ok := b.hasFault(FaultFlashFails, ""); ok {
		update = "fail"
	}
	if b.cfg.HashStamped && b.eepromImg != nil {
		if ts, ok := usbboot.SigTimestamp(b.sigText); ok {
			if st, err := usbboot.StampedSHA256(b.eepromImg, ts); err == nil {
				sum = st
			}
		}
	}
	if _, ok := b.hasFault(FaultWrongHash, ""); ok {
		s := sha256.Sum256([]byte("not the image"))
		sum = hex.EncodeToString(s[:])
	}
	mac := "d8:3a:dd:" + b.cfg.Serial[2:4] + ":" + b.cfg.Serial[4:6] + ":" + b.cfg.Serial[6:8]
	kv := [][2]string{
		{"MAC_ADDR", mac}, {"USER_SERIAL_NUM", b.cfg.Serial}, {"USER_BOARDREV", "c03141"},
		{"BOOT_ROM", "0000c8b0"}, {"JTAG_LOCKED", "0"}, {"EEPROM_UPDATE", update},
	}
	if sum != "" {
		kv = append(kv, [2]string{"EEPROM_HASH", sum})
	}
	var s []step
	for _, p := range kv {
		s = append(s, step{req: usbboot.Request{Command: usbboot.GetFileSize, Name: "*" + p[0] + "*" + p[1]}})
	}
	return s
}

func (b *Board) doneStep() step {
	if b.cfg.DoneName != "" {
		return step{req: usbboot.Request{Command: usbboot.Done, Name: b.cfg.DoneName}}
	}
	return step{req: usbboot.Request{Command: usbboot.GetFileSize, Name: ""}}
}

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

// Control performs one control transfer. For IN transfers data receives
// the reply. timeout bounds how long the device may hold off (NAK).
func (b *Board) Control(ctx context.Context, s Setup, data []byte, timeout time.Duration) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.advance()
	at, addr := len(b.transcript), b.address
	b.note = ""
	n, err := b.control(ctx, s, data, timeout)
	r := Record{Kind: "control", Setup: s, Len: int(s.Length), N: n, Note: b.note}
	if err != nil {
		r.Err = err.Error()
	}
	b.insertRecord(at, addr, r)
	return n, err
}

func (b *Board) control(ctx context.Context, s Setup, data []byte, timeout time.Duration) (int, error) {
	if !b.present {
		return 0, ErrNoDevice
	}
	if int(s.Length) != len(data) {
		b.violate("control: wLength %d but %d-byte data stage", s.Length, len(data))
		return 0, ErrStall
	}
	switch {
	case s.RequestType == 0x80 && s.Request == 6:
		return b.getDescriptor(s, data)
	case s.RequestType == usbboot.ReqTypeOut && s.Request == usbboot.ReqVendor:
		return b.size(ctx, s, timeout)
	case s.RequestType == usbboot.ReqTypeIn && s.Request == usbboot.ReqVendor:
		return b.read(ctx, s, data, timeout)
	}
	b.violate("control: unexpected request type 0x%02x request %d", s.RequestType, s.Request)
	return 0, ErrStall
}

func (b *Board) getDescriptor(s Setup, data []byte) (int, error) {
	var d []byte
	switch s.Value >> 8 {
	case 1:
		d = b.deviceDescLocked()
	case 2:
		d = b.configDescLocked(b.numIfaces())
		if b.phase <= phROMStatus && b.cfg.SoC == usbboot.SoC2711 && b.cfgReads == 0 {
			// 2711 ROM quirk (rpi-eeprom#255): the first read claims a
			// 55-byte, 2-interface descriptor; the body is the 32-byte one.
			d = append([]byte(nil), d...)
			d[2], d[3], d[4] = 55, 0, 2
		}
		b.cfgReads++
	case 3:
		var err error
		if d, err = b.stringDescLocked(uint8(s.Value)); err != nil {
			return 0, err
		}
	default:
		return 0, ErrStall
	}
	return copy(data, d), nil
}

// size handles the vendor OUT "SIZE" transfer that arms a bulk receive.
func (b *Board) size(ctx context.Context, s Setup, timeout time.Duration) (int, error) {
	n := usbboot.SizeFromFields(s.Value, s.Index)
	if b.armed {
		b.violate("SIZE(%d) while %d of %d bulk bytes of %s are outstanding", n, b.armLen-b.armGot, b.armLen, b.armName)
		return 0, ErrStall
	}
	target := b.sizeTarget()
	if _, ok := b.hasFault(FaultSizeTimeout, target); ok {
		_ = b.clock.Sleep(ctx, timeout)
		return 0, ErrTimeout
	}
	if _, ok := b.hasFault(FaultStall, target); ok {
		return 0, ErrStall
	}
	switch b.phase {
	case phROMMsg:
		if n != usbboot.BootMessageSize {
			b.violate("ROM: SIZE(%d), want the %d-byte boot message first", n, usbboot.BootMessageSize)
			return 0, ErrStall
		}
		b.arm(int(n), "bootmsg", func(string) {
			l, _, _ := usbboot.ParseBootMessage(b.armBuf.Bytes())
			b.bootLen = l
			b.phase = phROMImage
		})
	case phROMImage:
		if n != b.bootLen {
			b.violate("ROM: SIZE(%d) but the boot message announced %d bytes", n, b.bootLen)
			return 0, ErrStall
		}
		if n == 0 {
			b.violate("ROM: empty second-stage image")
			return 0, ErrStall
		}
		name := b.BootcodeName()
		b.arm(int(n), name, func(sum string) {
			b.files = append(b.files, FileRecord{Command: usbboot.ReadFile, Name: name, Size: int64(n), Received: true, SHA256: sum})
			b.romLoads++
			b.phase = phROMStatus
		})
	case phROMStatus:
		b.violate("ROM: SIZE(%d) after the image; want READ(4) for the status", n)
		return 0, ErrStall
	case phSecond:
		return 0, b.reply(n)
	default:
		b.violate("SIZE(%d) while the device has nothing to receive", n)
		return 0, ErrStall
	}
	return 0, nil
}

func (b *Board) sizeTarget() string {
	switch b.phase {
	case phROMMsg:
		return "bootmsg"
	case phROMImage:
		return b.BootcodeName()
	case phSecond:
		if b.curReq != nil {
			return b.curReq.Name
		}
	}
	return ""
}

func (b *Board) arm(n int, name string, done func(sum string)) {
	b.armed, b.armLen, b.armGot, b.armName = true, n, 0, name
	b.armHash = sha256.New()
	b.armBuf = &bytes.Buffer{}
	b.onArmDone = done
}

// reply handles the host's answer to the current file-server request.
func (b *Board) reply(n uint32) error {
	if !b.awaiting || b.curReq == nil {
		b.violate("SIZE(%d) with no request pending", n)
		return ErrStall
	}
	req := *b.curReq
	st := b.script[b.stepIdx]
	b.awaiting = false
	switch {
	case st.raw && !b.readFile:
		b.files = append(b.files, FileRecord{Command: req.Command, Name: req.Name, Size: int64(n)})
		if req.Command == usbboot.ReadFile && n > 0 {
			b.arm(int(n), req.Name, func(sum string) {
				fr := &b.files[len(b.files)-1]
				fr.Received, fr.SHA256 = true, sum
				b.stepIdx++
			})
			return nil
		}
		if req.IsDone() {
			b.finish()
			return nil
		}
		b.stepIdx++
	case req.IsDone():
		if n != 0 {
			b.violate("Done (empty name): SIZE(%d), want 0", n)
		}
		b.finish()
	case strings.HasPrefix(req.Name, "*"):
		if n != 0 {
			b.violate("metadata %q: SIZE(%d), want 0", req.Name, n)
		}
		b.stepIdx++
	case req.Command == usbboot.GetFileSize:
		b.files = append(b.files, FileRecord{Command: usbboot.GetFileSize, Name: req.Name, Size: int64(n)})
		switch {
		case n > 0 && st.readIt:
			b.readFile = true
		case n == 0 && st.required:
			b.state = "halted: missing " + req.Name
			b.phase = phHalted // real firmware hangs ("Cannot open file mcb.bin")
		default:
			b.stepIdx++
		}
	case req.Command == usbboot.ReadFile:
		fr := &b.files[len(b.files)-1]
		if int64(n) != fr.Size {
			b.violate("ReadFile %s: SIZE(%d) but GetFileSize answered %d", req.Name, n, fr.Size)
			return ErrStall
		}
		b.readFile = false
		b.arm(int(n), req.Name, func(sum string) {
			fr := &b.files[len(b.files)-1]
			fr.Received, fr.SHA256 = true, sum
			b.fileDone(req.Name, sum)
		})
	}
	return nil
}

func (b *Board) fileDone(name, sum string) {
	b.stepIdx++
	if b.cfg.Mode != ModeRecovery {
		return
	}
	switch name {
	case "pieeprom.sig":
		b.sigText = bytes.Clone(b.armBuf.Bytes())
		line, _, _ := bufio.NewReader(bytes.NewReader(b.armBuf.Bytes())).ReadLine()
		b.sigHash = strings.ToLower(strings.TrimSpace(string(line)))
	case "pieeprom.bin":
		b.eepromSum = sum
		b.eepromImg = bytes.Clone(b.armBuf.Bytes())
		wait := b.cfg.FlashTime
		if f, ok := b.hasFault(FaultSilentFlash, ""); ok {
			wait = f.Duration
			if wait == 0 {
				wait = 25 * time.Second
			}
		}
		b.busyUntil = b.clock.Now().Add(wait)
	}
}

func (b *Board) finish() {
	b.state = "done"
	b.phase = phHalted
	switch b.cfg.Mode {
	case ModeRecovery:
		// recovery.bin with pieeprom.bin stops after the update; the USB
		// device stays until power-off [inferred].
	default:
		b.detach("second stage done: booting the payload")
		b.schedule(2*time.Second, func() {
			b.newAddress()
			b.present = true
			if b.cfg.Mode == ModeGadget {
				b.vid, b.pid = 0x1d6b, 0x0104 // Linux composite gadget [inferred]
			} else {
				b.vid, b.pid = usbboot.VendorID, 0x0001 // VPU msd firmware
			}
			b.serialIdx = 0
			b.state = "mass-storage"
			b.phase = phHalted
			b.record(Record{Kind: "enumerate", Note: fmt.Sprintf("%04x:%04x mass storage", b.vid, b.pid)})
			b.signal()
		})
	}
}

// read handles the vendor IN "READ" transfer.
func (b *Board) read(ctx context.Context, s Setup, data []byte, timeout time.Duration) (int, error) {
	n := usbboot.SizeFromFields(s.Value, s.Index)
	if int(n) != len(data) {
		b.violate("READ: wValue/wIndex say %d bytes but wLength is %d", n, len(data))
		return 0, ErrStall
	}
	if b.armed {
		b.violate("READ(%d) while %d bulk bytes of %s are outstanding", n, b.armLen-b.armGot, b.armName)
		return 0, ErrStall
	}
	switch b.phase {
	case phROMStatus:
		if n != usbboot.StatusSize {
			b.violate("ROM: READ(%d), want the 4-byte status", n)
			return 0, ErrStall
		}
		status := uint32(0)
		if _, ok := b.hasFault(FaultRejectBootcode, ""); ok {
			status = 1
		}
		binary.LittleEndian.PutUint32(data, status)
		if status != 0 {
			b.phase = phROMMsg
			return 4, nil
		}
		lost := false
		if _, ok := b.hasFault(FaultStatusLost, ""); ok {
			lost = true
		}
		// The ROM starts the second stage: detach, re-attach ~1.5 s later.
		twice := false
		if _, ok := b.hasFault(FaultROMTwice, ""); ok {
			twice = true
		}
		b.detach("ROM starts the second stage")
		if _, ok := b.hasFault(FaultNoSecondStage, ""); ok {
			b.state = "gone"
			return 4, nil
		}
		if twice {
			b.schedule(1500*time.Millisecond, b.enumerateROM)
		} else {
			b.schedule(1500*time.Millisecond, b.enumerateSecond)
		}
		if lost {
			return 0, ErrIO
		}
		return 4, nil
	case phSecond:
		if n != usbboot.RequestSize {
			b.violate("second stage: READ(%d), want %d", n, usbboot.RequestSize)
			return 0, ErrStall
		}
		if b.awaiting {
			b.violate("READ before the host answered %s %q", b.curReq.Command, b.curReq.Name)
			return 0, ErrStall
		}
		if now := b.clock.Now(); now.Before(b.busyUntil) {
			if wait := b.busyUntil.Sub(now); wait > timeout {
				_ = b.clock.Sleep(ctx, timeout)
				return 0, ErrTimeout
			} else {
				_ = b.clock.Sleep(ctx, wait)
			}
		}
		var req usbboot.Request
		if b.readFile {
			req = usbboot.Request{Command: usbboot.ReadFile, Name: b.script[b.stepIdx].req.Name}
		} else {
			if b.stepIdx >= len(b.script) && b.cfg.Mode == ModeRecovery && !b.metaAdded {
				b.metaAdded = true
				b.script = append(b.script, b.metadataSteps()...)
			}
			if b.stepIdx >= len(b.script) {
				if b.cfg.Mode == ModeRecovery && b.cfg.DetachAfterUpdate && !b.cfg.ScriptOnly {
					b.state = "done"
					b.detach("recovery.bin finished: left the bus without Done")
					return 0, ErrNoDevice
				}
				b.script = append(b.script, b.doneStep())
			}
			req = b.script[b.stepIdx].req
		}
		rec, err := req.MarshalBinary()
		if err != nil {
			return 0, err
		}
		if b.cfg.ShortRequests {
			rec = rec[:max(usbboot.MinRequestSize, 4+len(req.Name)+1)]
		}
		copy(data, rec)
		b.note = fmt.Sprintf("%s %q", req.Command, req.Name)
		b.curReq = &req
		b.awaiting = true
		if req.Command == usbboot.Done && req.Name != "" {
			b.awaiting = false // no reply to a named Done
			b.finish()
		}
		return len(rec), nil
	case phHalted:
		_ = b.clock.Sleep(ctx, timeout)
		return 0, ErrTimeout
	}
	b.violate("READ(%d) in the ROM before the image was loaded", n)
	return 0, ErrStall
}

// BulkOut receives one bulk OUT transfer on endpoint ep.
func (b *Board) BulkOut(ctx context.Context, ep uint8, p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.advance()
	at, addr := len(b.transcript), b.address
	n, err := b.bulk(ctx, ep, p)
	r := Record{Kind: "bulk", EP: ep, Len: len(p), N: n}
	if err != nil {
		r.Err = err.Error()
	}
	b.insertRecord(at, addr, r)
	return n, err
}

func (b *Board) bulk(ctx context.Context, ep uint8, p []byte) (int, error) {
	if !b.present {
		return 0, ErrNoDevice
	}
	want := uint8(0x01)
	if b.numIfaces() == 2 {
		want = 0x03
	}
	if ep != want {
		b.violate("bulk OUT on endpoint 0x%02x, the vendor interface uses 0x%02x", ep, want)
		return 0, ErrStall
	}
	if !b.armed {
		b.violate("bulk OUT of %d bytes without a SIZE", len(p))
		return 0, ErrStall
	}
	if rest := b.armLen - b.armGot; len(p) > rest {
		b.violate("bulk OUT of %d bytes but only %d of %s remain", len(p), rest, b.armName)
		return 0, ErrStall
	}
	if b.phase <= phROMStatus && b.speed == usbboot.SpeedFull && b.cfg.SoC != usbboot.SoC2835 {
		_ = b.clock.Sleep(ctx, usbboot.BulkTimeout)
		return 0, ErrTimeout // maxpacket clamped 512 -> 64: nothing gets through
	}
	if _, ok := b.hasFault(FaultShortBulk, b.armName); ok {
		k := len(p) / 2
		b.take(p[:k])
		return k, nil
	}
	if _, ok := b.hasFault(FaultDisconnect, b.armName); ok {
		k := len(p) / 2
		b.take(p[:k])
		b.state = "unplugged"
		b.detach(fmt.Sprintf("unplugged during %s", b.armName))
		b.next = nil
		return k, ErrNoDevice
	}
	b.take(p)
	return len(p), nil
}

func (b *Board) take(p []byte) {
	b.armHash.Write(p)
	keep := 4096
	if b.armName == "pieeprom.bin" {
		keep = 2 << 20 // the whole image, for HashStamped
	}
	if b.armBuf.Len() < keep {
		b.armBuf.Write(p[:min(len(p), keep-b.armBuf.Len())])
	}
	b.armGot += len(p)
	if b.armGot == b.armLen {
		b.armed = false
		sum := hex.EncodeToString(b.armHash.Sum(nil))
		if b.onArmDone != nil {
			b.onArmDone(sum)
		}
	}
}

// Transcript returns a copy of every recorded event.
func (b *Board) Transcript() []Record {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]Record(nil), b.transcript...)
}

// Violations lists protocol rules the host broke (empty when it behaved).
func (b *Board) Violations() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.violations...)
}

// Files lists every file the board asked for, in order, with what it got.
func (b *Board) Files() []FileRecord {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]FileRecord(nil), b.files...)
}

// Metadata lists the "*KEY*VALUE" names the board sent and were acknowledged.
func (b *Board) Metadata() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
	for i, st := range b.script {
		if i < b.stepIdx && strings.HasPrefix(st.req.Name, "*") {
			out = append(out, st.req.Name)
		}
	}
	return out
}

// State is a short description: "rom", "second-stage", "done",
// "mass-storage", "unplugged" or "halted: missing NAME".
func (b *Board) State() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.advance()
	return b.state
}

// ROMLoads counts the second-stage images the ROM accepted.
func (b *Board) ROMLoads() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.romLoads
}

// Unplug detaches the board for good (a technician pulls the cable).
func (b *Board) Unplug() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.next = nil
	b.state = "unplugged"
	b.detach("unplugged")
}

// String renders r as one transcript line: the setup packet or the bulk
// endpoint and lengths, without the wall time.
func (r Record) String() string {
	var s string
	switch r.Kind {
	case "control":
		s = fmt.Sprintf("control %02x %02x wValue=%04x wIndex=%04x wLength=%d -> %d", r.Setup.RequestType, r.Setup.Request,
			r.Setup.Value, r.Setup.Index, r.Setup.Length, r.N)
	case "bulk":
		s = fmt.Sprintf("bulk    ep=%02x len=%d -> %d", r.EP, r.Len, r.N)
	default:
		s = r.Kind
	}
	s = fmt.Sprintf("addr %-3d %s", r.Address, s)
	if r.Err != "" {
		s += " error: " + r.Err
	}
	if r.Note != "" {
		s += " (" + r.Note + ")"
	}
	return s
}
