package libusbfake

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Speed is the bus speed of an enumerated device, numbered as LIBUSB_SPEED_*.
type Speed uint8

// Bus speeds, numbered as libusb does.
const (
	SpeedUnknown Speed = 0
	SpeedLow     Speed = 1
	SpeedFull    Speed = 2
	SpeedHigh    Speed = 3
	SpeedSuper   Speed = 4
)

// Attachment is how a device currently appears on the bus.
type Attachment struct {
	Bus     int
	Ports   []int // port numbers from the root hub, e.g. [1 3] for "1-1.3"
	Address int   // changes on every enumeration
	Speed   Speed
}

// Path renders the port path the way the kernel and rpiboot do, "1-1.3".
func (a Attachment) Path() string {
	var sb strings.Builder
	sb.WriteString(strconv.Itoa(a.Bus))
	for i, p := range a.Ports {
		if i == 0 {
			sb.WriteByte('-')
		} else {
			sb.WriteByte('.')
		}
		sb.WriteString(strconv.Itoa(p))
	}
	return sb.String()
}

// Device is one simulated USB device on one port, seen at the raw USB level.
// The Server plays the host controller and the kernel: it enumerates the
// device with GET_DESCRIPTOR requests (through Control), answers
// SET_CONFIGURATION, SET_INTERFACE and CLEAR_FEATURE itself like a device's
// USB core, and passes every other control transfer and all bulk data on.
// Implementations must be safe for concurrent use. Errors should wrap the
// sentinels below (ErrStall, ErrNoDevice, ErrNAK, ...) so that the host sees
// the matching LIBUSB_ERROR_* code; anything else becomes LIBUSB_ERROR_IO.
type Device interface {
	// Attached reports whether the device is on the bus now, and how. It
	// must not block behind a transfer in progress.
	Attached() (Attachment, bool)
	// Control performs a control transfer (standard GET_DESCRIPTOR
	// included). For IN transfers it fills data and returns the length;
	// for OUT it consumes data. timeout is what the host asked for (0 =
	// forever); ctx ends when the host gives up.
	Control(ctx context.Context, s Setup, data []byte, timeout time.Duration) (int, error)
	// BulkOut receives one bulk OUT transfer on endpoint ep.
	BulkOut(ctx context.Context, ep uint8, p []byte) (int, error)
}

// BulkInDevice is implemented by devices with bulk or interrupt IN endpoints.
type BulkInDevice interface {
	BulkIn(ctx context.Context, ep uint8, p []byte) (int, error)
}

// Sentinel errors a Device returns (wrapped) to pick the host-visible code.
var (
	ErrStall    = errors.New("endpoint stalled")                    // LIBUSB_ERROR_PIPE, LIBUSB_TRANSFER_STALL
	ErrNoDevice = errors.New("device disconnected")                 // LIBUSB_ERROR_NO_DEVICE, LIBUSB_TRANSFER_NO_DEVICE
	ErrNAK      = errors.New("device NAKs until the host gives up") // the host's timeout fires: LIBUSB_ERROR_TIMEOUT
	ErrAccess   = errors.New("access denied")                       // LIBUSB_ERROR_ACCESS (open)
	ErrBusy     = errors.New("device busy")                         // LIBUSB_ERROR_BUSY
	ErrOverflow = errors.New("babble: more data than requested")    // LIBUSB_ERROR_OVERFLOW
	ErrIO       = errors.New("transfer error")                      // LIBUSB_ERROR_IO
)

// Code maps a Device error to the libusb error code the host sees.
func Code(err error) int32 {
	switch {
	case err == nil:
		return codeSuccess
	case errors.Is(err, ErrStall):
		return codePipe
	case errors.Is(err, ErrNoDevice):
		return codeNoDevice
	case errors.Is(err, ErrNAK), errors.Is(err, context.DeadlineExceeded):
		return codeTimeout
	case errors.Is(err, ErrAccess):
		return codeAccess
	case errors.Is(err, ErrBusy):
		return codeBusy
	case errors.Is(err, ErrOverflow):
		return codeOverflow
	default:
		return codeIO
	}
}

