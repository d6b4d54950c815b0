// Package simbench builds a CM4 production bench with no hardware, inside
// Linux network namespaces on this host, and runs simulated boards on it.
//
// Topology (Create):
//
//	bench namespace <prefix><id>-b:  bridge "br0" carrying the server address
//	                                 (the cm4bench server's --iface), and one
//	                                 bridge port "d<i>" per device
//	device namespace <prefix><id>-<i>: "eth0", a Raspberry Pi OUI MAC, no
//	                                 address until the simulated bootloader
//	                                 gets a lease
//
// Each device (Sim.Run) powers on like a CM4: the pisim bootloader model walks
// BOOT_ORDER, netboots with the Pi 4's exact DHCP and TFTP behaviour, then
// runs the real cm4agent (host build) inside its namespace against a
// file-backed eMMC; after a verified deploy the agent "reboots" it, and the
// next power-on boots the eMMC when netboot is off for it. Close kills every
// process the bench started and deletes every namespace it made.
//
// Everything needs root (network namespaces); Create says so clearly
// otherwise. Nothing is routed off the host: all traffic stays between the
// bench's own namespaces.
package simbench

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"

	"github.com/cm4bench/cm4bench/netboot/sim/netns"
)

// Defaults of Options.
const (
	DefaultPrefix = "cbs"
	BridgeName    = "br0"
	DeviceIface   = "eth0"
)

// DefaultSubnet is the bench link's subnet; the server takes its first host
// address. It exists only inside the bench's namespaces.
var DefaultSubnet = netip.MustParsePrefix("10.61.0.1/24")

// ErrNotRoot is returned by Create when the process cannot make network
// namespaces.
var ErrNotRoot = errors.New("the simulated bench needs root to create network namespaces (run it with sudo, e.g. `sudo make run` or `sudo build/cm4bench netboot serve --demo`)")

// Options shape a bench.
type Options struct {
	// Prefix starts every namespace name (default DefaultPrefix); a random
	// id follows it so parallel benches never collide.
	Prefix string
	// Devices is the number of simulated CM4s (at least 1).
	Devices int
	// ServerAddr is the server's address on the bench link (default
	// DefaultSubnet).
	ServerAddr netip.Prefix
	// Dir holds the devices' eMMC files and fact trees (default: a new
	// temporary directory, removed by Close).
	Dir string
	// EMMCBytes is each device's eMMC size (default 128 MiB). The files are
	// sparse.
	EMMCBytes int64
	// Logger receives bench lifecycle logs; nil = silent.
	Logger *slog.Logger
}

// Bench is a created set of namespaces with its devices.
type Bench struct {
	ID         string
	Server     *netns.NS    // the bench namespace; Iface is BridgeName
	ServerAddr netip.Prefix // address of the bridge: where the server listens
	Devices    []*Device
	Dir        string

	log     *slog.Logger
	ownDir  bool
	mu      sync.Mutex
	procs   []*Proc
	names   []string // namespaces to delete, in creation order
	closed  bool
	closeMu sync.Mutex
}

// Create builds the bench. On any error it removes what it made.
func Create(ctx context.Context, opt Options) (_ *Bench, err error) {
	if os.Geteuid() != 0 {
		return nil, ErrNotRoot
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return nil, errors.New("simbench: ip(8) not found: install iproute2 (scripts/deps.sh)")
	}
	if opt.Devices < 1 {
		return nil, fmt.Errorf("simbench: %d devices: need at least 1", opt.Devices)
	}
	if opt.Devices > 250 {
		return nil, fmt.Errorf("simbench: %d devices: at most 250 fit the bench subnet", opt.Devices)
	}
	if opt.Prefix == "" {
		opt.Prefix = DefaultPrefix
	}
	if !opt.ServerAddr.IsValid() {
		opt.ServerAddr = DefaultSubnet
	}
	if opt.EMMCBytes == 0 {
		opt.EMMCBytes = 128 << 20
	}
	idb := make([]byte, 3)
	rand.Read(idb)
	b := &Bench{ID: hex.EncodeToString(idb), ServerAddr: opt.ServerAddr, Dir: opt.Dir, log: opt.Logger}
	if b.log == nil {
		b.log = slog.New(slog.DiscardHandler)
	}
	if b.Dir == "" {
		if b.Dir, err = os.MkdirTemp("", "cm4bench-sim-"); err != nil {
			return nil, fmt.Errorf("simbench: work dir: %w", err)
		}
		b.ownDir = true
	}
	defer func() {
		if err != nil {
			b.Close()
		}
	}()
	base := opt.Prefix + b.ID
	b.Server = &netns.NS{Name: base + "-b", Iface: BridgeName}
	if err := b.addNS(ctx, b.Server.Name); err != nil {
		return nil, err
	}
	srv := b.Server.Name
	if err := netns.IP(ctx, "-n", srv, "link", "add", BridgeName, "type", "bridge", "stp_state", "0", "forward_delay", "0"); err != nil {
		return nil, err
	}
	if err := netns.IP(ctx, "-n", srv, "addr", "add", opt.ServerAddr.String(), "dev", BridgeName); err != nil {
		return nil, err
	}
	if err := netns.IP(ctx, "-n", srv, "link", "set", BridgeName, "up"); err != nil {
		return nil, err
	}
	// Board identities: a Raspberry Pi OUI and a serial derived from the
	// bench id, so two benches never share a MAC.
	seed := binary.BigEndian.Uint16(idb[1:])
	for i := 0; i < opt.Devices; i++ {
		d, err := b.addDevice(ctx, base, i, seed, opt.EMMCBytes)
		if err != nil {
			return nil, err
		}
		b.Devices = append(b.Devices, d)
	}
	b.log.Info("bench created", "id", b.ID, "namespace", srv, "devices", opt.Devices, "server", opt.ServerAddr)
	return b, nil
}

