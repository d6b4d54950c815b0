package linetwin

import (
	"bytes"
	"image/png"
	"math"
	"strings"
	"testing"
)

// 2.6 GB, as the field's figure; 1.2 GB in data blocks, zstd 2.9:1 of raw.
var fieldImage = Image{RawBytes: 2.6e9, DataBytes: 1.2e9, ZstdBytes: 0.9e9}

func near(a, b, tol float64) bool { return math.Abs(a-b) <= tol }

func TestSimulate(t *testing.T) {
	for _, tt := range []struct {
		name       string
		c          Constraints
		n          int
		f          Format
		wantDL     float64 // download+write seconds of the slowest board
		bottleneck string
	}{
		// cm4agent writes the 1.2 GB of data blocks: 30 s at 40 MB/s, while
		// the 2.6 GB raw stream needs 22 s over the gigabit link (117.5 MB/s)
		{"one board raw", Constraints{}, 1, Raw, 30, "eMMC write"},
		// 16 x 2.6e9 / 30 s = 1387 MB/s does not fit 10 GbE (1175 MB/s)
		{"16 boards raw 10 GbE", Constraints{UplinkMbps: 10000}, 16, Raw, 16 * 2.6e9 / (1250e6 * 0.94), "server uplink"},
		// a dd-style writer writes all 2.6 GB: 65 s
		{"one board dense", Constraints{}, 1, Dense, 65, "eMMC write"},
		// 16 x 2.6e9 over 117.5 MB/s = 354 s
		{"16 boards raw 1 GbE", Constraints{UplinkMbps: 1000}, 16, Raw, 16 * 2.6e9 / (125e6 * 0.94), "server uplink"},
		// zstd: 16 x 0.9e9 over 117.5 MB/s = 122.6 s
		{"16 boards zstd 1 GbE", Constraints{UplinkMbps: 1000}, 16, Zstd, 16 * 0.9e9 / (125e6 * 0.94), "server uplink"},
		{"one board zstd", Constraints{}, 1, Zstd, 1.2e9 / 40e6, "eMMC write"},
		// a slow server CPU is named
		{"4 boards raw, 100 MB/s server", Constraints{ServerMBps: 100}, 4, Raw, 4 * 2.6e9 / 100e6, "server CPU"},
		// a link slower than the eMMC needs
		{"one board raw, 100 Mbit link", Constraints{LinkMbps: 100}, 1, Raw, 2.6e9 / (12.5e6 * 0.94), "board link"},
		// a board CPU that decodes zstd slower than the eMMC writes
		{"one board zstd, slow CPU", Constraints{BoardZstdMBps: 20}, 1, Zstd, 2.6e9 / 20e6, "board CPU (zstd)"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r, err := Simulate(tt.c, tt.n, fieldImage, tt.f)
			if err != nil {
				t.Fatal(err)
			}
			if got := r.PerBoard.Phase["download+write"]; !near(got, tt.wantDL, 0.5) {
				t.Errorf("download+write %.2f s, want %.2f", got, tt.wantDL)
			}
			if r.Bottleneck != tt.bottleneck {
				t.Errorf("bottleneck %q, want %q", r.Bottleneck, tt.bottleneck)
			}
			sum := 0.0
			for _, p := range Phases {
				sum += r.PerBoard.Phase[p]
			}
			if !near(sum, r.Cycle, 1e-6) || !near(r.BoardsHour, float64(tt.n)*3600/r.Cycle, 1e-9) {
				t.Errorf("phases sum to %.3f, cycle %.3f, boards/h %.1f", sum, r.Cycle, r.BoardsHour)
			}
		})
	}
	if _, err := Simulate(Constraints{}, 0, fieldImage, Raw); err == nil {
		t.Error("0 boards accepted")
	}
	if _, err := Simulate(Constraints{}, 1, Image{RawBytes: 1, DataBytes: 2, ZstdBytes: 1}, Raw); err == nil {
		t.Error("an image with more data than bytes accepted")
	}
}