// Opener is implemented by devices that take part in libusb_open (to
// refuse it: "open fails once after re-enumeration", access denied).
type Opener interface {
	Open(address int) error
}

// Closer is implemented by devices that want to see libusb_close.
type Closer interface {
	Close()
}

// Record is one line of the transcript: a host-visible USB event.
type Record struct {
	Seq  int    `json:"seq"`
	MS   int64  `json:"ms"` // since the server started
	Port string `json:"port"`
	Addr int    `json:"addr"`
	Kind string `json:"kind"`         // open, close, claim, release, set_config, set_alt, reset, clear_halt, control, bulk
	By   string `json:"by,omitempty"` // "kernel" for enumeration reads; empty for the host program

	// control
	RequestType *uint8  `json:"bmRequestType,omitempty"`
	Request     *uint8  `json:"bRequest,omitempty"`
	Value       *uint16 `json:"wValue,omitempty"`
	Index       *uint16 `json:"wIndex,omitempty"`
	Length      *uint16 `json:"wLength,omitempty"`
	// bulk
	Endpoint *uint8 `json:"ep,omitempty"`
	Len      *int   `json:"len,omitempty"`
	// claim, release, set_config, set_alt
	Arg *int `json:"arg,omitempty"`

	TimeoutMS uint32 `json:"timeout_ms,omitempty"`
	DurMS     int64  `json:"dur_ms,omitempty"` // how long the transfer took (until the host gave up, for a NAK)
	In        []byte `json:"in,omitempty"`     // data stage of a control IN (base64 in JSON)
	Actual    int    `json:"actual"`           // bytes moved in the data stage / bulk
	Result    string `json:"result"`           // "ok" or the libusb error name
	Note      string `json:"note,omitempty"`   // e.g. why the fake refused
	Error     string `json:"error,omitempty"`  // the device's own error text
}

// ReadTranscript parses a JSONL transcript written by a Server.
func ReadTranscript(r io.Reader) ([]Record, error) {
	var out []Record
	dec := json.NewDecoder(r)
	for {
		var rec Record
		err := dec.Decode(&rec)
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, fmt.Errorf("transcript record %d: %w", len(out)+1, err)
		}
		out = append(out, rec)
	}
}

// Server answers the libusbfake C library from a fixed set of Devices.
type Server struct {
	// Path is the Unix socket to listen on (CM4USBSIM_SOCKET of the clients).
	Path string
	// Devices are the simulated devices, in bus scan order.
	Devices []Device
	// Transcript, when non-nil, receives one JSON Record per line for every
	// host-visible USB event (device list scans are not recorded).
	Transcript io.Writer
	// OnRecord, when non-nil, is called with every transcript Record (in
	// order, from several goroutines but never at once).
	OnRecord func(Record)
	// Log receives diagnostics; nil is silent.
	Logger *slog.Logger
	// Ready, when non-nil, is closed once the socket accepts connections.
	Ready chan<- struct{}

	recMu   sync.Mutex // orders transcript output
	mu      sync.Mutex
	start   time.Time
	seq     int
	next    uint32
	handles map[uint32]*handle
	enums   []enumeration // per device: what the "kernel" cached at enumeration
	enumMu  []sync.Mutex  // per device: one enumeration at a time
}

type enumeration struct {
	addr   int
	desc   []byte // device descriptor, 18 bytes
	cfg    []byte // configuration descriptor as the kernel cached it
	config int    // active configuration value
}

type handle struct {
	dev     int
	addr    int
	port    string
	claimed map[int]bool
	alt     map[int]int
}

func (s *Server) log() *slog.Logger {
	if s.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Logger
}

