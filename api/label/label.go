// Package label renders a provisioned board's label, a few lines of text
// from its ledger row and a QR code or DataMatrix, to PDF (fpdf) and PNG
// (a preview), and sends it to a printer: any CUPS queue through `lp`, or
// a label printer's raw TCP port (9100) for printers that take PDF there.
package label

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"net"
	"os/exec"
	"strings"
	"text/template"
	"time"

	"codeberg.org/go-pdf/fpdf"
	"github.com/boombuler/barcode"
	"github.com/boombuler/barcode/datamatrix"
	"github.com/boombuler/barcode/qr"
	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/font/gofont/goregular"
	"golang.org/x/image/math/fixed"

	"github.com/cm4bench/cm4bench/internal/contract"
)

// Spec is a recipe's label.
type Spec struct {
	WidthMM  float64  `yaml:"width_mm" json:"width_mm"`
	HeightMM float64  `yaml:"height_mm" json:"height_mm"`
	Lines    []string `yaml:"lines" json:"lines"` // templates over the ledger row
	Code     *Code    `yaml:"code,omitempty" json:"code,omitempty"`
	// Print is "auto" (after every successful deploy) or "button" (the
	// dashboard's Print label; the default).
	Print string `yaml:"print,omitempty" json:"print,omitempty"`
	// Printer is "cups:QUEUE" (lp -d QUEUE; CUPS_SERVER picks the server)
	// or "tcp:HOST:PORT" (raw, usually port 9100).
	Printer string `yaml:"printer,omitempty" json:"printer,omitempty"`
}

// Code is the label's 2-D code.
type Code struct {
	Kind string `yaml:"kind" json:"kind"` // qr or datamatrix
	Data string `yaml:"data" json:"data"` // template, e.g. "{{ .Serial }}"
}

// Rendered is a label's text after its templates ran.
type Rendered struct {
	Lines    []string
	CodeData string
	CodeKind string
}

// Check refuses a label that cannot be printed: sizes, the code kind, the
// printer, and any template that does not render for a sample row (a field
// that does not exist is named).
func (s *Spec) Check() error {
	if s.WidthMM < 10 || s.WidthMM > 300 || s.HeightMM < 10 || s.HeightMM > 300 {
		return fmt.Errorf("label: %gx%g mm: width and height must be 10 to 300 mm", s.WidthMM, s.HeightMM)
	}
	if len(s.Lines) == 0 && s.Code == nil {
		return errors.New("label: give lines, a code or both")
	}
	if len(s.Lines) > 12 {
		return fmt.Errorf("label: %d lines, at most 12", len(s.Lines))
	}
	if s.Code != nil && s.Code.Kind != "qr" && s.Code.Kind != "datamatrix" {
		return fmt.Errorf("label: code kind %q: want qr or datamatrix", s.Code.Kind)
	}
	switch s.Print {
	case "", "auto", "button":
	default:
		return fmt.Errorf("label: print %q: want auto or button", s.Print)
	}
	if _, _, err := printerOf(s.Printer); s.Printer != "" && err != nil {
		return err
	}
	if s.Print == "auto" && s.Printer == "" {
		return errors.New("label: print: auto needs a printer (cups:QUEUE or tcp:HOST:9100)")
	}
	if _, err := s.Render(SampleRow()); err != nil {
		return err
	}
	return nil
}

// SampleRow is the ledger row a label is checked with.
func SampleRow() contract.LedgerRow {
	return contract.LedgerRow{ID: 1, Time: time.Date(2026, 12, 3, 8, 0, 0, 0, time.UTC), Station: "bench-1", MAC: "dc:a6:32:00:00:01",
		MACs: []string{"dc:a6:32:00:00:01"}, Serial: "10000abc", Model: "Raspberry Pi Compute Module 4 Rev 1.1", Revision: "c03141",
		Recipe: "line-a", RecipeVersion: 1, Image: "golden.img", ImageSHA256: strings.Repeat("ab", 32), Result: "done",
		Values: []contract.PoolValue{{Pool: "serials", Value: "SN-0001"}}}
}

// Render runs the templates over a ledger row. {{ value "POOL" }} is the
// row's value from a recipe pool.
func (s *Spec) Render(row contract.LedgerRow) (Rendered, error) {
	funcs := template.FuncMap{"value": func(pool string) (string, error) {
		for _, v := range row.Values {
			if v.Pool == pool {
				return v.Value, nil
			}
		}
		return "", fmt.Errorf("the row has no value from pool %q", pool)
	}, "upper": strings.ToUpper}
	run := func(name, text string) (string, error) {
		t, err := template.New(name).Funcs(funcs).Option("missingkey=error").Parse(text)
		if err != nil {
			return "", fmt.Errorf("label %s: %w", name, err)
		}
		var b bytes.Buffer
		if err := t.Execute(&b, row); err != nil {
			return "", fmt.Errorf("label %s: %w", name, err)
		}
		return b.String(), nil
	}
	var r Rendered
	for i, l := range s.Lines {
		out, err := run(fmt.Sprintf("line %d", i+1), l)
		if err != nil {
			return r, err
		}
		r.Lines = append(r.Lines, out)
	}
	if s.Code != nil {
		out, err := run("code", s.Code.Data)
		if err != nil {
			return r, err
		}
		if out == "" {
			return r, errors.New("label code: renders to nothing")
		}
		r.CodeData, r.CodeKind = out, s.Code.Kind
	}
	return r, nil
}

