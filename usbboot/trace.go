package usbboot

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"
)

// TraceHeader is the first line of a trace file.
const TraceHeader = "# cm4bench usbboot trace v1"

// TraceRecord is one line of a USB trace: a transfer or a device event
// seen by the host, in the golden-transcript format of usbboot/testdata
// with the port path added:
//
//	2.500s 1-1.3 addr 3   control c0 00 wValue=0104 wIndex=0000 wLength=260 -> 260 (GetFileSize "config.txt")
type TraceRecord struct {
	Elapsed time.Duration // since the trace started
	Port    string
	Address int
	Kind    string // "attach", "open", "claim", "close", "control", "bulk"
	// control only
	RequestType, Request uint8
	Value, Index, Length uint16
	EP                   uint8 // bulk, claim
	Len                  int   // bulk: bytes offered
	N                    int   // bytes transferred
	Err                  string
	Note                 string
}

// Body renders the part after the address, as usbboottest transcripts do.
func (r TraceRecord) Body() string {
	var s string
	switch r.Kind {
	case "control":
		s = fmt.Sprintf("control %02x %02x wValue=%04x wIndex=%04x wLength=%d -> %d", r.RequestType, r.Request, r.Value, r.Index, r.Length, r.N)
	case "bulk":
		s = fmt.Sprintf("bulk    ep=%02x len=%d -> %d", r.EP, r.Len, r.N)
	default:
		s = r.Kind
	}
	if r.Err != "" {
		s += " error: " + r.Err
	}
	if r.Note != "" {
		s += " (" + r.Note + ")"
	}
	return s
}

// String renders the whole line.
func (r TraceRecord) String() string {
	return fmt.Sprintf("%8.3fs %s addr %-3d %s", r.Elapsed.Seconds(), r.Port, r.Address, r.Body())
}

// Tracer writes a trace, one line per record, from any goroutine.
type Tracer struct {
	mu    sync.Mutex
	w     io.Writer
	clock Clock
	start time.Time
	err   error
}

// NewTracer starts a trace on w (the header is written at once).
func NewTracer(w io.Writer, clock Clock) *Tracer {
	if clock == nil {
		clock = SystemClock{}
	}
	t := &Tracer{w: w, clock: clock, start: clock.Now()}
	_, t.err = fmt.Fprintln(w, TraceHeader)
	return t
}

// Record writes r, stamped with the time since the trace started.
func (t *Tracer) Record(r TraceRecord) {
	if t == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	r.Elapsed = t.clock.Now().Sub(t.start)
	if t.err == nil {
		_, t.err = fmt.Fprintln(t.w, r.String())
	}
}

// Err is the first write error, if any.
func (t *Tracer) Err() error {
	if t == nil {
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.err
}

// traced wraps dev so every transfer is written to the trace.
func (s *Server) traced(dev Device) Device {
	if s.Trace == nil {
		return dev
	}
	d := dev.Desc()
	s.Trace.Record(TraceRecord{Port: d.Port, Address: d.Address, Kind: "open"})
	return &tracedDevice{Device: dev, t: s.Trace, desc: d}
}

type tracedDevice struct {
	Device
	t    *Tracer
	desc Desc
	ep   uint8
}

// seamName is the short name of a seam error, for the trace.
func seamName(err error) string {
	for _, e := range []error{ErrTimeout, ErrStall, ErrDisconnected, ErrIO, ErrAccess} {
		if errors.Is(err, e) {
			return e.Error()
		}
	}
	return err.Error()
}

func (d *tracedDevice) Control(rType, req uint8, val, idx uint16, data []byte, timeout time.Duration) (int, error) {
	n, err := d.Device.Control(rType, req, val, idx, data, timeout)
	r := TraceRecord{Port: d.desc.Port, Address: d.desc.Address, Kind: "control", RequestType: rType, Request: req,
		Value: val, Index: idx, Length: uint16(len(data)), N: n}
	if err != nil {
		r.Err = seamName(err)
	}
	if err == nil && rType == ReqTypeIn && req == ReqVendor && len(data) == RequestSize && n >= MinRequestSize {
		buf := make([]byte, RequestSize)
		copy(buf, data[:n])
		if q, perr := ParseRequest(buf); perr == nil {
			r.Note = fmt.Sprintf("%s %q", q.Command, q.Name)
		}
	}
	if err == nil && rType == 0x80 && req == 6 && val == 0x0100 && n >= 17 {
		r.Note = fmt.Sprintf("%02x%02x:%02x%02x iSerial=%d", data[9], data[8], data[11], data[10], data[16])
	}
	d.t.Record(r)
	return n, err
}

func (d *tracedDevice) Claim(iface int, outEP uint8) error {
	err := d.Device.Claim(iface, outEP)
	r := TraceRecord{Port: d.desc.Port, Address: d.desc.Address, Kind: "claim", EP: outEP, Note: fmt.Sprintf("interface %d ep %02x", iface, outEP)}
	if err != nil {
		r.Err = seamName(err)
	} else {
		d.ep = outEP
	}
	d.t.Record(r)
	return err
}

func (d *tracedDevice) WriteBulk(ctx context.Context, p []byte) (int, error) {
	n, err := d.Device.WriteBulk(ctx, p)
	r := TraceRecord{Port: d.desc.Port, Address: d.desc.Address, Kind: "bulk", EP: d.ep, Len: len(p), N: n}
	if err != nil {
		r.Err = seamName(err)
	}
	d.t.Record(r)
	return n, err
}

func (d *tracedDevice) Close() error {
	d.t.Record(TraceRecord{Port: d.desc.Port, Address: d.desc.Address, Kind: "close"})
	return d.Device.Close()
}

// ParseTrace reads a trace written by Tracer. Blank lines and lines
// starting with '#' are skipped.
func ParseTrace(r io.Reader) ([]TraceRecord, error) {
	var out []TraceRecord
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		rec, err := ParseTraceLine(text)
		if err != nil {
			return out, fmt.Errorf("usbboot: trace line %d: %w", line, err)
		}
		out = append(out, rec)
	}
	if err := sc.Err(); err != nil {
		return out, fmt.Errorf("usbboot: read trace: %w", err)
	}
	return out, nil
}

