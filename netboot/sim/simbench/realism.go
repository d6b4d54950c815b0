package simbench

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// Realism gives the simulated boards the constraints of real hardware, for
// the bench twin: the bootloader's start and TFTP pace, the kernel's boot
// and the eMMC's speed. A Sim without it runs as fast as this machine.
// Link rates are set on the bench with Bench.Shape.
type Realism struct {
	BootloaderDelay time.Duration // power-on to the first DHCP DISCOVER
	TFTPPace        time.Duration // the bootloader's time per TFTP block (1024 bytes)
	KernelBoot      time.Duration // netboot done to the agent's start
	EMMCWriteMBps   float64       // the agent paces its writes to this (0 = the file's speed)
	EMMCReadMBps    float64       // and its read-back to this
}

// agentArgs are the cm4agent flags for the eMMC pace.
func (r *Realism) agentArgs() []string {
	if r == nil {
		return nil
	}
	var a []string
	if r.EMMCWriteMBps > 0 {
		a = append(a, "--sim-emmc-write-mbps", strconv.FormatFloat(r.EMMCWriteMBps, 'f', -1, 64))
	}
	if r.EMMCReadMBps > 0 {
		a = append(a, "--sim-emmc-read-mbps", strconv.FormatFloat(r.EMMCReadMBps, 'f', -1, 64))
	}
	return a
}

// sleep waits d or until ctx ends; it reports whether the wait completed.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// Shape limits the bench's links with tc in the bench namespace: boardMbit
// on each board's bridge port (its 1 GbE link, as seen from the server)
// and uplinkMbit on the bridge itself (the server's link to the switch),
// each an htb class. 0 leaves a link as it is.
func (b *Bench) Shape(ctx context.Context, boardMbit, uplinkMbit float64) error {
	tc := func(args ...string) error {
		cmd := b.Server.Command(ctx, "tc", args...)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("simbench: tc %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		}
		return nil
	}
	rate := func(mbit float64) string { return strconv.FormatFloat(mbit, 'f', -1, 64) + "mbit" }
	// One htb class per link: it queues instead of dropping at the rate
	// (a single TCP flow through a small token bucket loses packets and
	// fills only about half of the link).
	shape := func(dev string, mbit float64) error {
		if err := tc("qdisc", "replace", "dev", dev, "root", "handle", "1:", "htb", "default", "1"); err != nil {
			return err
		}
		return tc("class", "replace", "dev", dev, "parent", "1:", "classid", "1:1", "htb", "rate", rate(mbit), "ceil", rate(mbit))
	}
	if boardMbit > 0 {
		for _, d := range b.Devices {
			if err := shape(d.Port, boardMbit); err != nil {
				return err
			}
		}
	}
	if uplinkMbit > 0 {
		return shape(BridgeName, uplinkMbit)
	}
	return nil
}

// CPUSampler measures how busy this machine's CPUs are over an interval,
// from /proc/stat: the twin's check that the machine running the
// simulation is not what limits it.
type CPUSampler struct{ busy, total uint64 }

// Start takes the first sample.
func (c *CPUSampler) Start() error {
	var err error
	c.busy, c.total, err = cpuTimes()
	return err
}

// Busy is the share (0..1) of all CPUs busy since Start.
func (c *CPUSampler) Busy() (float64, error) {
	b, t, err := cpuTimes()
	if err != nil || t == c.total {
		return 0, err
	}
	return float64(b-c.busy) / float64(t-c.total), nil
}

func cpuTimes() (busy, total uint64, err error) {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, err
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line)
	if len(f) < 5 || f[0] != "cpu" {
		return 0, 0, fmt.Errorf("simbench: /proc/stat: unexpected first line %q", line)
	}
	for i, s := range f[1:] {
		v, _ := strconv.ParseUint(s, 10, 64)
		total += v
		if i != 3 && i != 4 { // idle, iowait
			busy += v
		}
	}
	return busy, total, nil
}

// ProcUsage is a process's CPU time (user+system, all threads) and its
// peak resident memory (VmHWM), read from /proc.
func ProcUsage(pid int) (cpu time.Duration, peakRSS int64, err error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, fmt.Errorf("simbench: process usage: %w", err)
	}
	// utime and stime are fields 14 and 15 (proc(5)), counted after the
	// ")" that ends the command name, in USER_HZ (100) ticks.
	st := string(raw)
	f := strings.Fields(st[strings.LastIndexByte(st, ')')+1:])
	if len(f) < 13 {
		return 0, 0, fmt.Errorf("simbench: process usage: short /proc/%d/stat", pid)
	}
	var ticks int64
	for _, v := range f[11:13] {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("simbench: process usage: /proc/%d/stat: %w", pid, err)
		}
		ticks += n
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, fmt.Errorf("simbench: process usage: %w", err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				return 0, 0, fmt.Errorf("simbench: process usage: VmHWM %q: %w", v, err)
			}
			peakRSS = kb << 10
		}
	}
	return time.Duration(ticks) * time.Second / 100, peakRSS, nil
}
