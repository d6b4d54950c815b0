// Package serve composes the bench behind `cm4bench netboot serve`: one
// store, then the DHCP, TFTP and HTTP servers around it, under one errgroup
// (the first error cancels the rest; cancelling ctx stops all cleanly).
//
//	b, err := serve.New(ctx, serve.Config{Iface: "eth1", TFTPRoot: "/srv/tftp", DataDir: "/var/lib/cm4bench"})
//	if err != nil { return err }
//	defer b.Close()
//	fmt.Println("admin token:", b.Token())
//	err = b.Serve(ctx) // until ctx is done or a server fails
//
// The store is the netboot Policy of both DHCP and TFTP, so a switch flipped
// through the API applies to the next packet. DHCP and TFTP events are queued
// (never blocking their packet paths) into the store's event log, from which
// the API fans them out over SSE and counts them in /metrics.
//
// Serve opens every socket on the calling goroutine or, for the servers it
// runs on other goroutines, in the network namespace of the calling thread,
// so a test or the demo bench can run the whole bench inside a namespace
// with nettest.NS.Do(func() error { return b.Serve(ctx) }).
package serve

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/cm4bench/cm4bench/api"
	"github.com/cm4bench/cm4bench/api/images"
	"github.com/cm4bench/cm4bench/api/recipe"
	"github.com/cm4bench/cm4bench/api/store"
	"github.com/cm4bench/cm4bench/internal/atomicfile"
	"github.com/cm4bench/cm4bench/internal/contract"
	"github.com/cm4bench/cm4bench/internal/powerswitch"
	"github.com/cm4bench/cm4bench/netboot/capture"
	"github.com/cm4bench/cm4bench/netboot/dhcp"
	"github.com/cm4bench/cm4bench/netboot/tftp"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"
)

// DefaultHTTPAddr is where the API and dashboard listen by default (plus
// the bench address, port contract.DefaultPort).
const DefaultHTTPAddr = "127.0.0.1:5000"

