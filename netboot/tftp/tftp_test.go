package tftp

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	pintftp "github.com/pin/tftp/v3"

	"github.com/cm4bench/cm4bench/internal/contract"
)

var testMAC = net.HardwareAddr{0xdc, 0xa6, 0x32, 0x01, 0x36, 0xc2}

// makeRoot builds a tftp root with the Pi's usual layout, an outside file
// and symlinks in and out.
func makeRoot(t testing.TB) (root, outside string) {
	t.Helper()
	dir := t.TempDir()
	root = filepath.Join(dir, "tftp")
	outside = filepath.Join(dir, "secret.txt")
	files := map[string][]byte{
		"start4.elf":                     randBytes(t, 300_000),
		"fixup4.dat":                     []byte("fixup"),
		"config.txt":                     []byte("root config\n"),
		"abcd1234/config.txt":            []byte("serial config\n"),
		"dc-a6-32-01-36-c2/cmdline.txt":  []byte("per-mac cmdline\n"),
		"cmdline.txt":                    []byte("root cmdline\n"),
		"overlays/vc4-kms-v3d.dtbo":      []byte("dtbo"),
		"exact512.bin":                   randBytes(t, 512*3),
		"abcd1234/start4.elf.not-served": []byte("x"),
	}
	for name, b := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(outside, []byte("TOP SECRET"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(root, "escape.txt")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../../secret.txt", filepath.Join(root, "abcd1234", "rel-escape.txt")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("config.txt", filepath.Join(root, "inside-link.txt")); err != nil {
		t.Fatal(err)
	}
	return root, outside
}

func randBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestResolve(t *testing.T) {
	rootDir, _ := makeRoot(t)
	root, err := os.OpenRoot(rootDir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	for _, tt := range []struct {
		name   string
		mac    net.HardwareAddr
		served string // "" = error
		jail   bool   // error must be a jail refusal
	}{
		{"start4.elf", nil, "start4.elf", false},
		{"abcd1234/start4.elf", nil, "start4.elf", false},          // serial prefix falls back to root
		{"abcd1234/config.txt", nil, "abcd1234/config.txt", false}, // per-serial override
		{"ABCD1234/fixup4.dat", nil, "fixup4.dat", false},
		{"dc-a6-32-01-36-c2/cmdline.txt", nil, "dc-a6-32-01-36-c2/cmdline.txt", false},
		{"dc-a6-32-01-36-c2/start4.elf", nil, "start4.elf", false},
		{"cmdline.txt", testMAC, "dc-a6-32-01-36-c2/cmdline.txt", false}, // per-MAC override by client MAC
		{"cmdline.txt", nil, "cmdline.txt", false},
		{"overlays/vc4-kms-v3d.dtbo", testMAC, "overlays/vc4-kms-v3d.dtbo", false},
		{"./config.txt", nil, "config.txt", false},
		{"inside-link.txt", nil, "inside-link.txt", false},
		{"missing.elf", nil, "", false},
		{"abcd1234/missing.elf", nil, "", false},
		{"overlays", nil, "", false}, // a directory
		{"../secret.txt", nil, "", true},
		{"abcd1234/../../secret.txt", nil, "", true},
		{"/etc/passwd", nil, "", true},
		{"start4.elf\x00.txt", nil, "", true},
		{`..\secret.txt`, nil, "", true},
		{"", nil, "", true},
		{"escape.txt", nil, "", true},
		{"abcd1234/rel-escape.txt", nil, "", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f, served, err := resolve(root, tt.name, tt.mac)
			if tt.served == "" {
				if err == nil {
					f.Close()
					t.Fatalf("resolve(%q) served %q, want an error", tt.name, served)
				}
				if tt.jail != errors.Is(err, errJail) {
					t.Fatalf("resolve(%q) error %v: jail refusal = %v, want %v", tt.name, err, errors.Is(err, errJail), tt.jail)
				}
				return
			}
			if err != nil {
				t.Fatalf("resolve(%q) = %v, want %q", tt.name, err, tt.served)
			}
			f.Close()
			if served != tt.served {
				t.Fatalf("resolve(%q) served %q, want %q", tt.name, served, tt.served)
			}
		})
	}
}

// FuzzResolve: whatever the name, a served file is a regular file inside
// the root, and nothing outside is ever opened.
func FuzzResolve(f *testing.F) {
	rootDir, outside := makeRoot(f)
	secret, _ := os.ReadFile(outside)
	root, err := os.OpenRoot(rootDir)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { root.Close() })
	for _, s := range []string{"start4.elf", "abcd1234/config.txt", "../secret.txt", "/etc/passwd", "escape.txt",
		"abcd1234/rel-escape.txt", "a/b/../../..", "dc-a6-32-01-36-c2/x", "\x00", "overlays/../config.txt"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		file, served, err := resolve(root, name, testMAC)
		if err != nil {
			return
		}
		defer file.Close()
		b, _ := io.ReadAll(file)
		if bytes.Equal(b, secret) {
			t.Fatalf("resolve(%q) served the file outside the root (as %q)", name, served)
		}
		if strings.Contains(served, "..") || strings.HasPrefix(served, "/") {
			t.Fatalf("resolve(%q) served %q", name, served)
		}
	})
}

