package tftp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"
)

// The transfer engine. Every transfer's lock-step exchange runs on one
// goroutine around epoll, the way dnsmasq's poll loop runs them: per DATA
// block one recv of the ACK and one send, with the file read ahead in large
// chunks. A goroutine per transfer on Go's netpoller (what pin/tftp does)
// costs a failed read, a park and a wake-up per block on top of that, and
// its per-block deadline and address allocations; at one client that came
// to about twice dnsmasq's CPU per transfer (BenchmarkTFTPvsDnsmasq).
//
// The engine owns its transfers: they are handed to it over a channel and
// never touched by another goroutine afterwards. Sockets are created by the
// caller (the goroutine that calls Serve, so a namespace test can run the
// server inside a namespace); epoll works on them from any thread.

// xfer is one read transfer in the engine.
type xfer struct {
	fd      int       // connected UDP socket: the transfer's TID
	src     io.Reader // the file, read ahead
	blksize int
	oack    []byte // the OACK to send first, nil for none
	finish  func(result)

	pkt      []byte // the packet in flight, kept for retransmission
	block    uint16 // the block number in flight (0: the OACK)
	data     bool   // DATA blocks have started (the OACK, if any, is acknowledged)
	final    bool   // pkt is the last DATA block
	sent     int64  // file bytes put into DATA blocks
	deadline time.Time
	tries    int
}

// result is how a transfer ended.
type result struct {
	bytes int64 // file bytes sent
	err   error
	probe bool // the client ended it with ERROR code 0 after the OACK
}

var errShutdown = errors.New("server shutting down")

type engine struct {
	epfd    int
	wakefd  int // eventfd: new transfers or stop
	timeout time.Duration
	retries int
	adds    chan *xfer
	stop    chan struct{}
	done    chan struct{}
	xfers   map[int32]*xfer
	rbuf    []byte
}

func newEngine(timeout time.Duration, retries int) (*engine, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("tftp: epoll: %w", err)
	}
	wakefd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("tftp: eventfd: %w", err)
	}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wakefd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wakefd)}); err != nil {
		unix.Close(wakefd)
		unix.Close(epfd)
		return nil, fmt.Errorf("tftp: epoll add: %w", err)
	}
	return &engine{
		epfd: epfd, wakefd: wakefd, timeout: timeout, retries: retries,
		adds: make(chan *xfer, 64), stop: make(chan struct{}), done: make(chan struct{}),
		xfers: map[int32]*xfer{}, rbuf: make([]byte, maxRequestBytes+4),
	}, nil
}

// add hands x to the engine, which sends its first packet.
func (e *engine) add(x *xfer) {
	e.adds <- x
	e.wake()
}

// shutdown aborts every transfer (each client gets an ERROR), waits for the
// loop to end and releases its descriptors. Call it once, after the last add.
func (e *engine) shutdown() {
	close(e.stop)
	e.wake()
	<-e.done
	unix.Close(e.wakefd)
	unix.Close(e.epfd)
}

func (e *engine) wake() {
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1)
	unix.Write(e.wakefd, one[:]) // EAGAIN means a wake-up is already pending
}

// run is the loop; it returns after shutdown.
func (e *engine) run() {
	defer close(e.done)
	events := make([]unix.EpollEvent, 64)
	// Retransmission deadlines are checked on this tick, so a timeout
	// fires between Timeout and Timeout+tick after the packet went out.
	tick := max(e.timeout/8, time.Millisecond)
	lastScan := time.Now()
	for {
		wait := -1
		if len(e.xfers) > 0 {
			wait = int((tick + time.Millisecond - 1) / time.Millisecond)
		}
		n, err := unix.EpollWait(e.epfd, events, wait)
		if err != nil && !errors.Is(err, unix.EINTR) {
			// Not expected with a valid epfd: end every transfer, and
			// every one handed over until shutdown, rather than spin.
			err = fmt.Errorf("epoll: %w", err)
			for _, x := range e.xfers {
				e.end(x, result{bytes: x.sent, err: err})
			}
			for {
				select {
				case x := <-e.adds:
					unix.Close(x.fd)
					x.finish(result{err: err})
				case <-e.stop:
					return
				}
			}
		}
		now := time.Now()
		for _, ev := range events[:max(n, 0)] {
			if int(ev.Fd) == e.wakefd {
				if e.onWake(now) {
					return
				}
				continue
			}
			if x := e.xfers[ev.Fd]; x != nil {
				e.readable(x, now)
			}
		}
		if n <= 0 || now.Sub(lastScan) >= tick {
			e.expire(now)
			lastScan = now
		}
	}
}

