// Package pcap reads and writes the classic libpcap file format
// (microsecond timestamps, little-endian), in pure Go: enough for
// `netboot serve --capture` to hand a technician a file that tshark,
// tcpdump and Wireshark open, and for tests to read it back.
//
// Format: a 24-byte global header (magic a1b2c3d4, version 2.4, snaplen,
// link type), then per packet a 16-byte record header (seconds,
// microseconds, captured length, original length) and the captured bytes.
package pcap

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"
)

// Link types.
const (
	LinkEthernet uint32 = 1
	LinkRaw      uint32 = 101 // raw IPv4/IPv6
)

const (
	magicMicros  = 0xa1b2c3d4
	globalHeader = 24
	recordHeader = 16
	// MaxSnapLen is the largest snapshot length accepted when reading.
	MaxSnapLen = 262144
)

// ErrFormat marks input that is not a pcap file this package reads.
var ErrFormat = errors.New("pcap: not a readable pcap file")

// Writer writes packets to a pcap stream.
type Writer struct {
	w       io.Writer
	snapLen uint32
}

// NewWriter writes the global header and returns a Writer.
func NewWriter(w io.Writer, snapLen, linkType uint32) (*Writer, error) {
	if snapLen == 0 || snapLen > MaxSnapLen {
		snapLen = MaxSnapLen
	}
	h := make([]byte, globalHeader)
	binary.LittleEndian.PutUint32(h[0:], magicMicros)
	binary.LittleEndian.PutUint16(h[4:], 2)
	binary.LittleEndian.PutUint16(h[6:], 4)
	binary.LittleEndian.PutUint32(h[16:], snapLen)
	binary.LittleEndian.PutUint32(h[20:], linkType)
	if _, err := w.Write(h); err != nil {
		return nil, fmt.Errorf("pcap: write header: %w", err)
	}
	return &Writer{w: w, snapLen: snapLen}, nil
}

// WritePacket writes one packet seen at t (truncated to the snap length).
func (w *Writer) WritePacket(t time.Time, data []byte) error {
	orig := len(data)
	if uint32(len(data)) > w.snapLen {
		data = data[:w.snapLen]
	}
	h := make([]byte, recordHeader, recordHeader+len(data))
	binary.LittleEndian.PutUint32(h[0:], uint32(t.Unix()))
	binary.LittleEndian.PutUint32(h[4:], uint32(t.Nanosecond()/1000))
	binary.LittleEndian.PutUint32(h[8:], uint32(len(data)))
	binary.LittleEndian.PutUint32(h[12:], uint32(orig))
	if _, err := w.w.Write(append(h, data...)); err != nil {
		return fmt.Errorf("pcap: write packet: %w", err)
	}
	return nil
}

// Packet is one record read back.
type Packet struct {
	Time time.Time
	Data []byte
	Orig int // original length on the wire
}

// Reader reads a pcap stream (either byte order, microsecond or
// nanosecond timestamps).
type Reader struct {
	r        io.Reader
	order    binary.ByteOrder
	nanos    bool
	snapLen  uint32
	LinkType uint32
}

// NewReader reads the global header.
func NewReader(r io.Reader) (*Reader, error) {
	h := make([]byte, globalHeader)
	if _, err := io.ReadFull(r, h); err != nil {
		return nil, fmt.Errorf("%w: header: %w", ErrFormat, err)
	}
	rd := &Reader{r: r}
	switch m := binary.LittleEndian.Uint32(h); m {
	case 0xa1b2c3d4:
		rd.order = binary.LittleEndian
	case 0xa1b23c4d:
		rd.order, rd.nanos = binary.LittleEndian, true
	case 0xd4c3b2a1:
		rd.order = binary.BigEndian
	case 0x4d3cb2a1:
		rd.order, rd.nanos = binary.BigEndian, true
	default:
		return nil, fmt.Errorf("%w: magic %08x", ErrFormat, m)
	}
	if major := rd.order.Uint16(h[4:]); major != 2 {
		return nil, fmt.Errorf("%w: version %d", ErrFormat, major)
	}
	rd.snapLen = rd.order.Uint32(h[16:])
	rd.LinkType = rd.order.Uint32(h[20:]) & 0x0fffffff
	if rd.snapLen == 0 || rd.snapLen > MaxSnapLen {
		rd.snapLen = MaxSnapLen
	}
	return rd, nil
}

// Next returns the next packet, or io.EOF at a clean end. A record cut
// short is an error (io.ErrUnexpectedEOF).
func (rd *Reader) Next() (Packet, error) {
	h := make([]byte, recordHeader)
	if _, err := io.ReadFull(rd.r, h); err != nil {
		if errors.Is(err, io.EOF) {
			return Packet{}, io.EOF
		}
		return Packet{}, fmt.Errorf("pcap: record header: %w", err)
	}
	sec, frac := rd.order.Uint32(h[0:]), rd.order.Uint32(h[4:])
	capLen, orig := rd.order.Uint32(h[8:]), rd.order.Uint32(h[12:])
	if capLen > rd.snapLen || capLen > MaxSnapLen {
		return Packet{}, fmt.Errorf("%w: record of %d bytes, snap length %d", ErrFormat, capLen, rd.snapLen)
	}
	data := make([]byte, capLen)
	if _, err := io.ReadFull(rd.r, data); err != nil {
		return Packet{}, fmt.Errorf("pcap: record of %d bytes: %w", capLen, io.ErrUnexpectedEOF)
	}
	ns := int64(frac) * 1000
	if rd.nanos {
		ns = int64(frac)
	}
	return Packet{Time: time.Unix(int64(sec), ns).UTC(), Data: data, Orig: int(orig)}, nil
}
