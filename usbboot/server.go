package usbboot

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"
)

// Server boots RPIBOOT boards: one state machine per USB port path
// (ROM -> waiting for the second stage -> file server -> done or failed),
// several boards in parallel.
type Server struct {
	// Bus finds and opens devices (required).
	Bus Bus
	// Files provides bootcode and second-stage files (required).
	Files FileSource
	// Match selects boards from the bus listing (nil: every RPIBOOT
	// device). It sees only the listing, so a filter never opens a device
	// it does not select. A board is followed by port path once selected.
	Match func(Desc) bool
	// Loop serves board after board until ctx is done. Without Loop,
	// Serve returns once every board it started has finished, or with
	// ErrNoDevice when none appeared within WaitTimeout.
	Loop bool
	// Timeout bounds one board from first sight to Done (default 2 min).
	Timeout time.Duration
	// WaitTimeout bounds the wait for the first board without Loop
	// (default Timeout).
	WaitTimeout time.Duration
	// StageTimeout bounds the wait for the second stage to enumerate after
	// the ROM took the bootcode (default 15 s; the ROM re-enumerates in
	// about 1.5 s). Timeout still bounds the whole board.
	StageTimeout time.Duration
	// PollInterval is the bus scan period (default 100 ms).
	PollInterval time.Duration
	// Clock is the time source (nil: SystemClock).
	Clock Clock
	// Logger receives progress (nil: silent).
	Logger *slog.Logger
	// OnEvent, when set, receives every event; it is called from several
	// goroutines at once.
	OnEvent func(Event)
	// Finish, when set, is called when a board's session ends, before its
	// result is reported; a non-nil error fails the board (for example a
	// flash not confirmed, or metadata that could not be saved).
	Finish func(Result) error
	// OnResult, when set, receives each board's result when it finishes.
	OnResult func(Result)
	// Strict requires a recovery.bin session to end with Done. By default a
	// board that reported EEPROM_UPDATE=success with a matching EEPROM_HASH
	// and then left the bus counts as flashed, with a warning: rpiboot
	// treats a device that goes away as the normal end of a session.
	Strict bool
	// AccessGrace is how long access-denied and configuration errors on
	// open/claim are retried after a board appears, before they fail it
	// (default 1 s: udev may not have applied its rules yet; rpiboot
	// sleeps 1 s before opening).
	AccessGrace time.Duration
	// ROMAttempts is how many times a ROM transfer that failed on the wire
	// is tried, re-opening after 1 s (default 3; rpiboot retries for ever).
	// A status != 0 is never retried.
	ROMAttempts int
	// Trace, when set, receives one record per USB transfer.
	Trace *Tracer
}

// EventKind names an Event.
type EventKind string

// Event kinds.
const (
	EventAttached    EventKind = "attached"     // a board's session started
	EventBootcode    EventKind = "bootcode"     // second-stage image accepted by the ROM
	EventSecondStage EventKind = "second-stage" // file server session started
	EventFileStart   EventKind = "file-start"
	EventProgress    EventKind = "progress"
	EventFileDone    EventKind = "file-done"
	EventFileMissing EventKind = "file-missing"
	EventMetadata    EventKind = "metadata"
	EventWarning     EventKind = "warning"
	EventDone        EventKind = "done"
	EventFailed      EventKind = "failed"
)

// Event reports progress of one board.
type Event struct {
	Time    time.Time `json:"time"`
	Kind    EventKind `json:"event"`
	Port    string    `json:"port"`
	Serial  string    `json:"serial,omitempty"`
	Stage   string    `json:"stage,omitempty"`
	File    string    `json:"file,omitempty"`
	Bytes   int64     `json:"bytes,omitempty"`
	Total   int64     `json:"total,omitempty"`
	Key     string    `json:"key,omitempty"`
	Value   string    `json:"value,omitempty"`
	Message string    `json:"message,omitempty"`
}

// ServedFile is one file a board asked for.
type ServedFile struct {
	Name    string `json:"name"`
	Size    int64  `json:"size"`
	SHA256  string `json:"sha256,omitempty"` // of the bytes sent (empty when missing)
	Missing bool   `json:"missing,omitempty"`
}

// Result is how one board's session ended.
type Result struct {
	Port     string       `json:"port"`
	Serial   string       `json:"serial,omitempty"` // ROM serial string (SoC serial) when seen
	SoC      SoC          `json:"soc"`
	Files    []ServedFile `json:"files"`
	Metadata Metadata     `json:"metadata,omitempty"`
	Done     bool         `json:"done"` // the second stage sent Done
	// ShortRequests counts file-server requests shorter than 260 bytes
	// (accepted and zero-filled, as rpiboot does).
	ShortRequests int `json:"short_requests,omitempty"`
	// EEPROM holds what is needed to judge EEPROM_HASH, when the session
	// served a bootloader image.
	EEPROM   *EEPROMServed `json:"eeprom,omitempty"`
	Warnings []string      `json:"warnings,omitempty"`
	Address  int           `json:"-"` // bus address last seen
	Start    time.Time     `json:"start"`
	End      time.Time     `json:"end"`
	Err      error         `json:"-"`
}