func (r Rendered) code(px int) (image.Image, error) {
	if r.CodeData == "" {
		return nil, nil
	}
	var c barcode.Barcode
	var err error
	if r.CodeKind == "datamatrix" {
		c, err = datamatrix.Encode(r.CodeData)
	} else {
		c, err = qr.Encode(r.CodeData, qr.M, qr.Auto)
	}
	if err != nil {
		return nil, fmt.Errorf("label code: %w", err)
	}
	return barcode.Scale(c, px, px)
}

// PNG draws the label at dpi (the dashboard's preview).
func PNG(s *Spec, r Rendered, dpi float64) ([]byte, error) {
	w, h := int(s.WidthMM/25.4*dpi), int(s.HeightMM/25.4*dpi)
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	draw.Draw(img, img.Bounds(), image.White, image.Point{}, draw.Src)
	margin := int(2 / 25.4 * dpi)
	x := margin
	if r.CodeData != "" {
		side := h - 2*margin
		code, err := r.code(side)
		if err != nil {
			return nil, err
		}
		draw.Draw(img, image.Rect(margin, margin, margin+side, margin+side), code, image.Point{}, draw.Src)
		x = 2*margin + side
	}
	d := &font.Drawer{Dst: img, Src: image.NewUniform(color.Black), Face: basicfont.Face7x13}
	for i, l := range r.Lines {
		d.Dot = fixed.P(x, margin+13*(i+1))
		d.DrawString(l)
	}
	var b bytes.Buffer
	if err := png.Encode(&b, img); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// PDF lays the label out on one page of its size: the code on the left at
// full height, the lines beside it.
func PDF(s *Spec, r Rendered) ([]byte, error) {
	p := fpdf.NewCustom(&fpdf.InitType{UnitStr: "mm", Size: fpdf.SizeType{Wd: s.WidthMM, Ht: s.HeightMM}})
	p.SetMargins(0, 0, 0)
	p.SetAutoPageBreak(false, 0)
	p.SetCreator("cm4bench", false)
	p.AddPage()
	const margin = 2.0
	x := margin
	if r.CodeData != "" {
		side := s.HeightMM - 2*margin
		code, err := r.code(600)
		if err != nil {
			return nil, err
		}
		var b bytes.Buffer
		if err := png.Encode(&b, code); err != nil {
			return nil, err
		}
		p.RegisterImageOptionsReader("code", fpdf.ImageOptions{ImageType: "PNG"}, &b)
		p.ImageOptions("code", margin, margin, side, side, false, fpdf.ImageOptions{ImageType: "PNG"}, 0, "")
		x = 2*margin + side
	}
	// An embedded TrueType font (Go Regular) keeps the text text through
	// CUPS's PDF -> PostScript -> PDF filters, so the printed PDF still
	// reads back with pdftotext; a core font would become outlines there.
	p.AddUTF8FontFromBytes("go", "", goregular.TTF)
	size := min(10.0, (s.HeightMM-2*margin)/float64(max(1, len(r.Lines)))/0.3528/1.2)
	p.SetFont("go", "", size)
	lh := size * 0.3528 * 1.2
	for i, l := range r.Lines {
		p.SetXY(x, margin+lh*float64(i))
		p.CellFormat(s.WidthMM-x-margin, lh, l, "", 0, "L", false, 0, "")
	}
	var out bytes.Buffer
	if err := p.Output(&out); err != nil {
		return nil, fmt.Errorf("label: PDF: %w", err)
	}
	return out.Bytes(), nil
}

func printerOf(p string) (kind, where string, err error) {
	kind, where, ok := strings.Cut(p, ":")
	switch {
	case ok && kind == "cups" && where != "" && !strings.ContainsAny(where, " /\\#\x00"):
		return kind, where, nil
	case ok && kind == "tcp":
		if _, _, err := net.SplitHostPort(where); err == nil {
			return kind, where, nil
		}
	}
	return "", "", fmt.Errorf("label printer %q: want cups:QUEUE or tcp:HOST:PORT", p)
}

// Print sends a PDF to the printer: "cups:QUEUE" with the label's size as
// the media, or "tcp:HOST:PORT" raw. A printer that is off or
// refuses the job is an error naming it; the caller decides what that
// means (never a failed provisioning).
func Print(ctx context.Context, printer, title string, widthMM, heightMM float64, pdf []byte) error {
	kind, where, err := printerOf(printer)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	switch kind {
	case "cups":
		// The label's size as the media; poppler's pdftops (where the queue
		// converts PDF to PostScript) keeps the fonts as fonts, where
		// ghostscript's ps2write turns them into outlines.
		cmd := exec.CommandContext(ctx, "lp", "-d", where, "-t", title, "-o", fmt.Sprintf("media=Custom.%gx%gmm", widthMM, heightMM),
			"-o", "pdftops-renderer=pdftops", "-")
		cmd.Stdin = bytes.NewReader(pdf)
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("label: CUPS queue %s did not take the job: %v: %s", where, err, strings.TrimSpace(string(out)))
		}
		return nil
	default:
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", where)
		if err != nil {
			return fmt.Errorf("label: printer %s is not answering: %w", where, err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(30 * time.Second))
		if _, err := c.Write(pdf); err != nil {
			return fmt.Errorf("label: printer %s: %w", where, err)
		}
		return nil
	}
}
