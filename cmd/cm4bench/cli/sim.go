package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"github.com/cm4bench/cm4bench/netboot/sim/linetwin"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/cm4bench/cm4bench/eeprom"
	"github.com/cm4bench/cm4bench/netboot/initramfs/agentbin"
	"github.com/cm4bench/cm4bench/netboot/sim/pisim"
	"github.com/cm4bench/cm4bench/netboot/sim/simbench"
)

// simOptions are the flags of `cm4bench sim` (and what `netboot serve
// --demo` fixes).
type simOptions struct {
	devices     int
	http        string
	data        string
	image       string
	imageMiB    int64
	emmcMiB     int64
	agent       string
	bootOrder   string
	dhcpTimeout time.Duration
	poll        time.Duration
	agentLogs   bool
	serverBin   string
	serverArgs  []string
	realistic   bool    // --realistic: real hardware's rates and times (the bench twin)
	scale       float64 // --scale: divide every rate by this (a host too small for the line)
	uplinkMbit  float64 // --uplink-mbit: the server's link with --realistic
	emmcWrite   float64 // --emmc-write-mbps
	emmcRead    float64 // --emmc-read-mbps
}

func newSimOptions() *simOptions {
	return &simOptions{devices: 4, http: "127.0.0.1:5000", imageMiB: 64, emmcMiB: 128, bootOrder: "0xf12", dhcpTimeout: 5 * time.Second}
}

func (o *simOptions) bind(cmd *cobra.Command) {
	f := cmd.Flags()
	f.IntVar(&o.devices, "devices", o.devices, "number of simulated CM4 boards")
	f.StringVar(&o.http, "http", o.http, `host address for the dashboard, forwarded into the bench namespace ("" = none)`)
	f.StringVar(&o.data, "data", "", "server data directory (default: a temporary one, removed at exit)")
	f.StringVar(&o.image, "image", "", "golden image to deploy (default: a generated one)")
	f.Int64Var(&o.imageMiB, "image-size", o.imageMiB, "size in MiB of the generated golden image")
	f.Int64Var(&o.emmcMiB, "emmc-size", o.emmcMiB, "size in MiB of each board's file-backed eMMC")
	f.StringVar(&o.agent, "agent", "", "host-built cm4agent (default: next to cm4bench, then $PATH)")
	f.StringVar(&o.bootOrder, "boot-order", o.bootOrder, "BOOT_ORDER of the simulated boards (0xf12: network first, then eMMC)")
	f.DurationVar(&o.dhcpTimeout, "dhcp-timeout", o.dhcpTimeout, "DHCP_TIMEOUT of the simulated boards (EEPROM minimum 5s)")
	f.DurationVar(&o.poll, "poll", 0, "agent poll interval (default: what the server says)")
	f.BoolVar(&o.agentLogs, "agent-logs", false, "copy every agent's log to stderr")
	f.BoolVar(&o.realistic, "realistic", false, "give the boards real hardware's constraints: paced eMMC, a shaped 1 GbE link per board and uplink, the bootloader's TFTP pace and boot times (the bench twin's defaults)")
	f.Float64Var(&o.scale, "scale", 1, "with --realistic: divide every rate by this (and stretch every time), when this machine cannot run the line at full speed")
	f.Float64Var(&o.uplinkMbit, "uplink-mbit", 1000, "with --realistic: the server's link to the bench switch, in Mbit/s")
	f.Float64Var(&o.emmcWrite, "emmc-write-mbps", linetwin.Defaults.EMMCWriteMBps, "with --realistic: each board's eMMC write rate")
	f.Float64Var(&o.emmcRead, "emmc-read-mbps", linetwin.Defaults.EMMCReadMBps, "with --realistic: each board's eMMC read rate (the read-back)")
	f.StringVar(&o.serverBin, "server-binary", "", "cm4bench binary to run as the server (default: this one)")
	f.MarkHidden("server-binary")
}

