// Package libusbfake serves simulated USB devices to programs linked against
// libusb-1.0, through a stand-in shared library built from c/libusbfake.c.
//
// The C library exports the libusb-1.0 ABI as libusb-1.0.so.0. Every libusb
// call it receives becomes one request over a Unix socket (path from the
// CM4USBSIM_SOCKET environment variable) to a Server of this package, which
// answers from its Devices. Running the unmodified cm4bench binary with
// LD_LIBRARY_PATH pointing at the built library therefore exercises the real
// gousb cgo glue against simulated boards.
//
// The wire protocol is little endian, one request per connection:
//
//	request:  u32 length-of-rest | u8 op | payload
//	response: u32 length-of-rest | i32 status | payload
//
// Payloads per op (h = u32 handle id):
//
//	OpList       -                                  -> u16 n, n x device record
//	OpOpen       u32 device id                      -> u32 handle id
//	OpClose      h                                  -> -
//	OpControl    h u8 bmRequestType u8 bRequest u16 wValue u16 wIndex u16 wLength u32 timeout_ms [OUT data]
//	                                                -> IN data; status = bytes or LIBUSB_ERROR_*
//	OpTransfer   h u8 endpoint u32 timeout_ms u32 length [OUT data]
//	                                                -> u32 actual [IN data]; status = 0 or LIBUSB_ERROR_*
//	OpClaim, OpRelease   h u32 interface            -> -
//	OpSetAlt     h u32 interface u32 alt            -> -
//	OpSetConfig  h u32 configuration value          -> -
//	OpGetConfig  h                                  -> status = configuration value
//	OpReset      h                                  -> -
//	OpClearHalt  h u32 endpoint                     -> -
//
// A device record is u32 id, u8 bus, u8 address, u8 speed (LIBUSB_SPEED_*),
// u8 number of ports, u8 ports[7], the 18-byte device descriptor, u16 length
// and the configuration descriptor as the kernel cached it.
//
// Timeouts belong to the host: the library stops waiting and closes the
// connection when the caller's timeout passes, and the Server then cancels
// the device operation. A device that NAKs (silent) simply never answers.
package libusbfake

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Op is a request type of the socket protocol.
type Op uint8

// The ops of the socket protocol; the numbers are shared with c/libusbfake.c.
const (
	OpList      Op = 1
	OpOpen      Op = 2
	OpClose     Op = 3
	OpControl   Op = 4
	OpTransfer  Op = 5
	OpClaim     Op = 6
	OpRelease   Op = 7
	OpSetAlt    Op = 8
	OpSetConfig Op = 9
	OpGetConfig Op = 10
	OpReset     Op = 11
	OpClearHalt Op = 12
)

func (o Op) String() string {
	switch o {
	case OpList:
		return "list"
	case OpOpen:
		return "open"
	case OpClose:
		return "close"
	case OpControl:
		return "control"
	case OpTransfer:
		return "transfer"
	case OpClaim:
		return "claim"
	case OpRelease:
		return "release"
	case OpSetAlt:
		return "set_alt"
	case OpSetConfig:
		return "set_config"
	case OpGetConfig:
		return "get_config"
	case OpReset:
		return "reset"
	case OpClearHalt:
		return "clear_halt"
	}
	return fmt.Sprintf("op(%d)", uint8(o))
}

// MaxFrame bounds one request or response (a 16 KiB bulk chunk is typical;
// generous room for programs that submit large transfers).
const MaxFrame = 64 << 20

// libusb error codes (libusb.h), as carried in the status word.
const (
	codeSuccess      = 0
	codeIO           = -1
	codeInvalidParam = -2
	codeAccess       = -3
	codeNoDevice     = -4
	codeNotFound     = -5
	codeBusy         = -6
	codeTimeout      = -7
	codeOverflow     = -8
	codePipe         = -9
	codeNotSupported = -12
)

// Setup is the 8-byte setup packet of a control transfer.
type Setup struct {
	RequestType uint8
	Request     uint8
	Value       uint16
	Index       uint16
	Length      uint16
}

// In reports whether the data stage goes device-to-host.
func (s Setup) In() bool { return s.RequestType&0x80 != 0 }

// Request is one decoded request of the socket protocol.
type Request struct {
	Op       Op
	Device   uint32 // OpOpen
	Handle   uint32 // every op but OpList and OpOpen
	Arg      uint32 // interface (claim, release, set_alt), configuration value, endpoint (clear_halt)
	Alt      uint32 // OpSetAlt
	Setup    Setup  // OpControl
	Endpoint uint8  // OpTransfer
	Timeout  uint32 // milliseconds, 0 = forever (OpControl, OpTransfer)
	Length   uint32 // OpTransfer: bytes to move
	Data     []byte // OUT data stage (OpControl, OpTransfer)
}

// ErrMalformed is wrapped by every request decoding error.
var ErrMalformed = errors.New("libusbfake: malformed request")

type reader struct {
	b   []byte
	err error
}