// EEPROMServed describes the bootloader image a session served: its
// sha256, the update timestamp of the pieeprom.sig served with it, and the
// sha256 of the image with that timestamp stamped in (what the bootloader
// writes into the flash's timestamp slot).
type EEPROMServed struct {
	Name          string `json:"name"`
	SHA256        string `json:"sha256"`
	Timestamp     int64  `json:"sig_ts,omitempty"`
	StampedSHA256 string `json:"stamped_sha256,omitempty"`
}

// Served returns the record of the last ReadFile of name.
func (r Result) Served(name string) (ServedFile, bool) {
	for i := len(r.Files) - 1; i >= 0; i-- {
		if r.Files[i].Name == name && !r.Files[i].Missing {
			return r.Files[i], true
		}
	}
	return ServedFile{}, false
}

// CheckEEPROM validates a recovery.bin session: it must report
// EEPROM_UPDATE=success and an EEPROM_HASH that matches the image served
// (see checkHash). A session that ended without Done is accepted with a
// warning when the hash was reported and matched, unless strict.
func (r Result) CheckEEPROM(strict bool) (warning string, err error) {
	v, ok := r.Metadata.Get("EEPROM_UPDATE")
	switch {
	case !ok:
		return "", fmt.Errorf("no EEPROM_UPDATE metadata (recovery_metadata=0, or not recovery.bin?): %w", ErrEEPROMUpdate)
	case v != "success":
		return "", fmt.Errorf("EEPROM_UPDATE=%s: %w", v, ErrEEPROMUpdate)
	}
	note, err := r.checkHash()
	if err != nil {
		return "", err
	}
	if r.Done {
		return note, nil
	}
	_, hashed := r.Metadata.Get("EEPROM_HASH")
	switch {
	case strict:
		return "", fmt.Errorf("EEPROM_UPDATE=success but no Done (--strict): %w", ErrIncomplete)
	case !hashed:
		return "", fmt.Errorf("EEPROM_UPDATE=success but no EEPROM_HASH and no Done: the flash cannot be confirmed: %w", ErrIncomplete)
	}
	w := "recovery.bin reported EEPROM_UPDATE=success with a matching EEPROM_HASH, then left the bus without Done; counted as flashed"
	if note != "" {
		w += "; " + note
	}
	return w, nil
}

// checkHash compares a reported EEPROM_HASH with the image served. What
// recovery.bin hashes is not documented: the sha256 of the image as
// served, or of the flash read back, where the bootloader has stamped the
// update timestamp of pieeprom.sig into the timestamp slot. Both are
// accepted (the second with a note); anything else fails with all three
// hashes.
func (r Result) checkHash() (note string, err error) {
	h, ok := r.Metadata.Get("EEPROM_HASH")
	if !ok {
		return "", nil
	}
	e := r.EEPROM
	if e == nil {
		f, served := r.Served("pieeprom.bin")
		if !served {
			f, served = r.Served("pieeprom.upd")
		}
		if !served {
			return "", nil
		}
		e = &EEPROMServed{Name: f.Name, SHA256: f.SHA256}
	}
	switch {
	case strings.EqualFold(h, e.SHA256):
		return "", nil
	case e.StampedSHA256 != "" && strings.EqualFold(h, e.StampedSHA256):
		return fmt.Sprintf("EEPROM_HASH is the sha256 of %s with update timestamp %d stamped in", e.Name, e.Timestamp), nil
	}
	stamped := e.StampedSHA256
	if stamped == "" {
		stamped = "(not computed: no pieeprom.sig timestamp or not a bootloader image)"
	}
	return "", fmt.Errorf("EEPROM_HASH %s matches neither the sha256 of the %s served (%s) nor that of the image with the update timestamp %d stamped in (%s): %w",
		h, e.Name, e.SHA256, e.Timestamp, stamped, ErrEEPROMUpdate)
}

func (s *Server) clock() Clock {
	if s.Clock == nil {
		return SystemClock{}
	}
	return s.Clock
}

func (s *Server) timeout() time.Duration {
	if s.Timeout <= 0 {
		return 2 * time.Minute
	}
	return s.Timeout
}

func (s *Server) poll() time.Duration {
	if s.PollInterval <= 0 {
		return 100 * time.Millisecond
	}
	return s.PollInterval
}