func newSimCmd() *cobra.Command {
	o := newSimOptions()
	cmd := &cobra.Command{
		Use:   "sim [flags]",
		Short: "Run a bench of simulated CM4s against the real server (no hardware)",
		Long: `Run a whole provisioning bench on this host with no CM4 and no bench network.

cm4bench sim creates Linux network namespaces: one bench namespace whose
bridge carries the server's interface, and one namespace per simulated board
behind that bridge. It starts the real "cm4bench netboot serve" (DHCP, TFTP,
HTTP API and dashboard) in the bench namespace, and powers the boards on.

Each simulated board behaves like a CM4 on the wire:
  - its EEPROM bootloader walks BOOT_ORDER; in network mode it sends the
    Pi 4 DHCPDISCOVER (options 60, 93, 94, 97, a Raspberry Pi MAC), a REQUEST
    without option 60, and accepts only an answer with the "Raspberry Pi Boot"
    menu in option 43;
  - it fetches <serial>/start4.elf, falls back to the root, reads config.txt,
    start4.elf, fixup4.dat, the device tree, cmdline.txt, the kernel and the
    initramfs with "tsize 0 blksize 1024" requests and aborts its many
    existence probes with "Early terminate";
  - then the real cm4agent (for this host's architecture: --agent, a
    cm4agent next to cm4bench, or the one embedded by make build) runs in
    the board's namespace
    against a file-backed eMMC, registers, polls, deploys or backs up;
  - after a verified deploy it reboots: with netboot switched off for it, the
    DHCP answer has no menu, the bootloader gives up after DHCP_TIMEOUT and
    boots the eMMC ("booted-emmc", then an ordinary DHCP lease).

The TFTP root holds placeholders (marked as such) for the firmware, kernel
and initramfs: the simulated boards fetch them but do not execute them.

--realistic gives the boards the constraints of real hardware, the bench
twin's (netboot/sim/linetwin, each figure cited there): every board's eMMC
writes at 40 MB/s and reads at 90 MB/s (--emmc-write-mbps, --emmc-read-mbps;
the agent paces its file-backed eMMC on one timeline), each board has a
1 GbE link and the server a 1 GbE uplink (--uplink-mbit; tc token buckets in
the bench namespace), the bootloader fetches TFTP at its own pace (3 MB/s)
and takes 3 s to start and 8 s to boot the kernel. This machine's 2-4 cores
run every simulated board at once, where real boards each have their own:
--scale K divides every rate by K (and stretches every time) so the machine
is not the limit; compare the result with the twin at the same scale
(make bench-line does both and picks K itself).

The dashboard is forwarded to --http on the host (default
http://127.0.0.1:5000); the admin token is printed at start. The
dashboard's Power-cycle button (the server runs with a --power-command that
reaches this process), or typing "cycle N" (or "cycle all") and Enter,
power-cycles a board as a technician pulling its power would: with netboot
switched on again it netboots again.
Ctrl-C stops the boards and the server and deletes every namespace and
process it made.

Needs root (network namespaces). State changes of the boards are printed as
they happen (JSON lines with --json) and a summary table at exit.`,
		Example: `  # Four boards and the dashboard on http://127.0.0.1:5000 (what make run does):
  sudo build/cm4bench sim

  # Twenty boards, a 32 MiB golden image, agents polling every second:
  sudo build/cm4bench sim --devices 20 --image-size 32 --poll 1s

  # Deploy your own image, keep the server's data afterwards:
  sudo build/cm4bench sim --image my-cm4.img.zst --data /tmp/benchdata`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.run(cmd.Context(), cmd, cmd.OutOrStdout())
		},
	}
	o.bind(cmd)
	cmd.AddCommand(newSimPowerCmd())
	return cmd
}

// newSimPowerCmd is the simulated bench's power switch as the server runs
// it (its --power-command): it asks the running sim to power-cycle a board.
func newSimPowerCmd() *cobra.Command {
	var socket string
	cmd := &cobra.Command{
		Use:    "power-cycle --socket PATH MAC",
		Short:  "Power-cycle one board of a running cm4bench sim (the sim's server runs this)",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if socket == "" {
				return &ExitError{Code: 2, Err: errors.New("sim power-cycle: --socket is required")}
			}
			return simbench.PowerCycleVia(cmd.Context(), socket, args[0])
		},
	}
	cmd.Flags().StringVar(&socket, "socket", "", "the running sim's power switch socket")
	return cmd
}