func (r *reader) take(n int, what string) []byte {
	if r.err != nil {
		return nil
	}
	if len(r.b) < n {
		r.err = fmt.Errorf("%w: %s: need %d bytes, have %d", ErrMalformed, what, n, len(r.b))
		return nil
	}
	p := r.b[:n]
	r.b = r.b[n:]
	return p
}
func (r *reader) u8(what string) uint8 {
	if p := r.take(1, what); p != nil {
		return p[0]
	}
	return 0
}
func (r *reader) u16(what string) uint16 {
	if p := r.take(2, what); p != nil {
		return binary.LittleEndian.Uint16(p)
	}
	return 0
}
func (r *reader) u32(what string) uint32 {
	if p := r.take(4, what); p != nil {
		return binary.LittleEndian.Uint32(p)
	}
	return 0
}

// DecodeRequest parses the body of a request frame (everything after the
// length word). It checks lengths exactly: trailing bytes are an error.
func DecodeRequest(body []byte) (*Request, error) {
	r := &reader{b: body}
	q := &Request{Op: Op(r.u8("op"))}
	switch q.Op {
	case OpList:
	case OpOpen:
		q.Device = r.u32("device id")
	case OpClose, OpGetConfig, OpReset:
		q.Handle = r.u32("handle")
	case OpClaim, OpRelease, OpSetConfig, OpClearHalt:
		q.Handle = r.u32("handle")
		q.Arg = r.u32("argument")
	case OpSetAlt:
		q.Handle = r.u32("handle")
		q.Arg = r.u32("interface")
		q.Alt = r.u32("alternate setting")
	case OpControl:
		q.Handle = r.u32("handle")
		q.Setup.RequestType = r.u8("bmRequestType")
		q.Setup.Request = r.u8("bRequest")
		q.Setup.Value = r.u16("wValue")
		q.Setup.Index = r.u16("wIndex")
		q.Setup.Length = r.u16("wLength")
		q.Timeout = r.u32("timeout")
		if !q.Setup.In() {
			q.Data = r.take(int(q.Setup.Length), "control data")
		}
	case OpTransfer:
		q.Handle = r.u32("handle")
		q.Endpoint = r.u8("endpoint")
		q.Timeout = r.u32("timeout")
		q.Length = r.u32("length")
		if r.err == nil && q.Length > MaxFrame {
			return nil, fmt.Errorf("%w: transfer length %d over %d", ErrMalformed, q.Length, MaxFrame)
		}
		if q.Endpoint&0x80 == 0 {
			q.Data = r.take(int(q.Length), "transfer data")
		}
	default:
		return nil, fmt.Errorf("%w: unknown op %d", ErrMalformed, uint8(q.Op))
	}
	if r.err != nil {
		return nil, fmt.Errorf("decode %v: %w", q.Op, r.err)
	}
	if len(r.b) != 0 {
		return nil, fmt.Errorf("%w: %v: %d trailing bytes", ErrMalformed, q.Op, len(r.b))
	}
	return q, nil
}

// Encode renders q as a complete request frame, length word included. It is
// what c/libusbfake.c sends; Go tests use it as a client.
func (q *Request) Encode() []byte {
	b := []byte{0, 0, 0, 0, byte(q.Op)}
	le32 := func(v uint32) { b = binary.LittleEndian.AppendUint32(b, v) }
	switch q.Op {
	case OpOpen:
		le32(q.Device)
	case OpClose, OpGetConfig, OpReset:
		le32(q.Handle)
	case OpClaim, OpRelease, OpSetConfig, OpClearHalt:
		le32(q.Handle)
		le32(q.Arg)
	case OpSetAlt:
		le32(q.Handle)
		le32(q.Arg)
		le32(q.Alt)
	case OpControl:
		le32(q.Handle)
		b = append(b, q.Setup.RequestType, q.Setup.Request)
		b = binary.LittleEndian.AppendUint16(b, q.Setup.Value)
		b = binary.LittleEndian.AppendUint16(b, q.Setup.Index)
		b = binary.LittleEndian.AppendUint16(b, q.Setup.Length)
		le32(q.Timeout)
		if !q.Setup.In() {
			b = append(b, q.Data...)
		}
	case OpTransfer:
		le32(q.Handle)
		b = append(b, q.Endpoint)
		le32(q.Timeout)
		le32(q.Length)
		if q.Endpoint&0x80 == 0 {
			b = append(b, q.Data...)
		}
	}
	binary.LittleEndian.PutUint32(b, uint32(len(b)-4))
	return b
}

// ReadRequest reads and decodes one request frame from r.
func ReadRequest(r io.Reader) (*Request, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, fmt.Errorf("read request length: %w", err)
	}
	n := binary.LittleEndian.Uint32(hdr[:])
	if n < 1 || n > MaxFrame+64 {
		return nil, fmt.Errorf("%w: frame length %d", ErrMalformed, n)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, fmt.Errorf("read request body (%d bytes): %w", n, err)
	}
	return DecodeRequest(body)
}

// writeResponse writes one response frame.
func writeResponse(w io.Writer, status int32, payload []byte) error {
	b := make([]byte, 8, 8+len(payload))
	binary.LittleEndian.PutUint32(b, uint32(4+len(payload)))
	binary.LittleEndian.PutUint32(b[4:], uint32(status))
	b = append(b, payload...)
	_, err := w.Write(b)
	return err
}