// ParseTraceLine decodes one line of TraceRecord.String.
func ParseTraceLine(text string) (TraceRecord, error) {
	var r TraceRecord
	f := strings.Fields(text)
	if len(f) < 5 || !strings.HasSuffix(f[0], "s") || f[2] != "addr" {
		return r, fmt.Errorf("not a trace line: %q", text)
	}
	secs, err := strconv.ParseFloat(strings.TrimSuffix(f[0], "s"), 64)
	if err != nil || secs < 0 || secs > 1e9 {
		return r, fmt.Errorf("bad time %q", f[0])
	}
	r.Elapsed = time.Duration(secs * float64(time.Second))
	r.Port = f[1]
	if r.Address, err = strconv.Atoi(f[3]); err != nil || r.Address < 0 || r.Address > 127 {
		return r, fmt.Errorf("bad address %q", f[3])
	}
	r.Kind = f[4]
	// the rest after the kind: fields, then " error: X", then " (note)"
	rest := text[strings.Index(text, " "+f[3]+" ")+len(f[3])+2:]
	rest = strings.TrimLeft(rest, " ")
	rest = strings.TrimPrefix(rest, r.Kind)
	if i := strings.Index(rest, " ("); i >= 0 && strings.HasSuffix(rest, ")") {
		r.Note = rest[i+2 : len(rest)-1]
		rest = rest[:i]
	}
	if i := strings.Index(rest, " error: "); i >= 0 {
		r.Err = rest[i+len(" error: "):]
		rest = rest[:i]
	}
	args := strings.Fields(rest)
	hexv := func(s string, bits int) (uint64, error) { return strconv.ParseUint(s, 16, bits) }
	switch r.Kind {
	case "control":
		// 40 00 wValue=0018 wIndex=0000 wLength=0 -> 0
		if len(args) != 7 || args[5] != "->" {
			return r, fmt.Errorf("bad control record %q", rest)
		}
		vals := make([]uint64, 0, 6)
		for i, a := range args[:5] {
			if i >= 2 {
				k, v, ok := strings.Cut(a, "=")
				if !ok || k != [...]string{"wValue", "wIndex", "wLength"}[i-2] {
					return r, fmt.Errorf("bad control field %q", a)
				}
				a = v
			}
			base, bits := 16, 8
			if i >= 2 {
				bits = 16
			}
			if i == 4 {
				base = 10
			}
			x, err := strconv.ParseUint(a, base, bits)
			if err != nil {
				return r, fmt.Errorf("bad control field %q", a)
			}
			vals = append(vals, x)
		}
		n, err := strconv.Atoi(args[6])
		if err != nil || n < 0 || n > 1<<16 {
			return r, fmt.Errorf("bad length %q", args[6])
		}
		r.RequestType, r.Request = uint8(vals[0]), uint8(vals[1])
		r.Value, r.Index, r.Length, r.N = uint16(vals[2]), uint16(vals[3]), uint16(vals[4]), n
	case "bulk":
		// ep=01 len=16384 -> 16384
		if len(args) != 4 || args[2] != "->" || !strings.HasPrefix(args[0], "ep=") || !strings.HasPrefix(args[1], "len=") {
			return r, fmt.Errorf("bad bulk record %q", rest)
		}
		ep, err := hexv(args[0][3:], 8)
		if err != nil {
			return r, fmt.Errorf("bad endpoint %q", args[0])
		}
		l, err1 := strconv.Atoi(args[1][4:])
		n, err2 := strconv.Atoi(args[3])
		if err1 != nil || err2 != nil || l < 0 || n < 0 || n > l {
			return r, fmt.Errorf("bad bulk lengths %q", rest)
		}
		r.EP, r.Len, r.N = uint8(ep), l, n
	case "attach", "open", "claim", "close":
		if len(args) != 0 {
			return r, fmt.Errorf("unexpected fields after %s: %q", r.Kind, rest)
		}
	default:
		return r, fmt.Errorf("unknown record kind %q", r.Kind)
	}
	return r, nil
}

// TraceRequest decodes the file-server request a control record carries
// in its note (`GetFileSize "config.txt"`); ok is false for other records.
func TraceRequest(r TraceRecord) (Request, bool) {
	if r.Kind != "control" || r.RequestType != ReqTypeIn || r.Length != RequestSize || r.Err != "" {
		return Request{}, false
	}
	cmd, name, found := strings.Cut(r.Note, " ")
	if !found {
		return Request{}, false
	}
	q, err := strconv.Unquote(name)
	if err != nil {
		return Request{}, false
	}
	for _, c := range []Command{GetFileSize, ReadFile, Done} {
		if c.String() == cmd {
			return Request{Command: c, Name: q}, true
		}
	}
	return Request{}, false
}
