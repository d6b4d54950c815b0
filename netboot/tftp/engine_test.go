package tftp

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	pintftp "github.com/pin/tftp/v3"
)

func TestParseRequest(t *testing.T) {
	for _, tt := range []struct {
		name string
		pkt  string
		want request
		err  string
	}{
		{"rrq", "\x00\x01start4.elf\x00octet\x00", request{op: opRRQ, name: "start4.elf", mode: "octet"}, ""},
		{"options lower-cased, order kept", "\x00\x01a/b\x00OCTET\x00TSize\x000\x00blksize\x001468\x00",
			request{op: opRRQ, name: "a/b", mode: "octet", opts: []option{{"tsize", "0"}, {"blksize", "1468"}}}, ""},
		{"wrq", "\x00\x02up.bin\x00netascii\x00", request{op: opWRQ, name: "up.bin", mode: "netascii"}, ""},
		{"short", "\x00", request{}, "1 bytes"},
		{"data is no request", "\x00\x03\x00\x01", request{}, "opcode 3"},
		{"no NUL after the mode", "\x00\x01f\x00octet", request{}, "NUL"},
		{"empty name", "\x00\x01\x00octet\x00", request{}, "empty filename"},
		{"mail mode", "\x00\x01f\x00mail\x00", request{}, "transfer mode"},
		{"option without a value", "\x00\x01f\x00octet\x00blksize\x00", request{}, "no value"},
		{"oversized", "\x00\x01" + strings.Repeat("a", 600) + "\x00octet\x00", request{}, "more than 512"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseRequest([]byte(tt.pkt))
			if tt.err != "" {
				if err == nil || !errors.Is(err, errMalformed) || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("error %v, want one saying %q", err, tt.err)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

// FuzzParseRequest: no input panics, and what parses encodes back to a
// packet that parses the same.
func FuzzParseRequest(f *testing.F) {
	f.Add([]byte("\x00\x01start4.elf\x00octet\x00tsize\x000\x00blksize\x001024\x00"))
	f.Add([]byte("\x00\x02x\x00netascii\x00"))
	f.Add([]byte("\x00\x01\x00\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := parseRequest(b)
		if err != nil {
			return
		}
		again, err := parseRequest(r.marshal())
		if err != nil || !reflect.DeepEqual(again, r) {
			t.Fatalf("%q parsed to %+v, which encodes to something parsing as %+v, %v", b, r, again, err)
		}
	})
}

func TestNegotiate(t *testing.T) {
	for _, tt := range []struct {
		name    string
		opts    []option
		max     int
		size    int64
		want    []option
		blksize int
	}{
		{"none", nil, 1468, 10, nil, 512},
		{"Pi request", []option{{"tsize", "0"}, {"blksize", "1024"}}, 1468, 300000,
			[]option{{"tsize", "300000"}, {"blksize", "1024"}}, 1024},
		{"clamped", []option{{"blksize", "65464"}}, 1468, 1, []option{{"blksize", "1468"}}, 1468},
		{"too small or junk: left out", []option{{"blksize", "7"}, {"blksize", "x"}}, 1468, 1, nil, 512},
		{"netascii has no tsize", []option{{"tsize", "0"}}, 1468, -1, nil, 512},
		{"windowsize and timeout left out", []option{{"windowsize", "8"}, {"timeout", "1"}}, 1468, 1, nil, 512},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, bs := negotiate(tt.opts, tt.max, tt.size)
			if !reflect.DeepEqual(got, tt.want) || bs != tt.blksize {
				t.Fatalf("negotiate = %+v, %d; want %+v, %d", got, bs, tt.want, tt.blksize)
			}
		})
	}
}

// rawClient is a hand-driven TFTP client for the lock-step corner cases.
type rawClient struct {
	t    testing.TB
	c    *net.UDPConn
	srv  *net.UDPAddr // the transfer's TID once known
	buf  []byte
	port *net.UDPAddr // the server's port 69 stand-in
}

func newRawClient(t testing.TB, addr string) *rawClient {
	t.Helper()
	srv, err := net.ResolveUDPAddr("udp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: srv.IP})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawClient{t: t, c: c, port: srv, buf: make([]byte, 70000)}
}

func (r *rawClient) send(to *net.UDPAddr, p []byte) {
	r.t.Helper()
	if _, err := r.c.WriteToUDP(p, to); err != nil {
		r.t.Fatal(err)
	}
}

// recv returns the next packet within d, or nil.
func (r *rawClient) recv(d time.Duration) []byte {
	r.t.Helper()
	r.c.SetReadDeadline(time.Now().Add(d))
	n, from, err := r.c.ReadFromUDP(r.buf)
	if err != nil {
		return nil
	}
	r.srv = from
	return append([]byte(nil), r.buf[:n]...)
}

// start sends rrq (no options) and expects DATA 1 from the transfer's port.
func (r *rawClient) start(rrq []byte) {
	r.t.Helper()
	r.send(r.port, rrq)
	if p := r.recv(time.Second); !isData(p, 1) {
		r.t.Fatalf("%q, want DATA 1", p)
	}
}

// receive fetches name with pin/tftp's client.
func receive(t *testing.T, addr, name, mode string) []byte {
	t.Helper()
	c, err := pintftp.NewClient(addr)
	if err != nil {
		t.Fatal(err)
	}
	wt, err := c.Receive(name, mode)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	var got bytes.Buffer
	if _, err := wt.WriteTo(&got); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return got.Bytes()
}

func ack(block uint16) []byte { return binary.BigEndian.AppendUint16([]byte{0, opACK}, block) }

func isData(p []byte, block uint16) bool {
	return len(p) >= 4 && binary.BigEndian.Uint16(p) == opDATA && binary.BigEndian.Uint16(p[2:]) == block
}

// TestLockStep drives the engine by hand: a lost ACK gets the block again
// after the timeout, a duplicate ACK is never answered with a second copy
// (the Sorcerer's Apprentice bug, which would double the traffic), the last
// block is short, and the transfer is counted once.
func TestLockStep(t *testing.T) {
	rootDir, _ := makeRoot(t)
	ev := newEvents()
	srv := &Server{Root: rootDir, Events: ev.add, Timeout: 200 * time.Millisecond}
	addr := startLoopback(t, srv)
	want, _ := os.ReadFile(filepath.Join(rootDir, "exact512.bin")) // 3 blocks of 512, then an empty one
	c := newRawClient(t, addr)
	c.send(c.port, request{op: opRRQ, name: "exact512.bin", mode: "octet"}.marshal())
	p := c.recv(time.Second)
	if !isData(p, 1) || !bytes.Equal(p[4:], want[:512]) {
		t.Fatalf("first answer %q, want DATA 1 (no options, no OACK)", p)
	}
	// Lose the ACK: the same block comes again, once per timeout.
	start := time.Now()
	if p = c.recv(2 * time.Second); !isData(p, 1) {
		t.Fatalf("after a lost ACK: %q, want DATA 1 again", p)
	}
	if el := time.Since(start); el < 150*time.Millisecond {
		t.Errorf("retransmitted after %v, want about the 200ms timeout", el)
	}
	c.send(c.srv, ack(1))
	if p = c.recv(time.Second); !isData(p, 2) {
		t.Fatalf("after ACK 1: %q, want DATA 2", p)
	}
	c.send(c.srv, ack(1)) // a duplicate of the old ACK
	c.send(c.srv, ack(2))
	if p = c.recv(time.Second); !isData(p, 3) {
		t.Fatalf("after ACK 2: %q, want DATA 3", p)
	}
	if extra := c.recv(100 * time.Millisecond); extra != nil {
		t.Fatalf("the duplicate ACK 1 was answered: %q", extra)
	}
	c.send(c.srv, ack(3))
	if p = c.recv(time.Second); !isData(p, 4) || len(p) != 4 {
		t.Fatalf("after ACK 3: %q, want an empty DATA 4 (the file is a multiple of 512)", p)
	}
	c.send(c.srv, ack(4))
	e := ev.wait(t, "tftp.transfer")
	if e.Fields["bytes"] != int64(len(want)) {
		t.Errorf("event %+v", e)
	}
	if st := srv.Stats(); st.Transfers != 1 || st.Failures != 0 {
		t.Errorf("stats %+v", st)
	}
}

// TestTransferFailures: a client that stops answering, one that aborts and
// one whose port is closed each end as a failure with a plain reason, and
// the slot is free again.
func TestTransferFailures(t *testing.T) {
	rootDir, _ := makeRoot(t)
	ev := newEvents()
	srv := &Server{Root: rootDir, Events: ev.add, Timeout: 50 * time.Millisecond, Retries: 3, MaxPerClient: 1}
	addr := startLoopback(t, srv)
	rrq := request{op: opRRQ, name: "start4.elf", mode: "octet"}.marshal()

	t.Run("silent client", func(t *testing.T) {
		c := newRawClient(t, addr)
		c.send(c.port, rrq)
		copies := 0
		var last []byte
		for p := c.recv(time.Second); p != nil; p = c.recv(time.Second) {
			if isData(p, 1) {
				copies++
			}
			last = p
		}
		if copies != 4 { // the first send and 3 retransmissions
			t.Errorf("DATA 1 sent %d times, want 4 (Retries 3)", copies)
		}
		if code, msg := parseError(last); binary.BigEndian.Uint16(last) != opERROR || code != 0 || msg != "timeout" {
			t.Errorf("last packet %q, want ERROR timeout", last)
		}
		e := ev.wait(t, "tftp.error")
		if msg, _ := e.Fields["error"].(string); !strings.Contains(msg, "no ACK after 3 retransmissions") {
			t.Errorf("event %+v", e)
		}
	})
	t.Run("client aborts mid-transfer", func(t *testing.T) {
		c := newRawClient(t, addr)
		c.start(rrq)
		c.send(c.srv, ack(1))
		c.recv(time.Second)
		c.send(c.srv, appendError(nil, 3, "disk full"))
		e := ev.wait(t, "tftp.error")
		if msg, _ := e.Fields["error"].(string); !strings.Contains(msg, `code=3, "disk full"`) || e.Fields["bytes"] != int64(1024) {
			t.Errorf("event %+v", e)
		}
	})
	t.Run("client port closed", func(t *testing.T) {
		c := newRawClient(t, addr)
		c.start(rrq)
		c.c.Close() // the next retransmission meets ICMP port unreachable
		e := ev.wait(t, "tftp.error")
		if msg, _ := e.Fields["error"].(string); !strings.Contains(msg, "went away") {
			t.Errorf("event %+v", e)
		}
	})
	// The per-client slot (MaxPerClient 1) was released each time.
	receive(t, addr, "start4.elf", "octet")
	ev.wait(t, "tftp.transfer") // the server counts once it has the last ACK
	if st := srv.Stats(); st.Failures != 3 || st.Transfers != 1 {
		t.Errorf("stats %+v, want 3 failures and 1 transfer", st)
	}
}

// TestRequestRefusals: a write request, a malformed request and a mode
// the server does not speak get an ERROR from a new port, and no transfer.
func TestRequestRefusals(t *testing.T) {
	rootDir, _ := makeRoot(t)
	srv := &Server{Root: rootDir}
	addr := startLoopback(t, srv)
	for _, tt := range []struct {
		name string
		pkt  []byte
		code uint16
		msg  string
	}{
		{"write", request{op: opWRQ, name: "config.txt", mode: "octet"}.marshal(), codeAccess, errReadOnly},
		{"malformed", []byte("\x00\x01config.txt"), codeIllegalOp, "illegal TFTP operation"},
		{"mail mode", []byte("\x00\x01config.txt\x00mail\x00"), codeIllegalOp, "illegal TFTP operation"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := newRawClient(t, addr)
			c.send(c.port, tt.pkt)
			p := c.recv(time.Second)
			if len(p) < 4 || binary.BigEndian.Uint16(p) != opERROR {
				t.Fatalf("answer %q, want ERROR", p)
			}
			if code, msg := parseError(p); code != tt.code || msg != tt.msg {
				t.Errorf("ERROR %d %q, want %d %q", code, msg, tt.code, tt.msg)
			}
			if c.srv.Port == c.port.Port {
				t.Errorf("ERROR came from the server port %d, want a new one", c.srv.Port)
			}
		})
	}
	if data, err := os.ReadFile(filepath.Join(rootDir, "config.txt")); err != nil || string(data) != "root config\n" {
		t.Errorf("config.txt after a write request: %q, %v", data, err)
	}
	if st := srv.Stats(); st.Denied != 1 || st.Transfers != 0 {
		t.Errorf("stats %+v, want the write request denied", st)
	}
}

// TestNetasciiAndBlockWrap: netascii converts line ends (pin/tftp's
// client decodes them back), and a transfer past 65535 blocks wraps the
// block number to 0 as dnsmasq and pin/tftp do.
func TestNetasciiAndBlockWrap(t *testing.T) {
	rootDir, _ := makeRoot(t)
	text := "line one\nline two\r\n"
	if err := os.WriteFile(filepath.Join(rootDir, "notes.txt"), []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	big := bytes.Repeat([]byte{0xa5, 0x5a, 0x00, 0xff}, (65536*512+300)/4)
	if err := os.WriteFile(filepath.Join(rootDir, "wrap.bin"), big, 0o644); err != nil {
		t.Fatal(err)
	}
	srv := &Server{Root: rootDir}
	addr := startLoopback(t, srv)
	for _, tt := range []struct {
		name, mode string
		want       []byte
	}{
		{"notes.txt", "netascii", []byte(text)},
		{"wrap.bin", "octet", big},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := receive(t, addr, tt.name, tt.mode); !bytes.Equal(got, tt.want) {
				t.Fatalf("%s: got %d bytes, want %d", tt.name, len(got), len(tt.want))
			}
		})
	}
}

// TestShutdownAbortsTransfers: stopping the server tells a client in the
// middle of a transfer, and returns without waiting out its timeouts.
func TestShutdownAbortsTransfers(t *testing.T) {
	rootDir, _ := makeRoot(t)
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	srv := &Server{Root: rootDir, Timeout: 10 * time.Second}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- srv.ServeConn(ctx, conn) }()
	c := newRawClient(t, conn.LocalAddr().String())
	c.start(request{op: opRRQ, name: "start4.elf", mode: "octet"}.marshal())
	cancel()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatalf("ServeConn: %v", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("ServeConn still running 3s after cancel, with a 10s timeout transfer in flight")
	}
	p := c.recv(time.Second)
	if code, msg := parseError(p); len(p) < 4 || binary.BigEndian.Uint16(p) != opERROR || code != 0 || msg != errShutdown.Error() {
		t.Fatalf("the client got %q, want ERROR %q", p, errShutdown)
	}
	if st := srv.Stats(); st.Failures != 1 {
		t.Errorf("stats %+v, want the aborted transfer counted", st)
	}
}

