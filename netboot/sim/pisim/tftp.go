package pisim

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// TFTP opcodes (RFC 1350, RFC 2347).
const (
	opRRQ   = 1
	opDATA  = 3
	opACK   = 4
	opERROR = 5
	opOACK  = 6
)

// TFTP error codes the bootloader sends or interprets.
const (
	errCodeNotDefined = 0 // used with "Early terminate" by the Pi's probes
	errCodeNotFound   = 1
)

// EarlyTerminate is the error text the Pi sends (code 0) when it aborts a
// probe right after the OACK (raspberrypi/firmware#1700).
const EarlyTerminate = "Early terminate"

// maxBlocks is the Pi 4 bootloader's block counter limit: it does not roll
// over past 65535 (README, "DHCP: what a Pi gets"), so no file may span more blocks.
const maxBlocks = 65535

// ErrNotFound is wrapped by Fetch when the server answers ERROR code 1.
var ErrNotFound = errors.New("tftp: file not found")

// ErrTimeout is wrapped when a transfer exceeds TFTP_FILE_TIMEOUT.
var ErrTimeout = errors.New("tftp: timeout")

// RRQ builds a read request exactly as the Pi 4 bootloader sends it:
// `<name> octet tsize 0 blksize <blksize>`.
func RRQ(name string, blksize int) []byte {
	var b bytes.Buffer
	b.Write([]byte{0, opRRQ})
	for _, s := range []string{name, "octet", "tsize", "0", "blksize", strconv.Itoa(blksize)} {
		b.WriteString(s)
		b.WriteByte(0)
	}
	return b.Bytes()
}

func ack(block uint16) []byte { return []byte{0, opACK, byte(block >> 8), byte(block)} }

func errorPacket(code uint16, msg string) []byte {
	b := []byte{0, opERROR, byte(code >> 8), byte(code)}
	b = append(b, msg...)
	return append(b, 0)
}

// Packet is one decoded TFTP packet from the server.
type Packet struct {
	Op      uint16
	Block   uint16            // DATA, ACK
	Data    []byte            // DATA payload
	Code    uint16            // ERROR
	Message string            // ERROR
	Options map[string]string // OACK, lower-case names
}

// ParsePacket decodes a server-to-client TFTP packet (DATA, ERROR, OACK, or
// ACK). It never panics on malformed input.
func ParsePacket(p []byte) (Packet, error) {
	if len(p) < 2 {
		return Packet{}, fmt.Errorf("tftp packet: %d bytes, too short for an opcode", len(p))
	}
	pk := Packet{Op: binary.BigEndian.Uint16(p)}
	body := p[2:]
	switch pk.Op {
	case opDATA, opACK:
		if len(body) < 2 {
			return pk, fmt.Errorf("tftp packet: opcode %d without a block number", pk.Op)
		}
		pk.Block = binary.BigEndian.Uint16(body)
		if pk.Op == opACK && len(body) != 2 {
			return pk, fmt.Errorf("tftp packet: ACK of %d bytes", len(p))
		}
		pk.Data = body[2:]
	case opERROR:
		if len(body) < 2 {
			return pk, errors.New("tftp packet: ERROR without a code")
		}
		pk.Code = binary.BigEndian.Uint16(body)
		msg := body[2:]
		i := bytes.IndexByte(msg, 0)
		if i < 0 {
			return pk, errors.New("tftp packet: ERROR message not NUL-terminated")
		}
		pk.Message = string(msg[:i])
	case opOACK:
		pk.Options = map[string]string{}
		fields := bytes.Split(body, []byte{0})
		if len(body) == 0 || body[len(body)-1] != 0 {
			return pk, errors.New("tftp packet: OACK not NUL-terminated")
		}
		fields = fields[:len(fields)-1]
		if len(fields)%2 != 0 {
			return pk, fmt.Errorf("tftp packet: OACK has %d strings, want name/value pairs", len(fields))
		}
		for i := 0; i < len(fields); i += 2 {
			pk.Options[strings.ToLower(string(fields[i]))] = string(fields[i+1])
		}
	default:
		return pk, fmt.Errorf("tftp packet: unexpected opcode %d", pk.Op)
	}
	return pk, nil
}

// Transfer is the outcome of one RRQ.
type Transfer struct {
	Name     string
	Probe    bool          // aborted with Early terminate after the first answer
	Size     int64         // tsize from the OACK, or bytes received
	Bytes    int64         // payload bytes received
	BlkSize  int           // negotiated block size
	Duration time.Duration // RRQ to last ACK
	RRQs     int           // RRQs sent (retransmits on silence)
}

// tftpClient is the bootloader's TFTP client for one boot: fixed server,
// block size and per-file timeout.
type tftpClient struct {
	server  net.IP
	blksize int
	timeout time.Duration // TFTP_FILE_TIMEOUT
	retry   time.Duration // RRQ/ACK retransmit interval
	listen  func() (net.PacketConn, error)
	// pace, when set, is the bootloader's own time per block (its
	// turnaround): each ACK goes no earlier than start + blocks x pace.
	pace time.Duration
}