// onWake takes new transfers, then reports whether to stop (after
// aborting every transfer).
func (e *engine) onWake(now time.Time) bool {
	var buf [8]byte
	unix.Read(e.wakefd, buf[:])
drain:
	for {
		select {
		case x := <-e.adds:
			e.begin(x, now)
		default:
			break drain
		}
	}
	select {
	case <-e.stop:
		for _, x := range e.xfers {
			e.sendError(x, codeUndefined, errShutdown.Error())
			e.end(x, result{bytes: x.sent, err: errShutdown})
		}
		return true
	default:
		return false
	}
}

func (e *engine) begin(x *xfer, now time.Time) {
	if err := unix.EpollCtl(e.epfd, unix.EPOLL_CTL_ADD, x.fd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(x.fd)}); err != nil {
		unix.Close(x.fd)
		x.finish(result{err: fmt.Errorf("epoll add: %w", err)})
		return
	}
	e.xfers[int32(x.fd)] = x
	x.pkt = make([]byte, 4+x.blksize)
	if x.oack != nil {
		x.pkt = append(x.pkt[:0], x.oack...)
		e.send(x, now)
		return
	}
	e.next(x, now)
}

// readable takes one packet from x's socket (epoll is level-triggered: a
// second one makes it report again).
func (e *engine) readable(x *xfer, now time.Time) {
	n, err := unix.Read(x.fd, e.rbuf)
	switch {
	case errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR):
		return
	case err != nil:
		// ECONNREFUSED: the client's port is closed (ICMP unreachable).
		e.end(x, result{bytes: x.sent, err: fmt.Errorf("block %d: the client went away: %w", x.block, err)})
		return
	case n < 4:
		return
	}
	p := e.rbuf[:n]
	switch binary.BigEndian.Uint16(p) {
	case opACK:
		if binary.BigEndian.Uint16(p[2:]) != x.block {
			return // a duplicate or late ACK: never answer it (Sorcerer's Apprentice)
		}
		if x.data && x.final {
			e.end(x, result{bytes: x.sent})
			return
		}
		e.next(x, now)
	case opERROR:
		code, msg := parseError(p)
		e.end(x, result{bytes: x.sent, probe: !x.data && code == codeUndefined,
			err: fmt.Errorf("block %d: the client aborted: code=%d, %q", x.block, code, msg)})
	}
}

// next sends the next DATA block.
func (e *engine) next(x *xfer, now time.Time) {
	x.data = true
	x.block++
	x.pkt = x.pkt[:4+x.blksize]
	m, err := io.ReadFull(x.src, x.pkt[4:])
	switch {
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		x.final = true // a short block, possibly empty, ends the transfer
	case err != nil:
		e.sendError(x, codeUndefined, "read error")
		e.end(x, result{bytes: x.sent, err: fmt.Errorf("read block %d: %w", x.block, err)})
		return
	}
	x.sent += int64(m)
	binary.BigEndian.PutUint16(x.pkt[0:], opDATA)
	binary.BigEndian.PutUint16(x.pkt[2:], x.block)
	x.pkt = x.pkt[:4+m]
	x.tries = 0
	e.send(x, now)
}

func (e *engine) send(x *xfer, now time.Time) {
	x.deadline = now.Add(e.timeout)
	if _, err := unix.Write(x.fd, x.pkt); err != nil && !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.ENOBUFS) {
		e.end(x, result{bytes: x.sent, err: fmt.Errorf("send block %d: %w", x.block, err)})
	}
	// A full socket buffer drops the packet: the timeout sends it again.
}

// expire retransmits what is overdue, and fails transfers out of retries.
func (e *engine) expire(now time.Time) {
	for _, x := range e.xfers {
		if now.Before(x.deadline) {
			continue
		}
		if x.tries >= e.retries {
			e.sendError(x, codeUndefined, "timeout")
			e.end(x, result{bytes: x.sent, err: fmt.Errorf("block %d: no ACK after %d retransmissions", x.block, x.tries)})
			continue
		}
		x.tries++
		e.send(x, now)
	}
}

func (e *engine) sendError(x *xfer, code uint16, msg string) {
	unix.Write(x.fd, appendError(nil, code, msg)) // best effort: the transfer ends anyway
}

// end removes x and reports its result; the file is closed by finish.
func (e *engine) end(x *xfer, r result) {
	unix.EpollCtl(e.epfd, unix.EPOLL_CTL_DEL, x.fd, nil)
	unix.Close(x.fd)
	delete(e.xfers, int32(x.fd))
	x.finish(r)
}

// dialTransfer opens the transfer's socket: a new port on local (the
// address the request came to; zero: any), connected to the client, so the
// kernel drops datagrams from anyone else.
func dialTransfer(local netip.Addr, client netip.AddrPort) (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	la := &unix.SockaddrInet4{}
	if local.Is4() {
		la.Addr = local.As4()
	}
	if err := unix.Bind(fd, la); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("bind %s: %w", local, err)
	}
	if err := unix.Connect(fd, &unix.SockaddrInet4{Addr: client.Addr().Unmap().As4(), Port: int(client.Port())}); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("connect %s: %w", client, err)
	}
	return fd, nil
}
