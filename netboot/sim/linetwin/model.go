// Package linetwin is the bench twin: a fluid model of a production line
// of N boards provisioned at once, with the constraints of real hardware
// (eMMC rates, a 1 GbE link per board, a shared server uplink, the Pi
// bootloader's TFTP pace, boot times) as parameters, each with a default
// taken from a cited figure or marked as an assumption to confirm on
// hardware (HARDWARE.md). It answers what the machine running the tests
// cannot: what 16 real boards do, and which constraint stops them.
//
// The model is deterministic. In a batch every board is powered on at
// t=0; in a line (SimulateLine) one technician swaps boards one at a time,
// which staggers them, and the steady state is measured. Each board goes
// through the phases of a real cycle (bootloader, netboot, kernel and
// agent, job pickup, download+write, verify, customise, reboot). As the
// agent does, the read-back runs behind the writer, on the eMMC time the
// write leaves idle; the verify phase is what is left after the last byte
// is written. Shared resources (the TFTP server, the server's uplink and
// CPU) are split max-min fairly among the boards using them, each board
// capped by its own link, eMMC and CPU. Time advances from one phase end
// (or swap) to the next.
package linetwin

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"slices"
)

// MB is 10^6 bytes, the unit of every rate here (MB/s).
const MB = 1e6

// Constraints are the line's physical limits. Zero fields take Defaults.
type Constraints struct {
	EMMCWriteMBps   float64 // sustained eMMC write (CM4: about 40 MB/s)
	EMMCReadMBps    float64 // eMMC read for the verify pass
	BoardSHA256MBps float64 // sha256 on the board's CPU (BCM2711 has no ARMv8 crypto extensions)
	BoardZstdMBps   float64 // zstd decompression output on the board's CPU
	LinkMbps        float64 // each board's Ethernet link
	UplinkMbps      float64 // the server's link to the bench switch
	ServerMBps      float64 // what the server's CPU can stream in total (HTTP image streams)
	TCPEfficiency   float64 // payload share of the line rate (Ethernet, IP, TCP headers)
	PiTFTPMBps      float64 // one board's bootloader TFTP pace (blksize 1024, lockstep)
	TFTPServerMBps  float64 // the TFTP server's aggregate rate
	NetbootBytes    float64 // start4.elf, fixup4.dat, dtb, kernel8.img and the agent initrd
	BootloaderS     float64 // power-on to the first DHCP DISCOVER
	KernelBootS     float64 // kernel start to the agent's register
	PickupS         float64 // register to the job's start (poll interval / zero-click)
	CustomiseS      float64 // per-device files into the boot partition
	RebootS         float64 // reboot command to the board running its eMMC
	SwapS           float64 // the technician's time to take one board out and put the next in
	VerifyStepBytes float64 // the read-back follows the writer region by region, each this size
}

// Defaults are the starting constraints and where each comes from.
var Defaults = Constraints{
	EMMCWriteMBps:   40,   // issue 19 and rpi-sb-provisioner's 2.6 GB in ~2.5 min (field.md §3)
	EMMCReadMBps:    90,   // assumption (HARDWARE.md Q21): CM4 eMMC HS200 read
	BoardSHA256MBps: 120,  // assumption (Q21): Go sha256 on a 1.5 GHz Cortex-A72 without SHA instructions
	BoardZstdMBps:   250,  // assumption (Q21): zstd output on one A72 core
	LinkMbps:        1000, // CM4 BCM54210PE gigabit PHY
	UplinkMbps:      10000,
	ServerMBps:      3000, // ARCHITECTURE.md deploy table: 3019 MB/s to 16 clients on this 2-core machine (sendfile)
	TCPEfficiency:   0.94,
	PiTFTPMBps:      3,        // ARCHITECTURE.md: "the Pi's own turnaround (2-5 MB/s per board)"; HARDWARE.md Q22
	TFTPServerMBps:  78,       // ARCHITECTURE.md, the pin/tftp runs: 78.6 MB/s to 16 atftp clients at blksize 1024
	NetbootBytes:    18e6,     // start4.elf 2.3 MB, kernel8.img ~9.5 MB, agent initrd ~6 MB, dtb, fixup4.dat (Q22)
	BootloaderS:     3,        // assumption (Q23): power-on to DISCOVER with BOOT_ORDER 0xf21 and an empty eMMC
	KernelBootS:     8,        // the QEMU e2e test's kernel-to-register time on real arm64, rounded up
	PickupS:         1,        // zero-click: the job is there at register; one poll at most
	CustomiseS:      1,        // TestZeroClickTwoRecipes: per-device files take well under a second
	RebootS:         5,        // assumption (Q23): reboot to the bootloader leaving netboot
	SwapS:           10,       // assumption (Q23): unplug, plug, power on; one technician
	VerifyStepBytes: 32 << 20, // cm4agent's verifyStep: each fsynced 32 MiB region is read back while the download goes on
}