func (s *Server) emit(e Event) {
	e.Time = s.clock().Now()
	if s.Logger != nil && e.Kind != EventProgress {
		attrs := []any{"port", e.Port}
		for _, kv := range [][2]string{{"serial", e.Serial}, {"stage", e.Stage}, {"file", e.File}, {"key", e.Key}, {"value", e.Value}} {
			if kv[1] != "" {
				attrs = append(attrs, kv[0], kv[1])
			}
		}
		if e.Total > 0 {
			attrs = append(attrs, "bytes", e.Total)
		}
		lvl := slog.LevelInfo
		switch e.Kind {
		case EventWarning:
			lvl = slog.LevelWarn
		case EventFailed:
			lvl = slog.LevelError
		case EventFileStart, EventFileMissing, EventMetadata:
			lvl = slog.LevelDebug
		}
		msg := string(e.Kind)
		if e.Message != "" {
			msg += ": " + e.Message
		}
		s.Logger.Log(context.Background(), lvl, msg, attrs...)
	}
	if s.OnEvent != nil {
		s.OnEvent(e)
	}
}

func (s *Server) selected(d Desc) bool {
	return d.IsRPIBoot() && (s.Match == nil || s.Match(d))
}

// Serve runs until the boards are served (or, with Loop, until ctx is
// done). It returns every board's result in finishing order; the error is
// ErrNoDevice when no board appeared, a bus error, or nil. Board failures
// are in the results.
func (s *Server) Serve(ctx context.Context) ([]Result, error) {
	if s.Bus == nil || s.Files == nil {
		return nil, errors.New("usbboot: server needs a Bus and Files")
	}
	clk := s.clock()
	waitUntil := clk.Now().Add(s.timeout())
	if s.WaitTimeout > 0 {
		waitUntil = clk.Now().Add(s.WaitTimeout)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg       sync.WaitGroup
		done     = make(chan Result)
		active   = map[string]bool{}
		finished = map[string]int{} // port -> last address served; re-armed on a new enumeration
		results  []Result
		started  int
		skipped  = map[string]bool{} // ports of RPIBOOT devices the filter left alone
		listErrs int                 // consecutive failed listings
		partial  bool                // warned about the current run of partial listings
	)
	collect := func(r Result) {
		delete(active, r.Port)
		finished[r.Port] = r.Address
		results = append(results, r)
		if s.OnResult != nil {
			s.OnResult(r)
		}
	}
	defer func() {
		cancel()
		go func() { wg.Wait(); close(done) }()
		for r := range done {
			collect(r)
		}
	}()
	for {
		list, err := s.Bus.List(ctx)
		if err != nil && list != nil && ctx.Err() == nil && !errors.Is(err, ErrNoUSB) {
			// One odd device on the host can fail descriptor parsing and so
			// the whole listing; rpiboot never reads other devices' configs.
			// A Bus returns what it did list (non-nil, maybe empty) beside
			// such an error: use it, and warn once per streak.
			if !partial {
				s.emit(Event{Kind: EventWarning, Message: "partial device listing used: " + err.Error()})
			}
			partial, err = true, nil
		} else {
			partial = false
		}
		if err != nil {
			if ctx.Err() != nil {
				return results, s.stopped(ctx.Err())
			}
			// A device leaving mid-scan can fail one listing; only a lasting
			// failure (or no USB at all) ends the server.
			if listErrs++; listErrs >= 20 || errors.Is(err, ErrNoUSB) {
				return results, fmt.Errorf("usbboot: list devices: %w", err)
			}
			s.emit(Event{Kind: EventWarning, Message: "list devices: " + err.Error()})
			if err := clk.Sleep(ctx, s.poll()); err != nil {
				return results, s.stopped(err)
			}
			continue
		}
		listErrs = 0
		onPort := map[string]int{}
		for _, d := range list {
			if d.IsRPIBoot() {
				onPort[d.Port] = d.Address
			}
		}
		for p, addr := range finished {
			if cur, ok := onPort[p]; !ok || cur != addr {
				delete(finished, p) // unplugged, or a new board (re-enumerated)
			}
		}
		for _, d := range list {
			if d.IsRPIBoot() && !s.selected(d) {
				skipped[d.Port] = true
			}
			if _, done := finished[d.Port]; !s.selected(d) || active[d.Port] || done {
				continue
			}
			active[d.Port] = true
			started++
			wg.Add(1)
			go func(d Desc) {
				defer wg.Done()
				done <- s.board(ctx, d)
			}(d)
		}
		// collect finished boards without blocking
	drain:
		for {
			select {
			case r := <-done:
				collect(r)
			default:
				break drain
			}
		}
		if !s.Loop {
			if started > 0 && len(active) == 0 {
				return results, nil
			}
			if started == 0 && !clk.Now().Before(waitUntil) {
				var note string
				if len(skipped) > 0 {
					note = fmt.Sprintf(" (%d RPIBOOT device(s) did not match the filter)", len(skipped))
				}
				return results, fmt.Errorf("usbboot: waited %s: %w%s", s.waitFor(), ErrNoDevice, note)
			}
		}
		if len(active) > 0 {
			// Boards are in flight: scan again after a real poll interval or
			// as soon as one finishes. (Not Clock time: the board state
			// machines own the clock's deadlines.)
			t := time.NewTimer(s.poll())
			select {
			case r := <-done:
				collect(r)
			case <-t.C:
			case <-ctx.Done():
			}
			t.Stop()
			if ctx.Err() != nil {
				return results, s.stopped(ctx.Err())
			}
			continue
		}
		if err := clk.Sleep(ctx, s.poll()); err != nil {
			return results, s.stopped(err)
		}
	}
}