// runDemo is `cm4bench netboot serve --demo`: the simulated bench with four
// boards and the dashboard on 127.0.0.1:5000. Of serve's flags it honours
// --image, --http and an explicitly given --data (never the production
// default: demo data must not land in /var/lib/cm4bench).
func runDemo(cmd *cobra.Command, data, image, httpAddr string) error {
	o := newSimOptions()
	if cmd.Flags().Changed("data") {
		o.data = data
	}
	o.image = image
	if httpAddr != "" {
		o.http = httpAddr
	}
	return o.run(cmd.Context(), cmd, cmd.OutOrStdout())
}

// findAgent locates the host cm4agent: --agent, then cm4agent next to this
// binary, then the agent embedded in this binary (make build), then $PATH.
// An embedded agent is written to a temporary file that cleanup removes.
func (o *simOptions) findAgent() (path string, cleanup func(), err error) {
	cleanup = func() {}
	if o.agent != "" {
		if _, err := os.Stat(o.agent); err != nil {
			return "", cleanup, fmt.Errorf("sim: --agent: %w", err)
		}
		return o.agent, cleanup, nil
	}
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), "cm4agent")
		if _, err := os.Stat(p); err == nil {
			return p, cleanup, nil
		}
	}
	if bin, err := agentbin.Agent(runtime.GOARCH); err == nil {
		dir, err := os.MkdirTemp("", "cm4bench-agent-")
		if err != nil {
			return "", cleanup, fmt.Errorf("sim: unpack the embedded cm4agent: %w", err)
		}
		cleanup = func() { os.RemoveAll(dir) }
		os.Chmod(dir, 0o755)
		p := filepath.Join(dir, "cm4agent")
		if err := os.WriteFile(p, bin, 0o755); err != nil {
			cleanup()
			return "", func() {}, fmt.Errorf("sim: unpack the embedded cm4agent: %w", err)
		}
		return p, cleanup, nil
	}
	if p, err := exec.LookPath("cm4agent"); err == nil {
		return p, cleanup, nil
	}
	return "", cleanup, errors.New("sim: no cm4agent: this cm4bench does not embed one and there is none next to it or in $PATH; run `make build`, or pass --agent FILE (go build -o cm4agent ./cmd/cm4agent)")
}

func (o *simOptions) eeprom() (pisim.EEPROM, error) {
	bo, _, err := eeprom.ParseBootOrder(o.bootOrder)
	if err != nil {
		return pisim.EEPROM{}, fmt.Errorf("sim: --boot-order %q: %w (want 0x and boot-mode nibbles, such as 0xf12)", o.bootOrder, err)
	}
	if o.dhcpTimeout < 5*time.Second {
		return pisim.EEPROM{}, fmt.Errorf("sim: --dhcp-timeout %v: the EEPROM minimum is 5s", o.dhcpTimeout)
	}
	return pisim.EEPROM{BootOrder: uint32(bo), DHCPTimeout: o.dhcpTimeout}, nil
}

