// Package tftp is cm4bench's read-only TFTP server for Raspberry Pi 4 / CM4
// netboot. Requests are parsed here (packet.go, fuzzed); transfers run on
// one epoll loop (engine.go), as dnsmasq's do, because pin/tftp's
// goroutine-per-transfer sender cost about twice dnsmasq's CPU per transfer
// (BenchmarkTFTPvsDnsmasq). github.com/pin/tftp/v3 still provides the
// netascii conversion, and its client is one of the test clients.
//
// Usage:
//
//	srv := &tftp.Server{
//		Root:     "/srv/tftp",            // jail; nothing outside it is ever served
//		Addr:     "10.42.0.1:69",         // IPv4 on the bench interface (blksize up to 1468)
//		Policy:   store,                  // disabled MAC -> start*.elf "file not found"
//		MACForIP: dhcpServer.MACForIP,    // who is asking (from the DHCP leases)
//		Logger:   logger,                 // nil = silent
//		Events:   func(e contract.Event) {},  // tftp.transfer, tftp.probe, tftp.notfound, tftp.error
//	}
//	err := srv.Serve(ctx) // returns nil once ctx is done; transfers in flight are aborted
//
// Jail: requests are resolved through an os.Root opened on Root, and names
// are checked first: empty, absolute, NUL, backslash and any ".." element are
// refused; symlinks are followed only while they stay inside Root. Error text
// sent to clients never contains a server path. Write requests are refused.
//
// Pi prefixes (the bootloader's TFTP_PREFIX): a request "<serial>/file"
// (8 hex digits) or "<mac-with-dashes>/file" is served from that folder when
// the file exists there, else from the root ("file"), which is what the
// bootloader expects. An unprefixed request from a client whose MAC is known
// is served from "<mac-with-dashes>/file" when that exists (per-device
// override, like dnsmasq's tftp-unique-root=mac), else from the root.
//
// Protocol: octet and netascii, tsize (RFC 2349) and blksize up to
// MaxBlockSize (RFC 2348), lock-step (no windowsize: duplicate DATA blocks
// can hang start4.elf, the Pi bootloader's netboot (README, "Netboot")). A
// duplicate ACK is never answered (no Sorcerer's Apprentice). A lost ACK
// gets the block again after Timeout, up to Retries times, then the client
// gets ERROR "timeout". Each transfer answers from a new port on the address
// the request came to (IP_PKTINFO), with a socket connected to the client.
// Write requests get ERROR 2 "read-only server". The Pi's "probe" requests,
// aborted right after the OACK with ERROR code 0 "Early terminate", are
// counted as probes, not failures. Stopping the server sends ERROR "server
// shutting down" to every client in a transfer.
//
// Every socket, including the per-transfer ones, is created on the
// goroutine that calls Serve (so nettest.NS.Do can run it inside a network
// namespace).
package tftp

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"github.com/cm4bench/cm4bench/internal/privilege"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/pin/tftp/v3/netascii"
	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"

	"github.com/cm4bench/cm4bench/internal/contract"
	"github.com/cm4bench/cm4bench/internal/tokenbucket"
)

// Policy answers whether a MAC may netboot now. Same shape as dhcp.Policy
// (each consumer defines its own); the store implements it.
type Policy interface {
	NetbootEnabled(mac net.HardwareAddr) bool
}

// Defaults and limits.
const (
	DefaultMaxBlockSize = 1468        // the Pi bootloader's TFTP_MAX_BLOCKSIZE (2022-10 on)
	DefaultTimeout      = time.Second // per-packet retransmit timeout
	DefaultRetries      = 8           // retransmissions before a transfer fails
	DefaultMaxTransfers = 512         // in flight, leased clients
	DefaultMaxUnleased  = 64          // in flight, clients without a lease
	DefaultMaxPerClient = 16          // in flight, one address
	errBusy             = "server busy, retry later"
	PiFileLimit         = 65535 * 1024     // the Pi 4's block counter does not roll over (64 MiB at blksize 1024)
	readBuffer          = 256 << 10        // file read-ahead per transfer
	errNotFound         = "file not found" // text sent to clients
	errDenied           = "access violation"
	errReadOnly         = "read-only server"
)

