package simbench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/cm4bench/cm4bench/netboot/sim/pisim"
)

// AgentRebootExit is the exit status of `cm4agent --exit-on-reboot` where,
// as PID 1, it would reboot the board after a verified deploy.
const AgentRebootExit = 3

// AgentPowerOffExit is its exit status where it would power the board off
// (a recipe's "after: poweroff"): the board stays off until power-cycled.
const AgentPowerOffExit = 4

// Sim powers on and runs every device of a bench until its context ends.
type Sim struct {
	// Bench is the bench to run; required.
	Bench *Bench
	// Agent is the path of a host-built cm4agent; required.
	Agent string
	// AgentArgs are extra cm4agent flags, e.g. "--poll", "1s".
	AgentArgs []string
	// EEPROM is every device's bootloader configuration. The zero value is
	// the factory default (BOOT_ORDER 0xf21, DHCP_TIMEOUT 45 s).
	EEPROM pisim.EEPROM
	// ServerPort is the HTTP port the agent uses when the kernel command
	// line names no server (default 5000).
	ServerPort int
	// AgentOutput, if set, returns where device i's agent writes its log.
	AgentOutput func(i int) io.Writer
	// OnChange, if set, is called (from the device's goroutine) after every
	// state change of a device.
	OnChange func(Status)
	// Logger receives the devices' boot logs; nil = silent.
	Logger *slog.Logger
	// Realism, when set, gives the boards real hardware's timing (realism.go).
	Realism *Realism

	rebootFlag bool
}

func (s *Sim) log() *slog.Logger {
	if s.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Logger
}

// Run boots every device and keeps them running until ctx ends; then it
// waits for every device (and its agent) to stop and returns nil. It returns
// an error only when the simulation cannot start.
func (s *Sim) Run(ctx context.Context) error {
	if s.Bench == nil || s.Agent == "" {
		return errors.New("simbench: Sim needs a Bench and an Agent")
	}
	if _, err := os.Stat(s.Agent); err != nil {
		return fmt.Errorf("simbench: cm4agent: %w (build it with `make build` or `go build -o build/cm4agent ./cmd/cm4agent`)", err)
	}
	help, _ := exec.Command(s.Agent, "--help").CombinedOutput()
	s.rebootFlag = strings.Contains(string(help), "exit-on-reboot")
	if !s.rebootFlag {
		s.log().Warn("cm4agent has no --exit-on-reboot: simulated boards stay in the agent after a deploy instead of rebooting")
	}
	var wg sync.WaitGroup
	for _, d := range s.Bench.Devices {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.runDevice(ctx, d)
		}()
	}
	wg.Wait()
	return nil
}

func (s *Sim) changed(d *Device) {
	if s.OnChange != nil {
		s.OnChange(d.Status())
	}
}

// runDevice is one board's life: power on, boot, run what booted, repeat on
// reboot or power cycle.
func (s *Sim) runDevice(ctx context.Context, d *Device) {
	lg := s.log().With("dev", d.Index, "mac", d.Board.MAC.String())
	hl := &pisim.HostLink{Name: d.NS.Iface}
	lk := link{d.NS, hl}
	for ctx.Err() == nil {
		// Power-on: drain a stale power-cycle request, reset the link.
		select {
		case <-d.cycle:
		default:
		}
		if err := lk.Reset(); err != nil && ctx.Err() == nil {
			lg.Warn("reset link", "err", err)
		}
		d.update(func(st *Status) { st.Boots++; st.IP, st.Error, st.AgentExit = "", "", "" })
		d.setState(StateNetboot)
		s.changed(d)
		bootCtx, cancel := s.cycleContext(ctx, d)
		emmc, err := os.Open(d.EMMC())
		if err != nil {
			cancel()
			s.fail(ctx, d, fmt.Errorf("open eMMC: %w", err))
			continue
		}
		bl := &pisim.Bootloader{Board: d.Board, EEPROM: s.EEPROM, Link: lk, EMMC: emmc, Logger: lg}
		if r := s.Realism; r != nil {
			bl.TFTPPace = r.TFTPPace
			sleep(bootCtx, r.BootloaderDelay)
		}
		out, err := bl.Boot(bootCtx)
		emmc.Close()
		d.update(func(st *Status) {
			st.LastBoot = out.Attempts
			st.TFTPFiles, st.Probes = len(out.Files), out.Probes
		})
		switch {
		case ctx.Err() != nil:
			cancel()
			d.setState(StateOff)
			s.changed(d)
			return
		case bootCtx.Err() != nil:
			cancel()
			continue // power-cycled while booting
		case errors.Is(err, pisim.ErrNoBootMedia):
			d.setState(StateNoBoot)
			s.changed(d)
			<-bootCtx.Done()
			cancel()
			continue
		case err != nil:
			cancel()
			s.fail(ctx, d, err)
			continue
		}
		ip := ""
		if out.Lease != nil {
			ip = out.Lease.YourIP.String()
		}
		switch out.Mode {
		case "network":
			d.update(func(st *Status) { st.Netboots++; st.IP = ip })
			if s.Realism != nil && !sleep(bootCtx, s.Realism.KernelBoot) {
				cancel()
				continue
			}
			s.runAgent(bootCtx, d, out, lg)
		case "emmc":
			d.update(func(st *Status) { st.EMMCBoots++ })
			ack, err := bl.OSDHCP(bootCtx, emmcHostname)
			if err == nil {
				d.update(func(st *Status) { st.IP = ack.YourIP.String() })
			} else if bootCtx.Err() == nil {
				d.update(func(st *Status) { st.Error = err.Error() })
			}
			d.setState(StateEMMC)
			s.changed(d)
			lg.Info("booted from eMMC", "why", out.EMMC)
			<-bootCtx.Done() // the OS runs until power is cut
		}
		cancel()
	}
}