// stopped is the error of a cancelled Serve: none with Loop (stopping is
// how a loop ends), the cause otherwise.
func (s *Server) stopped(err error) error {
	if s.Loop {
		return nil
	}
	return fmt.Errorf("usbboot: serve: %w", err)
}

func (s *Server) waitFor() time.Duration {
	if s.WaitTimeout > 0 {
		return s.WaitTimeout
	}
	return s.timeout()
}

// session is the state of one board.
type session struct {
	s        *Server
	res      Result
	deadline time.Time
	fullSpd  bool
	first    time.Time // when the current enumeration was first opened (AccessGrace)
	// The bootloader image and .sig served, kept to judge EEPROM_HASH.
	eepromName string
	eepromImg  []byte
	sigText    []byte
}

func (ss *session) warn(msg string) {
	ss.res.Warnings = append(ss.res.Warnings, msg)
	ss.s.emit(Event{Kind: EventWarning, Port: ss.res.Port, Serial: ss.res.Serial, Message: msg})
}

func (s *Server) accessGrace() time.Duration {
	if s.AccessGrace <= 0 {
		return time.Second
	}
	return s.AccessGrace
}

// inGrace reports whether the board appeared less than AccessGrace ago.
func (ss *session) inGrace() bool {
	return ss.s.clock().Now().Before(ss.first.Add(ss.s.accessGrace()))
}

// board runs the per-port state machine for the board first seen as d.
func (s *Server) board(ctx context.Context, d Desc) Result {
	clk := s.clock()
	ss := &session{s: s, deadline: clk.Now().Add(s.timeout())}
	ss.res = Result{Port: d.Port, SoC: d.SoC(), Start: clk.Now(), Serial: d.Serial, Address: d.Address}
	s.Trace.Record(TraceRecord{Port: d.Port, Address: d.Address, Kind: "attach",
		Note: fmt.Sprintf("%04x:%04x %s-speed serial %q", d.VID, d.PID, d.Speed, d.Serial)})
	s.emit(Event{Kind: EventAttached, Port: d.Port, Serial: d.Serial, Stage: d.Stage().String()})
	err := ss.run(ctx, d)
	ss.finishEEPROM()
	if err == nil {
		var note string
		note, err = ss.res.checkHash()
		if note != "" {
			ss.warn(note)
		}
		if v, ok := ss.res.Metadata.Get("EEPROM_UPDATE"); ok && v != "success" && v != "none" && err == nil {
			err = fmt.Errorf("EEPROM_UPDATE=%s: %w", v, ErrEEPROMUpdate)
		}
		if err != nil {
			err = fmt.Errorf("usbboot: %s: %w", d.Port, err)
		}
	}
	if s.Finish != nil {
		ss.res.Err = err
		if ferr := s.Finish(ss.res); ferr != nil {
			err = errors.Join(err, fmt.Errorf("usbboot: %s: %w", d.Port, ferr))
		}
	}
	if err != nil && ss.fullSpd && !errors.Is(err, ErrFullSpeed) {
		err = fmt.Errorf("%w (%w)", err, ErrFullSpeed)
	}
	ss.res.Err = err
	ss.res.End = clk.Now()
	if err != nil {
		s.emit(Event{Kind: EventFailed, Port: d.Port, Serial: ss.res.Serial, Message: err.Error()})
	} else {
		msg := "second stage sent Done"
		if !ss.res.Done {
			msg = "device left without Done"
		}
		s.emit(Event{Kind: EventDone, Port: d.Port, Serial: ss.res.Serial, Message: msg})
	}
	return ss.res
}

func (ss *session) expired() bool { return !ss.s.clock().Now().Before(ss.deadline) }