func (c Constraints) withDefaults() Constraints {
	d := Defaults
	for _, f := range []struct {
		v   *float64
		def float64
	}{
		{&c.EMMCWriteMBps, d.EMMCWriteMBps}, {&c.EMMCReadMBps, d.EMMCReadMBps}, {&c.BoardSHA256MBps, d.BoardSHA256MBps},
		{&c.BoardZstdMBps, d.BoardZstdMBps}, {&c.LinkMbps, d.LinkMbps}, {&c.UplinkMbps, d.UplinkMbps},
		{&c.ServerMBps, d.ServerMBps}, {&c.TCPEfficiency, d.TCPEfficiency}, {&c.PiTFTPMBps, d.PiTFTPMBps},
		{&c.TFTPServerMBps, d.TFTPServerMBps}, {&c.NetbootBytes, d.NetbootBytes}, {&c.BootloaderS, d.BootloaderS},
		{&c.KernelBootS, d.KernelBootS}, {&c.PickupS, d.PickupS}, {&c.CustomiseS, d.CustomiseS}, {&c.RebootS, d.RebootS},
		{&c.SwapS, d.SwapS}, {&c.VerifyStepBytes, d.VerifyStepBytes},
	} {
		if *f.v == 0 {
			*f.v = f.def
		}
	}
	return c
}

// validate refuses constraints that would stall the model: every rate
// must be positive and no time negative.
func (c Constraints) validate() error {
	for _, r := range []struct {
		name string
		v    float64
	}{
		{"eMMC write", c.EMMCWriteMBps}, {"eMMC read", c.EMMCReadMBps}, {"board sha256", c.BoardSHA256MBps},
		{"board zstd", c.BoardZstdMBps}, {"link", c.LinkMbps}, {"uplink", c.UplinkMbps}, {"server", c.ServerMBps},
		{"TCP efficiency", c.TCPEfficiency}, {"Pi TFTP", c.PiTFTPMBps}, {"TFTP server", c.TFTPServerMBps},
	} {
		if !(r.v > 0) || math.IsInf(r.v, 0) {
			return fmt.Errorf("linetwin: %s rate %g: want a positive number", r.name, r.v)
		}
	}
	for _, d := range []struct {
		name string
		v    float64
	}{
		{"netboot bytes", c.NetbootBytes}, {"bootloader", c.BootloaderS}, {"kernel boot", c.KernelBootS}, {"pickup", c.PickupS},
		{"customise", c.CustomiseS}, {"reboot", c.RebootS}, {"swap", c.SwapS}, {"verify step", c.VerifyStepBytes},
	} {
		if !(d.v >= 0) || math.IsInf(d.v, 0) {
			return fmt.Errorf("linetwin: %s %g: want zero or more", d.name, d.v)
		}
	}
	return nil
}

// Format is how the image travels and is written.
type Format string

// Formats. cm4agent skips zero runs (64 KiB grain) and discards them
// instead, whatever the format: it writes only the data blocks. Sparse is
// the sparse-aware stream (internal/sparseimg): only those data blocks
// cross the network, uncompressed. Dense is a writer that writes every
// byte (dd, or the field's tools before sparse support), for comparison.
const (
	Raw    Format = "raw"    // every byte on the wire, data blocks written
	Zstd   Format = "zstd"   // compressed on the wire, data blocks written
	Sparse Format = "sparse" // data blocks on the wire and written, no compression
	Dense  Format = "dense"  // zstd on the wire, every byte written (a dd-style writer)
)