// Config is everything `cm4bench netboot serve` takes. Zero values are
// defaults where a default makes sense.
type Config struct {
	// OnReady, when set, is called once every server listens (the
	// systemd readiness notification).
	OnReady func()
	// Iface is the bench interface (DHCP binds to it; its first IPv4
	// address is the bench address unless Addr is set). Required unless
	// NoDHCP and NoTFTP.
	Iface string
	// Addr is the server's address on the bench link (must be configured
	// on Iface). Default: Iface's first IPv4 address.
	Addr netip.Prefix
	// Range is the DHCP pool. Default: Addr's subnet minus Addr.
	Range [2]netip.Addr
	// Proxy runs DHCP as proxyDHCP (PXE options only).
	Proxy bool
	// AllowOtherDHCP starts even when another DHCP server answers.
	AllowOtherDHCP bool
	// EventMaxAge and EventMaxCount bound the event log (0: the api
	// defaults, 30 days and 200,000 events).
	EventMaxAge   time.Duration
	EventMaxCount int
	// BackupReserve is the free space (bytes) a backup upload never eats
	// into; 0 = api.DefaultDiskReserve, < 0 = none.
	BackupReserve int64
	// PiOnly leases addresses only to recognised Raspberry Pis.
	PiOnly bool
	// AllowedHosts are host names the HTTP server answers to besides IP
	// addresses and localhost (api.Server.AllowedHosts).
	AllowedHosts []string
	// AllowUnleased lets device requests come from addresses our DHCP
	// server leased to nobody (static addresses, a proxy in front of the
	// API). By default, with DHCP on and not --proxy, they are refused.
	AllowUnleased bool
	// Capture, when set, is a pcap file that receives every DHCP and TFTP
	// packet on Iface while the bench runs (written as Capture.partial and
	// renamed at a clean stop). Needs CAP_NET_RAW.
	Capture string
	// CaptureLimit bounds the capture's packet bytes (0: capture.DefaultLimit).
	CaptureLimit int64
	// FastFallthrough gives a board whose netboot is off the boot menu and
	// lets TFTP refuse its firmware, so it moves on in about a second
	// instead of after DHCP_TIMEOUT (dhcp.Server.FastFallthrough).
	FastFallthrough bool
	// TFTPRoot is the jailed TFTP root. Required unless NoTFTP.
	TFTPRoot string
	// DataDir holds the database, admin token, images, backups, leases and
	// server.json. Required.
	DataDir string
	// HTTPAddr, if set, is the only HTTP listen address. Default:
	// DefaultHTTPAddr plus <bench address>:5000.
	HTTPAddr string
	// AdminListen are more addresses (HOST:PORT) that serve the technician
	// API and dashboard besides loopback; they are listened on too. The
	// bench address serves only the device API unless it is named here.
	AdminListen []string
	// DashboardURL is where technicians open the dashboard when it is not
	// the first listen URL (a demo forwarded to the host, a reverse proxy);
	// the printed one-click login link points there.
	DashboardURL string
	// PowerCommand, if set, power-cycles a board: run by /bin/sh -c with
	// the MAC as $1 (internal/powerswitch).
	PowerCommand string
	// Image is the golden default image (.img, .img.gz, .img.xz, .img.zst).
	Image string
	// Station names this bench in the ledger ("" = the host name).
	Station string
	// RecipeFiles are recipe YAML files applied at start, and RulesFile the
	// rule list (cm4bench recipe/rule apply, from files).
	RecipeFiles []string
	RulesFile   string
	// NoDHCP and NoTFTP leave those servers out (HTTP-only use, or a bench
	// with another netboot server).
	NoDHCP, NoTFTP bool
	// CompressBackups stores raw backup uploads zstd-compressed.
	CompressBackups bool
	// PollInterval is what devices are told to poll at (default 5 s).
	PollInterval time.Duration
	// Version is reported by the API.
	Version string
	// Logger receives every server's logs; nil = silent.
	Logger *slog.Logger
	// UI, if set, replaces the embedded dashboard.
	UI http.Handler
}

// Bench is a composed, ready-to-serve bench.
type Bench struct {
	cfg     Config
	st      *store.Store
	srv     *api.Server
	lib     *images.Library
	token   string
	created bool
	bench   netip.Prefix // bench address (invalid when no iface)

	events  chan contract.Event
	dropped int64

	mu     sync.Mutex
	urls   []string
	rivals []string
	ready  chan struct{}
}