type staticPolicy map[string]bool // MAC -> enabled

func (p staticPolicy) NetbootEnabled(mac net.HardwareAddr) bool { return p[mac.String()] }

// events collects events and lets a test wait for one kind.
type events struct {
	mu  sync.Mutex
	all []contract.Event
	ch  chan contract.Event
}

func newEvents() *events { return &events{ch: make(chan contract.Event, 1000)} }

func (e *events) add(ev contract.Event) {
	e.mu.Lock()
	e.all = append(e.all, ev)
	e.mu.Unlock()
	e.ch <- ev
}

func (e *events) wait(t testing.TB, kind string) contract.Event {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case ev := <-e.ch:
			if ev.Kind == kind {
				return ev
			}
		case <-timeout:
			t.Fatalf("no %s event within 10s", kind)
		}
	}
}

// startLoopback runs a server on 127.0.0.1:<random> and returns its address.
func startLoopback(t testing.TB, srv *Server) string {
	t.Helper()
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- srv.ServeConn(ctx, conn) }()
	t.Cleanup(func() {
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("ServeConn: %v", err)
		}
	})
	return conn.LocalAddr().String()
}

// TestLoopbackPinClient fetches files with pin/tftp's own client (tsize,
// blksize) over loopback: no root needed.
func TestLoopbackPinClient(t *testing.T) {
	rootDir, _ := makeRoot(t)
	ev := newEvents()
	srv := &Server{Root: rootDir, Events: ev.add,
		MACForIP: func(netip.Addr) (net.HardwareAddr, bool) { return testMAC, true }}
	addr := startLoopback(t, srv)
	for _, tt := range []struct {
		name, served string
		blksize      int
	}{
		{"abcd1234/start4.elf", "start4.elf", 1024},
		{"start4.elf", "start4.elf", 1468},
		{"exact512.bin", "exact512.bin", 512},
		{"cmdline.txt", "dc-a6-32-01-36-c2/cmdline.txt", 1024},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := pintftp.NewClient(addr)
			if err != nil {
				t.Fatal(err)
			}
			c.SetBlockSize(tt.blksize)
			c.RequestTSize(true)
			wt, err := c.Receive(tt.name, "octet")
			if err != nil {
				t.Fatal(err)
			}
			want, _ := os.ReadFile(filepath.Join(rootDir, tt.served))
			if n, ok := wt.(pintftp.IncomingTransfer).Size(); !ok || n != int64(len(want)) {
				t.Errorf("tsize = %d (%v), want %d", n, ok, len(want))
			}
			var buf bytes.Buffer
			if _, err := wt.WriteTo(&buf); err != nil {
				t.Fatal(err)
			}
			if sha256.Sum256(buf.Bytes()) != sha256.Sum256(want) {
				t.Fatalf("content differs from %s (%d vs %d bytes)", tt.served, buf.Len(), len(want))
			}
			e := ev.wait(t, "tftp.transfer")
			if e.Fields["path"] != tt.served || e.Fields["bytes"] != int64(len(want)) || e.MAC != testMAC.String() {
				t.Errorf("event %+v", e)
			}
		})
	}
	if st := srv.Stats(); st.Transfers != 4 || st.Failures != 0 || st.Probes != 0 {
		t.Errorf("stats %+v, want 4 transfers", st)
	}
}

