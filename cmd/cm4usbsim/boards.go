package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cm4bench/cm4bench/internal/atomicfile"
	"github.com/cm4bench/cm4bench/usbboot"
	"github.com/cm4bench/cm4bench/usbboot/libusbfake"
	"github.com/cm4bench/cm4bench/usbboot/usbboottest"
)

const scenarioHelp = `scenarios (--scenario MODE[,FAULT[=AT]]..., or a lone fault name which picks its mode):
  msd          legacy mass-storage firmware: config.txt, pieeprom.sig, start4.elf, fixup4.dat, Done
  gadget       mass-storage-gadget64: mcb.bin, memsys*, bootmain, config.txt, boot.img, Done
  recovery     EEPROM updater: config.txt, pieeprom.sig, pieeprom.bin, metadata, Done
faults (AT names the transfer: bootmsg, the bootcode name or a requested file):
  disconnect   board unplugged half-way through a file (msd, default AT start4.elf)
  stall        the SIZE control transfer stalls (msd, default AT config.txt)
  sizetimeout  the SIZE control transfer times out (msd, default AT config.txt)
  shortbulk    the device takes half of a bulk chunk (msd, default AT start4.elf)
  fullspeed    the ROM enumerates at full speed; bulk OUT never completes (msd)
  silent       recovery is silent for 21 s after pieeprom.bin (one READ timeout + retry)
  reject       the ROM answers status 1 after the bootcode (msd)
  access       every open fails with access denied (msd)
  openfail     the first open after each re-enumeration fails (msd)
  romtwice     the ROM re-enumerates once more as the ROM after the bootcode (msd)
  flashfail    recovery reports EEPROM_UPDATE=fail (recovery)
  wronghash    recovery reports an EEPROM_HASH that is not the image's (recovery)
`

type faultSpec struct {
	kind     usbboottest.FaultKind
	mode     usbboottest.Mode
	at       string
	duration time.Duration
}

// lookupFault returns the fault called name with its default mode and target.
func lookupFault(name string) (faultSpec, bool) {
	switch name {
	case "disconnect":
		return faultSpec{kind: usbboottest.FaultDisconnect, mode: usbboottest.ModeMSD, at: "start4.elf"}, true
	case "stall":
		return faultSpec{kind: usbboottest.FaultStall, mode: usbboottest.ModeMSD, at: "config.txt"}, true
	case "sizetimeout":
		return faultSpec{kind: usbboottest.FaultSizeTimeout, mode: usbboottest.ModeMSD, at: "config.txt"}, true
	case "shortbulk":
		return faultSpec{kind: usbboottest.FaultShortBulk, mode: usbboottest.ModeMSD, at: "start4.elf"}, true
	case "fullspeed":
		return faultSpec{kind: usbboottest.FaultFullSpeed, mode: usbboottest.ModeMSD}, true
	case "silent":
		return faultSpec{kind: usbboottest.FaultSilentFlash, mode: usbboottest.ModeRecovery, duration: 21 * time.Second}, true
	case "reject":
		return faultSpec{kind: usbboottest.FaultRejectBootcode, mode: usbboottest.ModeMSD}, true
	case "access":
		return faultSpec{kind: usbboottest.FaultAccessDenied, mode: usbboottest.ModeMSD}, true
	case "openfail":
		return faultSpec{kind: usbboottest.FaultOpenFailsOnce, mode: usbboottest.ModeMSD}, true
	case "romtwice":
		return faultSpec{kind: usbboottest.FaultROMTwice, mode: usbboottest.ModeMSD}, true
	case "flashfail":
		return faultSpec{kind: usbboottest.FaultFlashFails, mode: usbboottest.ModeRecovery}, true
	case "wronghash":
		return faultSpec{kind: usbboottest.FaultWrongHash, mode: usbboottest.ModeRecovery}, true
	}
	return faultSpec{}, false
}

type scenario struct {
	mode   usbboottest.Mode
	faults []usbboottest.Fault
}

// parseScenario reads "MODE[,FAULT[=AT]]..." or a lone fault name.
func parseScenario(s string) (scenario, error) {
	var sc scenario
	for i, part := range strings.Split(s, ",") {
		name, at, hasAt := strings.Cut(strings.TrimSpace(part), "=")
		switch usbboottest.Mode(name) {
		case usbboottest.ModeMSD, usbboottest.ModeGadget, usbboottest.ModeRecovery:
			if i != 0 {
				return sc, fmt.Errorf("scenario %q: mode %q must come first", s, name)
			}
			sc.mode = usbboottest.Mode(name)
			continue
		}
		f, ok := lookupFault(name)
		if !ok {
			return sc, fmt.Errorf("scenario %q: unknown mode or fault %q (see --help)", s, name)
		}
		if sc.mode == "" {
			sc.mode = f.mode
		}
		if hasAt {
			f.at = at
		}
		sc.faults = append(sc.faults, usbboottest.Fault{Kind: f.kind, At: f.at, Duration: f.duration})
	}
	if sc.mode == "" {
		sc.mode = usbboottest.ModeMSD
	}
	return sc, nil
}

