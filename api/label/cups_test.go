package label

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// startCUPS runs a private cupsd (its own config, spool and port on
// loopback, stopped at the end) with a cups-pdf queue whose PDFs land in
// the returned folder. cups-pdf reads the configuration of device
// cups-pdf:/NAME from /etc/cups/cups-pdf-NAME.conf only; the test writes
// that file for its uniquely named queue and removes it afterwards.
func startCUPS(t *testing.T) (queue, out string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("the CUPS test needs root (cupsd and the cups-pdf backend); .ci/run runs as root")
	}
	for _, p := range []string{"cupsd", "lpadmin", "lp", "pdftotext", "pdftoppm", "zbarimg"} {
		if _, err := exec.LookPath(p); err != nil {
			t.Fatalf("%s is missing: scripts/deps.sh installs cups, printer-driver-cups-pdf, poppler-utils and zbar-tools", p)
		}
	}
	const ppd = "/usr/share/ppd/cups-pdf/CUPS-PDF_opt.ppd"
	if _, err := os.Stat(ppd); err != nil {
		t.Fatalf("cups-pdf is missing (%v): scripts/deps.sh installs printer-driver-cups-pdf", err)
	}
	d := t.TempDir()
	// CUPS filters run as the lp user: it must reach the spool.
	os.Chmod(filepath.Dir(d), 0o755)
	os.Chmod(d, 0o755)
	for _, sub := range []string{"etc", "spool/tmp", "log", "cache", "state", "out", "pdfspool"} {
		os.MkdirAll(filepath.Join(d, sub), 0o777)
		os.Chmod(filepath.Join(d, sub), 0o777)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	os.WriteFile(filepath.Join(d, "etc/cupsd.conf"), []byte(`Listen `+addr+`
LogLevel warn
WebInterface No
Browsing Off
DefaultAuthType None
<Location />
  Order allow,deny
  Allow 127.0.0.1
</Location>
<Policy default>
  <Limit All>
    Order deny,allow
  </Limit>
</Policy>
`), 0o644)
	os.WriteFile(filepath.Join(d, "etc/cups-files.conf"), []byte(fmt.Sprintf(`ServerRoot %[1]s/etc
RequestRoot %[1]s/spool
TempDir %[1]s/spool/tmp
CacheDir %[1]s/cache
StateDir %[1]s/state
AccessLog %[1]s/log/access_log
ErrorLog %[1]s/log/error_log
PageLog %[1]s/log/page_log
Printcap /dev/null
`, d)), 0o644)
	queue = fmt.Sprintf("cm4bench-test-%d", os.Getpid())
	out = filepath.Join(d, "out")
	conf := "/etc/cups/cups-pdf-" + queue + ".conf"
	os.WriteFile(conf, []byte(fmt.Sprintf("Out %[1]s/out\nAnonDirName %[1]s/out\nSpool %[1]s/pdfspool\nLog %[1]s/log\nLabel 0\n", d)), 0o644)
	cmd := exec.Command("cupsd", "-f", "-c", filepath.Join(d, "etc/cupsd.conf"), "-s", filepath.Join(d, "etc/cups-files.conf"))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		os.Remove(conf)
	})
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(d, "log/error_log"))
			t.Fatalf("cupsd did not listen on %s:\n%s", addr, log)
		}
	}
	if out, err := exec.Command("lpadmin", "-h", addr, "-p", queue, "-E", "-v", "cups-pdf:/"+queue, "-P", ppd).CombinedOutput(); err != nil {
		t.Fatalf("lpadmin: %v %s", err, out)
	}
	t.Setenv("CUPS_SERVER", addr)
	return queue, out
}

// A real cupsd with the cups-pdf printer receives the label: pdftotext
// finds the serial in the PDF it printed, and zbarimg decodes the QR code
// from it to the exact payload. A queue that does not exist, or one that
// refuses jobs, fails the print with the queue named.
func TestPrintCUPS(t *testing.T) {
	queue, out := startCUPS(t)
	s := spec()
	s.Printer = "cups:" + queue
	r, err := s.Render(SampleRow())
	if err != nil {
		t.Fatal(err)
	}
	pdf, err := PDF(s, r)
	if err != nil {
		t.Fatal(err)
	}
	if err := Print(context.Background(), s.Printer, "label-10000abc", s.WidthMM, s.HeightMM, pdf); err != nil {
		t.Fatal(err)
	}
	// cups-pdf writes the file while ghostscript runs: wait until the
	// printed PDF reads back with the serial on it.
	var printed, text string
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if m, _ := filepath.Glob(filepath.Join(out, "*.pdf")); len(m) > 0 {
			printed = m[0]
			b, _ := exec.Command("pdftotext", printed, "-").Output()
			text = string(b)
			if strings.Contains(text, "10000abc") {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("cups-pdf printed nothing with the serial into %s (%s: %q)", out, printed, text)
		}
	}
	if !strings.Contains(text, "SN-0001") {
		t.Errorf("pdftotext on the printed PDF: %q", text)
	}
	png := filepath.Join(t.TempDir(), "page")
	if o, err := exec.Command("pdftoppm", "-r", "300", "-png", "-singlefile", printed, png).CombinedOutput(); err != nil {
		t.Fatalf("pdftoppm: %v %s", err, o)
	}
	if o, err := exec.Command("zbarimg", "-q", "--raw", png+".png").Output(); err != nil || strings.TrimSpace(string(o)) != "https://factory.example/u/10000abc?mac=dc:a6:32:00:00:01" {
		t.Errorf("zbarimg on the printed label: %q %v", o, err)
	}
	if err := Print(context.Background(), "cups:no-such-queue", "x", 62, 29, pdf); err == nil || !strings.Contains(err.Error(), "no-such-queue") {
		t.Errorf("a missing queue: %v", err)
	}
	if o, err := exec.Command("cupsreject", "-h", os.Getenv("CUPS_SERVER"), queue).CombinedOutput(); err != nil {
		t.Fatalf("cupsreject: %v %s", err, o)
	}
	if err := Print(context.Background(), s.Printer, "x", 62, 29, pdf); err == nil || !strings.Contains(err.Error(), queue) {
		t.Errorf("a queue refusing jobs: %v", err)
	}
}