// rawRRQ sends one RRQ from a fresh socket and returns the first answer.
func rawRRQ(t testing.TB, addr, name string, opts ...string) (*net.UDPConn, []byte, *net.UDPAddr) {
	t.Helper()
	c := newRawClient(t, addr)
	req := request{op: opRRQ, name: name, mode: "octet"}
	for i := 0; i+1 < len(opts); i += 2 {
		req.opts = append(req.opts, option{opts[i], opts[i+1]})
	}
	c.send(c.port, req.marshal())
	pkt := c.recv(5 * time.Second)
	if pkt == nil {
		t.Fatalf("RRQ %q: no answer", name)
	}
	return c.c, pkt, c.srv
}

// ProbeClient does what the Pi does to learn a file's size: RRQ with tsize
// and blksize, read the OACK, answer ERROR code 0 "Early terminate". It
// returns the tsize from the OACK.
func probe(t testing.TB, addr, name string) int64 {
	t.Helper()
	c, pkt, from := rawRRQ(t, addr, name, "tsize", "0", "blksize", "1024")
	if binary.BigEndian.Uint16(pkt) != 6 {
		t.Fatalf("probe %q: got opcode %d, want OACK: %q", name, binary.BigEndian.Uint16(pkt), pkt)
	}
	fields := strings.Split(string(pkt[2:]), "\x00")
	var tsize int64 = -1
	for i := 0; i+1 < len(fields); i += 2 {
		if fields[i] == "tsize" {
			if _, err := fmtSscan(fields[i+1], &tsize); err != nil {
				t.Fatal(err)
			}
		}
	}
	abort := append([]byte{0, 5, 0, 0}, "Early terminate\x00"...)
	if _, err := c.WriteToUDP(abort, from); err != nil {
		t.Fatal(err)
	}
	return tsize
}

func TestProbeCountedSeparately(t *testing.T) {
	rootDir, _ := makeRoot(t)
	ev := newEvents()
	srv := &Server{Root: rootDir, Events: ev.add}
	addr := startLoopback(t, srv)
	if got := probe(t, addr, "abcd1234/start4.elf"); got != 300_000 {
		t.Fatalf("probe tsize = %d, want 300000", got)
	}
	e := ev.wait(t, "tftp.probe")
	if e.Fields["path"] != "start4.elf" || e.Serial != "abcd1234" {
		t.Errorf("probe event %+v", e)
	}
	if st := srv.Stats(); st.Probes != 1 || st.Failures != 0 || st.Transfers != 0 {
		t.Fatalf("stats %+v, want exactly one probe", st)
	}
}

func TestRefusals(t *testing.T) {
	rootDir, _ := makeRoot(t)
	ev := newEvents()
	srv := &Server{Root: rootDir, Events: ev.add,
		Policy:   staticPolicy{testMAC.String(): false},
		MACForIP: func(netip.Addr) (net.HardwareAddr, bool) { return testMAC, true }}
	addr := startLoopback(t, srv)
	for _, tt := range []struct{ name, text string }{
		{"../secret.txt", errDenied},
		{"/etc/passwd", errDenied},
		{"escape.txt", errDenied},
		{"abcd1234/rel-escape.txt", errDenied},
		{`..\secret.txt`, errDenied},
		{"nothere.bin", errNotFound},
		{"abcd1234/start4.elf", errNotFound}, // netboot disabled for this MAC
		{"start4.elf", errNotFound},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, pkt, _ := rawRRQ(t, addr, tt.name, "tsize", "0", "blksize", "1024")
			if op := binary.BigEndian.Uint16(pkt); op != 5 {
				t.Fatalf("opcode %d, want ERROR; packet %q", op, pkt)
			}
			text := strings.TrimRight(string(pkt[4:]), "\x00")
			if text != tt.text {
				t.Errorf("error text %q, want %q", text, tt.text)
			}
			if strings.Contains(text, rootDir) || strings.Contains(text, "/") || strings.Contains(text, "SECRET") {
				t.Errorf("error text leaks a path: %q", text)
			}
		})
	}
	// The disabled device still gets its other files (config.txt is not firmware).
	c, err := pintftp.NewClient(addr)
	if err != nil {
		t.Fatal(err)
	}
	wt, err := c.Receive("config.txt", "octet")
	if err != nil {
		t.Fatalf("config.txt for a disabled device: %v", err)
	}
	if _, err := wt.WriteTo(io.Discard); err != nil {
		t.Fatal(err)
	}
	ev.wait(t, "tftp.transfer")
	if st := srv.Stats(); st.Denied != 5 || st.NotFound != 3 || st.Transfers != 1 {
		t.Errorf("stats %+v, want 5 denied, 3 not found, 1 transfer", st)
	}
}

