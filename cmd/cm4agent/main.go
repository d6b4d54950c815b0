// Command cm4agent is the device agent of cm4bench. Packed by
// `cm4bench netboot initramfs` as /init of the netboot initramfs, it runs as
// PID 1: it mounts proc, sys and devtmpfs, loads its kernel modules, gets an
// address by DHCP, registers with the cm4bench server and polls it, then
// deploys an image to the eMMC or backs it up, as the technician asks.
//
// Outside an initramfs the same binary is a normal program, for tests and
// the demo bench:
//
//	cm4agent --server http://127.0.0.1:5000 --target disk.img [--mac M] [--once]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"github.com/cm4bench/cm4bench/netboot/device/blockdev"
	"github.com/cm4bench/cm4bench/netboot/device/emmcpace"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/cm4bench/cm4bench/internal/contract"
	"github.com/cm4bench/cm4bench/netboot/device/agent"
	"github.com/cm4bench/cm4bench/netboot/device/facts"
	"github.com/cm4bench/cm4bench/netboot/device/pid1"
)

// version is set with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	if os.Getpid() == 1 {
		runPID1() // never returns
	}
	os.Exit(runProgram(os.Args[1:], os.Stderr))
}

type options struct {
	server       string
	target       string
	mac          string
	once         bool
	blockOnly    bool
	procRoot     string
	sysRoot      string
	disk         string
	pollInterval time.Duration
	stall        time.Duration
	acceptZstd   bool
	acceptSparse bool
	logLevel     string
	exitOnReboot bool
	simWriteMBps float64
	simReadMBps  float64
	peakRSS      bool
}

func runProgram(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("cm4agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o options
	fs.StringVar(&o.server, "server", "", "base URL of the cm4bench server, e.g. http://127.0.0.1:5000 (required)")
	fs.StringVar(&o.target, "target", "", "block device or disk-image file to deploy to and back up from (required)")
	fs.StringVar(&o.mac, "mac", "", "MAC address to register as (default: the first Ethernet interface's)")
	fs.BoolVar(&o.once, "once", false, "exit after the first deploy or backup (exit status 0 only if it succeeded)")
	fs.BoolVar(&o.blockOnly, "block-only", false, "refuse a target that is not a block device (as in PID-1 mode)")
	fs.StringVar(&o.procRoot, "proc", "/proc", "proc tree to read board facts from")
	fs.StringVar(&o.sysRoot, "sys", "/sys", "sys tree to read board facts from")
	fs.StringVar(&o.disk, "disk", "mmcblk0", "block device name under <sys>/block for the eMMC facts")
	fs.DurationVar(&o.pollInterval, "poll", 0, "poll interval (default: what the server says)")
	fs.DurationVar(&o.stall, "stall", 30*time.Second, "resume a download that delivered nothing for this long")
	fs.BoolVar(&o.acceptZstd, "accept-zstd", false, "ask the server for the zstd-compressed image stream")
	fs.BoolVar(&o.acceptSparse, "accept-sparse", false, "ask the server for the sparse stream of a raw image (data extents only)")
	fs.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.BoolVar(&o.peakRSS, "print-peak-rss", false, "print the peak resident memory (VmHWM) on exit (benchmarks)")
	fs.Float64Var(&o.simWriteMBps, "sim-emmc-write-mbps", 0, "bench twin only: pace writes to a file target as an eMMC writing this many MB/s (0 = as fast as the file)")
	fs.Float64Var(&o.simReadMBps, "sim-emmc-read-mbps", 0, "bench twin only: pace the read-back as an eMMC reading this many MB/s")
	fs.BoolVar(&o.exitOnReboot, "exit-on-reboot", false, "after a verified deploy, exit with status 3 where PID 1 would reboot, 4 where it would power off (the simulated bench then reboots or powers off the board)")
	fs.Usage = func() {
		fmt.Fprintf(stderr, `Usage: cm4agent --server URL --target FILE|DEV [flags]

cm4agent registers with a cm4bench server, polls it, and deploys an image
to the target or backs the target up when the technician asks. As PID 1 of
the netboot initramfs it configures itself from /etc/cm4agent.json, the
kernel command line (cm4bench.server=URL) and DHCP.

Flags:
`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if o.server == "" || o.target == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "cm4agent: --server and --target are required (see --help)")
		return 2
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(o.logLevel)); err != nil {
		fmt.Fprintf(stderr, "cm4agent: --log-level %q: %v\n", o.logLevel, err)
		return 2
	}
	mac := o.mac
	if mac == "" {
		mac = firstMAC()
	}
	hw, err := net.ParseMAC(mac)
	if err != nil || len(hw) != 6 {
		fmt.Fprintf(stderr, "cm4agent: --mac %q: not an Ethernet MAC address\n", mac)
		return 2
	}
	fr := facts.Reader{Proc: o.procRoot, Sys: o.sysRoot, Disk: o.disk}
	a := &agent.Agent{
		Server:       strings.TrimRight(o.server, "/"),
		Version:      version,
		MAC:          hw.String(),
		Target:       o.target,
		AllowFile:    !o.blockOnly,
		Facts:        func() *contract.Facts { return fr.Read() },
		Logger:       slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lvl})).With("mac", hw.String()),
		Once:         o.once,
		PollInterval: o.pollInterval,
		Stall:        o.stall,
		AcceptZstd:   o.acceptZstd,
		AcceptSparse: o.acceptSparse,
	}
	if o.simWriteMBps > 0 || o.simReadMBps > 0 {
		if o.blockOnly {
			fmt.Fprintln(stderr, "cm4agent: --sim-emmc-* pace a simulated eMMC, not a real block device (--block-only)")
			return 2
		}
		a.Pace = func(d *blockdev.Device) agent.Target { return emmcpace.Wrap(d, o.simWriteMBps, o.simReadMBps) }
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if o.peakRSS {
		defer printPeakRSS(stderr)
	}
	rebooted, poweredOff := false, false
	if o.exitOnReboot {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		a.Reboot = func() error { rebooted = true; cancel(); return nil }
		a.PowerOff = func() error { poweredOff = true; cancel(); return nil }
		err := a.Run(ctx)
		if rebooted {
			return 3
		}
		if poweredOff {
			return 4
		}
		if err != nil && !errors.Is(err, context.Canceled) {
			fmt.Fprintf(stderr, "cm4agent: %v\n", err)
			return 1
		}
		return 0
	}
	if err := a.Run(ctx); err != nil {
		if errors.Is(err, context.Canceled) && ctx.Err() != nil {
			return 0
		}
		fmt.Fprintf(stderr, "cm4agent: %v\n", err)
		return 1
	}
	return 0
}

