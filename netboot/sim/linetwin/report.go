package linetwin

import (
	"fmt"
	"image/color"
	"io"
	"slices"
	"text/tabwriter"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// Scenario is one line configuration of the report.
type Scenario struct {
	Format     Format
	UplinkMbps float64
}

func (s Scenario) String() string {
	return fmt.Sprintf("%s, %s uplink", s.Format, gbe(s.UplinkMbps))
}

func gbe(mbps float64) string { return fmt.Sprintf("%g GbE", mbps/1000) }

// Scenarios are the report's lines: raw on both uplinks, zstd and the
// sparse stream on 1 GbE, and a dd-style writer of the same zstd on 1 GbE
// for comparison.
var Scenarios = []Scenario{{Raw, 10000}, {Raw, 1000}, {Zstd, 1000}, {Sparse, 1000}, {Dense, 1000}}

// BoardCounts are the report's line sizes.
var BoardCounts = []int{1, 4, 8, 16}

// Report runs every scenario for every board count.
func Report(c Constraints, im Image) (map[Scenario][]Result, error) {
	out := map[Scenario][]Result{}
	for _, sc := range Scenarios {
		cc := c
		cc.UplinkMbps = sc.UplinkMbps
		for _, n := range BoardCounts {
			r, err := Simulate(cc, n, im, sc.Format)
			if err != nil {
				return nil, err
			}
			out[sc] = append(out[sc], r)
		}
	}
	return out, nil
}

// WriteTable prints the report: boards per hour, the cycle and its phases,
// bytes on the wire per board, the bottleneck and the uplink's peak use.
func WriteTable(w io.Writer, rep map[Scenario][]Result) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "line\tboards\tboards/h\twith swaps\tcycle s\tvs 1 board\tcycle swapped s\tboot+netboot+kernel s\tdownload+write s\tverify s\tcustomise+reboot s\twire MB/board\tuplink peak\tbottleneck\t")
	for _, sc := range Scenarios {
		rs := rep[sc]
		for _, r := range rs {
			p := r.PerBoard.Phase
			swapped := fmt.Sprintf("%.0f", r.BoardsHourSwapped)
			if r.TechnicianBound {
				swapped += " (technician)"
			}
			fmt.Fprintf(tw, "%s\t%d\t%.0f\t%s\t%.1f\t%.2fx\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t%.0f\t%.0f%%\t%s\t\n", sc, r.Boards, r.BoardsHour, swapped, r.Cycle, r.Cycle/rs[0].Cycle, r.SwappedCycle,
				p["boot"]+p["netboot"]+p["kernel"]+p["pickup"], p["download+write"], p["verify"], p["customise"]+p["reboot"],
				r.PerBoard.WireBytes/MB, 100*r.UplinkUseMax, r.Bottleneck)
		}
	}
	return tw.Flush()
}

// Goal is one of issue 19's targets, checked in the twin.
type Goal struct {
	What string
	Want string
	Got  string
	Met  bool
	Why  string // the constraint that decides it, and by how much
}

// Goals checks the field's terms: 2.6 GB at 40 MB/s eMMC, one board's
// cycle under 2.5 min; 16 boards on 10 GbE within 1.15x of one; 16 boards
// on 1 GbE with zstd within 1.5x.
func Goals(c Constraints, im Image) ([]Goal, error) {
	cc := c.withDefaults()
	one := func(n int, f Format, up float64) (Result, error) {
		x := cc
		x.UplinkMbps = up
		return Simulate(x, n, im, f)
	}
	r1, err := one(1, Raw, 10000)
	if err != nil {
		return nil, err
	}
	r16, _ := one(16, Raw, 10000)
	z1, _ := one(1, Zstd, 1000)
	z16, _ := one(16, Zstd, 1000)
	s1, _ := one(1, Sparse, 1000)
	s16, _ := one(16, Sparse, 1000)
	d1, _ := one(1, Dense, 10000)
	sparseWire, _ := im.bytes(Sparse)
	gs := []Goal{
		{What: "one board, power-on to verified and rebooted", Want: "< 150 s (rpi-sb-provisioner: ~2.5 min)", Got: fmt.Sprintf("%.1f s", r1.Cycle), Met: r1.Cycle < 150,
			Why: fmt.Sprintf("%s: download+write %.1f s of %.1f s", r1.Bottleneck, r1.PerBoard.Phase["download+write"], r1.Cycle)},
		{What: "16 boards, raw, 10 GbE uplink", Want: "<= 1.15x one board", Got: fmt.Sprintf("%.2fx (%.1f s)", r16.Cycle/r1.Cycle, r16.Cycle), Met: r16.Cycle <= 1.15*r1.Cycle,
			Why: fmt.Sprintf("%s; uplink peak %.0f%%", r16.Bottleneck, 100*r16.UplinkUseMax)},
		{What: "16 boards, zstd, 1 GbE uplink", Want: "<= 1.5x one board", Got: fmt.Sprintf("%.2fx (%.1f s)", z16.Cycle/z1.Cycle, z16.Cycle), Met: z16.Cycle <= 1.5*z1.Cycle,
			Why: fmt.Sprintf("%s; needs %.0f MB/s on the wire for 16 boards at eMMC speed, the uplink carries %.0f", z16.Bottleneck,
				16*cc.EMMCWriteMBps*im.ZstdBytes/im.DataBytes, 1000.0/8*cc.TCPEfficiency)},
		{What: "16 boards, sparse stream, 1 GbE uplink (beside the issue's goals)", Want: "<= 1.5x one board", Got: fmt.Sprintf("%.2fx (%.1f s)", s16.Cycle/s1.Cycle, s16.Cycle), Met: s16.Cycle <= 1.5*s1.Cycle,
			Why: fmt.Sprintf("%s; %.0f MB of data per board, uncompressed, against zstd's %.0f MB", s16.Bottleneck, sparseWire/MB, im.ZstdBytes/MB)},
		{What: "an 8-hour shift, 16 slots, zstd, 1 GbE, one technician swapping boards (beside the issue's goals)", Want: "> 650 (rpi-sb-provisioner, 5 heads)",
			Got: fmt.Sprintf("%.0f", 8*z16.BoardsHourSwapped), Met: 8*z16.BoardsHourSwapped > 650,
			Why: swapWhy(z16, cc.SwapS)},
		{What: "one board, every byte written (a dd-style writer, for comparison)", Want: "< 150 s", Got: fmt.Sprintf("%.1f s", d1.Cycle), Met: d1.Cycle < 150,
			Why: fmt.Sprintf("%s: download+write %.1f s", d1.Bottleneck, d1.PerBoard.Phase["download+write"])},
	}
	return gs, nil
}