// Server is a read-only TFTP server. Zero values of optional fields are
// sensible defaults. A Server must not be copied after first use.
type Server struct {
	// Root is the directory served (the jail). Required.
	Root string
	// Addr is the UDP address to bind, e.g. "10.42.0.1:69" (IPv4). Default
	// "0.0.0.0:69"; transfers still answer from the address each request
	// came to.
	Addr string
	// Policy decides per MAC; a disabled MAC gets "file not found" for the
	// firmware (start*.elf) so it moves on to its next boot mode. nil: all
	// enabled. Clients whose MAC is unknown are not refused.
	Policy Policy
	// MACForIP resolves a client's MAC from its IP (the DHCP leases). When
	// nil or unknown, the kernel's neighbour table (/proc/net/arp) is tried.
	MACForIP func(netip.Addr) (net.HardwareAddr, bool)
	// MaxBlockSize caps blksize (default DefaultMaxBlockSize).
	MaxBlockSize int
	// Timeout and Retries tune retransmission (defaults DefaultTimeout,
	// DefaultRetries). There is no extra backoff sleep.
	Timeout time.Duration
	Retries int
	// Logger receives logs; nil is silent.
	Logger *slog.Logger
	// Events receives one event per transfer; nil drops them. Called from
	// the request loop and the transfer loop; must not block.
	Events func(contract.Event)
	// MaxTransfers bounds transfers in flight for clients with a DHCP lease
	// (MACForIP knows them), MaxUnleased those from any other address, and
	// MaxPerClient those from one address (defaults DefaultMaxTransfers,
	// DefaultMaxUnleased, DefaultMaxPerClient). A request past a bound is
	// answered "server busy" at once, opening no file, so a flood of
	// unanswered requests cannot use up the file handles real boards need.
	MaxTransfers, MaxUnleased, MaxPerClient int

	mu       sync.Mutex
	stats    Stats
	root     *os.Root
	inflight map[netip.Addr]int
	clients  map[netip.AddrPort]bool // transfers in flight, by the client's address and port
	junk     tokenbucket.Bucket      // answers to malformed and write requests (request loop only)
	leased   int
	unleased int
}

// Stats counts transfers since the server started.
type Stats struct {
	Transfers int64 // completed transfers
	Bytes     int64 // bytes of completed transfers
	Probes    int64 // Early-terminate probes (aborted after the OACK)
	NotFound  int64 // requests for missing files, or firmware refused by Policy
	Denied    int64 // names refused by the jail
	Busy      int64 // requests refused for lack of a transfer slot
	Malformed int64 // datagrams to the server port that are no valid read request (write requests count as Denied)
	Failures  int64 // transfers that started and failed (timeouts, aborts)
}

// Stats returns a snapshot of the counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

func (s *Server) count(f func(*Stats)) {
	s.mu.Lock()
	f(&s.stats)
	s.mu.Unlock()
}

func (s *Server) log() *slog.Logger {
	if s.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Logger
}

func (s *Server) emit(e contract.Event) {
	if s.Events != nil {
		e.Time = time.Now()
		s.Events(e)
	}
}

// Serve listens on Addr and serves until ctx is done, then waits for
// running transfers and returns nil. Errors opening the root or the socket
// are returned at once.
func (s *Server) Serve(ctx context.Context) error {
	addr := s.Addr
	if addr == "" {
		addr = "0.0.0.0:69"
	}
	laddr, err := net.ResolveUDPAddr("udp4", addr)
	if err != nil {
		return fmt.Errorf("tftp: listen address %q: %w", addr, err)
	}
	conn, err := net.ListenUDP("udp4", laddr)
	if err != nil {
		return fmt.Errorf("tftp: listen on %s: %w", addr, privilege.Explain(err, "binding UDP "+addr, privilege.NetBindService))
	}
	return s.ServeConn(ctx, conn)
}