func fmtSscan(s string, v *int64) (int, error) { return fmt.Sscan(s, v) }

// TestLargeFileWarning: a file the Pi 4 can not fetch (over 65535 blocks of
// 1024) is still served but flagged in the log and the event.
func TestLargeFileWarning(t *testing.T) {
	rootDir, _ := makeRoot(t)
	f, err := os.Create(filepath.Join(rootDir, "initramfs.img"))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(PiFileLimit + 1); err != nil { // sparse
		t.Fatal(err)
	}
	f.Close()
	ev := newEvents()
	srv := &Server{Root: rootDir, Events: ev.add}
	addr := startLoopback(t, srv)
	if got := probe(t, addr, "initramfs.img"); got != PiFileLimit+1 {
		t.Fatalf("tsize %d", got)
	}
	e := ev.wait(t, "tftp.probe")
	if w, _ := e.Fields["warning"].(string); !strings.Contains(w, "64 MiB") {
		t.Fatalf("no size warning in %+v", e.Fields)
	}
	// A file at the limit is not flagged.
	if err := os.Truncate(filepath.Join(rootDir, "initramfs.img"), PiFileLimit); err != nil {
		t.Fatal(err)
	}
	probe(t, addr, "initramfs.img")
	if e := ev.wait(t, "tftp.probe"); e.Fields["warning"] != nil {
		t.Fatalf("file at the limit flagged: %+v", e.Fields)
	}
}

// Security item 7: unanswered RRQs from many addresses (a flood that never
// ACKs) get at most their share of transfer slots, so file handles stay
// bounded, and a board with a DHCP lease is served all the while.
func TestFloodNeverTurnsABoardAway(t *testing.T) {
	rootDir, _ := makeRoot(t)
	board := netip.MustParseAddr("127.0.0.1")
	srv := &Server{Root: rootDir, MaxUnleased: 32, MaxPerClient: 4,
		MACForIP: func(ip netip.Addr) (net.HardwareAddr, bool) { return testMAC, ip == board }}
	addr := startLoopback(t, srv)
	dst, _ := net.ResolveUDPAddr("udp4", addr)
	fds := func() int { e, _ := os.ReadDir("/proc/self/fd"); return len(e) }
	before := fds()
	rrq := append([]byte{0, 1}, []byte("start4.elf\x00octet\x00blksize\x001024\x00tsize\x000\x00")...)
	var conns []*net.UDPConn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	busy, started := 0, 0
	for i := range 100 { // 100 addresses x 4 requests, none ever ACKed
		for range 4 {
			c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 1, byte(i+1))})
			if err != nil {
				t.Fatal(err)
			}
			conns = append(conns, c)
			c.WriteToUDP(rrq, dst)
		}
	}
	buf := make([]byte, 2048)
	for _, c := range conns {
		c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		n, _, err := c.ReadFromUDP(buf)
		switch {
		case err != nil || n < 4: // the burst overflowed a socket queue: a Pi would retry
		case buf[1] == 5 && strings.Contains(string(buf[4:n]), "busy"):
			busy++
		case buf[1] == 6 || buf[1] == 3: // OACK or DATA: a transfer started
			started++
		}
	}
	if started > 32 || busy < 200 {
		t.Errorf("%d transfers started (at most the 32 unleased slots), %d refused as busy", started, busy)
	}
	// a transfer holds its file and its own UDP socket
	if extra := fds() - before - len(conns); extra > 2*32+8 {
		t.Errorf("%d more file handles during the flood, want at most two per unleased slot (32)", extra)
	}
	// The board with a lease is served during the flood.
	c, err := pintftp.NewClient(addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetBlockSize(1024)
	wt, err := c.Receive("start4.elf", "octet")
	if err != nil {
		t.Fatalf("the leased board was turned away: %v", err)
	}
	var out bytes.Buffer
	if _, err := wt.WriteTo(&out); err != nil {
		t.Fatal(err)
	}
	want, _ := os.ReadFile(filepath.Join(rootDir, "start4.elf"))
	if !bytes.Equal(out.Bytes(), want) {
		t.Error("the leased board got other bytes")
	}
	if st := srv.Stats(); st.Busy < int64(busy) {
		t.Errorf("stats %+v", st)
	}
}