// More boards never make the cycle shorter, and the netboot phase slows
// once the TFTP server's aggregate is shared.
func TestMoreBoardsNeverFaster(t *testing.T) {
	for _, sc := range Scenarios {
		prev := 0.0
		for n := 1; n <= 32; n++ {
			r, err := Simulate(Constraints{UplinkMbps: sc.UplinkMbps}, n, fieldImage, sc.Format)
			if err != nil {
				t.Fatal(err)
			}
			if r.Cycle < prev-1e-9 {
				t.Fatalf("%s: %d boards %.2f s, fewer took %.2f s", sc, n, r.Cycle, prev)
			}
			prev = r.Cycle
		}
	}
	r1, _ := Simulate(Constraints{TFTPServerMBps: 12}, 1, fieldImage, Raw)
	r16, _ := Simulate(Constraints{TFTPServerMBps: 12}, 16, fieldImage, Raw)
	if want := 18e6 / (12e6 / 16); !near(r16.PerBoard.Phase["netboot"], want, 0.01) || !near(r1.PerBoard.Phase["netboot"], 6, 0.01) {
		t.Errorf("netboot: 1 board %.2f s (want 6), 16 boards %.2f s (want %.2f)", r1.PerBoard.Phase["netboot"], r16.PerBoard.Phase["netboot"], want)
	}
}

func TestReportGoalsAndPlot(t *testing.T) {
	rep, err := Report(Constraints{}, fieldImage)
	if err != nil {
		t.Fatal(err)
	}
	var tab bytes.Buffer
	if err := WriteTable(&tab, rep); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(tab.String(), "\n"); n != 1+len(Scenarios)*len(BoardCounts) {
		t.Errorf("%d table lines:\n%s", n, tab.String())
	}
	gs, err := Goals(Constraints{}, fieldImage)
	if err != nil || len(gs) != 6 {
		t.Fatal(gs, err)
	}
	// one board: 3+6+8+1 boot/netboot/kernel/pickup, 30 write, then the
	// rest of the read-back, 1+5: under 150 s
	if !gs[0].Met {
		t.Errorf("goal 1 not met at the field's terms: %+v", gs[0])
	}
	// 16 raw boards need 16 x 2.6 GB / 30 s = 1387 MB/s: more than 10 GbE
	r1, _ := Simulate(Constraints{UplinkMbps: 10000}, 1, fieldImage, Raw)
	r16, _ := Simulate(Constraints{UplinkMbps: 10000}, 16, fieldImage, Raw)
	if gs[1].Met != (r16.Cycle <= 1.15*r1.Cycle) || !strings.Contains(gs[1].Why, "server uplink") {
		t.Errorf("10 GbE goal %+v; cycles %.1f and %.1f", gs[1], r1.Cycle, r16.Cycle)
	}
	// zstd on 1 GbE: 16 boards writing 40 MB/s of data blocks need
	// 16 x 40 x 0.9/1.2 = 480 MB/s on the wire, which does not fit
	// 117.5 MB/s, so the uplink decides
	z1, _ := Simulate(Constraints{UplinkMbps: 1000}, 1, fieldImage, Zstd)
	z16, _ := Simulate(Constraints{UplinkMbps: 1000}, 16, fieldImage, Zstd)
	if gs[2].Met != (z16.Cycle <= 1.5*z1.Cycle) || !strings.Contains(gs[2].Why, "server uplink") || !strings.Contains(gs[2].Why, "needs 480 MB/s") {
		t.Errorf("zstd goal %+v; cycles %.1f and %.1f", gs[2], z1.Cycle, z16.Cycle)
	}
	// The sparse stream on 1 GbE: the data blocks (1.2 GB), uncompressed,
	// so more on the wire than zstd's 0.9 GB but less than raw's 2.6 GB,
	// and no zstd on the board.
	s16, _ := Simulate(Constraints{UplinkMbps: 1000}, 16, fieldImage, Sparse)
	raw16, _ := Simulate(Constraints{UplinkMbps: 1000}, 16, fieldImage, Raw)
	if s16.PerBoard.WireBytes != 18e6+1.2e9 || s16.Cycle >= raw16.Cycle || s16.Cycle <= z16.Cycle || !strings.Contains(gs[3].Why, "server uplink") {
		t.Errorf("sparse: %+v (raw cycle %.1f, zstd %.1f), goal %+v", s16, raw16.Cycle, z16.Cycle, gs[3])
	}
	var png1 bytes.Buffer
	if err := Plot(rep, "test", &png1); err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(&png1)
	if err != nil || img.Bounds().Dx() < 300 {
		t.Fatalf("plot is not a PNG: %v", err)
	}
}