// ServeConn is Serve on a socket the caller opened (an IPv4 UDP socket);
// it closes conn when it returns.
func (s *Server) ServeConn(ctx context.Context, conn *net.UDPConn) error {
	if s.Root == "" {
		conn.Close()
		return errors.New("tftp: serve: no root directory")
	}
	root, err := os.OpenRoot(s.Root)
	if err != nil {
		conn.Close()
		return fmt.Errorf("tftp: open root: %w", err)
	}
	defer root.Close()
	s.mu.Lock()
	s.root = root
	s.mu.Unlock()
	timeout := s.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	retries := s.Retries
	if retries <= 0 {
		retries = DefaultRetries
	}
	s.junk = tokenbucket.Bucket{Rate: junkAnswersPerSecond, Burst: junkAnswersBurst}
	eng, err := newEngine(timeout, retries)
	if err != nil {
		conn.Close()
		return err
	}
	go eng.run()
	defer eng.shutdown() // after the read loop: no add comes later

	// The address each request came to, so the transfer answers from it
	// (a socket bound to 0.0.0.0 would otherwise let the kernel choose).
	pc := ipv4.NewPacketConn(conn)
	if err := pc.SetControlMessage(ipv4.FlagDst, true); err != nil {
		s.log().Warn("tftp: no IP_PKTINFO: transfers answer from the routed address", "err", err)
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	defer conn.Close()
	s.log().Info("tftp: serving", "addr", conn.LocalAddr(), "root", s.Root, "max_blksize", s.maxBlock())
	bound, _ := netip.AddrFromSlice(conn.LocalAddr().(*net.UDPAddr).IP.To4()) // 0.0.0.0 for a wildcard socket
	buf := make([]byte, maxRequestBytes+1)
	for {
		n, cm, from, err := pc.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("tftp: serve: read request: %w", err)
		}
		ua, ok := from.(*net.UDPAddr)
		if !ok {
			continue
		}
		client, local := ua.AddrPort(), bound
		if cm != nil {
			if d, ok := netip.AddrFromSlice(cm.Dst.To4()); ok {
				local = d
			}
		}
		s.request(eng, buf[:n], client, local)
	}
}

func (s *Server) maxBlock() int {
	if s.MaxBlockSize > 0 {
		return min(s.MaxBlockSize, maxBlockSizeWire)
	}
	return DefaultMaxBlockSize
}

// replyError answers a request that starts no transfer, from a new port as
// RFC 1350 has it.
func (s *Server) replyError(local netip.Addr, client netip.AddrPort, code uint16, msg string) {
	fd, err := dialTransfer(local, client)
	if err != nil {
		s.log().Warn("tftp: cannot answer", "ip", client.Addr(), "err", err)
		return
	}
	defer unix.Close(fd)
	unix.Write(fd, appendError(nil, code, msg))
}

// acquire takes a transfer slot for a client, or reports that none is free.
func (s *Server) acquire(ip netip.Addr, leased bool) bool {
	max := func(v, def int) int {
		if v <= 0 {
			return def
		}
		return v
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.inflight == nil {
		s.inflight = map[netip.Addr]int{}
	}
	if s.inflight[ip] >= max(s.MaxPerClient, DefaultMaxPerClient) {
		return false
	}
	if leased {
		if s.leased >= max(s.MaxTransfers, DefaultMaxTransfers) {
			return false
		}
		s.leased++
	} else {
		if s.unleased >= max(s.MaxUnleased, DefaultMaxUnleased) {
			return false
		}
		s.unleased++
	}
	s.inflight[ip]++
	return true
}

func (s *Server) release(ip netip.Addr, leased bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if leased {
		s.leased--
	} else {
		s.unleased--
	}
	if s.inflight[ip]--; s.inflight[ip] <= 0 {
		delete(s.inflight, ip)
	}
}

// Answers to malformed and write requests are limited: no board sends
// them, and each answer costs a socket, so a flood of garbage gets a few
// answers a second and is otherwise dropped. Read requests, found or not,
// are always answered: a Pi that misses a "file not found" waits seconds.
const (
	junkAnswersPerSecond = 20
	junkAnswersBurst     = 20
)

func (s *Server) inTransfer(c netip.AddrPort) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.clients[c]
}