// New validates cfg, opens the store and the admin token, and checks the
// image. Nothing listens until Serve.
func New(ctx context.Context, cfg Config) (*Bench, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("serve: a data dir is required (--data DIR)")
	}
	if !cfg.NoDHCP && cfg.Iface == "" {
		return nil, errors.New("serve: --iface is required for DHCP (or use --no-dhcp)")
	}
	if cfg.Capture != "" && cfg.Iface == "" {
		return nil, errors.New("serve: --capture needs --iface (the interface to record)")
	}
	if !cfg.NoTFTP && cfg.TFTPRoot == "" {
		return nil, errors.New("serve: --tftp-root is required for TFTP (or use --no-tftp)")
	}
	if !cfg.NoTFTP {
		if fi, err := os.Stat(cfg.TFTPRoot); err != nil || !fi.IsDir() {
			return nil, fmt.Errorf("serve: TFTP root %s is not a directory", cfg.TFTPRoot)
		}
	}
	if cfg.Image != "" {
		if err := checkImage(cfg.Image); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return nil, fmt.Errorf("serve: create data dir: %w", err)
	}
	// Tokens, the database, leases and whole-disk backups live here: no
	// access for others, whatever made the directory.
	if fi, err := os.Stat(cfg.DataDir); err == nil && fi.Mode().Perm()&0o027 != 0 {
		if err := os.Chmod(cfg.DataDir, fi.Mode().Perm()&^0o027); err != nil {
			return nil, fmt.Errorf("serve: restrict data dir %s: %w", cfg.DataDir, err)
		}
	}
	b := &Bench{cfg: cfg, events: make(chan contract.Event, 4096), ready: make(chan struct{})}
	if cfg.Iface != "" {
		p, err := benchAddr(cfg.Iface, cfg.Addr)
		if err != nil {
			return nil, err
		}
		b.bench = p
	}
	st, err := store.Open(ctx, filepath.Join(cfg.DataDir, "cm4bench.db"))
	if err != nil {
		return nil, fmt.Errorf("serve: %w", err)
	}
	b.st = st
	st.Station = cfg.Station
	if st.Station == "" {
		st.Station, _ = os.Hostname()
	}
	b.token, b.created, err = api.LoadOrCreateToken(cfg.DataDir)
	if err != nil {
		st.Close()
		return nil, fmt.Errorf("serve: %w", err)
	}
	b.lib = &images.Library{Dir: filepath.Join(cfg.DataDir, "images"), Default: cfg.Image, Cache: st, Logger: cfg.Logger}
	b.srv = &api.Server{
		Store: st, Images: b.lib, DataDir: cfg.DataDir, Token: b.token,
		CompressBackups: cfg.CompressBackups, PollInterval: cfg.PollInterval,
		Version: cfg.Version, Logger: cfg.Logger, Rivals: b.Rivals, UI: cfg.UI,
	}
	b.srv.AdminAddrs = b.adminAddr
	b.srv.DiskReserve = cfg.BackupReserve
	b.srv.AllowedHosts = cfg.AllowedHosts
	if cfg.PowerCommand != "" {
		b.srv.Power = &powerswitch.Command{Shell: cfg.PowerCommand, Logger: cfg.Logger}
	}
	b.srv.EventMaxAge, b.srv.EventMaxCount = cfg.EventMaxAge, cfg.EventMaxCount
	if err := b.applyLine(ctx); err != nil {
		st.Close()
		return nil, err
	}
	return b, nil
}

// applyLine applies --recipes files and the --rules file at start, so a
// bench's line lives in files (kept in git) and comes back with the
// service. Anything wrong stops the start with the reason.
func (b *Bench) applyLine(ctx context.Context) error {
	for _, f := range b.cfg.RecipeFiles {
		data, err := os.ReadFile(f)
		if err != nil {
			return fmt.Errorf("serve: --recipes: %w", err)
		}
		rs, err := recipe.ParseRecipes(bytes.NewReader(data))
		if err != nil {
			return fmt.Errorf("serve: --recipes %s: %w", f, err)
		}
		if err := recipe.Resolve(rs, filepath.Dir(f)); err != nil {
			return fmt.Errorf("serve: --recipes %s: %w", f, err)
		}
		if _, err := b.srv.ApplyRecipes(ctx, rs); err != nil {
			return fmt.Errorf("serve: --recipes %s: %w", f, err)
		}
	}
	if b.cfg.RulesFile != "" {
		data, err := os.ReadFile(b.cfg.RulesFile)
		if err != nil {
			return fmt.Errorf("serve: --rules: %w", err)
		}
		rs, err := recipe.ParseRules(bytes.NewReader(data))
		if err != nil {
			return fmt.Errorf("serve: --rules %s: %w", b.cfg.RulesFile, err)
		}
		if err := b.srv.ApplyRules(ctx, rs); err != nil {
			return fmt.Errorf("serve: --rules %s: %w", b.cfg.RulesFile, err)
		}
	}
	return nil
}