// TestRepeatedRequest: a client that sends its RRQ twice (its first
// answer was slow) gets one transfer, not a second one that would hold a
// slot until it timed out.
func TestRepeatedRequest(t *testing.T) {
	rootDir, _ := makeRoot(t)
	ev := newEvents()
	srv := &Server{Root: rootDir, Events: ev.add, Timeout: time.Second}
	addr := startLoopback(t, srv)
	c := newRawClient(t, addr)
	rrq := request{op: opRRQ, name: "config.txt", mode: "octet"}.marshal()
	c.send(c.port, rrq)
	c.send(c.port, rrq)
	var tids []int
	for p := c.recv(300 * time.Millisecond); p != nil; p = c.recv(300 * time.Millisecond) {
		if !isData(p, 1) {
			t.Fatalf("%q, want DATA 1", p)
		}
		tids = append(tids, c.srv.Port)
	}
	if len(tids) != 1 {
		t.Fatalf("DATA 1 came %d times (from ports %v), want once", len(tids), tids)
	}
	c.send(c.srv, ack(1))
	ev.wait(t, "tftp.transfer")
	if st := srv.Stats(); st.Transfers != 1 || st.Failures != 0 {
		t.Errorf("stats %+v, want one transfer", st)
	}
	// Once it is over, the same client port may ask again.
	c.send(c.port, rrq)
	if p := c.recv(time.Second); !isData(p, 1) {
		t.Fatalf("a new request from the same port after the transfer: %q", p)
	}
}