func (s *Server) setInTransfer(c netip.AddrPort, on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.clients == nil {
		s.clients = map[netip.AddrPort]bool{}
	}
	if on {
		s.clients[c] = true
	} else {
		delete(s.clients, c)
	}
}

// clientMAC finds the MAC of ip from MACForIP or the neighbour table.
func (s *Server) clientMAC(ip netip.Addr) net.HardwareAddr {
	if s.MACForIP != nil {
		if mac, ok := s.MACForIP(ip); ok {
			return mac
		}
	}
	return arpLookup(ip)
}

// request handles one datagram that came to the server's port: an RRQ
// starts a transfer on the engine; anything else is answered with an error.
func (s *Server) request(eng *engine, b []byte, client netip.AddrPort, local netip.Addr) {
	remote := client.Addr().Unmap()
	req, err := parseRequest(b)
	if err != nil {
		s.count(func(st *Stats) { st.Malformed++ })
		s.log().Debug("tftp: bad request", "ip", remote, "err", err)
		if s.junk.Allow(time.Now()) {
			s.replyError(local, client, codeIllegalOp, "illegal TFTP operation")
		}
		return
	}
	name := req.name
	if s.inTransfer(client) {
		// The client sent its RRQ again before our first answer reached
		// it: the transfer already running answers it (a second one
		// would hold a slot until it timed out, as dnsmasq also avoids).
		s.log().Debug("tftp: repeated request ignored", "file", name, "client", client)
		return
	}
	if req.op == opWRQ {
		s.count(func(st *Stats) { st.Denied++ })
		s.log().Warn("tftp: write request refused", "file", name, "ip", remote)
		if s.junk.Allow(time.Now()) {
			s.replyError(local, client, codeAccess, errReadOnly)
		}
		return
	}
	leased := false
	if s.MACForIP != nil {
		_, leased = s.MACForIP(remote)
	}
	if !s.acquire(remote, leased) {
		s.count(func(st *Stats) { st.Busy++ })
		s.emit(contract.Event{Kind: contract.EventTFTPError, Level: contract.LevelWarn, Message: name + ": " + errBusy,
			Fields: map[string]any{"file": name, "ip": remote.String(), "reason": "busy"}})
		s.replyError(local, client, codeUndefined, errBusy)
		return
	}
	release := func() { s.release(remote, leased) }
	mac := s.clientMAC(remote)
	macStr := ""
	if mac != nil {
		macStr = mac.String()
	}
	fields := map[string]any{"file": name, "ip": remote.String()}
	serial := "" // the bootloader's TFTP_PREFIX=0 folder names the board
	if dir, _, ok := strings.Cut(name, "/"); ok && isSerial(dir) {
		serial = strings.ToLower(dir)
	}
	s.mu.Lock()
	root := s.root
	s.mu.Unlock()
	f, served, err := resolve(root, name, mac)
	if err == nil && mac != nil && s.Policy != nil && isFirmware(served) && !s.Policy.NetbootEnabled(mac) {
		f.Close()
		f, err = nil, errPolicy
	}
	var info os.FileInfo
	if err == nil {
		if info, err = f.Stat(); err != nil {
			f.Close()
		}
	}
	if err != nil {
		release()
		code, msg := uint16(codeNotFound), errNotFound
		kind, level := contract.EventTFTPNotFound, contract.LevelInfo
		switch {
		case errors.Is(err, errJail):
			code, msg, kind, level = codeAccess, errDenied, contract.EventTFTPError, contract.LevelWarn
			s.count(func(st *Stats) { st.Denied++ })
			s.log().Warn("tftp: refused name", "file", name, "ip", remote, "mac", macStr, "err", err)
		case errors.Is(err, errPolicy):
			s.count(func(st *Stats) { st.NotFound++ })
			fields["reason"] = "netboot disabled"
			s.log().Info("tftp: netboot disabled, firmware refused", "file", name, "mac", macStr)
		default:
			s.count(func(st *Stats) { st.NotFound++ })
			s.log().Debug("tftp: not found", "file", name, "ip", remote, "err", err)
		}
		s.emit(contract.Event{Kind: kind, Level: level, MAC: macStr, Serial: serial, Message: name + ": " + msg, Fields: fields})
		s.replyError(local, client, code, msg) // no server paths in the text
		return
	}
	size := info.Size()
	fields["path"] = served
	fields["size"] = size
	if size > PiFileLimit {
		fields["warning"] = "larger than 64 MiB: a Pi 4 at blksize 1024 can not fetch it (block counter limit)"
		s.log().Warn("tftp: file too large for a Pi 4 bootloader", "file", served, "bytes", size, "limit", PiFileLimit)
	}
	var src io.Reader = bufio.NewReaderSize(f, readBuffer)
	tsize := size
	if req.mode == "netascii" {
		src, tsize = netascii.ToReader(src), -1 // the converted size is not known before sending
	}
	acc, blksize := negotiate(req.opts, s.maxBlock(), tsize)
	var oack []byte
	if len(acc) > 0 {
		oack = appendOACK(nil, acc)
	}
	fd, err := dialTransfer(local, client)
	if err != nil {
		f.Close()
		release()
		s.count(func(st *Stats) { st.Failures++ })
		s.log().Warn("tftp: cannot open a transfer socket", "file", served, "ip", remote, "err", err)
		return
	}
	start := time.Now()
	s.setInTransfer(client, true)
	eng.add(&xfer{fd: fd, src: src, blksize: blksize, oack: oack, finish: func(r result) {
		f.Close()
		s.setInTransfer(client, false)
		release()
		s.finished(r, served, remote, macStr, serial, fields, time.Since(start))
	}})
}