// fetch reads name into w. With probe set it stops after the first answer
// the way the Pi does: ERROR code 0 "Early terminate".
func (c *tftpClient) fetch(ctx context.Context, name string, probe bool, w io.Writer) (Transfer, error) {
	tr := Transfer{Name: name, Probe: probe, BlkSize: 512}
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	conn, err := c.listen()
	if err != nil {
		return tr, fmt.Errorf("tftp %s: open socket: %w", name, err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()

	srv := &net.UDPAddr{IP: c.server, Port: 69}
	rrq := RRQ(name, c.blksize)
	var peer *net.UDPAddr
	last := rrq // what to retransmit on silence
	send := func(p []byte) error {
		to := srv
		if peer != nil {
			to = peer
		}
		_, err := conn.WriteTo(p, to)
		return err
	}
	if err := send(rrq); err != nil {
		return tr, fmt.Errorf("tftp %s: send RRQ: %w", name, err)
	}
	tr.RRQs = 1
	buf := make([]byte, 65536)
	var expect uint16 = 1
	gotOACK := false
	for {
		if ctx.Err() != nil {
			return tr, ctxErr(ctx, name)
		}
		conn.SetReadDeadline(time.Now().Add(c.retry))
		n, from, err := conn.ReadFrom(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				if ctx.Err() != nil {
					return tr, ctxErr(ctx, name)
				}
				if err := send(last); err != nil {
					return tr, fmt.Errorf("tftp %s: retransmit: %w", name, err)
				}
				if peer == nil {
					tr.RRQs++
				}
				continue
			}
			return tr, fmt.Errorf("tftp %s: read: %w", name, err)
		}
		ua, _ := from.(*net.UDPAddr)
		if ua == nil || !ua.IP.Equal(c.server) {
			continue
		}
		if peer == nil {
			peer = ua // the server's transfer ID
		} else if ua.Port != peer.Port {
			conn.WriteTo(errorPacket(5, "Unknown transfer ID"), ua)
			continue
		}
		pk, err := ParsePacket(buf[:n])
		if err != nil {
			return tr, fmt.Errorf("tftp %s: %w", name, err)
		}
		switch pk.Op {
		case opERROR:
			if pk.Code == errCodeNotFound {
				return tr, fmt.Errorf("tftp %s: %w (%q)", name, ErrNotFound, pk.Message)
			}
			return tr, fmt.Errorf("tftp %s: server error %d: %q", name, pk.Code, pk.Message)
		case opOACK:
			if gotOACK || expect != 1 {
				continue // a duplicate OACK: our ACK 0 was lost, resend it below
			}
			gotOACK = true
			if v, ok := pk.Options["tsize"]; ok {
				tr.Size, _ = strconv.ParseInt(v, 10, 64)
			}
			tr.BlkSize = 512
			if v, ok := pk.Options["blksize"]; ok {
				bs, err := strconv.Atoi(v)
				if err != nil || bs < 8 || bs > c.blksize {
					send(errorPacket(8, "bad blksize"))
					return tr, fmt.Errorf("tftp %s: server chose blksize %q, asked for at most %d", name, v, c.blksize)
				}
				tr.BlkSize = bs
			}
			if probe {
				send(errorPacket(errCodeNotDefined, EarlyTerminate))
				tr.Duration = time.Since(start)
				return tr, nil
			}
			if tr.Size > int64(maxBlocks)*int64(tr.BlkSize) {
				send(errorPacket(errCodeNotDefined, "file too big"))
				return tr, fmt.Errorf("tftp %s: %d bytes need more than %d blocks of %d: the Pi 4 bootloader's block counter does not roll over", name, tr.Size, maxBlocks, tr.BlkSize)
			}
			last = ack(0)
			if err := send(last); err != nil {
				return tr, fmt.Errorf("tftp %s: send ACK 0: %w", name, err)
			}
		case opDATA:
			if probe && !gotOACK {
				// Server ignored the options: abort on the first DATA.
				send(errorPacket(errCodeNotDefined, EarlyTerminate))
				tr.Duration = time.Since(start)
				return tr, nil
			}
			if pk.Block != expect {
				if pk.Block == expect-1 {
					send(ack(pk.Block)) // re-ACK a block we already have
				}
				continue
			}
			if len(pk.Data) > tr.BlkSize {
				return tr, fmt.Errorf("tftp %s: block %d has %d bytes, blksize is %d", name, pk.Block, len(pk.Data), tr.BlkSize)
			}
			if _, err := w.Write(pk.Data); err != nil {
				send(errorPacket(3, "disk full"))
				return tr, fmt.Errorf("tftp %s: store block %d: %w", name, pk.Block, err)
			}
			tr.Bytes += int64(len(pk.Data))
			if c.pace > 0 {
				if d := time.Until(start.Add(time.Duration(tr.Bytes/int64(tr.BlkSize)) * c.pace)); d > 0 {
					time.Sleep(d)
				}
			}
			last = ack(pk.Block)
			if err := send(last); err != nil {
				return tr, fmt.Errorf("tftp %s: send ACK %d: %w", name, pk.Block, err)
			}
			if len(pk.Data) < tr.BlkSize {
				tr.Duration = time.Since(start)
				if gotOACK && tr.Size != tr.Bytes {
					return tr, fmt.Errorf("tftp %s: got %d bytes, OACK said tsize %d", name, tr.Bytes, tr.Size)
				}
				if !gotOACK {
					tr.Size = tr.Bytes
				}
				return tr, nil
			}
			if expect == maxBlocks {
				send(errorPacket(errCodeNotDefined, "block counter overflow"))
				return tr, fmt.Errorf("tftp %s: more than %d blocks: the Pi 4 bootloader's block counter does not roll over", name, maxBlocks)
			}
			expect++
		default:
			// ACKs from a server are meaningless to a reader; ignore.
		}
	}
}

func ctxErr(ctx context.Context, name string) error {
	if errors.Is(context.Cause(ctx), context.DeadlineExceeded) || errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("tftp %s: %w (TFTP_FILE_TIMEOUT)", name, ErrTimeout)
	}
	return fmt.Errorf("tftp %s: %w", name, ctx.Err())
}
