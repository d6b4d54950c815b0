package usbboottest

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/cm4bench/cm4bench/usbboot"
)

// Bus is a usbboot.Bus over simulated boards. Besides the boards it can
// list unrelated devices, which must never be opened.
type Bus struct {
	clock usbboot.Clock

	mu     sync.Mutex
	boards []*Board
	others []usbboot.Desc
	opens  map[string]int // port -> successful and failed open attempts
	// listErr, when set, is returned by List beside the listing: a device
	// on the host whose descriptors fail to parse (gousb fails the whole
	// OpenDevices call then).
	listErr error
}

// SetListError makes List return err together with the devices it did
// list (nil clears it).
func (bus *Bus) SetListError(err error) {
	bus.mu.Lock()
	defer bus.mu.Unlock()
	bus.listErr = err
}

var _ usbboot.Bus = (*Bus)(nil)

// NewBus returns a bus holding boards. clock may be nil (real time).
func NewBus(clock usbboot.Clock, boards ...*Board) *Bus {
	if clock == nil {
		clock = usbboot.SystemClock{}
	}
	bus := &Bus{clock: clock, opens: map[string]int{}}
	for _, b := range boards {
		bus.Add(b)
	}
	return bus
}

// Add plugs a board in.
func (bus *Bus) Add(b *Board) {
	bus.mu.Lock()
	defer bus.mu.Unlock()
	if b.cfg.Address == 0 {
		b.mu.Lock()
		b.address = 2 + 16*len(bus.boards)
		for i := range b.transcript {
			b.transcript[i].Address = b.address
		}
		b.mu.Unlock()
	}
	bus.boards = append(bus.boards, b)
}

// AddOther lists a non-RPIBOOT device (a keyboard, a hub) on the bus.
func (bus *Bus) AddOther(d usbboot.Desc) {
	bus.mu.Lock()
	defer bus.mu.Unlock()
	bus.others = append(bus.others, d)
}

// Boards returns the boards on the bus.
func (bus *Bus) Boards() []*Board {
	bus.mu.Lock()
	defer bus.mu.Unlock()
	return append([]*Board(nil), bus.boards...)
}

// Opens counts open attempts per port path (tests check filters).
func (bus *Bus) Opens(port string) int {
	bus.mu.Lock()
	defer bus.mu.Unlock()
	return bus.opens[port]
}

// List describes every attached device, in port order.
func (bus *Bus) List(ctx context.Context) ([]usbboot.Desc, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	bus.mu.Lock()
	boards := append([]*Board(nil), bus.boards...)
	out := append([]usbboot.Desc(nil), bus.others...)
	listErr := bus.listErr
	bus.mu.Unlock()
	for _, b := range boards {
		if d, ok := b.Enumeration(); ok {
			out = append(out, d)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Port < out[j].Port })
	if listErr != nil {
		if out == nil {
			out = []usbboot.Desc{}
		}
		return out, fmt.Errorf("usbboottest: list: %w", listErr)
	}
	return out, nil
}

// Open opens the board at d.Port if it still has address d.Address.
func (bus *Bus) Open(ctx context.Context, d usbboot.Desc) (usbboot.Device, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	bus.mu.Lock()
	bus.opens[d.Port]++
	var board *Board
	for _, b := range bus.boards {
		if b.cfg.Port == d.Port {
			board = b
		}
	}
	bus.mu.Unlock()
	if board == nil {
		return nil, fmt.Errorf("usbboottest: open %s: not a simulated board: %w", d.Port, usbboot.ErrDisconnected)
	}
	if err := board.Open(d.Address); err != nil {
		return nil, err
	}
	cur, _ := board.Enumeration()
	return &device{board: board, desc: cur}, nil
}

// device is an opened board: the usbboot.Device of the simulator.
type device struct {
	board  *Board
	desc   usbboot.Desc
	ep     uint8
	closed bool
}

var _ usbboot.Device = (*device)(nil)

func (d *device) Desc() usbboot.Desc { return d.desc }

func (d *device) Control(rType, req uint8, val, idx uint16, data []byte, timeout time.Duration) (int, error) {
	if d.closed {
		return 0, fmt.Errorf("usbboottest: control on a closed device")
	}
	if timeout <= 0 {
		d.board.mu.Lock()
		d.board.violate("control transfer without a timeout (gousb's default is infinite)")
		d.board.mu.Unlock()
	}
	return d.board.Control(context.Background(), Setup{RequestType: rType, Request: req, Value: val, Index: idx, Length: uint16(len(data))}, data, timeout)
}

func (d *device) Claim(iface int, outEP uint8) error {
	cur, ok := d.board.Enumeration()
	if !ok || cur.Address != d.desc.Address {
		return fmt.Errorf("usbboottest: claim interface %d: %w", iface, ErrNoDevice)
	}
	if d.board.ClaimFails() {
		return fmt.Errorf("usbboottest: claim interface %d: configuration 0 not active yet: %w", iface, ErrIO)
	}
	if iface < 0 || iface >= cur.NumInterfaces {
		return fmt.Errorf("usbboottest: claim interface %d of %d: %w", iface, cur.NumInterfaces, ErrIO)
	}
	if want := uint8(0x01 + 2*iface); outEP != want {
		return fmt.Errorf("usbboottest: interface %d has OUT endpoint 0x%02x, not 0x%02x: %w", iface, want, outEP, ErrIO)
	}
	d.ep = outEP
	return nil
}

func (d *device) WriteBulk(ctx context.Context, p []byte) (int, error) {
	if d.closed {
		return 0, fmt.Errorf("usbboottest: bulk on a closed device")
	}
	if d.ep == 0 {
		d.board.mu.Lock()
		d.board.violate("bulk OUT before claiming an interface")
		d.board.mu.Unlock()
		return 0, ErrIO
	}
	return d.board.BulkOut(ctx, d.ep, p)
}

func (d *device) Close() error {
	if d.closed {
		return nil
	}
	d.closed = true
	d.board.Close()
	return nil
}