// finished counts, logs and announces a transfer that has ended.
func (s *Server) finished(r result, served string, remote netip.Addr, macStr, serial string, fields map[string]any, elapsed time.Duration) {
	n := r.bytes
	fields["bytes"] = n
	fields["duration_ms"] = elapsed.Milliseconds()
	if r.err != nil {
		if r.probe {
			s.count(func(st *Stats) { st.Probes++ })
			s.log().Debug("tftp: probe", "file", served, "mac", macStr)
			s.emit(contract.Event{Kind: contract.EventTFTPProbe, Level: contract.LevelInfo, MAC: macStr, Serial: serial, Message: served + ": size probe (early terminate)", Fields: fields})
			return
		}
		s.count(func(st *Stats) { st.Failures++ })
		fields["error"] = r.err.Error()
		s.log().Warn("tftp: transfer failed", "file", served, "ip", remote, "mac", macStr, "bytes", n, "err", r.err)
		s.emit(contract.Event{Kind: contract.EventTFTPError, Level: contract.LevelWarn, MAC: macStr, Serial: serial, Message: fmt.Sprintf("%s: failed after %d bytes: %v", served, n, r.err), Fields: fields})
		return
	}
	rate := 0.0
	if elapsed > 0 {
		rate = float64(n) / elapsed.Seconds()
	}
	fields["rate_bps"] = rate
	s.count(func(st *Stats) { st.Transfers++; st.Bytes += n })
	s.log().Info("tftp: sent", "file", served, "ip", remote, "mac", macStr, "bytes", n, "duration", elapsed, "rate_mbps", rate/1e6)
	s.emit(contract.Event{Kind: contract.EventTFTPTransfer, Level: contract.LevelInfo, MAC: macStr, Serial: serial, Message: fmt.Sprintf("%s: %d bytes in %s (%.1f MB/s)", served, n, elapsed.Round(time.Millisecond), rate/1e6), Fields: fields})
}