// Image is what one board receives, measured on a real image.
type Image struct {
	RawBytes  float64 // the disk image
	DataBytes float64 // bytes in 64 KiB blocks that are not all zero (what cm4agent writes)
	ZstdBytes float64 // the zstd file
	// SparseBytes is the sparse stream (data blocks and a 16-byte header
	// per extent); 0 = DataBytes.
	SparseBytes float64
}

// Validate refuses an image the model cannot use.
func (im Image) Validate() error {
	switch {
	case im.RawBytes <= 0:
		return errors.New("linetwin: image has no size")
	case im.DataBytes <= 0 || im.DataBytes > im.RawBytes:
		return fmt.Errorf("linetwin: data bytes %.0f not in (0, %.0f]", im.DataBytes, im.RawBytes)
	case im.ZstdBytes <= 0:
		return errors.New("linetwin: no zstd size")
	}
	return nil
}

// wire and written bytes of the image in format f.
func (im Image) bytes(f Format) (wire, written float64) {
	switch f {
	case Zstd:
		return im.ZstdBytes, im.DataBytes
	case Dense:
		return im.ZstdBytes, im.RawBytes
	case Sparse:
		if im.SparseBytes > 0 {
			return im.SparseBytes, im.DataBytes
		}
		return im.DataBytes, im.DataBytes
	}
	return im.RawBytes, im.DataBytes
}

// Phases of one board's cycle, in order.
var Phases = []string{"boot", "netboot", "kernel", "pickup", "download+write", "verify", "customise", "reboot"}

// Board is one board's cycle in a run.
type Board struct {
	Phase      map[string]float64 // seconds per phase
	Total      float64            // power-on to running its eMMC
	WireBytes  float64            // bytes on the wire (netboot + image)
	Bottleneck string             // what held its download+write back most of the time
}

// Result is one run: N boards on one line.
type Result struct {
	Boards     int
	Format     Format
	UplinkMbps float64
	Cycle      float64 // the last board's total: the batch's cycle, seconds
	PerBoard   Board   // the slowest board
	BoardsHour float64 // N boards per cycle, back to back
	// BoardsHourSwapped is the line fed by one technician (see Line):
	// boards per hour in its steady state.
	BoardsHourSwapped float64
	// SwappedCycle is a board's mean power-on to running its eMMC in that
	// line, where the swaps stagger the boards.
	SwappedCycle float64
	// TechnicianBound is set when the technician, not the bench, sets
	// BoardsHourSwapped: they are swapping boards nearly all the time.
	TechnicianBound bool
	Bottleneck      string  // the slowest board's download bottleneck
	UplinkUseMax    float64 // peak share of the uplink used (0..1)
}

// rateLimit names a cap and its value (MB/s of raw image progress, or wire).
type rateLimit struct {
	name string
	v    float64
}

// Line is the steady state of n slots fed by one technician.
type Line struct {
	BoardsHour float64 // finished boards per hour
	Cycle      float64 // mean power-on to running its eMMC
	// TechnicianBusy is the share of the time the technician spends
	// swapping (0..1).
	TechnicianBusy float64
}

// lineWarmup and lineRounds: Line measures rounds 2 to lineRounds of every
// slot, after the first round (all slots empty at the start) has passed.
const lineWarmup, lineRounds = 1, 6

// technicianBound is the technician's busy share from which the line
// waits on them rather than on the bench.
const technicianBound = 0.97

