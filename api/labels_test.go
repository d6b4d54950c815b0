package api_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cm4bench/cm4bench/internal/contract"
	"github.com/cm4bench/cm4bench/netboot/bootfs/bootfstest"
)

// Labels: an auto-print recipe prints each provisioned board's label on
// its printer (here a raw TCP port: pdftotext reads the serial from the PDF
// it received); the preview decodes with zbarimg; an offline printer fails
// the print, says so, and leaves the board provisioned.
func TestLabelsPrintAndFail(t *testing.T) {
	dir := t.TempDir()
	golden := filepath.Join(dir, "golden.img")
	if _, err := bootfstest.Make(golden, bootfstest.Disk{StartMiB: 1, BootMiB: 2, FAT: 12, RootMiB: 1, Seed: 11}); err != nil {
		t.Fatal(err)
	}
	gb, _ := os.ReadFile(golden)
	b := startServer(t, dir, golden)
	printer, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer printer.Close()
	jobs := make(chan []byte, 4)
	go func() {
		for {
			c, err := printer.Accept()
			if err != nil {
				return
			}
			data, _ := io.ReadAll(c)
			c.Close()
			jobs <- data
		}
	}()
	dead, _ := net.Listen("tcp", "127.0.0.1:0")
	deadAddr := dead.Addr().String()
	dead.Close()
	recipe := func(name, printerAddr, extra string) string {
		return fmt.Sprintf(`name: %s
image: golden.img
sha256: %s
files:
  - path: serial.txt
    template: "{{ .Serial }}\n"
label:
  width_mm: 62
  height_mm: 29
  lines: ["SN {{ .Serial }}", "{{ .MAC }}", "{{ .Recipe }} v{{ .RecipeVersion }}"]
  code: {kind: qr, data: "{{ .Serial }}/{{ .MAC }}"}
  print: auto
  printer: tcp:%s
%s`, name, sha(gb), printerAddr, extra)
	}
	if code, out := b.call("PUT", "/api/v1/recipes", []byte(strings.Replace(recipe("bad", printer.Addr().String(), ""), "{{ .Serial }}\"", "{{ .Hostname }}\"", 1)), b.token); code != 400 || !strings.Contains(string(out), "Hostname") {
		t.Errorf("a label with a missing field = %d %s", code, out)
	}
	b.admin("PUT", "/api/v1/recipes", []byte(recipe("ok", printer.Addr().String(), "")+"---\n"+recipe("off", deadAddr, "")), 200, nil)

	provision := func(mac, serial, rcp string) contract.Action {
		t.Helper()
		body := fmt.Sprintf(`{"mac":%q,"ip":"127.0.0.1","facts":{"serial":%q,"emmc_bytes":%d}}`, mac, serial, 1<<30)
		if code, out := b.call("POST", contract.PathRegister, []byte(body), ""); code != 200 {
			t.Fatalf("register = %d %s", code, out)
		}
		b.admin("POST", "/api/v1/devices/"+mac+"/action", contract.SetActionRequest{Action: "deploy", Recipe: rcp}, 200, nil)
		return b.finishRecipe(mac, b.poll(mac), sha(gb), nil)
	}
	a := provision("dc:a6:32:00:d0:01", "1000d001", "ok")
	select {
	case pdf := <-jobs:
		pf := filepath.Join(dir, "printed.pdf")
		os.WriteFile(pf, pdf, 0o644)
		text, err := exec.Command("pdftotext", pf, "-").Output()
		if err != nil || !strings.Contains(string(text), "SN 1000d001") || !strings.Contains(string(text), "ok v1") {
			t.Errorf("the printed label: %q %v", text, err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the printer received no label")
	}
	code, png := b.call("GET", "/api/v1/actions/"+a.ID+"/label.png", nil, b.token)
	pp := filepath.Join(dir, "preview.png")
	os.WriteFile(pp, png, 0o644)
	if out, err := exec.Command("zbarimg", "-q", "--raw", pp).Output(); code != 200 || err != nil || strings.TrimSpace(string(out)) != "1000d001/dc:a6:32:00:d0:01" {
		t.Errorf("label.png = %d; zbarimg %q %v", code, out, err)
	}

	off := provision("dc:a6:32:00:d0:02", "1000d002", "off")
	if off.State != contract.StateDone {
		t.Fatalf("a board whose label printer is off: %s %q", off.State, off.Error)
	}
	code, out := b.call("POST", "/api/v1/actions/"+off.ID+"/label/print", nil, b.token)
	if code != 502 || !strings.Contains(string(out), "the board itself is provisioned") || !strings.Contains(string(out), deadAddr) {
		t.Errorf("print to an offline printer = %d %s", code, out)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		var evs []contract.Event
		b.admin("GET", "/api/v1/events?limit=200", nil, 200, &evs)
		warned := 0
		for _, e := range evs {
			if e.Kind == contract.EventLabelPrinted && e.Level == contract.LevelWarn && e.MAC == "dc:a6:32:00:d0:02" {
				warned++
			}
		}
		if warned >= 2 { // the automatic print and the button
			break
		}
		if time.Now().After(deadline) {
			j, _ := json.Marshal(evs)
			t.Fatalf("no label warning events for the offline printer: %s", j)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if code, _ := b.call("GET", "/api/v1/actions/999/label.pdf", nil, b.token); code != 404 {
		t.Errorf("label of an unknown job = %d", code)
	}
}