type sim struct {
	boards []*boardDevice
}

func newSim(sc scenario, n int, soc string, twoIfaces bool) (*sim, error) {
	s := &sim{}
	for i := range n {
		b, err := usbboottest.NewBoard(usbboottest.BoardConfig{
			Port:          fmt.Sprintf("1-1.%d", i+1),
			SoC:           usbboot.SoC(soc),
			Mode:          sc.mode,
			Faults:        append([]usbboottest.Fault(nil), sc.faults...),
			TwoInterfaces: twoIfaces,
			Address:       2 + 16*i, // distinct addresses on the shared bus
		})
		if err != nil {
			return nil, err
		}
		s.boards = append(s.boards, &boardDevice{b: b})
	}
	return s, nil
}

func (s *sim) devices() []libusbfake.Device {
	out := make([]libusbfake.Device, len(s.boards))
	for i, b := range s.boards {
		out[i] = b
	}
	return out
}

// BoardReport is what one board saw, written by --report.
type BoardReport struct {
	Port       string                   `json:"port"`
	State      string                   `json:"state"`
	ROMLoads   int                      `json:"rom_loads"`
	Files      []usbboottest.FileRecord `json:"files"`
	Metadata   []string                 `json:"metadata"`
	Violations []string                 `json:"violations"`
}

func (s *sim) writeReport(path string) error {
	var out []BoardReport
	for _, bd := range s.boards {
		b := bd.b
		out = append(out, BoardReport{Port: b.Config().Port, State: b.State(), ROMLoads: b.ROMLoads(),
			Files: b.Files(), Metadata: b.Metadata(), Violations: b.Violations()})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Port < out[j].Port })
	data, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(path, append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("report: %w", err)
	}
	return nil
}

// boardDevice adapts a usbboottest.Board to libusbfake.Device.
type boardDevice struct {
	b *usbboottest.Board

	mu      sync.Mutex
	last    libusbfake.Attachment
	lastOK  bool
	pending chan struct{}
}

var (
	_ libusbfake.Device = (*boardDevice)(nil)
	_ libusbfake.Opener = (*boardDevice)(nil)
	_ libusbfake.Closer = (*boardDevice)(nil)
)

// Attached asks the board, but does not wait long: a board holds its lock
// for the whole of a transfer in which it NAKs (a silent second stage), and
// the bus must still list every other board meanwhile. A board in a
// transfer is attached as last seen.
func (d *boardDevice) Attached() (libusbfake.Attachment, bool) {
	d.mu.Lock()
	if d.pending == nil {
		ch := make(chan struct{})
		d.pending = ch
		go func() {
			desc, ok := d.b.Enumeration()
			a, err := attachment(desc)
			d.mu.Lock()
			d.last, d.lastOK, d.pending = a, ok && err == nil, nil
			d.mu.Unlock()
			close(ch)
		}()
	}
	ch := d.pending
	d.mu.Unlock()
	t := time.NewTimer(100 * time.Millisecond)
	defer t.Stop()
	select {
	case <-ch:
	case <-t.C:
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.last, d.lastOK
}

func attachment(desc usbboot.Desc) (libusbfake.Attachment, error) {
	a := libusbfake.Attachment{Bus: desc.Bus, Address: desc.Address, Speed: libusbfake.Speed(desc.Speed)}
	_, path, ok := strings.Cut(desc.Port, "-")
	if !ok {
		return a, fmt.Errorf("port path %q", desc.Port)
	}
	for _, p := range strings.Split(path, ".") {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 255 {
			return a, fmt.Errorf("port path %q", desc.Port)
		}
		a.Ports = append(a.Ports, n)
	}
	return a, nil
}

func (d *boardDevice) Open(address int) error { return mapErr(d.b.Open(address)) }

func (d *boardDevice) Close() { d.b.Close() }

func (d *boardDevice) Control(ctx context.Context, s libusbfake.Setup, data []byte, timeout time.Duration) (int, error) {
	n, err := d.b.Control(ctx, usbboottest.Setup(s), data, timeout)
	return n, mapErr(err)
}

func (d *boardDevice) BulkOut(ctx context.Context, ep uint8, p []byte) (int, error) {
	n, err := d.b.BulkOut(ctx, ep, p)
	return n, mapErr(err)
}

// mapErr turns board errors into the libusbfake sentinels (keeping the
// board's text). A board "timeout" means it NAKed: the host's own timeout
// decides when the transfer ends, as on a real bus.
func mapErr(err error) error {
	var to error
	switch {
	case err == nil:
		return nil
	case errors.Is(err, usbboot.ErrTimeout), errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		to = libusbfake.ErrNAK
	case errors.Is(err, usbboot.ErrStall):
		to = libusbfake.ErrStall
	case errors.Is(err, usbboot.ErrDisconnected):
		to = libusbfake.ErrNoDevice
	case errors.Is(err, usbboot.ErrAccess):
		to = libusbfake.ErrAccess
	default:
		to = libusbfake.ErrIO
	}
	return fmt.Errorf("%w (board: %w)", to, err)
}
