package simbench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cm4bench/cm4bench/api/client"
	"github.com/cm4bench/cm4bench/internal/atomicfile"
	"github.com/cm4bench/cm4bench/internal/contract"
	"github.com/cm4bench/cm4bench/internal/syncbuf"
	"github.com/cm4bench/cm4bench/netboot/sim/pisim"
)

// RigConfig describes a complete simulated bench: namespaces, the real
// `cm4bench netboot serve` in the bench namespace, and the devices.
type RigConfig struct {
	Devices int    // simulated CM4s (default 4)
	Prefix  string // namespace prefix (default DefaultPrefix)
	// Cm4bench is the server binary (default: this executable).
	Cm4bench string
	// Agent is the host-built cm4agent (required).
	Agent string
	// DataDir is the server's --data (default: <bench dir>/data).
	DataDir string
	// Image is the golden image; "" = generate ImageSize bytes.
	Image     string
	ImageSize int64 // default 64 MiB
	// HTTP, if set, is a host address (e.g. 127.0.0.1:5000) forwarded to
	// the server's HTTP port inside the bench namespace.
	HTTP string
	// ServerArgs are extra `netboot serve` flags; ServerPre are global
	// flags put before "netboot serve" (e.g. --log-level warn).
	ServerArgs []string
	ServerPre  []string
	// Prepare, if set, runs after the namespaces and eMMC files exist and
	// before the server starts and the boards power on (fill an eMMC,
	// mount a small backup disk, ...).
	Prepare func(r *Rig) error
	// DeviceURL is the cm4bench.server= URL written into cmdline.txt; ""
	// = the server itself. Fault tests point it at a proxy.
	DeviceURL string
	// EEPROM of every device; AgentArgs are extra cm4agent flags.
	EEPROM    pisim.EEPROM
	AgentArgs []string
	EMMCBytes int64 // default 128 MiB
	// ServerOutput receives the server's log; AgentOutput device i's agent
	// log (nil = discarded).
	ServerOutput io.Writer
	AgentOutput  func(i int) io.Writer
	OnChange     func(Status)
	Logger       *slog.Logger
	// Realism gives the boards real hardware's timing; BoardMbit and
	// UplinkMbit shape the links (Bench.Shape). Zero: as fast as this
	// machine.
	Realism    *Realism
	BoardMbit  float64
	UplinkMbit float64
}

// Rig is a running simulated bench.
type Rig struct {
	Bench     *Bench
	Sim       *Sim
	Server    *Proc
	URL       string // the server as devices reach it, e.g. http://10.61.0.1:5000
	HostURL   string // the forwarded dashboard on the host, when RigConfig.HTTP is set
	Token     string
	DataDir   string
	TFTPRoot  string
	Image     string
	ImageSHA  string
	ServerLog *syncbuf.Buffer

	cfg      RigConfig
	logger   *slog.Logger
	powerLn  net.Listener // the simulated power switch (power.go)
	argv     []string
	cancel   context.CancelFunc
	simDone  chan struct{}
	fwdDone  chan struct{}
	serverMu sync.Mutex
}

// HTTPPort is where the server listens inside the bench namespace.
const HTTPPort = 5000