func swapWhy(r Result, swap float64) string {
	if r.TechnicianBound {
		return fmt.Sprintf("the technician: one swap per %.0f s is %.0f boards/h; the %d slots powered on together do %.0f", swap, 3600/swap, r.Boards, r.BoardsHour)
	}
	return fmt.Sprintf("the bench: %d slots of a %.1f s cycle (staggered by the swaps) plus a %.0f s swap each", r.Boards, r.SwappedCycle, swap)
}

// WriteGoals prints the goals as a table.
func WriteGoals(w io.Writer, gs []Goal) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "goal\twant\ttwin\tmet\tdecided by")
	for _, g := range gs {
		met := "no"
		if g.Met {
			met = "yes"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", g.What, g.Want, g.Got, met, g.Why)
	}
	return tw.Flush()
}

// Plot draws boards per hour against boards on the line, one line per
// scenario powered on together, the zstd 1 GbE line fed by one technician
// (dotted), and the technician's bound (dashed), as a PNG.
func Plot(rep map[Scenario][]Result, title string, w io.Writer) error {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = "boards on the line"
	p.Y.Label.Text = "boards per hour"
	p.Legend.Top = true
	p.Legend.Left = true
	colors := []color.Color{color.RGBA{0x1f, 0x77, 0xb4, 255}, color.RGBA{0xd6, 0x27, 0x28, 255}, color.RGBA{0x2c, 0xa0, 0x2c, 255}, color.RGBA{0xff, 0x7f, 0x0e, 255}, color.RGBA{0x94, 0x67, 0xbd, 255}}
	for i, sc := range Scenarios {
		pts := plotter.XYs{}
		for _, r := range rep[sc] {
			pts = append(pts, plotter.XY{X: float64(r.Boards), Y: r.BoardsHour})
		}
		l, s, err := plotter.NewLinePoints(pts)
		if err != nil {
			return err
		}
		l.Color, s.Color = colors[i%len(colors)], colors[i%len(colors)]
		l.Width = vg.Points(2)
		s.Shape = draw.CircleGlyph{}
		p.Add(l, s)
		p.Legend.Add(sc.String(), l, s)
	}
	// The line fed by one technician, for the scenario the shift goal uses.
	fed := Scenario{Zstd, 1000}
	if rs := rep[fed]; len(rs) > 0 {
		pts := plotter.XYs{}
		for _, r := range rs {
			pts = append(pts, plotter.XY{X: float64(r.Boards), Y: r.BoardsHourSwapped})
		}
		l, err := plotter.NewLine(pts)
		if err != nil {
			return err
		}
		l.Color = colors[slices.Index(Scenarios, fed)%len(colors)] // the colour of its batch line
		l.Dashes = []vg.Length{vg.Points(2), vg.Points(3)}
		l.Width = vg.Points(2)
		p.Add(l)
		p.Legend.Add(fed.String()+", one technician swapping boards", l)
	}
	// The technician's bound: one swap per SwapS, whatever the bench does.
	tech := 0.0
	for _, rs := range rep {
		for _, r := range rs {
			if r.TechnicianBound {
				tech = r.BoardsHourSwapped
			}
		}
	}
	if tech > 0 {
		l, err := plotter.NewLine(plotter.XYs{{X: float64(BoardCounts[0]), Y: tech}, {X: float64(BoardCounts[len(BoardCounts)-1]), Y: tech}})
		if err != nil {
			return err
		}
		l.Dashes = []vg.Length{vg.Points(6), vg.Points(4)}
		l.Width = vg.Points(1.5)
		p.Add(l)
		p.Legend.Add(fmt.Sprintf("the technician's bound (%.0f/h)", tech), l)
	}
	p.Add(plotter.NewGrid())
	wt, err := p.WriterTo(7*vg.Inch, 4*vg.Inch, "png")
	if err != nil {
		return err
	}
	_, err = wt.WriteTo(w)
	return err
}

// Describe is one line about the image, for the report's header.
func (im Image) Describe() string {
	sparse, _ := im.bytes(Sparse)
	return fmt.Sprintf("image %.2f GB raw, %.2f GB in 64 KiB data blocks (%.0f%%), %.2f GB sparse stream, %.2f GB zstd (ratio %.2f)",
		im.RawBytes/1e9, im.DataBytes/1e9, 100*im.DataBytes/im.RawBytes, sparse/1e9, im.ZstdBytes/1e9, im.RawBytes/im.ZstdBytes)
}
