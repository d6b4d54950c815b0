package serve_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cm4bench/cm4bench/internal/contract"
	"github.com/cm4bench/cm4bench/netboot/serve"
	"github.com/cm4bench/cm4bench/netboot/sim/nettest"
	"github.com/cm4bench/cm4bench/netboot/sim/pisim"
)

// TestCaptureReadByTsharkAndReplayed: serve --capture records a Pi-like
// client's DHCP exchange and a TFTP transfer at the Pi's blksize; the file
// is a pcap that tshark reads as DHCP and TFTP, and it replays through
// pisim's decoders to the same serial, boot menu and file bytes.
func TestCaptureReadByTsharkAndReplayed(t *testing.T) {
	nettest.Require(t)
	tshark := nettest.RequireTool(t, "tshark")
	nettest.RequireTool(t, "atftp")
	mac, _ := net.ParseMAC(piMAC)
	topo := nettest.New(t, nettest.Options{Prefix: "cbc", ClientMACs: []net.HardwareAddr{mac}})
	dir := t.TempDir()
	tftpRoot := filepath.Join(dir, "tftp")
	os.MkdirAll(tftpRoot, 0o755)
	firmware := []byte(strings.Repeat("start4.elf firmware bytes ", 300)) // 7800 bytes: 8 blocks of 1024
	os.WriteFile(filepath.Join(tftpRoot, "start4.elf"), firmware, 0o644)
	pcapPath := filepath.Join(dir, "bench.pcap")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var b *serve.Bench
	if err := topo.Server.Do(func() error {
		var err error
		b, err = serve.New(ctx, serve.Config{
			Iface: nettest.ServerIface, TFTPRoot: tftpRoot, DataDir: filepath.Join(dir, "data"),
			HTTPAddr: "10.42.0.1:5000", Capture: pcapPath,
			Logger: slog.New(slog.NewTextHandler(tlogWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
		})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	served := make(chan error, 1)
	go func() { served <- topo.Server.Do(func() error { return b.Serve(ctx) }) }()
	select {
	case <-b.Ready():
	case err := <-served:
		t.Fatalf("bench stopped: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("bench not ready")
	}
	env := udhcpc(t, topo.Clients[0])
	if env["opt43"] != menuHex {
		t.Fatalf("lease without the boot menu: %q", env["opt43"])
	}
	// Security item 9: the bench address serves the device API only; the
	// technician API answers there 403 even with the token.
	curl := nettest.RequireTool(t, "curl")
	tok := b.Token()
	code := topo.Clients[0].Run(t, curl, "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Authorization: Bearer "+tok, "http://10.42.0.1:5000/api/v1/status")
	if strings.TrimSpace(code) != "403" {
		t.Errorf("technician API on the bench address = %s, want 403", code)
	}
	code = topo.Clients[0].Run(t, curl, "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://10.42.0.1:5000/metrics")
	if strings.TrimSpace(code) != "403" {
		t.Errorf("/metrics on the bench address = %s, want 403", code) // security item 13
	}
	code = topo.Clients[0].Run(t, curl, "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "-d", `{"mac":"`+piMAC+`"}`, "http://10.42.0.1:5000"+contract.PathRegister)
	if strings.TrimSpace(code) != "200" {
		t.Errorf("device API on the bench address = %s, want 200", code)
	}
	got := filepath.Join(t.TempDir(), "start4.elf")
	topo.Clients[0].Run(t, "atftp", "--option", "tsize 0", "--option", "blksize 1024", "-g", "-r", "start4.elf", "-l", got, "10.42.0.1")
	if _, err := os.Stat(pcapPath + ".partial"); err != nil {
		t.Errorf("no .partial file while capturing: %v", err)
	}
	cancel()
	if err := <-served; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if _, err := os.Stat(pcapPath); err != nil {
		t.Fatalf("capture not finished: %v", err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "data")); err != nil || fi.Mode().Perm() != 0o750 {
		t.Errorf("data dir mode %v (%v), want 0750", fi.Mode(), err) // security item 12
	}
	if _, err := os.Stat(pcapPath + ".partial"); err == nil {
		t.Error(".partial left after a clean stop")
	}

	// tshark, the outside oracle, reads it as DHCP and TFTP.
	out, err := exec.Command(tshark, "-r", pcapPath, "-T", "fields", "-e", "frame.protocols", "-e", "dhcp.option.dhcp", "-e", "tftp.source_file").CombinedOutput()
	if err != nil {
		t.Fatalf("tshark: %v\n%s", err, out)
	}
	text := string(out)
	for _, want := range []string{"dhcp", "tftp", "start4.elf"} {
		if !strings.Contains(text, want) {
			t.Errorf("tshark output lacks %q:\n%s", want, text)
		}
	}
	var types []string
	for _, l := range strings.Split(text, "\n") {
		if f := strings.Split(l, "\t"); len(f) >= 2 && f[1] != "" {
			types = append(types, f[1])
		}
	}
	// DISCOVER (1), OFFER (2), REQUEST (3), ACK (5): the rival probe adds a DISCOVER of its own.
	if j := strings.Join(types, ","); !strings.Contains(j, "1") || !strings.Contains(j, "2") || !strings.Contains(j, "3") || !strings.Contains(j, "5") {
		t.Errorf("DHCP message types in the capture: %v", types)
	}

	// pisim's decoders replay it.
	f, err := os.Open(pcapPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sum, err := pisim.ReplayCapture(f, "")
	if err != nil {
		t.Fatal(err)
	}
	board := sum.Boards[piMAC]
	if board == nil || board.Serial != "abcd1234" || !board.Menu || board.Offers == 0 || board.Acks == 0 || board.Server.String() != "10.42.0.1" {
		t.Fatalf("replayed board %+v (all: %v)", board, sum.Boards)
	}
	want := sha256.Sum256(firmware)
	found := false
	for _, tr := range sum.Transfers {
		if tr.Name == "start4.elf" && tr.Complete && tr.SHA256 == hex.EncodeToString(want[:]) && tr.Options["blksize"] == "1024" && tr.OACK["blksize"] == "1024" {
			found = true
		}
	}
	if !found {
		for _, tr := range sum.Transfers {
			t.Logf("transfer %+v", *tr)
		}
		t.Fatal("the start4.elf transfer does not replay to the file served")
	}
}
