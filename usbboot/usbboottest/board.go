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
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"strconv"
	"strings"
	"sync"
	"time"

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
	recConf   []byte // config.txt recovery.bin read
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
	if cfg.OTP == nil {
		cfg.OTP = &OTP{}
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