func (ss *session) run(ctx context.Context, d Desc) error {
	port := d.Port
	roms, romErrs := 0, 0
	for {
		dev, err := ss.open(ctx, d)
		if err != nil {
			return err
		}
		d = dev.Desc() // open may have followed a re-enumeration to a new address
		ss.res.Address = d.Address
		idx, err := serialIndex(dev)
		if err != nil {
			dev.Close()
			return fmt.Errorf("usbboot: %s: read device descriptor: %w", port, ss.classify(err))
		}
		d.SerialIndex = idx
		if d.Stage() == StageROM {
			roms++
			if roms > 3 {
				dev.Close()
				return fmt.Errorf("usbboot: %s: the ROM came back %d times without starting the second stage: %w", port, roms, ErrProtocol)
			}
			if ss.res.Serial == "" && idx != 0 {
				ss.res.Serial = readString(dev, idx)
			}
			err = ss.rom(ctx, dev, d)
			dev.Close()
			if err != nil {
				if !ss.romRetryable(err) || romErrs+1 >= ss.s.romAttempts() {
					return err
				}
				romErrs++
				ss.warn(fmt.Sprintf("ROM transfer failed (attempt %d of %d), re-opening in 1 s: %v", romErrs, ss.s.romAttempts(), err))
				if err := ss.s.clock().Sleep(ctx, time.Second); err != nil {
					return fmt.Errorf("usbboot: %s: %w", port, err)
				}
				cur, ok := ss.find(ctx, port, -1)
				if !ok {
					return fmt.Errorf("usbboot: %s: the ROM left the bus after a failed transfer: %w", port, ErrVanished)
				}
				d = cur
				roms--
				continue
			}
			if d, err = ss.waitReenumerated(ctx, port, d.Address); err != nil {
				return err
			}
			continue
		}
		if ss.res.Serial == "" {
			if v := readString(dev, idx); v != "Broadcom" { // 283x/old 2711 second stages say only that
				ss.res.Serial = v
			}
		}
		ss.s.emit(Event{Kind: EventSecondStage, Port: port, Serial: ss.res.Serial, Stage: StageSecond.String()})
		err = ss.fileServer(ctx, dev, d)
		dev.Close()
		return err
	}
}

func (s *Server) romAttempts() int {
	if s.ROMAttempts <= 0 {
		return 3
	}
	return s.ROMAttempts
}

// romRetryable reports whether a failed ROM phase is worth another try: a
// transfer error on a high-speed ROM (usbboot #73, #87), not a rejected
// bootcode, a missing file, a full-speed link or a cancelled context.
func (ss *session) romRetryable(err error) bool {
	if ss.fullSpd || errors.Is(err, ErrBootcodeRejected) || errors.Is(err, ErrAccess) ||
		errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || ss.expired() {
		return false
	}
	return errors.Is(err, ErrTimeout) || errors.Is(err, ErrStall) || errors.Is(err, ErrIO) ||
		errors.Is(err, ErrShortWrite) || errors.Is(err, ErrDisconnected)
}

// open opens d, retrying transient failures ("Failed to open the requested
// device" is common right after re-enumeration) until the deadline. Access
// denied is retried for AccessGrace after the board appeared (udev may not
// have applied its rules yet), then it is fatal.
func (ss *session) open(ctx context.Context, d Desc) (Device, error) {
	clk := ss.s.clock()
	ss.first = clk.Now() // each open follows a (re-)enumeration: the grace starts here
	for {
		dev, err := ss.s.Bus.Open(ctx, d)
		if err == nil {
			return ss.s.traced(dev), nil
		}
		if errors.Is(err, ErrAccess) && !ss.inGrace() {
			return nil, fmt.Errorf("usbboot: %s: open: %w; %s", d.Port, err, AccessHint)
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("usbboot: %s: open: %w", d.Port, ctx.Err())
		}
		if ss.expired() {
			return nil, fmt.Errorf("usbboot: %s: open: %w (last error: %w)", d.Port, ErrDeadline, err)
		}
		ss.s.emit(Event{Kind: EventWarning, Port: d.Port, Message: "open failed, retrying: " + err.Error()})
		pause := 500 * time.Millisecond
		if errors.Is(err, ErrAccess) {
			pause = 250 * time.Millisecond
		}
		if err := clk.Sleep(ctx, pause); err != nil {
			return nil, fmt.Errorf("usbboot: %s: open: %w", d.Port, err)
		}
		// the device may have re-enumerated with a new address meanwhile
		if cur, ok := ss.find(ctx, d.Port, -1); ok {
			d = cur
		}
	}
}

// find returns the RPIBOOT device on port whose address is not notAddr.
func (ss *session) find(ctx context.Context, port string, notAddr int) (Desc, bool) {
	list, _ := ss.s.Bus.List(ctx) // a partial listing still shows our port
	for _, d := range list {
		if d.Port == port && d.IsRPIBoot() && d.Address != notAddr {
			return d, true
		}
	}
	return Desc{}, false
}