// The read-back runs behind the writer on idle eMMC time, region by
// region once each is synced (cm4agent's 32 MiB verifyStep): with the eMMC
// the limit nothing is left idle and the whole verify follows the write;
// with the network the limit it keeps up and only the last, unsynced
// region is left (the realistic run's 48 MiB image shows it: 16 MiB).
func TestVerifyOverlapsANetworkBoundWrite(t *testing.T) {
	const mib = 1 << 20
	small := Image{RawBytes: 48 * mib, DataBytes: 12 * mib, ZstdBytes: 48 * mib}
	slowNet := Constraints{UplinkMbps: 100, LinkMbps: 100}
	for _, tt := range []struct {
		name string
		c    Constraints
		n    int
		im   Image
		f    Format
		want float64 // verify seconds after the write
	}{
		{"eMMC-bound", Constraints{}, 1, fieldImage, Dense, 2.6e9 / 90e6},
		{"network-bound, 2.6 GB", Constraints{UplinkMbps: 1000}, 16, fieldImage, Zstd, (2.6e9 - 77*32*mib) / 90e6},
		{"network-bound, 48 MiB", slowNet, 1, small, Raw, 16 * mib / 90e6},
		{"network-bound, 48 MiB, 1 MiB regions", Constraints{UplinkMbps: 100, LinkMbps: 100, VerifyStepBytes: mib}, 1, small, Raw, mib / 90e6},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r, err := Simulate(tt.c, tt.n, tt.im, tt.f)
			if err != nil {
				t.Fatal(err)
			}
			if got := r.PerBoard.Phase["verify"]; !near(got, tt.want, 0.01) {
				t.Errorf("verify %.3f s after the write, want %.3f", got, tt.want)
			}
		})
	}
}

// TestSwapTime: the line fed by one technician. Each slot loses its own
// swap; one technician swaps at most one board per SwapS, which bounds a
// large line; where the uplink does not limit, the line is the closed form
// n x 3600 / (cycle + swap).
func TestSwapTime(t *testing.T) {
	for _, tt := range []struct {
		name  string
		swap  float64
		n     int
		bound bool
	}{
		{"one board", 10, 1, false},
		{"four boards", 10, 4, false},
		{"sixteen boards, 10 s swaps", 10, 16, true},
		{"sixteen boards, 2 s swaps", 2, 16, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r, err := Simulate(Constraints{SwapS: tt.swap, UplinkMbps: 10000}, tt.n, fieldImage, Zstd)
			if err != nil {
				t.Fatal(err)
			}
			bench, tech := float64(tt.n)*3600/(r.Cycle+tt.swap), 3600/tt.swap
			if r.TechnicianBound != tt.bound || !near(r.BoardsHourSwapped, min(bench, tech), 1e-6*tech) || r.BoardsHourSwapped >= r.BoardsHour {
				t.Errorf("swapped %.3f/h (technician bound %v), line %.1f/h; bench %.3f, technician %.3f", r.BoardsHourSwapped, r.TechnicianBound, r.BoardsHour, bench, tech)
			}
			if !near(r.SwappedCycle, r.Cycle, 1e-6) {
				t.Errorf("a board's cycle in the line %.3f s, alone %.3f s: nothing is shared on 10 GbE", r.SwappedCycle, r.Cycle)
			}
			l, err := SimulateLine(Constraints{SwapS: tt.swap, UplinkMbps: 10000}, tt.n, fieldImage, Zstd)
			if err != nil {
				t.Fatal(err)
			}
			if busy := min(1, l.BoardsHour*tt.swap/3600); !near(l.TechnicianBusy, busy, 1e-6) || l.BoardsHour != r.BoardsHourSwapped {
				t.Errorf("technician busy %.4f, want %.4f (one swap per board); %+v", l.TechnicianBusy, busy, l)
			}
		})
	}
	gs, _ := Goals(Constraints{}, fieldImage)
	if g := gs[4]; !g.Met || !strings.Contains(g.Why, "technician") {
		t.Errorf("shift goal %+v", g)
	}
}

// TestSwapsStagger: boards swapped one after another do not all download
// at once. On 1 GbE, 16 boards powered on together share the uplink
// (zstd: 16 x 30 MB/s wanted, 117.5 carried), but 10 s apart only about
// three download at a time, each at eMMC speed; 1 s apart they still
// contend, less than in the batch.
func TestSwapsStagger(t *testing.T) {
	one, err := Simulate(Constraints{UplinkMbps: 1000}, 1, fieldImage, Zstd)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name      string
		swap      float64
		uncontend bool
	}{
		{"10 s swaps", 10, true},
		{"1 s swaps", 1, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r, err := Simulate(Constraints{UplinkMbps: 1000, SwapS: tt.swap}, 16, fieldImage, Zstd)
			if err != nil {
				t.Fatal(err)
			}
			if r.Cycle < one.Cycle*1.2 || r.Bottleneck != "server uplink" {
				t.Fatalf("the batch of 16 does not contend: %.1f s against %.1f s alone, %s", r.Cycle, one.Cycle, r.Bottleneck)
			}
			if r.SwappedCycle >= r.Cycle {
				t.Errorf("a board's cycle in the line %.1f s, in the batch %.1f s", r.SwappedCycle, r.Cycle)
			}
			if alone := near(r.SwappedCycle, one.Cycle, 1e-6); alone != tt.uncontend {
				t.Errorf("a board's cycle in the line %.3f s, alone %.3f s; want uncontended %v", r.SwappedCycle, one.Cycle, tt.uncontend)
			}
			// the closed form, which takes the batch's cycle, undercounts
			if closed := min(16*3600/(r.Cycle+tt.swap), 3600/tt.swap); r.BoardsHourSwapped < closed*(1-1e-6) {
				t.Errorf("line %.1f/h below the batch's closed form %.1f/h", r.BoardsHourSwapped, closed)
			}
		})
	}
}

