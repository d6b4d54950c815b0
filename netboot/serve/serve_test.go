package serve_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/cm4bench/cm4bench/internal/contract"
	"github.com/cm4bench/cm4bench/netboot/serve"
	"github.com/cm4bench/cm4bench/netboot/sim/nettest"
)

// The Pi 4 bootloader's DHCP identity (netboot.md §6.2), for busybox udhcpc.
const (
	piMAC    = "dc:a6:32:01:36:c2"
	piGUID   = "0052506934414131c0320136c23412cdab"
	piVendor = "PXEClient:Arch:00000:UNDI:002001"
	menuHex  = "0601030a0400505845091400001152617370626572727920506920426f6f74ff"
)

type tlogWriter struct{ t *testing.T }

func (w tlogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// udhcpc runs busybox udhcpc in c with the Pi's options; its script
// configures the address (so curl can reach the server) and dumps the lease.
func udhcpc(t *testing.T, c *nettest.NS) map[string]string {
	t.Helper()
	nettest.RequireTool(t, "busybox")
	dir := t.TempDir()
	script, out := filepath.Join(dir, "lease.sh"), filepath.Join(dir, "env")
	body := "#!/bin/sh\nif [ \"$1\" = bound ]; then env > " + out + "; busybox ifconfig \"$interface\" \"$ip\" netmask \"$subnet\" up; fi\nexit 0\n"
	os.WriteFile(script, []byte(body), 0o755)
	c.Run(t, "busybox", "udhcpc", "-i", c.Iface, "-f", "-q", "-n", "-t", "4", "-T", "2", "-C", "-s", script,
		"-O", "43", "-O", "66", "-O", "97", "-V", piVendor, "-x", "0x5d:0000", "-x", "0x5e:010201", "-x", "0x61:"+piGUID)
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatalf("udhcpc got no lease: %v", err)
	}
	env := map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			env[k] = v
		}
	}
	return env
}