func checkImage(p string) error {
	if _, err := images.FormatOf(filepath.Base(p)); err != nil {
		return fmt.Errorf("serve: --image %s: %w", p, err)
	}
	fi, err := os.Stat(p)
	if err != nil {
		return fmt.Errorf("serve: --image: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("serve: --image %s is not a regular file", p)
	}
	return nil
}

// benchAddr finds the server's address on iface: want if set (and present
// on the interface), else its first IPv4 address.
func benchAddr(iface string, want netip.Prefix) (netip.Prefix, error) {
	ifi, err := net.InterfaceByName(iface)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("serve: interface %s: %w", iface, err)
	}
	addrs, err := ifi.Addrs()
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("serve: addresses of %s: %w", iface, err)
	}
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok || ipn.IP.To4() == nil {
			continue
		}
		ip, _ := netip.AddrFromSlice(ipn.IP.To4())
		ones, _ := ipn.Mask.Size()
		p := netip.PrefixFrom(ip, ones)
		if !want.IsValid() {
			return p, nil
		}
		if p.Addr() == want.Addr() {
			return want, nil
		}
	}
	if want.IsValid() {
		return netip.Prefix{}, fmt.Errorf("serve: %s is not configured on %s (add it: ip addr add %s dev %s)", want.Addr(), iface, want, iface)
	}
	return netip.Prefix{}, fmt.Errorf("serve: %s has no IPv4 address (give it one, or pass --addr IP/CIDR after adding it)", iface)
}

// Token is the admin token.
func (b *Bench) Token() string { return b.token }

// TokenCreated reports whether the token was generated by this start (so
// it should be printed once).
func (b *Bench) TokenCreated() bool { return b.created }

// Store is the bench store (for in-process users such as the demo bench).
func (b *Bench) Store() *store.Store { return b.st }

// API is the HTTP server.
func (b *Bench) API() *api.Server { return b.srv }

// BenchAddr is the server's address on the bench link (invalid without an
// interface).
func (b *Bench) BenchAddr() netip.Prefix { return b.bench }

// Ready is closed once every server listens.
func (b *Bench) Ready() <-chan struct{} { return b.ready }

// URLs are the HTTP base URLs, the loopback one first (valid after Ready).
func (b *Bench) URLs() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string{}, b.urls...)
}

// Rivals lists other DHCP servers seen on the link while running.
func (b *Bench) Rivals() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string{}, b.rivals...)
}

// Close closes the store. Call it after Serve returns.
func (b *Bench) Close() error { return b.st.Close() }

func (b *Bench) log() *slog.Logger {
	if b.cfg.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return b.cfg.Logger
}

// queue is the Events hook of DHCP and TFTP: it never blocks their packet
// paths; when the queue is full the event is dropped and counted.
func (b *Bench) queue(ev contract.Event) {
	if ev.Kind == contract.EventDHCPRival {
		b.mu.Lock()
		if len(b.rivals) < 16 {
			b.rivals = append(b.rivals, ev.Message)
		}
		b.mu.Unlock()
	}
	select {
	case b.events <- ev:
	default:
		b.mu.Lock()
		b.dropped++
		n := b.dropped
		b.mu.Unlock()
		if n == 1 || n%1000 == 0 {
			b.log().Warn("event queue full: dropping DHCP/TFTP events", "dropped", n)
		}
	}
}

func (b *Bench) pump(ctx context.Context) {
	coal := &coalescer{window: 30 * time.Second}
	for {
		select {
		case <-ctx.Done():
			return
		case ev := <-b.events:
			ev, keep := coal.admit(ev, time.Now())
			if !keep {
				continue
			}
			if _, err := b.st.Emit(context.WithoutCancel(ctx), ev); err != nil {
				b.log().Error("recording event", "kind", ev.Kind, "err", err)
			}
		}
	}
}

