package simbench_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cm4bench/cm4bench/netboot/dhcp"
	"github.com/cm4bench/cm4bench/netboot/sim/nettest"
	"github.com/cm4bench/cm4bench/netboot/sim/pisim"
	"github.com/cm4bench/cm4bench/netboot/sim/simbench"
	"github.com/cm4bench/cm4bench/netboot/tftp"
)

// fallthroughRun powers on one simulated CM4 whose netboot is off, with a
// bootable eMMC and BOOT_ORDER 0xf12 (network first), against cm4bench's
// DHCP and TFTP servers, and returns how it ended and how long it took to
// reach its eMMC.
func fallthroughRun(tb testing.TB, fast bool, e pisim.EEPROM) (*pisim.Outcome, time.Duration) {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b, err := simbench.Create(ctx, simbench.Options{Devices: 1, EMMCBytes: 32 << 20})
	if err != nil {
		tb.Fatal(err)
	}
	defer b.Close()
	root := tb.TempDir()
	if err := simbench.WriteTFTPRoot(root, "http://10.61.0.1:5000"); err != nil {
		tb.Fatal(err)
	}
	d := b.Devices[0]
	pol := &nettest.Switch{}
	pol.Disable(d.Board.MAC)
	startServers(tb, ctx, b, &dhcp.Server{Policy: pol, FastFallthrough: fast}, &tftp.Server{Root: root, Policy: pol})
	f, err := os.OpenFile(d.EMMC(), os.O_RDWR, 0)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	if _, err := simbench.GoldenImage(f, 16<<20, 1); err != nil {
		tb.Fatal(err)
	}
	e.BootOrder = 0xf12
	bl := &pisim.Bootloader{Board: d.Board, Link: d.Link(), EMMC: f, EEPROM: e, ModeDelay: 10 * time.Millisecond}
	bctx, bcancel := context.WithTimeout(ctx, 3*time.Minute)
	defer bcancel()
	start := time.Now()
	out, err := bl.Boot(bctx)
	took := time.Since(start)
	if err != nil {
		tb.Fatalf("boot: %v (attempts %q)", err, out.Attempts)
	}
	if out.Mode != "emmc" {
		tb.Fatalf("a board with netboot off booted %q (attempts %q)", out.Mode, out.Attempts)
	}
	return out, took
}

// TestDisabledBoardPolicies (N2): what a board whose netboot is off costs
// before it boots its eMMC. By default it gets a plain lease, which the
// bootloader ignores until DHCP_TIMEOUT; with FastFallthrough it gets the
// menu, TFTP refuses its start4.elf, and it moves on at once. DHCP_TIMEOUT
// is 5 s here (the EEPROM minimum); BenchmarkDisabledBoardFallthrough
// measures the real 45 s default.
func TestDisabledBoardPolicies(t *testing.T) {
	requireRoot(t)
	e := pisim.EEPROM{DHCPTimeout: 5 * time.Second, DHCPReqTimeout: time.Second}
	out, slow := fallthroughRun(t, false, e)
	if out.NoMenu == 0 || len(out.Files) != 0 || slow < e.DHCPTimeout {
		t.Errorf("default policy: %d answers without menu, %d TFTP requests, eMMC after %v (want >= DHCP_TIMEOUT %v)",
			out.NoMenu, len(out.Files), slow, e.DHCPTimeout)
	}
	out, fast := fallthroughRun(t, true, e)
	refused := false
	for _, a := range out.Attempts {
		refused = refused || strings.Contains(a, pisim.ErrFirmwareNotFound.Error())
	}
	if !refused || fast >= e.DHCPTimeout {
		t.Errorf("fast fallthrough: attempts %q, eMMC after %v (want a refused start4.elf, well before %v)", out.Attempts, fast, e.DHCPTimeout)
	}
	if out.Lease == nil && len(out.Files) == 0 {
		t.Error("fast fallthrough: the board never reached TFTP")
	}
	t.Logf("netboot off, power-on to eMMC: default %v, --fast-fallthrough %v (DHCP_TIMEOUT %v)", slow.Round(time.Millisecond), fast.Round(time.Millisecond), e.DHCPTimeout)
}

// BenchmarkDisabledBoardFallthrough measures both policies with the
// bootloader's default DHCP_TIMEOUT (45 s): the default policy's number is
// the price of a board with netboot off and a bootable eMMC on every power
// cycle.
func BenchmarkDisabledBoardFallthrough(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root for network namespaces")
	}
	for _, fast := range []bool{false, true} {
		name := "default"
		if fast {
			name = "fast-fallthrough"
		}
		b.Run(name, func(b *testing.B) {
			var total time.Duration
			for range b.N {
				_, took := fallthroughRun(b, fast, pisim.EEPROM{})
				total += took
			}
			b.ReportMetric(total.Seconds()/float64(b.N), "s/power-on-to-eMMC")
		})
	}
}
