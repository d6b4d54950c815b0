// Package capture records every DHCP and TFTP packet on the bench
// interface into a pcap file (netboot serve --capture), so the first run
// against a real board hands back a replayable record without tcpdump.
//
// It reads the interface through an AF_PACKET socket (as tcpdump does,
// which needs CAP_NET_RAW) and keeps, in user space, IPv4 UDP packets to or
// from ports 67, 68 and 69, and the TFTP transfers those RRQs start (the
// server answers from an ephemeral port to the client's port). The file is
// written as NAME.partial and renamed to NAME when the capture ends cleanly,
// so a cut file never looks complete.
package capture

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/mdlayher/packet"
	"golang.org/x/sys/unix"

	"github.com/cm4bench/cm4bench/netboot/pcap"
)

// DefaultLimit bounds the capture file (bytes of packet data).
const DefaultLimit = 256 << 20

// maxFlows bounds the TFTP transfers followed at once.
const maxFlows = 4096

// Capture writes the bench interface's DHCP and TFTP packets to a pcap file.
type Capture struct {
	Iface string // required
	Path  string // the pcap file (required)
	// Limit is the most packet bytes written (0 = DefaultLimit); past it
	// the capture stops writing and logs it once.
	Limit int64
	// Ready, when set, is called once the socket is open: packets from
	// then on are recorded.
	Ready func()
	// Logger receives what the capture did (nil: silent).
	Logger *slog.Logger
}

func (c *Capture) log() *slog.Logger {
	if c.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return c.Logger
}

// Serve captures until ctx ends, then finishes the file. An error opening
// the socket names the capability it needs.
func (c *Capture) Serve(ctx context.Context) error {
	if c.Iface == "" || c.Path == "" {
		return errors.New("capture: needs an interface and a file")
	}
	ifi, err := net.InterfaceByName(c.Iface)
	if err != nil {
		return fmt.Errorf("capture: interface %s: %w", c.Iface, err)
	}
	conn, err := packet.Listen(ifi, packet.Raw, unix.ETH_P_ALL, nil)
	if err != nil {
		if errors.Is(err, os.ErrPermission) {
			return fmt.Errorf("capture: packet socket on %s: %w (--capture needs CAP_NET_RAW)", c.Iface, err)
		}
		return fmt.Errorf("capture: packet socket on %s: %w", c.Iface, err)
	}
	defer conn.Close()
	// A bigger receive queue, so a burst (16 boards fetching at once) is
	// not dropped while the file is written (best effort; capped by
	// net.core.rmem_max without CAP_NET_ADMIN).
	if rc, err := conn.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 8<<20) })
	}
	partial := c.Path + ".partial"
	f, err := os.OpenFile(partial, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("capture: %w", err)
	}
	bw := bufio.NewWriterSize(f, 64<<10)
	w, err := pcap.NewWriter(bw, 65535, pcap.LinkEthernet)
	if err != nil {
		f.Close()
		return fmt.Errorf("capture: %w", err)
	}
	if c.Ready != nil {
		c.Ready()
	}
	limit := c.Limit
	if limit <= 0 {
		limit = DefaultLimit
	}
	// At the stop, packets already queued on the socket are still read (for
	// a short while), so the end of a transfer seen just before is kept.
	stop := context.AfterFunc(ctx, func() { conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond)) })
	defer stop()
	var (
		flt     Filter
		written int64
		packets int
		full    bool
		buf     = make([]byte, 65536)
		lastErr error
	)
	flush := time.NewTicker(time.Second)
	defer flush.Stop()
	for {
		n, _, err := conn.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			lastErr = err
			break
		}
		select {
		case <-flush.C:
			bw.Flush()
		default:
		}
		if full || !flt.Keep(buf[:n]) {
			continue
		}
		if written+int64(n) > limit {
			full = true
			c.log().Warn("capture: limit reached, no more packets written", "file", c.Path, "bytes", written, "limit", limit)
			continue
		}
		if err := w.WritePacket(time.Now(), buf[:n]); err != nil {
			lastErr = err
			break
		}
		written += int64(n)
		packets++
	}
	err = errors.Join(lastErr, bw.Flush(), f.Sync(), f.Close())
	if err != nil {
		return fmt.Errorf("capture: %s: %w (the packets so far are in %s)", c.Path, err, partial)
	}
	if err := os.Rename(partial, c.Path); err != nil {
		return fmt.Errorf("capture: %w", err)
	}
	c.log().Info("capture written", "file", c.Path, "packets", packets, "bytes", written)
	return nil
}

// Filter decides which Ethernet frames a capture keeps: IPv4 UDP to or
// from ports 67, 68 or 69, and the packets of the TFTP transfers whose RRQ
// it saw (between the server and the client's port). The zero value is
// ready; it is safe for one goroutine.
type Filter struct {
	mu    sync.Mutex
	flows map[netip.AddrPort]bool // TFTP clients
	order []netip.AddrPort
}

// Keep reports whether frame is kept, and learns TFTP flows from it.
func (f *Filter) Keep(frame []byte) bool {
	src, dst, _, ok := DecodeUDP(frame)
	if !ok {
		return false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if dst.Port() == 69 {
		f.learn(src)
		return true
	}
	switch {
	case src.Port() == 67 || src.Port() == 68 || dst.Port() == 67 || dst.Port() == 68 || src.Port() == 69:
		return true
	}
	return f.flows[src] || f.flows[dst]
}

func (f *Filter) learn(client netip.AddrPort) {
	if f.flows == nil {
		f.flows = map[netip.AddrPort]bool{}
	}
	if f.flows[client] {
		return
	}
	if len(f.order) >= maxFlows {
		delete(f.flows, f.order[0])
		f.order = f.order[1:]
	}
	f.flows[client] = true
	f.order = append(f.order, client)
}

// DecodeUDP returns the endpoints and payload of an Ethernet frame that
// carries an unfragmented IPv4 UDP datagram (802.1Q tags skipped).
func DecodeUDP(frame []byte) (src, dst netip.AddrPort, payload []byte, ok bool) {
	if len(frame) < 14 {
		return
	}
	et := binary.BigEndian.Uint16(frame[12:14])
	b := frame[14:]
	for et == 0x8100 && len(b) >= 4 {
		et = binary.BigEndian.Uint16(b[2:4])
		b = b[4:]
	}
	if et != 0x0800 || len(b) < 20 || b[0]>>4 != 4 {
		return
	}
	ihl := int(b[0]&0xf) * 4
	total := int(binary.BigEndian.Uint16(b[2:4]))
	if ihl < 20 || total < ihl+8 || total > len(b) || b[9] != unix.IPPROTO_UDP ||
		binary.BigEndian.Uint16(b[6:8])&0x1fff != 0 {
		return
	}
	udp := b[ihl:total]
	ulen := int(binary.BigEndian.Uint16(udp[4:6]))
	if ulen < 8 || ulen > len(udp) {
		return
	}
	sa := netip.AddrFrom4([4]byte(b[12:16]))
	da := netip.AddrFrom4([4]byte(b[16:20]))
	return netip.AddrPortFrom(sa, binary.BigEndian.Uint16(udp[0:2])), netip.AddrPortFrom(da, binary.BigEndian.Uint16(udp[2:4])), udp[8:ulen], true
}