// TestBenchInNamespace runs the whole composed bench (DHCP, TFTP, HTTP) in a
// bench namespace. A Pi-like client gets the boot menu, the original
// curl+dd shell client deploys through the real server over the link, and
// afterwards the same client's DHCP answer carries no menu.
func TestBenchInNamespace(t *testing.T) {
	nettest.Require(t)
	mac, _ := net.ParseMAC(piMAC)
	topo := nettest.New(t, nettest.Options{Prefix: "cba", ClientMACs: []net.HardwareAddr{mac}})
	dir := t.TempDir()
	tftpRoot := filepath.Join(dir, "tftp")
	os.MkdirAll(tftpRoot, 0o755)
	os.WriteFile(filepath.Join(tftpRoot, "start4.elf"), []byte("firmware"), 0o644)
	golden := make([]byte, 5<<20+3)
	rand.Read(golden)
	img := filepath.Join(dir, "golden.img")
	os.WriteFile(img, golden, 0o644)

	ctx, cancel := context.WithCancel(context.Background())
	var b *serve.Bench
	newErr := topo.Server.Do(func() error { // the interface lives in the namespace
		var err error
		b, err = serve.New(ctx, serve.Config{
			Iface: nettest.ServerIface, TFTPRoot: tftpRoot, DataDir: filepath.Join(dir, "data"), Image: img,
			HTTPAddr: "10.42.0.1:5000", PollInterval: 100 * time.Millisecond,
			Logger: slog.New(slog.NewTextHandler(tlogWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
		})
		return err
	})
	if newErr != nil {
		cancel()
		t.Fatal(newErr)
	}
	served := make(chan error, 1)
	go func() { served <- topo.Server.Do(func() error { return b.Serve(ctx) }) }()
	stopped := false
	t.Cleanup(func() {
		cancel()
		if !stopped {
			if err := <-served; err != nil {
				t.Errorf("Serve: %v", err)
			}
		}
		b.Close()
	})
	select {
	case <-b.Ready():
	case err := <-served:
		stopped = true
		t.Fatalf("bench stopped: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("bench not ready")
	}
	// Goroutines of the bench must not have leaked the namespace into
	// this thread.
	runtime.Gosched()

	env := udhcpc(t, topo.Clients[0])
	if env["opt43"] != menuHex || env["siaddr"] != "10.42.0.1" {
		t.Fatalf("first lease: opt43=%q siaddr=%q, want the boot menu from 10.42.0.1", env["opt43"], env["siaddr"])
	}

	// The original shell client, over the link, with curl and dd.
	disk := filepath.Join(t.TempDir(), "mmcblk0")
	wd, _ := os.Getwd()
	clientScript := filepath.Join(wd, "..", "..", "api", "testdata", "provisioning-client.sh")
	cmd := topo.Clients[0].Command(ctx, "busybox", "sh", clientScript)
	cmd.Env = append(os.Environ(), "SERVER=http://10.42.0.1:5000", "MAC="+piMAC, "IP="+env["ip"], "DISK="+disk, "MAX_ACTIONS=1", "POLL=0.1")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	st := b.Store()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := st.Device(ctx, piMAC); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("device never registered:\n%s", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The technician clicks Deploy (an in-process API request with the token).
	req := httptest.NewRequest("POST", "/api/v1/devices/"+piMAC+"/action", strings.NewReader(`{"action":"deploy"}`))
	req.Host = "10.42.0.1:5000"
	req.Header.Set("Authorization", "Bearer "+b.Token())
	rec := httptest.NewRecorder()
	b.API().Handler().ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		t.Fatalf("set action = %d %s", rec.Code, rec.Body)
	}
	var a contract.Action
	json.Unmarshal(rec.Body.Bytes(), &a)
	waitErr := make(chan error, 1)
	go func() { waitErr <- cmd.Wait() }()
	select {
	case err := <-waitErr:
		if err != nil {
			t.Fatalf("client: %v\n%s", err, out.String())
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("client did not finish:\n%s", out.String())
	}
	got, _ := os.ReadFile(disk)
	if !bytes.Equal(got, golden) {
		t.Fatalf("disk: %d bytes, want the %d-byte image\n%s", len(got), len(golden), out.String())
	}
	done, err := st.ActionByID(ctx, a.ID)
	if err != nil || done.State != contract.StateDone {
		t.Fatalf("action = %+v, %v", done, err)
	}
	if st.NetbootEnabled(mac) {
		t.Error("Policy still enables netboot after the deploy")
	}

	// The board reboots: its next DHCP answer is a plain lease, no menu.
	topo.Clients[0].Run(t, "ip", "addr", "flush", "dev", topo.Clients[0].Iface)
	env = udhcpc(t, topo.Clients[0])
	if env["ip"] == "" || env["opt43"] != "" {
		t.Errorf("lease after deploy: ip=%q opt43=%q, want a lease without the boot menu", env["ip"], env["opt43"])
	}
	// DHCP and TFTP events reached the store (and so SSE and metrics).
	evs, _ := st.Events(ctx, 0, 1000)
	kinds := map[string]int{}
	for _, e := range evs {
		kinds[e.Kind]++
	}
	if kinds["dhcp.ack"] < 2 || kinds[contract.EventActionDone] != 1 {
		t.Errorf("event kinds = %v", kinds)
	}
}

// TestFirstErrorStopsAll: when one server cannot run (TFTP's port is taken
// in the bench namespace), Serve returns its error and the HTTP server it
// had started is stopped too.
func TestFirstErrorStopsAll(t *testing.T) {
	nettest.Require(t)
	topo := nettest.New(t, nettest.Options{Prefix: "cba"})
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		errc <- topo.Server.Do(func() error {
			busy, err := net.ListenPacket("udp4", "10.42.0.1:69")
			if err != nil {
				return err
			}
			defer busy.Close()
			b, err := serve.New(ctx, serve.Config{Iface: nettest.ServerIface, NoDHCP: true, TFTPRoot: dir,
				DataDir: filepath.Join(dir, "data"), HTTPAddr: "10.42.0.1:5000"})
			if err != nil {
				return err
			}
			defer b.Close()
			return b.Serve(ctx)
		})
	}()
	select {
	case err := <-errc:
		if err == nil || !strings.Contains(err.Error(), "tftp") {
			t.Fatalf("Serve = %v, want the TFTP error", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Serve kept running after TFTP failed")
	}
	if _, err := os.Stat(filepath.Join(dir, "data", contract.FileServerInfo)); !os.IsNotExist(err) {
		t.Errorf("server.json left behind: %v", err)
	}
}