// printPeakRSS prints the VmHWM line of /proc/self/status.
func printPeakRSS(w io.Writer) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		fmt.Fprintf(w, "cm4agent: peak RSS: %v\n", err)
		return
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			fmt.Fprintf(w, "cm4agent: peak RSS (VmHWM) %s\n", strings.TrimSpace(v))
		}
	}
}

// firstMAC is the MAC of the first up, non-loopback Ethernet interface.
func firstMAC() string {
	ifs, _ := net.Interfaces()
	for _, i := range ifs {
		if i.Flags&net.FlagLoopback == 0 && len(i.HardwareAddr) == 6 {
			return i.HardwareAddr.String()
		}
	}
	return ""
}

// runPID1 is init of the initramfs. It must never return: the kernel panics
// when PID 1 exits.
func runPID1() {
	con := pid1.Console()
	log := slog.New(slog.NewTextHandler(con, nil))
	fail := func(step string, err error) {
		fmt.Fprintf(con, "cm4agent: %s: %v\ncm4agent: retrying in 10 s\n", step, err)
		time.Sleep(10 * time.Second)
	}
	for {
		if err := pid1.Mount(); err != nil {
			fail("mount", err)
			continue
		}
		break
	}
	cmdline, _ := os.ReadFile("/proc/cmdline")
	cfg, err := pid1.LoadConfig(contract.AgentConfigPath, string(cmdline))
	if err != nil {
		fmt.Fprintf(con, "cm4agent: %v (using defaults)\n", err)
	}
	fmt.Fprintf(con, "cm4agent %s: PID 1, target %s, server %q\n", version, cfg.Target, cfg.Server)
	if err := pid1.LoadModules(contract.AgentModulesDir, cfg.Modules, log); err != nil {
		fmt.Fprintf(con, "cm4agent: %v (going on: the driver may be built in)\n", err)
	}
	ctx := context.Background()
	var lease *pid1.Lease
	var server string
	for {
		lease, err = pid1.Network(ctx, cfg.Interface, log)
		if err != nil {
			fail("network", err)
			continue
		}
		server = cfg.Server
		if server == "" {
			server = lease.Server
		}
		if server != "" {
			break
		}
		fail("server", errors.New("no cm4bench.server= on the kernel command line, none in /etc/cm4agent.json, and none in the DHCP answer"))
	}
	// The eMMC driver may still be probing: give the target a moment to
	// appear, so the facts carry its size (a deploy checks again anyway).
	for i := 0; i < 50; i++ {
		if _, err := os.Stat(cfg.Target); err == nil {
			break
		}
		if i == 0 {
			fmt.Fprintf(con, "cm4agent: waiting for %s\n", cfg.Target)
		}
		time.Sleep(200 * time.Millisecond)
	}
	fr := facts.Reader{Disk: strings.TrimPrefix(cfg.Target, "/dev/")}
	a := &agent.Agent{
		Server:       strings.TrimRight(server, "/"),
		Version:      version,
		MAC:          lease.MAC,
		IP:           lease.IP.String(),
		Target:       cfg.Target,
		RefuseSD:     !cfg.TargetExplicit,
		Facts:        func() *contract.Facts { return fr.Read() },
		Logger:       log,
		Console:      con,
		PollInterval: time.Duration(cfg.PollSeconds * float64(time.Second)),
		AcceptZstd:   cfg.AcceptZstd,
		AcceptSparse: cfg.AcceptSparse,
	}
	if !cfg.NoReboot {
		a.Reboot = pid1.Reboot
		a.PowerOff = pid1.PowerOff
	}
	for {
		err := a.Run(ctx)
		fail("agent", err)
	}
}