// StartRig builds and starts everything; Close tears it all down.
func StartRig(ctx context.Context, cfg RigConfig) (_ *Rig, err error) {
	if cfg.Devices == 0 {
		cfg.Devices = 4
	}
	if cfg.ImageSize == 0 {
		cfg.ImageSize = 64 << 20
	}
	if cfg.Cm4bench == "" {
		if cfg.Cm4bench, err = os.Executable(); err != nil {
			return nil, fmt.Errorf("simbench: find cm4bench: %w", err)
		}
	}
	if cfg.Agent == "" {
		return nil, errors.New("simbench: no cm4agent binary given")
	}
	lg := cfg.Logger
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	b, err := Create(ctx, Options{Prefix: cfg.Prefix, Devices: cfg.Devices, EMMCBytes: cfg.EMMCBytes, Logger: lg})
	if err != nil {
		return nil, err
	}
	r := &Rig{Bench: b, cfg: cfg, logger: lg, ServerLog: &syncbuf.Buffer{}}
	defer func() {
		if err != nil {
			r.Close()
		}
	}()
	addr := b.ServerAddr.Addr().String()
	r.URL = fmt.Sprintf("http://%s:%d", addr, HTTPPort)
	r.DataDir = cfg.DataDir
	if r.DataDir == "" {
		r.DataDir = filepath.Join(b.Dir, "data")
	}
	r.TFTPRoot = filepath.Join(b.Dir, "tftp")
	for _, d := range []string{r.DataDir, r.TFTPRoot} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("simbench: %w", err)
		}
	}
	devURL := cfg.DeviceURL
	if devURL == "" {
		devURL = r.URL
	}
	if err := WriteTFTPRoot(r.TFTPRoot, devURL); err != nil {
		return nil, err
	}
	r.Image = cfg.Image
	if r.Image == "" {
		r.Image = filepath.Join(b.Dir, "golden-cm4.img")
		if r.ImageSHA, err = WriteGoldenImage(r.Image, cfg.ImageSize, 0xc4b3); err != nil {
			return nil, err
		}
		lg.Info("golden image generated", "path", r.Image, "bytes", cfg.ImageSize, "sha256", r.ImageSHA)
	}
	if cfg.Prepare != nil {
		if err := cfg.Prepare(r); err != nil {
			return nil, fmt.Errorf("simbench: prepare: %w", err)
		}
	}
	if err := b.Shape(ctx, cfg.BoardMbit, cfg.UplinkMbit); err != nil {
		return nil, err
	}
	// The boards' power switch, for the dashboard's Power-cycle.
	sock := filepath.Join(b.Dir, "power.sock")
	if r.powerLn, err = net.Listen("unix", sock); err != nil {
		return nil, fmt.Errorf("simbench: power switch socket: %w", err)
	}
	powerCmd, err := PowerCommand(cfg.Cm4bench, sock)
	if err != nil {
		return nil, err
	}
	r.argv = append(append([]string(nil), cfg.ServerPre...), "netboot", "serve",
		"--iface", BridgeName,
		"--addr", b.ServerAddr.String(),
		"--tftp-root", r.TFTPRoot,
		"--data", r.DataDir,
		"--image", r.Image,
		"--http", net.JoinHostPort(addr, fmt.Sprint(HTTPPort)),
		// the host reaches the technician API through the bench address
		"--admin-listen", net.JoinHostPort(addr, fmt.Sprint(HTTPPort)),
		"--power-command", powerCmd)
	// The host's dashboard address is known before the server starts, so
	// the login link the server prints points there.
	var hostLn net.Listener
	if cfg.HTTP != "" {
		ln, err := net.Listen("tcp", cfg.HTTP)
		if err != nil {
			return nil, fmt.Errorf("simbench: dashboard on the host: %w", err)
		}
		hostLn = ln
		r.HostURL = "http://" + ln.Addr().String()
		r.argv = append(r.argv, "--dashboard-url", r.HostURL)
	}
	r.argv = append(r.argv, cfg.ServerArgs...)
	if err := r.StartServer(ctx); err != nil {
		if hostLn != nil {
			hostLn.Close()
		}
		return nil, err
	}
	tok, err := os.ReadFile(filepath.Join(r.DataDir, "admin-token"))
	if err != nil {
		if hostLn != nil {
			hostLn.Close()
		}
		return nil, fmt.Errorf("simbench: read the admin token the server wrote: %w", err)
	}
	r.Token = strings.TrimSpace(string(tok))

	rctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go r.servePower(rctx, r.powerLn)
	if hostLn != nil {
		ln := hostLn
		if err := r.advertiseHost(); err != nil {
			ln.Close()
			return nil, err
		}
		r.fwdDone = make(chan struct{})
		target := net.JoinHostPort(addr, fmt.Sprint(HTTPPort))
		go func() {
			defer close(r.fwdDone)
			Forward(rctx, ln, func(ctx context.Context) (net.Conn, error) { return b.Server.DialContext(ctx, "tcp", target) })
		}()
	}
	r.Sim = &Sim{Bench: b, Agent: cfg.Agent, AgentArgs: cfg.AgentArgs, EEPROM: cfg.EEPROM,
		AgentOutput: cfg.AgentOutput, OnChange: cfg.OnChange, Logger: lg, Realism: cfg.Realism}
	r.simDone = make(chan struct{})
	go func() {
		defer close(r.simDone)
		if err := r.Sim.Run(rctx); err != nil {
			lg.Error("simulation stopped", "err", err)
		}
	}()
	return r, nil
}