// httpAddrs are the HTTP listen addresses.
func (b *Bench) httpAddrs() []string {
	var out []string
	if b.cfg.HTTPAddr != "" {
		out = []string{b.cfg.HTTPAddr}
	} else {
		out = []string{DefaultHTTPAddr}
		if b.bench.IsValid() {
			out = append(out, net.JoinHostPort(b.bench.Addr().String(), strconv.Itoa(contract.DefaultPort)))
		}
	}
	for _, a := range b.cfg.AdminListen {
		if !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

// adminAddr reports whether a connection that arrived on local address ap
// may use the technician API: an --admin-listen address (a wildcard host
// matches its port).
func (b *Bench) adminAddr(ap netip.AddrPort) bool {
	for _, a := range b.cfg.AdminListen {
		host, port, err := net.SplitHostPort(a)
		if err != nil || port != strconv.Itoa(int(ap.Port())) {
			continue
		}
		if ip, err := netip.ParseAddr(host); host == "" || (err == nil && (ip.IsUnspecified() || ip.Unmap() == ap.Addr().Unmap())) {
			return true
		}
	}
	return false
}

// Serve runs DHCP, TFTP and HTTP until ctx is done (then returns nil after
// a clean stop) or one of them fails (then the others are stopped and the
// error returned). It records the server's URL in <data>/server.json for
// the CLI and removes it on the way out.
func (b *Bench) Serve(ctx context.Context) error {
	// Listen first, on this goroutine (and so in this thread's namespace).
	var lns []net.Listener
	for _, a := range b.httpAddrs() {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return fmt.Errorf("serve: http listen %s: %w", a, err)
		}
		lns = append(lns, ln)
		u := "http://" + ln.Addr().String()
		b.mu.Lock()
		b.urls = append(b.urls, u)
		b.mu.Unlock()
		b.srv.AddAddress(u)
	}
	info := contract.ServerInfo{URL: b.URLs()[0], PID: os.Getpid(), Started: time.Now().UTC()}
	infoJSON, _ := json.MarshalIndent(info, "", "  ")
	infoPath := filepath.Join(b.cfg.DataDir, contract.FileServerInfo)
	if err := atomicfile.WriteFile(infoPath, append(infoJSON, '\n'), 0o644); err != nil {
		for _, l := range lns {
			l.Close()
		}
		return fmt.Errorf("serve: record server info: %w", err)
	}
	defer removeIfOurs(infoPath, info)

	inNS, closeNS, err := namespaceRunner()
	if err != nil {
		for _, l := range lns {
			l.Close()
		}
		return err
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { b.pump(gctx); return nil })
	go b.lib.Warm(gctx)

	var dsrv *dhcp.Server
	var wg sync.WaitGroup // servers that must be up before Ready
	if b.cfg.Capture != "" {
		// Recording starts before DHCP, so the first packets are in it.
		capReady := make(chan struct{})
		cp := &capture.Capture{Iface: b.cfg.Iface, Path: b.cfg.Capture, Limit: b.cfg.CaptureLimit, Logger: b.cfg.Logger,
			Ready: func() { close(capReady) }}
		g.Go(func() error {
			return inNS(func() error { return cp.Serve(gctx) })
		})
		select {
		case <-capReady:
		case <-gctx.Done():
		}
	}
	if !b.cfg.NoDHCP {
		dsrv = &dhcp.Server{
			Iface: b.cfg.Iface, Addr: b.bench, Range: b.cfg.Range, Proxy: b.cfg.Proxy,
			AllowOtherDHCP: b.cfg.AllowOtherDHCP, FastFallthrough: b.cfg.FastFallthrough, PiOnly: b.cfg.PiOnly, LeaseFile: filepath.Join(b.cfg.DataDir, "leases.json"),
			Policy: b.st, Logger: b.cfg.Logger, Events: b.queue,
		}
		wg.Add(1)
		var once sync.Once
		dsrv.Ready = func() { once.Do(wg.Done) }
		g.Go(func() error {
			defer dsrv.Ready()
			return inNS(func() error {
				if err := dsrv.Serve(gctx); err != nil {
					return fmt.Errorf("serve: dhcp: %w", err)
				}
				return nil
			})
		})
	}
	if !b.cfg.NoTFTP {
		addr := "0.0.0.0:69"
		if b.bench.IsValid() {
			addr = net.JoinHostPort(b.bench.Addr().String(), "69")
		}
		tsrv := &tftp.Server{Root: b.cfg.TFTPRoot, Addr: addr, Policy: b.st, Logger: b.cfg.Logger, Events: b.queue}
		if dsrv != nil {
			tsrv.MACForIP = dsrv.MACForIP
		}
		g.Go(func() error {
			return inNS(func() error {
				if err := tsrv.Serve(gctx); err != nil {
					return fmt.Errorf("serve: tftp: %w", err)
				}
				return nil
			})
		})
	}
	if dsrv != nil {
		b.srv.MACForIP = dsrv.MACForIP
		b.srv.RequireLease = !b.cfg.Proxy && !b.cfg.AllowUnleased
	}
	for _, ln := range lns {
		g.Go(func() error { return b.srv.Serve(gctx, ln) })
	}
	go func() {
		wg.Wait()
		if gctx.Err() == nil {
			b.log().Info("bench ready", "http", b.URLs(), "iface", b.cfg.Iface, "dhcp", !b.cfg.NoDHCP, "tftp", !b.cfg.NoTFTP)
			close(b.ready)
			if b.cfg.OnReady != nil {
				b.cfg.OnReady()
			}
		}
	}()
	err = g.Wait()
	closeNS()
	if err != nil && ctx.Err() == nil {
		return err
	}
	return nil
}

// removeIfOurs deletes server.json unless another server replaced it.
func removeIfOurs(p string, info contract.ServerInfo) {
	b, err := os.ReadFile(p)
	if err != nil {
		return
	}
	var cur contract.ServerInfo
	if json.Unmarshal(b, &cur) == nil && cur.PID == info.PID && cur.URL == info.URL {
		os.Remove(p)
	}
}

// namespaceRunner returns a function that runs fn (on the current
// goroutine) in the network namespace of the calling thread: on a locked
// thread switched into it, which is thrown away afterwards. Without the
// right to switch (not root: then the caller cannot be in another
// namespace either) fn runs as is. closeNS releases the namespace handle
// once every server has returned.
//
// The calling thread's namespace is always entered explicitly: comparing
// it with "the process's" namespace is not reliable, because the thread a
// test switched may be the process's main thread.
func namespaceRunner() (run func(fn func() error) error, closeNS func(), err error) {
	direct := func(fn func() error) error { return fn() }
	fd, err := unix.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return direct, func() {}, nil // no /proc: no namespaces to care about
	}
	run = func(fn func() error) error {
		runtime.LockOSThread() // never unlocked after a switch: the thread dies with the goroutine
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			if errors.Is(err, unix.EPERM) {
				runtime.UnlockOSThread()
				return fn()
			}
			return fmt.Errorf("serve: enter network namespace: %w", err)
		}
		return fn()
	}
	return run, func() { unix.Close(fd) }, nil
}