func (b *Bench) addNS(ctx context.Context, name string) error {
	if err := netns.IP(ctx, "netns", "add", name); err != nil {
		return err
	}
	b.mu.Lock()
	b.names = append(b.names, name)
	b.mu.Unlock()
	return netns.IP(ctx, "-n", name, "link", "set", "lo", "up")
}

func (b *Bench) addDevice(ctx context.Context, base string, i int, seed uint16, emmcBytes int64) (*Device, error) {
	ns := &netns.NS{Name: fmt.Sprintf("%s-%d", base, i), Iface: DeviceIface}
	if err := b.addNS(ctx, ns.Name); err != nil {
		return nil, err
	}
	port := fmt.Sprintf("d%d", i)
	mac := net.HardwareAddr{0xdc, 0xa6, 0x32, byte(seed >> 8), byte(seed), byte(i)}
	if err := netns.IP(ctx, "link", "add", "name", port, "netns", b.Server.Name, "type", "veth",
		"peer", "name", DeviceIface, "netns", ns.Name, "address", mac.String()); err != nil {
		return nil, err
	}
	if err := netns.IP(ctx, "-n", b.Server.Name, "link", "set", port, "master", BridgeName, "up"); err != nil {
		return nil, err
	}
	if err := netns.IP(ctx, "-n", ns.Name, "link", "set", DeviceIface, "up"); err != nil {
		return nil, err
	}
	d := &Device{
		Index: i,
		NS:    ns,
		Port:  port,
		bench: b,
		Dir:   filepath.Join(b.Dir, fmt.Sprintf("dev%d", i)),
	}
	d.Board.MAC = mac
	d.Board.Serial = uint32(seed)<<16 | 0xc400 | uint32(i)
	if err := d.prepare(emmcBytes); err != nil {
		return nil, err
	}
	return d, nil
}

// Proc is a process the bench started in one of its namespaces.
type Proc struct {
	Cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// Wait waits for the process to exit and returns its Wait error.
func (p *Proc) Wait() error { <-p.done; return p.err }

// Done is closed when the process has exited and been reaped.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Kill sends SIGKILL (a crash or a power cut, not a shutdown).
func (p *Proc) Kill() {
	select {
	case <-p.done:
	default:
		_ = p.Cmd.Process.Kill()
	}
}

// Start starts cmd (made with NS.Command) and tracks it: it is reaped by
// its own goroutine, and Close kills it and waits for that.
func (b *Bench) Start(cmd *exec.Cmd) (*Proc, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, errors.New("simbench: bench is closed")
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("simbench: start %s: %w", cmd.Path, err)
	}
	p := &Proc{Cmd: cmd, done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	b.procs = append(b.procs, p)
	return p, nil
}

// Close kills and reaps every tracked process, then deletes every namespace
// of the bench and, if Create made it, the work directory. It is safe to
// call more than once.
func (b *Bench) Close() error {
	b.closeMu.Lock()
	defer b.closeMu.Unlock()
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	procs, names := b.procs, b.names
	b.procs, b.names = nil, nil
	b.mu.Unlock()
	var errs []error
	for _, p := range procs {
		p.Kill()
	}
	for _, p := range procs {
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			errs = append(errs, fmt.Errorf("simbench: pid %d did not exit after SIGKILL", p.Cmd.Process.Pid))
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for i := len(names) - 1; i >= 0; i-- {
		if err := netns.IP(ctx, "netns", "del", names[i]); err != nil {
			errs = append(errs, err)
		}
	}
	if b.ownDir && b.Dir != "" {
		if err := os.RemoveAll(b.Dir); err != nil {
			errs = append(errs, err)
		}
	}
	b.log.Info("bench removed", "id", b.ID, "namespaces", len(names), "processes", len(procs))
	return errors.Join(errs...)
}