// waitReenumerated waits for the device on port to come back with a new
// address (the ROM detaches after the status read).
func (ss *session) waitReenumerated(ctx context.Context, port string, oldAddr int) (Desc, error) {
	clk := ss.s.clock()
	wait := ss.s.StageTimeout
	if wait <= 0 {
		wait = 15 * time.Second
	}
	until := clk.Now().Add(wait)
	for {
		if d, ok := ss.find(ctx, port, oldAddr); ok {
			return d, nil
		}
		if ss.expired() {
			return Desc{}, fmt.Errorf("usbboot: %s: waiting for the second stage to enumerate: %w", port, ErrDeadline)
		}
		if !clk.Now().Before(until) {
			return Desc{}, fmt.Errorf("usbboot: %s: the second stage did not enumerate within %s of the bootcode (power, cable, or a bootcode for another board?): %w",
				port, wait, ErrDeadline)
		}
		if err := clk.Sleep(ctx, ss.s.poll()); err != nil {
			return Desc{}, fmt.Errorf("usbboot: %s: waiting for the second stage: %w", port, err)
		}
	}
}

// serialIndex reads iSerialNumber from the device descriptor: the only
// ROM/second-stage discriminator (gousb does not export it).
func serialIndex(dev Device) (uint8, error) {
	buf := make([]byte, 18)
	n, err := dev.Control(0x80, 6, 0x0100, 0, buf, SizeTimeout)
	if err != nil {
		return 0, err
	}
	if n < 17 || buf[1] != 1 {
		return 0, fmt.Errorf("device descriptor of %d bytes: %w", n, ErrProtocol)
	}
	return buf[16], nil
}

// readString reads string descriptor idx (US English); "" on failure.
func readString(dev Device, idx uint8) string {
	if idx == 0 {
		return ""
	}
	buf := make([]byte, 255)
	n, err := dev.Control(0x80, 6, 0x0300|uint16(idx), 0x0409, buf, SizeTimeout)
	if err != nil || n < 2 || buf[1] != 3 {
		return ""
	}
	n = min(n, int(buf[0]))
	var sb strings.Builder
	for i := 2; i+1 < n; i += 2 {
		sb.WriteRune(rune(uint16(buf[i]) | uint16(buf[i+1])<<8))
	}
	return sb.String()
}

// claim picks the vendor interface: with two interfaces the second one
// and EP 0x03, otherwise interface 0 and EP 0x01 (as upstream rpiboot, main.c). Right
// after enumeration the device may not be configured yet or udev may not
// have applied its rules: errors other than a disconnect are retried for
// AccessGrace after the board appeared.
func (ss *session) claim(ctx context.Context, dev Device, d Desc) error {
	iface, ep := 0, uint8(0x01)
	if d.NumInterfaces == 2 {
		iface, ep = 1, 0x03
	}
	for {
		err := dev.Claim(iface, ep)
		if err == nil || errors.Is(err, ErrDisconnected) || !ss.inGrace() {
			return err
		}
		ss.s.emit(Event{Kind: EventWarning, Port: d.Port, Message: "claim failed, retrying: " + err.Error()})
		if serr := ss.s.clock().Sleep(ctx, 250*time.Millisecond); serr != nil {
			return err
		}
	}
}

// classify adds the boot-level sentinel to a seam error.
func (ss *session) classify(err error) error {
	if errors.Is(err, ErrDisconnected) && !errors.Is(err, ErrVanished) {
		return fmt.Errorf("%w: %w", ErrVanished, err)
	}
	return err
}

func (ss *session) rom(ctx context.Context, dev Device, d Desc) error {
	port := d.Port
	if d.SoC() != SoC2835 && d.Speed == SpeedFull {
		ss.fullSpd = true
		ss.s.emit(Event{Kind: EventWarning, Port: port, Serial: ss.res.Serial, Message: ErrFullSpeed.Error()})
	}
	if err := ss.claim(ctx, dev, d); err != nil {
		return fmt.Errorf("usbboot: %s: claim interface: %w", port, ss.classify(err))
	}
	name := d.BootcodeName()
	rc, size, err := ss.s.Files.Open(ctx, Target{SoC: d.SoC(), Port: port}, name)
	if err != nil {
		return fmt.Errorf("usbboot: %s: open %s: %w", port, name, err)
	}
	defer rc.Close()
	if size <= 0 || size > 1<<31-1 {
		return fmt.Errorf("usbboot: %s: %s has size %d", port, name, size)
	}
	msg := BootMessage(uint32(size), [20]byte{})
	if _, err := ss.send(ctx, dev, port, "boot message", msg, int64(len(msg)), false); err != nil {
		return err
	}
	sum, err := ss.send(ctx, dev, port, name, rc, size, true)
	if err != nil {
		return err
	}
	ss.res.Files = append(ss.res.Files, ServedFile{Name: name, Size: size, SHA256: sum})
	// The reference host waits 1 s before reading the status.
	if err := ss.s.clock().Sleep(ctx, time.Second); err != nil {
		return fmt.Errorf("usbboot: %s: %w", port, err)
	}
	st := make([]byte, StatusSize)
	n, err := dev.Control(ReqTypeIn, ReqVendor, StatusSize, 0, st, ReadTimeout)
	if err != nil && (errors.Is(err, ErrDisconnected) || errors.Is(err, ErrIO)) {
		// The whole bootcode went over; the ROM may already have jumped to
		// it and left the bus. rpiboot prints "Failed" and carries on.
		ss.warn(fmt.Sprintf("status read after %s failed (%v); the whole file was sent, so the ROM probably accepted it: waiting for the second stage", name, err))
		ss.s.emit(Event{Kind: EventBootcode, Port: port, Serial: ss.res.Serial, File: name, Total: size, Message: "status not read"})
		return nil
	}
	if err != nil {
		return fmt.Errorf("usbboot: %s: read status after %s: %w", port, name, ss.classify(err))
	}
	if n != StatusSize {
		return fmt.Errorf("usbboot: %s: read status after %s: got %d bytes: %w", port, name, n, ErrProtocol)
	}
	if v := uint32(st[0]) | uint32(st[1])<<8 | uint32(st[2])<<16 | uint32(st[3])<<24; v != 0 {
		return fmt.Errorf("usbboot: %s: send %s: status 0x%08x: %w", port, name, v, ErrBootcodeRejected)
	}
	ss.s.emit(Event{Kind: EventBootcode, Port: port, Serial: ss.res.Serial, File: name, Total: size})
	return nil
}