// Run is New + Serve + Close, printing the admin token to out the first
// time it is generated.
func Run(ctx context.Context, cfg Config, out io.Writer) error {
	b, err := New(ctx, cfg)
	if err != nil {
		return err
	}
	defer b.Close()
	if out != nil {
		go b.Announce(ctx, out)
	}
	return b.Serve(ctx)
}

// Announce waits until the bench serves, then prints how to reach the
// dashboard: a one-click login link for the loopback URL (works once, for
// api.LoginLinkLifetime) and, the first time, the admin token. Nothing is
// printed when the bench never comes up (a busy port), so no token is shown
// for a server that is not running.
func (b *Bench) Announce(ctx context.Context, out io.Writer) {
	select {
	case <-b.Ready():
	case <-ctx.Done():
		return
	}
	tokenFile := filepath.Join(b.cfg.DataDir, contract.FileAdminToken)
	if b.TokenCreated() {
		fmt.Fprintf(out, "admin token (shown once; also in %s): %s\n", tokenFile, b.Token())
	}
	base := b.cfg.DashboardURL
	if urls := b.URLs(); base == "" && len(urls) > 0 {
		base = urls[0]
	}
	if base != "" {
		fmt.Fprintf(out, "dashboard: %s\n  one-click login (works once, for %s): %s\n  later logins: the admin token in %s\n",
			base, api.LoginLinkLifetime, b.API().LoginLink(base), tokenFile)
	}
}