func TestShareUplink(t *testing.T) {
	for _, tt := range []struct {
		name     string
		caps     []float64
		capacity float64
		want     []float64
	}{
		{"room for all", []float64{1, 2, 3}, 10, []float64{1, 2, 3}},
		{"equal split", []float64{5, 5}, 6, []float64{3, 3}},
		{"small flows keep their cap", []float64{1, 10, 10}, 9, []float64{1, 4, 4}},
		{"nothing to share", nil, 10, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			fs := make([]flow, len(tt.caps))
			for i, c := range tt.caps {
				fs[i].cap = c
			}
			used := shareUplink(fs, tt.capacity)
			sum := 0.0
			for i, f := range fs {
				if !near(f.rate, tt.want[i], 1e-9) {
					t.Errorf("flow %d (cap %g): rate %g, want %g", i, f.cap, f.rate, tt.want[i])
				}
				sum += f.rate
			}
			if !near(used, sum, 1e-9) || used > tt.capacity+1e-9 {
				t.Errorf("used %g of %g, rates sum to %g", used, tt.capacity, sum)
			}
		})
	}
}

// TestNetbootSharesTheUplink: netboot files cross the same uplink as the
// images, so 16 boards netbooting on a 100 Mbit uplink get a sixteenth of
// it each, below the bootloader's own pace.
func TestNetbootSharesTheUplink(t *testing.T) {
	c := Constraints{UplinkMbps: 100}
	r1, _ := Simulate(c, 1, fieldImage, Zstd)
	r16, _ := Simulate(c, 16, fieldImage, Zstd)
	if want := Defaults.NetbootBytes / (Defaults.PiTFTPMBps * MB); !near(r1.PerBoard.Phase["netboot"], want, 1e-6) {
		t.Errorf("one board netboots in %.2f s, want %.2f s at the bootloader's pace", r1.PerBoard.Phase["netboot"], want)
	}
	if want := Defaults.NetbootBytes / (100.0 / 8 * 0.94 / 16 * MB); !near(r16.PerBoard.Phase["netboot"], want, 1e-6) {
		t.Errorf("16 boards netboot in %.2f s, want %.2f s (a sixteenth of the uplink each)", r16.PerBoard.Phase["netboot"], want)
	}
}

// TestSimulateRefuses: input the model cannot run is refused with the
// constraint named, by the batch and by the line, instead of stalling.
func TestSimulateRefuses(t *testing.T) {
	for _, tt := range []struct {
		name string
		c    Constraints
		n    int
		im   Image
		want string
	}{
		{"no boards", Constraints{}, 0, fieldImage, "0 boards"},
		{"an empty image", Constraints{}, 1, Image{}, "no size"},
		{"more data than image", Constraints{}, 1, Image{RawBytes: 1, DataBytes: 2, ZstdBytes: 1}, "data bytes"},
		{"a negative eMMC rate", Constraints{EMMCWriteMBps: -40}, 4, fieldImage, "eMMC write rate -40"},
		{"an uplink that is not a number", Constraints{UplinkMbps: math.NaN()}, 4, fieldImage, "uplink rate NaN"},
		{"an endless link", Constraints{LinkMbps: math.Inf(1)}, 4, fieldImage, "link rate +Inf"},
		{"a negative swap", Constraints{SwapS: -1}, 4, fieldImage, "swap -1"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := Simulate(tt.c, tt.n, tt.im, Zstd); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Simulate: %v, want an error with %q", err, tt.want)
			}
			if _, err := SimulateLine(tt.c, tt.n, tt.im, Zstd); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("SimulateLine: %v, want an error with %q", err, tt.want)
			}
		})
	}
}