// send is rpiboot's ep_write: SIZE(n), then n bytes of src in bulk chunks
// of at most BulkChunk. It returns the hex sha256 of the bytes sent.
// src is a []byte or an io.Reader.
func (ss *session) send(ctx context.Context, dev Device, port, name string, src any, n int64, progress bool) (string, error) {
	val, idx := SizeFields(uint32(n))
	if _, err := dev.Control(ReqTypeOut, ReqVendor, val, idx, nil, SizeTimeout); err != nil {
		return "", fmt.Errorf("usbboot: %s: send %s: announce %d bytes: %w", port, name, n, ss.classify(err))
	}
	var r io.Reader
	switch v := src.(type) {
	case []byte:
		r = strings.NewReader(string(v))
	case io.Reader:
		r = v
	}
	h := sha256.New()
	if progress {
		ss.s.emit(Event{Kind: EventFileStart, Port: port, Serial: ss.res.Serial, File: name, Total: n})
	}
	if err := ss.bulk(ctx, dev, port, name, r, n, h, progress); err != nil {
		return "", err
	}
	sum := hex.EncodeToString(h.Sum(nil))
	if progress {
		ss.s.emit(Event{Kind: EventFileDone, Port: port, Serial: ss.res.Serial, File: name, Bytes: n, Total: n})
	}
	return sum, nil
}

func (ss *session) bulk(ctx context.Context, dev Device, port, name string, r io.Reader, n int64, h hash.Hash, progress bool) error {
	buf := make([]byte, BulkChunk)
	var sent int64
	for sent < n {
		chunk := buf[:min(int64(BulkChunk), n-sent)]
		if _, err := io.ReadFull(r, chunk); err != nil {
			return fmt.Errorf("usbboot: %s: read %s at byte %d of %d: %w", port, name, sent, n, err)
		}
		cctx, cancel := context.WithTimeout(ctx, BulkTimeout)
		k, err := dev.WriteBulk(cctx, chunk)
		cancel()
		h.Write(chunk[:max(0, min(k, len(chunk)))])
		sent += int64(max(k, 0))
		if err != nil {
			if errors.Is(err, ErrDisconnected) {
				return fmt.Errorf("usbboot: %s: send %s: after %d of %d bytes: %w: %w", port, name, sent, n, ErrVanished, err)
			}
			return fmt.Errorf("usbboot: %s: send %s: after %d of %d bytes: %w", port, name, sent, n, err)
		}
		if k != len(chunk) {
			return fmt.Errorf("usbboot: %s: send %s: a %d-byte chunk at byte %d took %d: %w", port, name, len(chunk), sent-int64(k), k, ErrShortWrite)
		}
		if progress {
			ss.s.emit(Event{Kind: EventProgress, Port: port, Serial: ss.res.Serial, File: name, Bytes: sent, Total: n})
		}
	}
	return nil
}