// Simulate runs n boards of image in format f through one cycle, all
// powered on at once, and the same n slots as a line fed by one
// technician (BoardsHourSwapped).
func Simulate(c Constraints, n int, im Image, f Format) (Result, error) {
	e, err := newEngine(c, n, im, f)
	if err != nil {
		return Result{}, err
	}
	fin, peak, _ := e.simulate(false, n)
	res := Result{Boards: n, Format: f, UplinkMbps: e.c.UplinkMbps, UplinkUseMax: peak}
	for _, x := range fin {
		if x.b.Total >= res.Cycle {
			res.Cycle, res.PerBoard = x.b.Total, x.b
		}
	}
	res.Bottleneck = res.PerBoard.Bottleneck
	res.BoardsHour = float64(n) * 3600 / res.Cycle
	l := e.line()
	res.BoardsHourSwapped, res.SwappedCycle, res.TechnicianBound = l.BoardsHour, l.Cycle, l.TechnicianBusy >= technicianBound
	return res, nil
}

// SimulateLine is the steady state of n slots fed by one technician: every
// slot starts empty; the technician swaps one board at a time, SwapS
// each, taking the slot that has waited longest; a board powers on as its
// swap ends and waits for the technician once it runs its eMMC. The swaps
// stagger the boards, so they share the uplink less than a batch does.
func SimulateLine(c Constraints, n int, im Image, f Format) (Line, error) {
	e, err := newEngine(c, n, im, f)
	if err != nil {
		return Line{}, err
	}
	return e.line(), nil
}

// engine is the fluid model of one line configuration.
type engine struct {
	c          Constraints
	n          int
	im         Image
	f          Format
	wire       float64 // image bytes on the wire
	written    float64 // image bytes written to the eMMC
	uplinkMBps float64
	ownCap     rateLimit // a board's own cap on raw-image progress in download+write
	verifyRate float64   // MB/s
	fixed      map[int]float64
}

func newEngine(c Constraints, n int, im Image, f Format) (*engine, error) {
	if n < 1 {
		return nil, fmt.Errorf("linetwin: %d boards", n)
	}
	if err := im.Validate(); err != nil {
		return nil, err
	}
	c = c.withDefaults()
	if err := c.validate(); err != nil {
		return nil, err
	}
	e := &engine{c: c, n: n, im: im, f: f}
	e.wire, e.written = im.bytes(f)
	linkMBps := c.LinkMbps / 8 * c.TCPEfficiency
	e.uplinkMBps = c.UplinkMbps / 8 * c.TCPEfficiency
	own := []rateLimit{
		{"board link", linkMBps * im.RawBytes / e.wire},
		{"eMMC write", c.EMMCWriteMBps * im.RawBytes / e.written},
	}
	if f == Zstd || f == Dense {
		own = append(own, rateLimit{"board CPU (zstd)", c.BoardZstdMBps})
	}
	e.ownCap = slices.MinFunc(own, func(a, b rateLimit) int { return cmp.Compare(a.v, b.v) })
	e.verifyRate = math.Min(c.EMMCReadMBps, c.BoardSHA256MBps)
	e.fixed = map[int]float64{0: c.BootloaderS, 2: c.KernelBootS, 3: c.PickupS, 6: c.CustomiseS, 7: c.RebootS}
	return e, nil
}

// Slot phases besides Phases' indexes.
const (
	waiting  = -1 // empty, or finished: waits for the technician
	swapping = -2 // the technician is at it
)

// slot is one place on the bench and the board in it.
type slot struct {
	phase   int
	left    float64 // seconds (fixed phases, swap) or bytes (shared phases)
	done    float64 // download+write: raw bytes written so far
	ver     float64 // raw bytes already read back and hashed
	b       Board
	reason  map[string]float64
	powerOn float64 // when this board was powered on
	since   float64 // when the slot began waiting for the technician
}

// finish is one board done: when, and its cycle.
type finish struct {
	at float64
	b  Board
}

// line runs the technician-fed line and measures its steady state.
func (e *engine) line() Line {
	fin, _, busy := e.simulate(true, e.n*lineRounds)
	first, last := fin[e.n*lineWarmup-1], fin[len(fin)-1]
	var cyc float64
	for _, x := range fin[e.n*lineWarmup:] {
		cyc += x.b.Total
	}
	m := float64(len(fin) - e.n*lineWarmup)
	window := last.at - first.at
	return Line{BoardsHour: m * 3600 / window, Cycle: cyc / m, TechnicianBusy: busy(first.at, last.at) / window}
}

