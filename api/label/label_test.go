package label

import (
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func spec() *Spec {
	return &Spec{WidthMM: 62, HeightMM: 29, Lines: []string{"SN {{ value \"serials\" }}", "{{ .Serial }}", "{{ .MAC }}", "{{ .Recipe }} v{{ .RecipeVersion }}"},
		Code: &Code{Kind: "qr", Data: "https://factory.example/u/{{ .Serial }}?mac={{ .MAC }}"}}
}

// The PDF carries the text (pdftotext finds it) and a QR code that zbarimg
// decodes, from the PDF itself rasterised by pdftoppm, to the exact payload.
func TestLabelPDFAndPNG(t *testing.T) {
	s := spec()
	if err := s.Check(); err != nil {
		t.Fatal(err)
	}
	row := SampleRow()
	r, err := s.Render(row)
	if err != nil {
		t.Fatal(err)
	}
	pdf, err := PDF(s, r)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	pf := filepath.Join(dir, "label.pdf")
	os.WriteFile(pf, pdf, 0o644)
	text, err := exec.Command("pdftotext", pf, "-").Output()
	if err != nil || !strings.Contains(string(text), "SN SN-0001") || !strings.Contains(string(text), "10000abc") || !strings.Contains(string(text), "line-a v1") {
		t.Errorf("pdftotext: %q %v", text, err)
	}
	want := "https://factory.example/u/10000abc?mac=dc:a6:32:00:00:01"
	if out, err := exec.Command("pdftoppm", "-r", "300", "-png", "-singlefile", pf, filepath.Join(dir, "page")).CombinedOutput(); err != nil {
		t.Fatalf("pdftoppm: %v %s", err, out)
	}
	if out, err := exec.Command("zbarimg", "-q", "--raw", filepath.Join(dir, "page.png")).Output(); err != nil || strings.TrimSpace(string(out)) != want {
		t.Errorf("zbarimg on the printed PDF: %q %v, want %q", out, err, want)
	}
	pngb, err := PNG(s, r, 300)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "preview.png"), pngb, 0o644)
	if out, err := exec.Command("zbarimg", "-q", "--raw", filepath.Join(dir, "preview.png")).Output(); err != nil || strings.TrimSpace(string(out)) != want {
		t.Errorf("zbarimg on the preview: %q %v", out, err)
	}
	dm := spec()
	dm.Code.Kind = "datamatrix"
	r2, _ := dm.Render(row)
	if _, err := PDF(dm, r2); err != nil {
		t.Errorf("DataMatrix label: %v", err)
	}
}

func TestLabelRefused(t *testing.T) {
	for _, tc := range []struct {
		edit func(*Spec)
		want string
	}{
		{func(s *Spec) { s.Lines = append(s.Lines, "{{ .Hostname }}") }, "can't evaluate field Hostname"},
		{func(s *Spec) { s.Lines = append(s.Lines, `{{ value "macs" }}`) }, `no value from pool "macs"`},
		{func(s *Spec) { s.WidthMM = 2 }, "10 to 300 mm"},
		{func(s *Spec) { s.Code.Kind = "aztec" }, "qr or datamatrix"},
		{func(s *Spec) { s.Printer = "lpt1" }, "cups:QUEUE or tcp:HOST:PORT"},
		{func(s *Spec) { s.Print = "auto" }, "needs a printer"},
		{func(s *Spec) { s.Print = "sometimes" }, "auto or button"},
	} {
		s := spec()
		tc.edit(s)
		if err := s.Check(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", s, err, tc.want)
		}
	}
}

// Raw TCP: the printer's port receives the PDF; a printer that is off is
// named in the error.
func TestPrintRawTCP(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		b, _ := io.ReadAll(c)
		got <- b
	}()
	pdf := []byte("%PDF-1.3 test")
	if err := Print(context.Background(), "tcp:"+ln.Addr().String(), "t", 62, 29, pdf); err != nil {
		t.Fatal(err)
	}
	if b := <-got; !bytes.Equal(b, pdf) {
		t.Errorf("printer got %q", b)
	}
	addr := ln.Addr().String()
	ln.Close()
	if err := Print(context.Background(), "tcp:"+addr, "t", 62, 29, pdf); err == nil || !strings.Contains(err.Error(), "is not answering") {
		t.Errorf("printer off: %v", err)
	}
}