// Client returns a technician API client that reaches the server inside
// the bench namespace.
func (r *Rig) Client() *client.Client { return Client(r.Bench.Server, r.URL, r.Token) }

// StartServer starts `cm4bench netboot serve` in the bench namespace and
// waits until it answers HTTP.
func (r *Rig) StartServer(ctx context.Context) error {
	r.serverMu.Lock()
	defer r.serverMu.Unlock()
	cmd := r.Bench.Server.Command(context.Background(), r.cfg.Cm4bench, r.argv...)
	var w io.Writer = r.ServerLog
	if r.cfg.ServerOutput != nil {
		w = io.MultiWriter(r.ServerLog, r.cfg.ServerOutput)
	}
	cmd.Stdout, cmd.Stderr = w, w
	p, err := r.Bench.Start(cmd)
	if err != nil {
		return err
	}
	r.Server = p
	c := Client(r.Bench.Server, r.URL, "")
	c.HTTP.Timeout = time.Second
	deadline := time.Now().Add(60 * time.Second)
	for {
		_, err := c.Status(ctx)
		var he *client.Error
		if err == nil || errors.As(err, &he) {
			// it answers (401 without a token is an answer)
			return r.advertiseHost()
		}
		select {
		case <-p.Done():
			return fmt.Errorf("simbench: cm4bench netboot serve exited (%v):\n%s", p.Wait(), tail(r.ServerLog.String(), 30))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.Kill()
			return fmt.Errorf("simbench: cm4bench netboot serve did not answer on %s within 60 s:\n%s", r.URL, tail(r.ServerLog.String(), 30))
		}
	}
}

// advertiseHost points <data>/server.json at the dashboard forwarded to
// the host, when there is one: the server wrote its namespace address,
// which the host cannot reach, and the CLI on the host must find the
// server it can reach (it refuses any other address).
func (r *Rig) advertiseHost() error {
	if r.HostURL == "" {
		return nil
	}
	p := filepath.Join(r.DataDir, contract.FileServerInfo)
	var si contract.ServerInfo
	if b, err := os.ReadFile(p); err == nil {
		json.Unmarshal(b, &si)
	}
	si.URL = r.HostURL
	b, _ := json.MarshalIndent(si, "", "  ")
	if err := atomicfile.WriteFile(p, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("simbench: record the host URL in %s: %w", p, err)
	}
	return nil
}

// KillServer kills the server with SIGKILL (a crash) and waits for it.
func (r *Rig) KillServer() {
	r.serverMu.Lock()
	defer r.serverMu.Unlock()
	if r.Server != nil {
		r.Server.Kill()
		<-r.Server.Done()
	}
}

// StopServer stops the server with SIGTERM (Ctrl-C), killing it after 10 s.
func (r *Rig) StopServer() {
	r.serverMu.Lock()
	defer r.serverMu.Unlock()
	if r.Server == nil {
		return
	}
	select {
	case <-r.Server.Done():
		return
	default:
	}
	_ = r.Server.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.Server.Done():
	case <-time.After(10 * time.Second):
		r.Server.Kill()
		<-r.Server.Done()
	}
}

// Close stops the devices, the server and the forwarder, and removes the
// bench (namespaces, processes, work directory).
func (r *Rig) Close() error {
	if r.cancel != nil {
		r.cancel()
	}
	if r.powerLn != nil {
		r.powerLn.Close()
	}
	if r.simDone != nil {
		<-r.simDone
	}
	if r.fwdDone != nil {
		<-r.fwdDone
	}
	r.StopServer()
	if r.HostURL != "" {
		// serve removes server.json only when it still holds its own URL.
		p := filepath.Join(r.DataDir, contract.FileServerInfo)
		if b, err := os.ReadFile(p); err == nil {
			var si contract.ServerInfo
			if json.Unmarshal(b, &si) == nil && si.URL == r.HostURL {
				os.Remove(p)
			}
		}
	}
	return r.Bench.Close()
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
