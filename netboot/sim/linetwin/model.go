// Package linetwin is the bench twin: a fluid model of a production line
// of N boards provisioned at once, with the constraints of real hardware
// (eMMC rates, a 1 GbE link per board, a shared server uplink, the Pi
// bootloader's TFTP pace, boot times) as parameters, each with a default
// taken from a cited figure or marked as an assumption to confirm on
// hardware (HARDWARE.md). It answers what the machine running the tests
// cannot: what 16 real boards do, and which constraint stops them.
//
// The model is deterministic: every board is powered on at t=0 and goes
// through the phases of a real cycle. As the agent does, the read-back
// runs behind the writer, on the eMMC time the write leaves idle; the
// verify phase is what is left after the last byte is written (bootloader, netboot, kernel and agent,
// job pickup, download+write, verify, customise, reboot). Shared resources
// (the TFTP server, the server's uplink and CPU) are split max-min fairly
// among the boards using them, each board capped by its own link, eMMC and
// CPU. Time advances from one phase end to the next.
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
	PiTFTPMBps:      3,    // ARCHITECTURE.md: "the Pi's own turnaround (2-5 MB/s per board)"; HARDWARE.md Q22
	TFTPServerMBps:  78,   // ARCHITECTURE.md, the pin/tftp runs: 78.6 MB/s to 16 atftp clients at blksize 1024
	NetbootBytes:    18e6, // start4.elf 2.3 MB, kernel8.img ~9.5 MB, agent initrd ~6 MB, dtb, fixup4.dat (Q22)
	BootloaderS:     3,    // assumption (Q23): power-on to DISCOVER with BOOT_ORDER 0xf21 and an empty eMMC
	KernelBootS:     8,    // the QEMU e2e test's kernel-to-register time on real arm64, rounded up
	PickupS:         1,    // zero-click: the job is there at register; one poll at most
	CustomiseS:      1,    // TestZeroClickTwoRecipes: per-device files take well under a second
	RebootS:         5,    // assumption (Q23): reboot to the bootloader leaving netboot
	SwapS:           10,   // assumption (Q23): unplug, plug, power on; one technician
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
		{&c.SwapS, d.SwapS},
	} {
		if *f.v == 0 {
			*f.v = f.def
		}
	}
	return c
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
	// BoardsHourSwapped is the line with one technician swapping boards,
	// slot by slot as each finishes: every slot loses its own swap time,
	// and the technician swaps one board per SwapS at most.
	BoardsHourSwapped float64
	// TechnicianBound is set when the technician, not the bench, sets
	// BoardsHourSwapped.
	TechnicianBound bool
	Bottleneck      string  // the slowest board's download bottleneck
	UplinkUseMax    float64 // peak share of the uplink used (0..1)
}

// rateLimit names a cap and its value (MB/s of raw image progress, or wire).
type rateLimit struct {
	name string
	v    float64
}