// simulate advances the line from one phase end to the next until target
// boards are done. Without a technician every slot's board is powered on
// at t=0 and runs once.
func (e *engine) simulate(technician bool, target int) ([]finish, float64, func(a, b float64) float64) {
	c, im := e.c, e.im
	ss := make([]*slot, e.n)
	for i := range ss {
		ss[i] = &slot{phase: waiting}
	}
	var t, peakUse float64
	power := func(s *slot) {
		*s = slot{b: Board{Phase: map[string]float64{}, WireBytes: c.NetbootBytes + e.wire}, reason: map[string]float64{}, powerOn: t}
		e.start(s, 0)
	}
	if !technician {
		for _, s := range ss {
			power(s)
		}
	}
	var busyFrom []float64 // the technician's swaps: start times; each lasts SwapS
	techFree := true
	var fin []finish
	for len(fin) < target {
		if technician && techFree {
			var next *slot
			for _, s := range ss {
				if s.phase == waiting && (next == nil || s.since < next.since) {
					next = s
				}
			}
			if next != nil {
				next.phase, next.left, techFree = swapping, c.SwapS, false
				busyFrom = append(busyFrom, t)
			}
		}
		rate, why, used := e.rates(ss)
		peakUse = math.Max(peakUse, used/e.uplinkMBps)
		// time to the next phase end, or to a writer crossing a read-back
		// region's end (the read-back may go on from there)
		dt := math.Inf(1)
		for _, s := range ss {
			if s.phase == waiting {
				continue
			}
			d := s.left
			if r, ok := rate[s]; ok {
				d = s.left / r
				if s.phase == 4 {
					d = math.Min(d, (e.nextRegion(s.done)-s.done)/r)
				}
			}
			dt = math.Min(dt, d)
		}
		if math.IsInf(dt, 1) {
			break // nothing left to do (a batch whose boards are all done)
		}
		t += dt
		for _, s := range ss {
			if s.phase == waiting {
				continue
			}
			if s.phase >= 0 {
				s.b.Phase[Phases[s.phase]] += dt
			}
			eps := 1e-9 // seconds left in a fixed phase or a swap
			if r, ok := rate[s]; ok {
				e.progress(s, r, dt, why[s])
				eps = 1e-9 * math.Max(1, im.RawBytes) // bytes left in a shared phase
			} else {
				s.left -= dt
			}
			if s.left > eps {
				continue
			}
			switch {
			case s.phase == swapping:
				techFree = true
				power(s)
			case s.phase == len(Phases)-1:
				s.b.Total = t - s.powerOn
				s.b.Bottleneck = mostOf(s.reason)
				fin = append(fin, finish{at: t, b: s.b})
				s.phase, s.since = waiting, t // a batch never swaps it
			default:
				e.start(s, s.phase+1)
			}
		}
	}
	busy := func(a, b float64) float64 {
		var sum float64
		for _, from := range busyFrom {
			sum += math.Max(0, math.Min(b, from+c.SwapS)-math.Max(a, from))
		}
		return sum
	}
	return fin, peakUse, busy
}

// start puts s into phase p.
func (e *engine) start(s *slot, p int) {
	s.phase = p
	switch p {
	case 1:
		s.left = e.c.NetbootBytes
	case 4:
		s.left = e.im.RawBytes
	case 5:
		// what the read-back behind the writer has not covered yet
		s.left = (e.im.RawBytes - s.ver) / e.verifyRate / MB
	default:
		s.left = e.fixed[p]
	}
}