// Serve listens on Path and answers requests until ctx ends.
func (s *Server) Serve(ctx context.Context) error {
	if s.Path == "" {
		return errors.New("libusbfake: serve: no socket path")
	}
	_ = os.Remove(s.Path)
	l, err := net.Listen("unix", s.Path)
	if err != nil {
		return fmt.Errorf("libusbfake: listen %s: %w", s.Path, err)
	}
	s.mu.Lock()
	s.start = time.Now()
	s.handles = map[uint32]*handle{}
	s.enums = make([]enumeration, len(s.Devices))
	s.enumMu = make([]sync.Mutex, len(s.Devices))
	s.mu.Unlock()
	if s.Ready != nil {
		close(s.Ready)
	}
	go func() {
		<-ctx.Done()
		l.Close()
	}()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				_ = os.Remove(s.Path)
				return nil
			}
			return fmt.Errorf("libusbfake: accept: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.serveConn(ctx, c)
		}()
	}
}

func (s *Server) serveConn(ctx context.Context, c net.Conn) {
	defer c.Close()
	req, err := ReadRequest(c)
	if err != nil {
		s.log().Warn("libusbfake: bad request", "err", err)
		return
	}
	// The host abandons a request by closing the connection (its timeout
	// fired, or the transfer was cancelled): cancel the device operation.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		var b [1]byte
		_, _ = c.Read(b[:])
		cancel()
	}()
	status, payload := s.handle(ctx, req)
	if err := writeResponse(c, status, payload); err != nil && ctx.Err() == nil {
		s.log().Warn("libusbfake: write response", "op", req.Op, "err", err)
	}
}

// enumerate returns the attachment of device i and makes sure the kernel
// view (descriptors, active configuration) belongs to that enumeration. It
// must be called without s.mu held: enumeration talks to the device.
func (s *Server) enumerate(ctx context.Context, i int) (Attachment, bool) {
	d := s.Devices[i]
	a, ok := d.Attached()
	s.mu.Lock()
	cur := s.enums[i]
	s.mu.Unlock()
	if !ok {
		if cur.addr != 0 {
			s.mu.Lock()
			s.enums[i] = enumeration{}
			s.mu.Unlock()
		}
		return a, false
	}
	if cur.addr == a.Address && cur.desc != nil {
		return a, true
	}
	s.enumMu[i].Lock()
	defer s.enumMu[i].Unlock()
	s.mu.Lock()
	cur = s.enums[i]
	s.mu.Unlock()
	if cur.addr == a.Address && cur.desc != nil {
		return a, true
	}
	e, err := s.kernelEnumerate(ctx, d, a)
	if err != nil {
		s.log().Warn("libusbfake: enumeration failed", "port", a.Path(), "addr", a.Address, "err", err)
		return a, false
	}
	s.mu.Lock()
	s.enums[i] = e
	s.mu.Unlock()
	return a, true
}

// kernelEnumerate reads the descriptors the way Linux does: the device
// descriptor, the 9-byte configuration header, then wTotalLength bytes,
// keeping what actually came (the 2711 ROM claims 55 bytes and sends 32).
func (s *Server) kernelEnumerate(ctx context.Context, d Device, a Attachment) (enumeration, error) {
	get := func(value, length uint16) ([]byte, error) {
		st := Setup{RequestType: 0x80, Request: reqGetDescriptor, Value: value, Length: length}
		buf := make([]byte, length)
		n, err := d.Control(ctx, st, buf, 5*time.Second)
		s.record(Record{Port: a.Path(), Addr: a.Address, Kind: "control", By: "kernel",
			RequestType: ptr(st.RequestType), Request: ptr(st.Request), Value: ptr(st.Value), Index: ptr(st.Index), Length: ptr(st.Length),
			TimeoutMS: 5000, Actual: n, Result: resultName(Code(err)), Error: errText(err)})
		if err != nil {
			return nil, err
		}
		return buf[:n], nil
	}
	desc, err := get(0x0100, 18)
	if err != nil {
		return enumeration{}, fmt.Errorf("device descriptor: %w", err)
	}
	if len(desc) != 18 || desc[1] != 1 {
		return enumeration{}, fmt.Errorf("device descriptor: got %d bytes, type %d", len(desc), desc[min(1, len(desc)-1)])
	}
	hdr, err := get(0x0200, 9)
	if err != nil {
		return enumeration{}, fmt.Errorf("configuration header: %w", err)
	}
	if len(hdr) < 9 || hdr[1] != 2 {
		return enumeration{}, fmt.Errorf("configuration header: %d bytes", len(hdr))
	}
	want := binary.LittleEndian.Uint16(hdr[2:])
	full, err := get(0x0200, want)
	if err != nil {
		return enumeration{}, fmt.Errorf("configuration descriptor: %w", err)
	}
	if len(full) < int(want) {
		s.log().Info("libusbfake: config index 0 descriptor too short", "port", a.Path(), "expected", want, "got", len(full))
	}
	if len(full) < 9 {
		return enumeration{}, fmt.Errorf("configuration descriptor: %d bytes", len(full))
	}
	return enumeration{addr: a.Address, desc: desc, cfg: full, config: int(full[5])}, nil
}