// fileServer answers the second stage's requests until Done.
func (ss *session) fileServer(ctx context.Context, dev Device, d Desc) error {
	port := d.Port
	if err := ss.claim(ctx, dev, d); err != nil {
		return fmt.Errorf("usbboot: %s: claim interface: %w", port, ss.classify(err))
	}
	t := Target{SoC: d.SoC(), Port: port}
	var (
		open     io.ReadCloser
		openName string
		openSize int64
		lastOK   = ss.s.clock().Now()
		buf      = make([]byte, RequestSize)
		val, idx = SizeFields(RequestSize)
	)
	closeOpen := func() {
		if open != nil {
			open.Close()
			open = nil
		}
	}
	defer closeOpen()
	ack := func(what string) error {
		if _, err := dev.Control(ReqTypeOut, ReqVendor, 0, 0, nil, SizeTimeout); err != nil {
			return fmt.Errorf("usbboot: %s: answer %s: %w", port, what, ss.classify(err))
		}
		return nil
	}
	for {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("usbboot: %s: file server: %w", port, err)
		}
		if ss.expired() {
			return fmt.Errorf("usbboot: %s: file server: second stage silent since %s: %w",
				port, lastOK.Format(time.TimeOnly), ErrDeadline)
		}
		clear(buf)
		n, err := dev.Control(ReqTypeIn, ReqVendor, val, idx, buf, ReadTimeout)
		switch {
		case err == nil:
		case errors.Is(err, ErrTimeout):
			// the second stage is busy (flashing SPI, loading boot.img): keep waiting
			continue
		case errors.Is(err, ErrDisconnected) || errors.Is(err, ErrIO):
			// rpiboot's normal end of a session: the device went away
			ss.s.emit(Event{Kind: EventWarning, Port: port, Serial: ss.res.Serial, Message: "device left the file server without Done"})
			return nil
		default:
			// a stall or other error: wait a second and ask again, like rpiboot
			if err := ss.s.clock().Sleep(ctx, time.Second); err != nil {
				return fmt.Errorf("usbboot: %s: file server: %w", port, err)
			}
			continue
		}
		if n < MinRequestSize {
			return fmt.Errorf("usbboot: %s: read request: got %d bytes, want %d (at least %d): %w", port, n, RequestSize, MinRequestSize, ErrProtocol)
		}
		if n < RequestSize {
			// rpiboot takes whatever came and reads the name with strlen.
			if ss.res.ShortRequests == 0 {
				ss.warn(fmt.Sprintf("request of %d bytes, not %d: accepted and zero-filled, as rpiboot does", n, RequestSize))
			}
			ss.res.ShortRequests++
			clear(buf[n:])
		}
		req, err := ParseRequest(buf)
		if err != nil {
			return fmt.Errorf("usbboot: %s: %w", port, err)
		}
		lastOK = ss.s.clock().Now()
		if key, value, ok := req.Metadata(); ok {
			ss.res.Metadata = append(ss.res.Metadata, KV{Key: key, Value: value})
			ss.s.emit(Event{Kind: EventMetadata, Port: port, Serial: ss.res.Serial, Key: key, Value: value})
			if err := ack("metadata " + key); err != nil {
				return err
			}
			continue
		}
		switch {
		case req.Name == "":
			ss.res.Done = true
			return ack("Done")
		case req.Command == Done:
			ss.res.Done = true
			return nil
		case req.Command == GetFileSize:
			closeOpen()
			rc, size, err := ss.s.Files.Open(ctx, t, req.Name)
			switch {
			case errors.Is(err, fs.ErrNotExist):
				ss.res.Files = append(ss.res.Files, ServedFile{Name: req.Name, Missing: true})
				msg := ""
				if errors.Is(err, ErrBadName) {
					msg = err.Error()
				}
				ss.s.emit(Event{Kind: EventFileMissing, Port: port, Serial: ss.res.Serial, File: req.Name, Message: msg})
				if err := ack("GetFileSize " + req.Name); err != nil {
					return err
				}
				continue
			case err != nil:
				return fmt.Errorf("usbboot: %s: open %s: %w", port, req.Name, err)
			}
			if size > 1<<31-1 {
				rc.Close()
				return fmt.Errorf("usbboot: %s: %s is %d bytes, more than the protocol can announce", port, req.Name, size)
			}
			open, openName, openSize = rc, req.Name, size
			v, i := SizeFields(uint32(size))
			if _, err := dev.Control(ReqTypeOut, ReqVendor, v, i, nil, SizeTimeout); err != nil {
				return fmt.Errorf("usbboot: %s: answer GetFileSize %s: %w", port, req.Name, ss.classify(err))
			}
		case req.Command == ReadFile:
			if open == nil {
				// rpiboot serves what the last GetFileSize opened; nothing is open
				if err := ack("ReadFile " + req.Name); err != nil {
					return err
				}
				continue
			}
			var src io.Reader = open
			var kept *bytes.Buffer
			if keepForHash(openName, openSize) {
				kept = bytes.NewBuffer(make([]byte, 0, openSize))
				src = io.TeeReader(open, kept)
			}
			sum, err := ss.send(ctx, dev, port, openName, src, openSize, true)
			closeOpen()
			if err == nil && kept != nil {
				ss.keep(openName, kept.Bytes())
			}
			if err != nil {
				return err
			}
			ss.res.Files = append(ss.res.Files, ServedFile{Name: openName, Size: openSize, SHA256: sum})
		}
	}
}

// SortResults orders results by port path (for stable reports).
func SortResults(rs []Result) {
	sort.SliceStable(rs, func(i, j int) bool { return rs[i].Port < rs[j].Port })
}