// cycleContext is ctx, also cancelled when the device is power-cycled.
func (s *Sim) cycleContext(ctx context.Context, d *Device) (context.Context, context.CancelFunc) {
	c, cancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-d.cycle:
			cancel()
		case <-c.Done():
		}
	}()
	return c, cancel
}

// fail records a simulation error and waits a little before the next
// power-on, as the board's error LED pattern would.
func (s *Sim) fail(ctx context.Context, d *Device, err error) {
	s.log().Warn("device boot failed", "dev", d.Index, "err", err)
	d.update(func(st *Status) { st.Error = err.Error() })
	d.setState(StateFailed)
	s.changed(d)
	select {
	case <-ctx.Done():
	case <-time.After(2 * time.Second):
	}
}

// ServerURL is where a netbooted device's agent finds the server: the
// cm4bench.server= kernel argument from cmdline.txt, else the TFTP server
// on ServerPort.
func (s *Sim) ServerURL(out *pisim.Outcome) string {
	if u := pisim.KernelArg(out.Cmdline, "cm4bench.server"); u != "" {
		return u
	}
	port := s.ServerPort
	if port == 0 {
		port = 5000
	}
	return "http://" + net.JoinHostPort(out.TFTP.String(), fmt.Sprint(port))
}

// runAgent runs the real cm4agent in the device's namespace until it exits
// (a reboot after a verified deploy, or a crash) or ctx ends (power cut).
func (s *Sim) runAgent(ctx context.Context, d *Device, out *pisim.Outcome, lg *slog.Logger) {
	args := []string{
		"--server", s.ServerURL(out),
		"--target", d.EMMC(),
		"--mac", d.Board.MAC.String(),
		"--proc", d.ProcRoot(),
		"--sys", d.SysRoot(),
		"--disk", "mmcblk0",
	}
	if s.rebootFlag {
		args = append(args, "--exit-on-reboot")
	}
	args = append(args, s.Realism.agentArgs()...)
	args = append(args, s.AgentArgs...)
	cmd := d.NS.Command(context.Background(), s.Agent, args...)
	if s.AgentOutput != nil {
		w := s.AgentOutput(d.Index)
		cmd.Stdout, cmd.Stderr = w, w
	}
	p, err := s.Bench.Start(cmd)
	if err != nil {
		d.update(func(st *Status) { st.Error = err.Error() })
		return
	}
	d.update(func(st *Status) { st.AgentRuns++ })
	d.setState(StateAgent)
	s.changed(d)
	lg.Info("netbooted; cm4agent running", "server", s.ServerURL(out), "pid", cmd.Process.Pid)
	select {
	case <-p.Done():
	case <-ctx.Done():
		p.Kill()
		<-p.Done()
		d.update(func(st *Status) { st.AgentExit = "power cut" })
		return
	}
	werr := p.Wait()
	var ee *exec.ExitError
	switch {
	case werr == nil:
		d.update(func(st *Status) { st.AgentExit = "exited 0" })
	case errors.As(werr, &ee) && ee.ExitCode() == AgentPowerOffExit:
		d.update(func(st *Status) { st.AgentExit = "powered off after verified deploy" })
		d.setState(StateOff)
		s.changed(d)
		lg.Info("agent powered the board off after a verified deploy")
		<-ctx.Done() // off until the power is cycled
		return
	case errors.As(werr, &ee) && ee.ExitCode() == AgentRebootExit:
		d.update(func(st *Status) { st.AgentExit = "reboot after verified deploy" })
		lg.Info("agent rebooted the board after a verified deploy")
		return
	default:
		d.update(func(st *Status) { st.AgentExit = werr.Error() })
	}
	// Anything else is a crash: the kernel would panic and the watchdog
	// resets the board a moment later.
	select {
	case <-ctx.Done():
	case <-time.After(time.Second):
	}
}