// rates are the shared phases' rates (bytes/s) for this step, what held
// each download below its own cap, and the uplink capacity used (MB/s).
// Netboot files and image streams share the server's uplink, max-min
// fairly (wire MB/s). Each TFTP flow is capped by the bootloader's pace
// and its share of the TFTP server; each download by its own caps and its
// share of the server's CPU.
func (e *engine) rates(ss []*slot) (map[*slot]float64, map[*slot]string, float64) {
	c, im := e.c, e.im
	var tftp, dl []*slot
	for _, s := range ss {
		switch s.phase {
		case 1:
			tftp = append(tftp, s)
		case 4:
			dl = append(dl, s)
		}
	}
	rate := map[*slot]float64{}
	why := map[*slot]string{}
	var flows []flow
	var owners []*slot // owners[i] has flows[i]
	for _, s := range tftp {
		flows = append(flows, flow{cap: math.Min(c.PiTFTPMBps, c.TFTPServerMBps/float64(len(tftp)))})
		owners = append(owners, s)
	}
	for _, s := range dl {
		cpuShare := c.ServerMBps / float64(len(dl)) * e.wire / im.RawBytes
		f := flow{cap: e.ownCap.v * e.wire / im.RawBytes, download: true}
		if cpuShare < f.cap {
			f.cap, f.capName = cpuShare, "server CPU"
		}
		flows = append(flows, f)
		owners = append(owners, s)
	}
	used := shareUplink(flows, e.uplinkMBps)
	for i, f := range flows {
		s := owners[i]
		if !f.download {
			rate[s] = f.rate * MB
			continue
		}
		rate[s] = f.rate * im.RawBytes / e.wire * MB
		switch {
		case f.rate < f.cap*(1-1e-9):
			why[s] = "server uplink"
		case f.capName != "":
			why[s] = f.capName
		}
	}
	return rate, why, used
}

// progress moves a shared phase on by dt at rate r (bytes/s).
func (e *engine) progress(s *slot, r, dt float64, held string) {
	s.left -= r * dt
	if s.phase != 4 {
		return
	}
	// The agent reads back behind the writer, each region of
	// VerifyStepBytes once it is written and synced. The eMMC does one
	// thing at a time: the read-back gets the share of the device the
	// write leaves idle (none when the eMMC is the limit, most of it when
	// the network is). The rest is read back after the last byte.
	// Steps end where the writer crosses a region's end, so the synced
	// range is the one at the step's start.
	synced := e.nextRegion(s.done) - e.c.VerifyStepBytes
	s.done += r * dt
	busy := r * e.written / e.im.RawBytes / (e.c.EMMCWriteMBps * MB)
	s.ver = math.Max(s.ver, math.Min(synced, s.ver+math.Max(0, 1-busy)*e.verifyRate*MB*dt))
	if held == "" {
		held = e.ownCap.name
	}
	s.reason[held] += dt
}

// nextRegion is the end of the read-back region the writer is in at done
// (raw bytes); a writer within a millionth of a byte of a region's end has
// crossed it.
func (e *engine) nextRegion(done float64) float64 {
	step := e.c.VerifyStepBytes
	return (math.Floor((done+1e-6)/step) + 1) * step
}

// mostOf is the reason that held a download back the longest (ties by
// name, so the result is deterministic).
func mostOf(reason map[string]float64) string {
	var best string
	for k, v := range reason {
		if best == "" || v > reason[best] || (v == reason[best] && k < best) {
			best = k
		}
	}
	return best
}

// flow is one board's transfer on the server's uplink: a netboot (TFTP) or
// an image download, with its own cap in wire MB/s.
type flow struct {
	cap      float64
	capName  string // what sets cap below the board's own limits ("" = the board itself)
	download bool
	rate     float64 // the share it gets
}

// shareUplink gives each flow its max-min fair share of capacity (water
// filling: flows capped below the fair share keep their cap, the rest
// split what is left equally) and returns the capacity used.
func shareUplink(flows []flow, capacity float64) float64 {
	idx := make([]int, len(flows))
	for i := range idx {
		idx[i] = i
	}
	slices.SortFunc(idx, func(a, b int) int { return cmp.Compare(flows[a].cap, flows[b].cap) })
	left, used := capacity, 0.0
	for k, i := range idx {
		fair := left / float64(len(idx)-k)
		r := math.Min(flows[i].cap, fair)
		flows[i].rate = r
		left -= r
		used += r
	}
	return used
}