func (o *simOptions) run(ctx context.Context, cmd *cobra.Command, out io.Writer) error {
	if o.devices < 1 || o.devices > 250 {
		return fmt.Errorf("sim: --devices %d: want 1 to 250", o.devices)
	}
	ee, err := o.eeprom()
	if err != nil {
		return err
	}
	if !isRoot() {
		return &ExitError{Code: 2, Err: fmt.Errorf("sim: %w", simbench.ErrNotRoot)}
	}
	agent, cleanupAgent, err := o.findAgent()
	if err != nil {
		return err
	}
	defer cleanupAgent()
	log := newLogger(cmd)
	jsonOut := wantJSON(cmd)
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()

	var outMu sync.Mutex
	last := map[int]string{}
	onChange := func(s simbench.Status) {
		outMu.Lock()
		defer outMu.Unlock()
		if last[s.Index] == s.State {
			return
		}
		last[s.Index] = s.State
		if jsonOut {
			writeJSON(out, s)
			return
		}
		fmt.Fprintf(out, "%s  board %d %s (serial %s): %s%s\n", time.Now().Format("15:04:05"), s.Index, s.MAC, s.Serial, s.State, stateDetail(s))
	}
	var agentArgs []string
	if o.poll > 0 {
		agentArgs = append(agentArgs, "--poll", o.poll.String())
	}
	realism, boardMbit, uplinkMbit, err := o.realism()
	if err != nil {
		return err
	}
	cfg := simbench.RigConfig{
		Devices:   o.devices,
		Cm4bench:  o.serverBin,
		Agent:     agent,
		DataDir:   o.data,
		Image:     o.image,
		ImageSize: o.imageMiB << 20,
		EMMCBytes: o.emmcMiB << 20,
		HTTP:      o.http,
		EEPROM:    ee,
		AgentArgs: agentArgs,
		Realism:   realism,
		BoardMbit: boardMbit, UplinkMbit: uplinkMbit,
		// The server's own log goes to stderr, like `netboot serve`; at
		// warn unless --log-level says otherwise (its events are on the
		// dashboard, and the banner should stay readable).
		ServerOutput: cmd.ErrOrStderr(),
		ServerArgs:   o.serverArgs,
		ServerPre:    []string{"--log-level", serverLogLevel(cmd)},
		OnChange:     onChange,
		Logger:       log,
	}
	if o.agentLogs {
		cfg.AgentOutput = func(i int) io.Writer { return prefixWriter(cmd.ErrOrStderr(), fmt.Sprintf("[board %d] ", i)) }
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "sim: creating %d simulated CM4s in network namespaces ...\n", o.devices)
	rig, err := simbench.StartRig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("sim: %w", err)
	}
	defer func() {
		fmt.Fprintln(cmd.ErrOrStderr(), "sim: stopping boards and server, removing namespaces ...")
		if err := rig.Close(); err != nil {
			fmt.Fprintf(cmd.ErrOrStderr(), "sim: teardown: %v\n", err)
		}
	}()
	banner := map[string]any{
		"dashboard":   rig.HostURL,
		"bench_url":   rig.URL,
		"admin_token": rig.Token,
		"namespace":   rig.Bench.Server.Name,
		"devices":     o.devices,
		"image":       rig.Image,
		"data":        rig.DataDir,
		"tftp_root":   rig.TFTPRoot,
	}
	if jsonOut {
		writeJSON(out, banner)
	} else {
		outMu.Lock()
		fmt.Fprintf(out, `
cm4bench simulated bench is running (%d CM4s, namespace %s)
  Dashboard:    %s
  Admin token:  %s
  Bench server: %s (inside the bench namespace)
  Golden image: %s
  TFTP root:    %s (placeholder firmware: the simulated boards fetch it, nothing runs it)
Log in with the token, then click Deploy or Backup on a board. Ctrl-C stops everything.
A deployed board reboots into its eMMC; to provision it again, click Deploy and then
Power-cycle on its card (or type "cycle N" + Enter here; "cycle all" for every board).

`, o.devices, rig.Bench.Server.Name, or(rig.HostURL, "(not forwarded: --http \"\")"), rig.Token, rig.URL, rig.Image, rig.TFTPRoot)
		outMu.Unlock()
	}
	go powerCycles(ctx, cmd.InOrStdin(), rig, cmd.ErrOrStderr())
	select {
	case <-ctx.Done():
	case <-rig.Server.Done():
		err = fmt.Errorf("sim: the server exited: %v", rig.Server.Wait())
	}
	outMu.Lock()
	if jsonOut {
		var all []simbench.Status
		for _, d := range rig.Bench.Devices {
			all = append(all, d.Status())
		}
		writeJSON(out, map[string]any{"devices": all})
	} else {
		writeSimTable(out, rig)
	}
	outMu.Unlock()
	return err
}