// isFirmware reports whether the served path is the bootloader's firmware,
// which a disabled device must not get.
func isFirmware(p string) bool {
	b := path.Base(p)
	return strings.HasPrefix(b, "start") && strings.HasSuffix(b, ".elf")
}

var (
	errJail       = errors.New("name outside the tftp root")
	errPolicy     = errors.New("netboot disabled for this device")
	errNotRegular = errors.New("not a regular file")
)

// checkName refuses names that could leave the root or are not plain
// relative slash paths.
func checkName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: empty", errJail)
	case strings.ContainsRune(name, 0):
		return fmt.Errorf("%w: NUL byte", errJail)
	case strings.ContainsRune(name, '\\'):
		return fmt.Errorf("%w: backslash", errJail)
	case strings.HasPrefix(name, "/"):
		return fmt.Errorf("%w: absolute", errJail)
	}
	for _, el := range strings.Split(name, "/") {
		if el == ".." {
			return fmt.Errorf("%w: '..'", errJail)
		}
	}
	if !fs.ValidPath(path.Clean(name)) {
		return fmt.Errorf("%w: invalid", errJail)
	}
	return nil
}

// candidates lists the paths to try for name, most specific first.
func candidates(name string, mac net.HardwareAddr) []string {
	name = path.Clean(name)
	if dir, rest, ok := strings.Cut(name, "/"); ok && (isSerial(dir) || isDashedMAC(dir)) {
		return []string{name, rest}
	}
	if mac != nil {
		return []string{DashedMAC(mac) + "/" + name, name}
	}
	return []string{name}
}

// resolve opens the first existing regular file among the candidates,
// inside root. It returns the file and the path served (relative to root).
func resolve(root *os.Root, name string, mac net.HardwareAddr) (*os.File, string, error) {
	if root == nil {
		return nil, "", errors.New("server not started")
	}
	if err := checkName(name); err != nil {
		return nil, "", err
	}
	var firstErr error
	for _, c := range candidates(name, mac) {
		f, err := root.Open(c)
		if err == nil {
			info, serr := f.Stat()
			if serr == nil && info.Mode().IsRegular() {
				return f, c, nil
			}
			f.Close()
			err = fmt.Errorf("%s: %w", c, errNotRegular)
		}
		if firstErr == nil {
			firstErr = err
		}
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, errNotRegular) {
			continue
		}
		if strings.Contains(err.Error(), "escapes") {
			// os.Root refuses a symlink (or name) that leads out of the root.
			return nil, "", fmt.Errorf("%w: %v", errJail, err)
		}
		return nil, "", err
	}
	return nil, "", firstErr
}

func isSerial(s string) bool {
	if len(s) != 8 {
		return false
	}
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	return true
}

func isDashedMAC(s string) bool {
	if len(s) != 17 {
		return false
	}
	mac, err := net.ParseMAC(s)
	return err == nil && len(mac) == 6 && strings.Count(s, "-") == 5
}

// DashedMAC formats mac as the bootloader's TFTP_PREFIX=2 folder name,
// e.g. "dc-a6-32-01-36-c2".
func DashedMAC(mac net.HardwareAddr) string {
	return strings.ReplaceAll(mac.String(), ":", "-")
}

// arpLookup reads the kernel neighbour table of the process's network
// namespace.
func arpLookup(ip netip.Addr) net.HardwareAddr {
	if !ip.IsValid() {
		return nil
	}
	b, err := os.ReadFile("/proc/net/arp")
	if err != nil {
		return nil
	}
	want := ip.String()
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) >= 4 && f[0] == want {
			if mac, err := net.ParseMAC(f[3]); err == nil && f[3] != "00:00:00:00:00:00" {
				return mac
			}
		}
	}
	return nil
}