func (s *Server) record(r Record) {
	if s.Transcript == nil && s.OnRecord == nil {
		return
	}
	s.recMu.Lock()
	defer s.recMu.Unlock()
	s.mu.Lock()
	s.seq++
	r.Seq = s.seq
	r.MS = time.Since(s.start).Milliseconds()
	s.mu.Unlock()
	if s.OnRecord != nil {
		s.OnRecord(r)
	}
	if s.Transcript != nil {
		if b, err := json.Marshal(r); err == nil {
			_, _ = s.Transcript.Write(append(b, '\n'))
		}
	}
}

func resultName(code int32) string {
	switch code {
	case codeSuccess:
		return "ok"
	case codeIO:
		return "LIBUSB_ERROR_IO"
	case codeInvalidParam:
		return "LIBUSB_ERROR_INVALID_PARAM"
	case codeAccess:
		return "LIBUSB_ERROR_ACCESS"
	case codeNoDevice:
		return "LIBUSB_ERROR_NO_DEVICE"
	case codeNotFound:
		return "LIBUSB_ERROR_NOT_FOUND"
	case codeBusy:
		return "LIBUSB_ERROR_BUSY"
	case codeTimeout:
		return "LIBUSB_ERROR_TIMEOUT"
	case codeOverflow:
		return "LIBUSB_ERROR_OVERFLOW"
	case codePipe:
		return "LIBUSB_ERROR_PIPE"
	case codeNotSupported:
		return "LIBUSB_ERROR_NOT_SUPPORTED"
	}
	return fmt.Sprintf("LIBUSB_ERROR(%d)", code)
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func ptr[T any](v T) *T { return &v }

// lookup returns the live handle h, or NO_DEVICE when its device detached
// or re-enumerated since it was opened.
func (s *Server) lookup(ctx context.Context, h uint32) (*handle, int32) {
	s.mu.Lock()
	hd := s.handles[h]
	s.mu.Unlock()
	if hd == nil {
		return nil, codeInvalidParam
	}
	a, ok := s.enumerate(ctx, hd.dev)
	if !ok || a.Address != hd.addr {
		return hd, codeNoDevice
	}
	return hd, codeSuccess
}

func (s *Server) handle(ctx context.Context, q *Request) (int32, []byte) {
	switch q.Op {
	case OpList:
		return s.list(ctx)
	case OpOpen:
		return s.open(ctx, q.Device)
	}
	hd, code := s.lookup(ctx, q.Handle)
	if hd == nil {
		return code, nil
	}
	rec := Record{Port: hd.port, Addr: hd.addr, Kind: q.Op.String()}
	if q.Op == OpClose {
		s.mu.Lock()
		delete(s.handles, q.Handle)
		s.mu.Unlock()
		if c, ok := s.Devices[hd.dev].(Closer); ok {
			c.Close()
		}
		rec.Result = "ok"
		s.record(rec)
		return codeSuccess, nil
	}
	if code != codeSuccess {
		if q.Op == OpGetConfig {
			return code, nil
		}
		rec.Result = resultName(code)
		switch q.Op {
		case OpClaim, OpRelease, OpSetConfig, OpSetAlt:
			rec.Arg = ptr(int(q.Arg))
		case OpControl:
			rec.RequestType, rec.Request, rec.Value, rec.Index, rec.Length = ptr(q.Setup.RequestType), ptr(q.Setup.Request), ptr(q.Setup.Value), ptr(q.Setup.Index), ptr(q.Setup.Length)
		case OpTransfer:
			rec.Endpoint, rec.Len = ptr(q.Endpoint), ptr(int(q.Length))
			s.record(rec)
			return code, binary.LittleEndian.AppendUint32(nil, 0)
		}
		s.record(rec)
		return code, nil
	}
	dev := s.Devices[hd.dev]
	switch q.Op {
	case OpGetConfig:
		s.mu.Lock()
		cv := s.enums[hd.dev].config
		s.mu.Unlock()
		return int32(cv), nil
	case OpSetConfig:
		// SET_CONFIGURATION goes on the wire: 0x00, 9, value.
		rec.Arg = ptr(int(q.Arg))
		s.mu.Lock()
		cfg := s.enums[hd.dev].cfg
		claimed := len(hd.claimed) > 0
		s.mu.Unlock()
		switch {
		case claimed:
			code = codeBusy
			rec.Note = "interfaces still claimed"
		case q.Arg != 0 && (len(cfg) < 6 || uint32(cfg[5]) != q.Arg):
			code = codeNotFound
			rec.Note = "no such configuration"
		default:
			s.mu.Lock()
			s.enums[hd.dev].config = int(q.Arg)
			s.mu.Unlock()
		}
	case OpClaim, OpRelease:
		rec.Arg = ptr(int(q.Arg))
		s.mu.Lock()
		if q.Op == OpClaim {
			if !hasInterface(s.enums[hd.dev].cfg, int(q.Arg)) {
				code = codeNotFound
				rec.Note = "no such interface in the active configuration"
			} else if s.claimedElsewhere(hd, int(q.Arg)) {
				code = codeBusy
				rec.Note = "claimed by another handle"
			} else {
				hd.claimed[int(q.Arg)] = true
			}
		} else {
			delete(hd.claimed, int(q.Arg))
			delete(hd.alt, int(q.Arg))
		}
		s.mu.Unlock()
	case OpSetAlt:
		rec.Arg = ptr(int(q.Arg))
		rec.Note = fmt.Sprintf("alt %d", q.Alt)
		s.mu.Lock()
		if findEndpoints(s.enums[hd.dev].cfg, int(q.Arg), int(q.Alt)) == nil {
			code = codeNotFound
		} else {
			hd.alt[int(q.Arg)] = int(q.Alt)
		}
		s.mu.Unlock()
	case OpReset:
		code = codeNotSupported
		rec.Note = "reset is not simulated (rpiboot never resets)"
	case OpClearHalt:
		rec.Endpoint = ptr(uint8(q.Arg))
	case OpControl:
		return s.control(ctx, dev, hd, q, rec)
	case OpTransfer:
		return s.transfer(ctx, dev, hd, q, rec)
	default:
		return codeNotSupported, nil
	}
	rec.Result = resultName(code)
	s.record(rec)
	return code, nil
}

func (s *Server) claimedElsewhere(hd *handle, iface int) bool {
	for _, o := range s.handles {
		if o != hd && o.dev == hd.dev && o.addr == hd.addr && o.claimed[iface] {
			return true
		}
	}
	return false
}

func (s *Server) list(ctx context.Context) (int32, []byte) {
	out := []byte{0, 0}
	n := 0
	for i := range s.Devices {
		a, ok := s.enumerate(ctx, i)
		if !ok {
			continue
		}
		s.mu.Lock()
		e := s.enums[i]
		s.mu.Unlock()
		if e.addr != a.Address {
			continue // re-enumerated meanwhile; the next scan sees it
		}
		if len(a.Ports) > 7 {
			s.log().Warn("libusbfake: port path deeper than 7", "port", a.Path())
			continue
		}
		cfg := e.cfg
		if len(cfg) > 0xffff {
			cfg = cfg[:0xffff]
		}
		var ports [7]byte
		for j, p := range a.Ports {
			ports[j] = byte(p)
		}
		out = binary.LittleEndian.AppendUint32(out, deviceID(i, a.Address))
		out = append(out, byte(a.Bus), byte(a.Address), byte(a.Speed), byte(len(a.Ports)))
		out = append(out, ports[:]...)
		out = append(out, e.desc...)
		out = binary.LittleEndian.AppendUint16(out, uint16(len(cfg)))
		out = append(out, cfg...)
		n++
	}
	binary.LittleEndian.PutUint16(out, uint16(n))
	return codeSuccess, out
}

func deviceID(index, addr int) uint32 { return uint32(index+1)<<8 | uint32(addr&0xff) }

func (s *Server) open(ctx context.Context, id uint32) (int32, []byte) {
	idx, addr := int(id>>8)-1, int(id&0xff)
	if idx < 0 || idx >= len(s.Devices) {
		return codeNoDevice, nil
	}
	a, ok := s.enumerate(ctx, idx)
	rec := Record{Port: a.Path(), Addr: addr, Kind: "open"}
	if !ok || a.Address != addr {
		rec.Result = resultName(codeNoDevice)
		rec.Note = "device gone or re-enumerated since the list was read"
		s.record(rec)
		return codeNoDevice, nil
	}
	if o, isOpener := s.Devices[idx].(Opener); isOpener {
		if err := o.Open(addr); err != nil {
			code := Code(err)
			rec.Result, rec.Error = resultName(code), err.Error()
			s.record(rec)
			return code, nil
		}
	}
	s.mu.Lock()
	s.next++
	h := s.next
	s.handles[h] = &handle{dev: idx, addr: addr, port: a.Path(), claimed: map[int]bool{}, alt: map[int]int{}}
	s.mu.Unlock()
	rec.Result = "ok"
	s.record(rec)
	return codeSuccess, binary.LittleEndian.AppendUint32(nil, h)
}

// Standard requests, USB 2.0 §9.4.
const (
	reqGetStatus     = 0
	reqClearFeature  = 1
	reqGetDescriptor = 6
	reqGetConfig     = 8
	reqSetConfig     = 9
	reqSetInterface  = 11
)

func (s *Server) control(ctx context.Context, dev Device, hd *handle, q *Request, rec Record) (int32, []byte) {
	start := time.Now()
	st := q.Setup
	rec.RequestType, rec.Request, rec.Value, rec.Index, rec.Length = ptr(st.RequestType), ptr(st.Request), ptr(st.Value), ptr(st.Index), ptr(st.Length)
	rec.TimeoutMS = q.Timeout
	var (
		n   int
		err error
		in  []byte
	)
	if st.In() {
		in = make([]byte, st.Length)
	}
	switch {
	case st.RequestType == 0x80 && st.Request == reqGetConfig:
		s.mu.Lock()
		cv := s.enums[hd.dev].config
		s.mu.Unlock()
		if len(in) > 0 {
			in[0] = byte(cv)
			n = 1
		}
	case st.RequestType == 0x80 && st.Request == reqGetStatus:
		n = copy(in, []byte{0, 0})
	default:
		data := in
		if !st.In() {
			data = q.Data
		}
		if q.Timeout == 0 && st.RequestType&0x60 == 0x40 {
			rec.Note = "vendor request without a timeout: the host waits forever if the device is silent"
		}
		n, err = dev.Control(ctx, st, data, time.Duration(q.Timeout)*time.Millisecond)
		if errors.Is(err, ErrNAK) {
			// The device never answers: the host decides when to stop.
			<-ctx.Done()
		}
	}
	code := Code(err)
	if ctx.Err() != nil && err == nil {
		code = codeTimeout
	}
	rec.Result, rec.Error = resultName(code), errText(err)
	rec.DurMS = time.Since(start).Milliseconds()
	if code == codeSuccess {
		rec.Actual = n
		if st.In() {
			rec.In = append([]byte(nil), in[:min(n, len(in))]...)
		}
	} else if ctx.Err() != nil {
		rec.Note = "host gave up (timeout or cancel)"
	}
	s.record(rec)
	if code != codeSuccess {
		return code, nil
	}
	if st.In() {
		if n > len(in) {
			n = len(in)
		}
		return int32(n), in[:n]
	}
	return int32(n), nil
}

func (s *Server) transfer(ctx context.Context, dev Device, hd *handle, q *Request, rec Record) (int32, []byte) {
	start := time.Now()
	rec.Kind = "bulk"
	rec.Endpoint, rec.Len = ptr(q.Endpoint), ptr(int(q.Length))
	rec.TimeoutMS = q.Timeout
	s.mu.Lock()
	ok := s.endpointClaimed(hd, q.Endpoint)
	s.mu.Unlock()
	var (
		n   int
		err error
		in  []byte
	)
	switch {
	case !ok:
		err = fmt.Errorf("endpoint 0x%02x is not in a claimed interface: %w", q.Endpoint, ErrIO)
		rec.Note = "endpoint not in a claimed interface"
	case q.Endpoint&0x80 != 0:
		if bi, isIn := dev.(BulkInDevice); isIn {
			in = make([]byte, q.Length)
			n, err = bi.BulkIn(ctx, q.Endpoint, in)
		} else {
			err = fmt.Errorf("no IN endpoint 0x%02x: %w", q.Endpoint, ErrStall)
		}
	default:
		n, err = dev.BulkOut(ctx, q.Endpoint, q.Data)
	}
	if errors.Is(err, ErrNAK) {
		<-ctx.Done()
	}
	code := Code(err)
	if ctx.Err() != nil && err == nil {
		code = codeTimeout
	}
	rec.Actual, rec.Result, rec.Error = n, resultName(code), errText(err)
	rec.DurMS = time.Since(start).Milliseconds()
	if ctx.Err() != nil {
		rec.Note = "host gave up (timeout or cancel)"
	}
	s.record(rec)
	out := binary.LittleEndian.AppendUint32(nil, uint32(n))
	if q.Endpoint&0x80 != 0 && n > 0 {
		out = append(out, in[:n]...)
	}
	return code, out
}

// endpointClaimed reports whether ep belongs to the current alternate
// setting of an interface the handle claimed. Must hold s.mu.
func (s *Server) endpointClaimed(hd *handle, ep uint8) bool {
	cfg := s.enums[hd.dev].cfg
	for iface := range hd.claimed {
		for _, e := range findEndpoints(cfg, iface, hd.alt[iface]) {
			if e == ep {
				return true
			}
		}
	}
	return false
}

// hasInterface reports whether the configuration descriptor has interface n.
func hasInterface(cfg []byte, n int) bool {
	found := false
	walk(cfg, func(d []byte) {
		if d[1] == 4 && len(d) >= 9 && int(d[2]) == n {
			found = true
		}
	})
	return found
}

// findEndpoints returns the endpoint addresses of interface iface, alternate
// setting alt, or nil when there is no such setting.
func findEndpoints(cfg []byte, iface, alt int) []uint8 {
	var (
		in   bool
		eps  []uint8
		seen bool
	)
	walk(cfg, func(d []byte) {
		switch {
		case d[1] == 4 && len(d) >= 9:
			in = int(d[2]) == iface && int(d[3]) == alt
			if in {
				seen = true
			}
		case d[1] == 5 && len(d) >= 7 && in:
			eps = append(eps, d[2])
		}
	})
	if !seen {
		return nil
	}
	if eps == nil {
		eps = []uint8{}
	}
	return eps
}

// walk calls f for each well-formed descriptor after the configuration header.
func walk(cfg []byte, f func(d []byte)) {
	if len(cfg) < 9 {
		return
	}
	total := int(binary.LittleEndian.Uint16(cfg[2:]))
	if total > len(cfg) {
		total = len(cfg)
	}
	for pos := int(cfg[0]); pos+2 <= total; {
		l := int(cfg[pos])
		if l < 2 || pos+l > total {
			return
		}
		f(cfg[pos : pos+l])
		pos += l
	}
}