// powerCycles reads "cycle N" / "cycle all" lines (the technician pulling a
// board's power) until in ends or ctx is done.
func powerCycles(ctx context.Context, in io.Reader, rig *simbench.Rig, errOut io.Writer) {
	sc := bufio.NewScanner(in)
	for sc.Scan() && ctx.Err() == nil {
		for _, d := range cycleTargets(sc.Text(), rig.Bench.Devices, errOut) {
			d.PowerCycle()
			fmt.Fprintf(errOut, "sim: power-cycling board %d (%s)\n", d.Index, d.Board.MAC)
		}
	}
}

// cycleTargets parses one "cycle N|all" line.
func cycleTargets(line string, devs []*simbench.Device, errOut io.Writer) []*simbench.Device {
	f := strings.Fields(line)
	if len(f) == 0 {
		return nil
	}
	if len(f) != 2 || f[0] != "cycle" {
		fmt.Fprintf(errOut, "sim: %q: type \"cycle N\" or \"cycle all\"\n", line)
		return nil
	}
	if f[1] == "all" {
		return devs
	}
	n, err := strconv.Atoi(f[1])
	if err != nil || n < 0 || n >= len(devs) {
		fmt.Fprintf(errOut, "sim: %q: no board %s (0 to %d)\n", line, f[1], len(devs)-1)
		return nil
	}
	return []*simbench.Device{devs[n]}
}

func serverLogLevel(cmd *cobra.Command) string {
	if f := cmd.Flags().Lookup("log-level"); f != nil && f.Changed {
		return f.Value.String()
	}
	return "warn"
}

func stateDetail(s simbench.Status) string {
	var parts []string
	if s.IP != "" {
		parts = append(parts, "ip "+s.IP)
	}
	if s.State == simbench.StateAgent && s.TFTPFiles > 0 {
		parts = append(parts, fmt.Sprintf("%d TFTP requests, %d probes", s.TFTPFiles, s.Probes))
	}
	if s.AgentExit != "" {
		parts = append(parts, "agent: "+s.AgentExit)
	}
	if s.Error != "" {
		parts = append(parts, "error: "+s.Error)
	}
	if len(parts) == 0 {
		return ""
	}
	return " (" + strings.Join(parts, ", ") + ")"
}

func writeSimTable(out io.Writer, rig *simbench.Rig) {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "BOARD\tMAC\tSERIAL\tSTATE\tIP\tBOOTS\tNETBOOTS\tEMMC BOOTS\tAGENT RUNS\tLAST AGENT EXIT")
	devs := append([]*simbench.Device(nil), rig.Bench.Devices...)
	sort.Slice(devs, func(i, j int) bool { return devs[i].Index < devs[j].Index })
	for _, d := range devs {
		s := d.Status()
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%s\n", s.Index, s.MAC, s.Serial, s.State, s.IP, s.Boots, s.Netboots, s.EMMCBoots, s.AgentRuns, s.AgentExit)
	}
	tw.Flush()
}

// realism is what --realistic sets: the bench twin's defaults (cited in
// netboot/sim/linetwin), every rate divided by --scale.
func (o *simOptions) realism() (*simbench.Realism, float64, float64, error) {
	if !o.realistic {
		return nil, 0, 0, nil
	}
	if o.scale < 1 || o.scale > 64 {
		return nil, 0, 0, &ExitError{Code: 2, Err: fmt.Errorf("sim: --scale %g: want 1 to 64", o.scale)}
	}
	if o.emmcWrite <= 0 || o.emmcRead <= 0 || o.uplinkMbit <= 0 {
		return nil, 0, 0, &ExitError{Code: 2, Err: errors.New("sim: --emmc-write-mbps, --emmc-read-mbps and --uplink-mbit must be positive")}
	}
	d := linetwin.Defaults
	k := o.scale
	sec := func(s float64) time.Duration { return time.Duration(s * k * float64(time.Second)) }
	return &simbench.Realism{
		BootloaderDelay: sec(d.BootloaderS),
		TFTPPace:        time.Duration(1024 / (d.PiTFTPMBps * 1e6) * k * float64(time.Second)),
		KernelBoot:      sec(d.KernelBootS),
		EMMCWriteMBps:   o.emmcWrite / k,
		EMMCReadMBps:    o.emmcRead / k,
	}, d.LinkMbps / k, o.uplinkMbit / k, nil
}