// Simulate runs n boards of image in format f through one cycle.
func Simulate(c Constraints, n int, im Image, f Format) (Result, error) {
	if n < 1 {
		return Result{}, fmt.Errorf("linetwin: %d boards", n)
	}
	if err := im.Validate(); err != nil {
		return Result{}, err
	}
	c = c.withDefaults()
	wire, written := im.bytes(f)
	linkMBps := c.LinkMbps / 8 * c.TCPEfficiency
	uplinkMBps := c.UplinkMbps / 8 * c.TCPEfficiency
	// One board's own caps on raw-image progress in download+write.
	own := []rateLimit{
		{"board link", linkMBps * im.RawBytes / wire},
		{"eMMC write", c.EMMCWriteMBps * im.RawBytes / written},
	}
	if f == Zstd || f == Dense {
		own = append(own, rateLimit{"board CPU (zstd)", c.BoardZstdMBps})
	}
	ownCap := slices.MinFunc(own, func(a, b rateLimit) int { return cmp.Compare(a.v, b.v) })
	verifyRate := math.Min(c.EMMCReadMBps, c.BoardSHA256MBps)

	type state struct {
		phase  int
		left   float64 // seconds (fixed phases) or bytes (shared phases)
		done   float64 // download+write: raw bytes written so far
		ver    float64 // raw bytes already read back and hashed
		b      Board
		reason map[string]float64
	}
	bs := make([]*state, n)
	for i := range bs {
		bs[i] = &state{b: Board{Phase: map[string]float64{}, WireBytes: c.NetbootBytes + wire}, reason: map[string]float64{}}
		bs[i].left = c.BootloaderS
	}
	fixed := map[int]float64{0: c.BootloaderS, 2: c.KernelBootS, 3: c.PickupS, 6: c.CustomiseS, 7: c.RebootS}
	start := func(s *state, p int) {
		s.phase = p
		switch p {
		case 1:
			s.left = c.NetbootBytes
		case 4:
			s.left = im.RawBytes
		case 5:
			// what the read-back behind the writer has not covered yet
			s.left = (im.RawBytes - s.ver) / verifyRate / MB
		default:
			s.left = fixed[p]
		}
	}
	var t, peakUse float64
	for {
		// rates of this step
		var tftp, dl []*state
		for _, s := range bs {
			switch s.phase {
			case 1:
				tftp = append(tftp, s)
			case 4:
				dl = append(dl, s)
			}
		}
		rate := map[*state]float64{} // bytes/s for shared phases
		why := map[*state]string{}   // what held a download below its own cap
		// Netboot files and image streams share the server's uplink,
		// max-min fairly (wire MB/s). Each TFTP flow is capped by the
		// bootloader's pace and its share of the TFTP server; each
		// download by its own caps and its share of the server's CPU.
		var flows []flow
		var owners []*state // owners[i] has flows[i]
		for _, s := range tftp {
			flows = append(flows, flow{cap: math.Min(c.PiTFTPMBps, c.TFTPServerMBps/float64(len(tftp)))})
			owners = append(owners, s)
		}
		for _, s := range dl {
			cpuShare := c.ServerMBps / float64(len(dl)) * wire / im.RawBytes
			f := flow{cap: ownCap.v * wire / im.RawBytes, download: true}
			if cpuShare < f.cap {
				f.cap, f.capName = cpuShare, "server CPU"
			}
			flows = append(flows, f)
			owners = append(owners, s)
		}
		used := shareUplink(flows, uplinkMBps)
		peakUse = math.Max(peakUse, used/uplinkMBps)
		for i, f := range flows {
			st := owners[i]
			if !f.download {
				rate[st] = f.rate * MB
				continue
			}
			rate[st] = f.rate * im.RawBytes / wire * MB
			switch {
			case f.rate < f.cap*(1-1e-9):
				why[st] = "server uplink"
			case f.capName != "":
				why[st] = f.capName
			}
		}
		// time to the next phase end
		dt := math.Inf(1)
		active := 0
		for _, s := range bs {
			if s.phase >= len(Phases) {
				continue
			}
			active++
			d := s.left
			if r, ok := rate[s]; ok {
				d = s.left / r
			}
			dt = math.Min(dt, d)
		}
		if active == 0 {
			break
		}
		t += dt
		for _, s := range bs {
			if s.phase >= len(Phases) {
				continue
			}
			name := Phases[s.phase]
			s.b.Phase[name] += dt
			if r, ok := rate[s]; ok {
				s.left -= r * dt
				if s.phase == 4 {
					// The agent reads back behind the writer. The eMMC does
					// one thing at a time: the read-back gets the share of
					// the device the write leaves idle (none when the eMMC
					// is the limit, most of it when the network is).
					s.done += r * dt
					busy := r * written / im.RawBytes / (c.EMMCWriteMBps * MB)
					s.ver = math.Min(s.done, s.ver+math.Max(0, 1-busy)*verifyRate*MB*dt)
					held := ownCap.name
					if w := why[s]; w != "" {
						held = w
					}
					s.reason[held] += dt
				}
			} else {
				s.left -= dt
			}
			if s.left <= 1e-9*math.Max(1, im.RawBytes) {
				if s.phase == len(Phases)-1 {
					s.phase = len(Phases)
					s.b.Total = t
					continue
				}
				start(s, s.phase+1)
			}
		}
	}
	res := Result{Boards: n, Format: f, UplinkMbps: c.UplinkMbps, UplinkUseMax: peakUse}
	for _, s := range bs {
		var best string
		for k, v := range s.reason {
			if best == "" || v > s.reason[best] || (v == s.reason[best] && k < best) {
				best = k
			}
		}
		s.b.Bottleneck = best
		if s.b.Total >= res.Cycle {
			res.Cycle, res.PerBoard = s.b.Total, s.b
		}
	}
	res.Bottleneck = res.PerBoard.Bottleneck
	res.BoardsHour = float64(n) * 3600 / res.Cycle
	bench, tech := float64(n)*3600/(res.Cycle+c.SwapS), 3600/c.SwapS
	res.BoardsHourSwapped, res.TechnicianBound = min(bench, tech), tech < bench
	return res, nil
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
