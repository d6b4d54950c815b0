package client_test

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cm4bench/cm4bench/api"
	"github.com/cm4bench/cm4bench/api/client"
	"github.com/cm4bench/cm4bench/api/images"
	"github.com/cm4bench/cm4bench/api/store"
	"github.com/cm4bench/cm4bench/internal/contract"
)

// TestClient talks to a real server found through its data dir.
func TestClient(t *testing.T) {
	dir := t.TempDir()
	if _, err := client.FromDataDir(dir); err == nil || !strings.Contains(err.Error(), "netboot serve") {
		t.Errorf("FromDataDir without a server = %v, want a hint to start one", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	st, err := store.Open(ctx, filepath.Join(dir, "cm4bench.db"))
	if err != nil {
		t.Fatal(err)
	}
	tok, _, err := api.LoadOrCreateToken(dir)
	if err != nil {
		t.Fatal(err)
	}
	srv := &api.Server{Store: st, Images: &images.Library{Dir: filepath.Join(dir, "images")}, DataDir: dir, Token: tok}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	defer func() { cancel(); <-done; st.Close() }()

	os.WriteFile(filepath.Join(dir, contract.FileServerInfo), []byte(`{"url": "not json`), 0o644)
	if _, err := client.FromDataDir(dir); err == nil {
		t.Error("FromDataDir accepted a broken server.json")
	}
	// A server.json naming an address that is not this machine's (the demo
	// once wrote its namespace address there) is refused before any request:
	// the admin token never leaves the machine.
	for _, u := range []string{"http://10.61.0.1:5000", "http://example.com:5000", "ftp://127.0.0.1/"} {
		os.WriteFile(filepath.Join(dir, contract.FileServerInfo), []byte(`{"url":"`+u+`"}`), 0o644)
		if _, err := client.FromDataDir(dir); err == nil || !strings.Contains(err.Error(), u) || !strings.Contains(err.Error(), "server.json") {
			t.Errorf("server.json %s: %v, want a refusal naming the URL and the file", u, err)
		}
	}
	if err := client.LocalURL("http://[::1]:5000"); err != nil {
		t.Errorf("IPv6 loopback refused: %v", err)
	}
	if err := client.LocalURL("http://localhost:5000"); err != nil {
		t.Errorf("localhost refused: %v", err)
	}
	// A connection error names the URL and where it came from.
	dead, _ := net.Listen("tcp", "127.0.0.1:0")
	deadURL := "http://" + dead.Addr().String()
	dead.Close()
	os.WriteFile(filepath.Join(dir, contract.FileServerInfo), []byte(`{"url":"`+deadURL+`"}`), 0o644)
	if dc, err := client.FromDataDir(dir); err != nil {
		t.Fatal(err)
	} else if _, err := dc.Devices(ctx); err == nil || !strings.Contains(err.Error(), deadURL) || !strings.Contains(err.Error(), "server.json") {
		t.Errorf("dead server: %v", err)
	}
	os.WriteFile(filepath.Join(dir, contract.FileServerInfo), []byte(`{"url":"http://`+ln.Addr().String()+`","pid":1,"started":"`+time.Now().Format(time.RFC3339)+`"}`), 0o644)
	c, err := client.FromDataDir(dir)
	if err != nil || c.Token != tok {
		t.Fatalf("FromDataDir = %+v, %v", c, err)
	}
	if err := c.SetNetboot(ctx, false); err != nil {
		t.Fatal(err)
	}
	if on, err := c.Netboot(ctx); err != nil || on {
		t.Errorf("Netboot = %v, %v; want off", on, err)
	}
	sw, err := c.SetDeviceNetboot(ctx, "DC-A6-32-01-02-03", false)
	if err != nil || sw.MAC != "dc:a6:32:01:02:03" || sw.Enabled {
		t.Errorf("SetDeviceNetboot = %+v, %v", sw, err)
	}
	devs, err := c.Devices(ctx)
	if err != nil || len(devs) != 1 {
		t.Errorf("Devices = %+v, %v", devs, err)
	}
	_, err = c.SetAction(ctx, "dc:a6:32:01:02:03", contract.ActionDeploy, "")
	var ae *client.Error
	if !errors.As(err, &ae) || ae.Status != 400 || !strings.Contains(ae.Message, "no image") {
		t.Errorf("deploy without any image = %v, want a 400 saying there is no image", err)
	}
	bad := &client.Client{BaseURL: c.BaseURL, Token: "wrong"}
	if _, err := bad.Status(ctx); !errors.As(err, &ae) || ae.Status != 401 {
		t.Errorf("wrong token = %v, want 401", err)
	}
}