// TestJunkFlood: a flood of malformed datagrams gets a few answers a
// second (each costs a socket), is counted, and a board's read request is
// served all the while.
func TestJunkFlood(t *testing.T) {
	rootDir, _ := makeRoot(t)
	srv := &Server{Root: rootDir}
	addr := startLoopback(t, srv)
	c := newRawClient(t, addr)
	const flood = 400
	start := time.Now()
	for i := range flood {
		c.send(c.port, []byte{0, 9, byte(i), byte(i >> 8)})
	}
	answers := 0
	for p := c.recv(300 * time.Millisecond); p != nil; p = c.recv(300 * time.Millisecond) {
		if code, _ := parseError(p); binary.BigEndian.Uint16(p) == opERROR && code == codeIllegalOp {
			answers++
		}
	}
	limit := junkAnswersBurst + int(time.Since(start).Seconds()*junkAnswersPerSecond) + 1
	if answers < 1 || answers > limit {
		t.Errorf("%d answers to %d malformed datagrams, want between 1 and %d", answers, flood, limit)
	}
	if st := srv.Stats(); st.Malformed < flood/2 || st.Transfers != 0 {
		t.Errorf("stats %+v, want the flood counted as malformed", st)
	}
	want, _ := os.ReadFile(filepath.Join(rootDir, "start4.elf"))
	if got := receive(t, addr, "start4.elf", "octet"); !bytes.Equal(got, want) {
		t.Fatal("a read request during the flood got other bytes")
	}
}
