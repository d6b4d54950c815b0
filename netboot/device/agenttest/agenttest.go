// Package agenttest runs the real cm4bench API server (package api, with a
// SQLite store and an image library in a temporary directory) in-process
// for the agent's tests, end-to-end test and benchmarks, and drives it
// through the technician API like the dashboard does. Only tests import it.
package agenttest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cm4bench/cm4bench/api"
	"github.com/cm4bench/cm4bench/api/images"
	"github.com/cm4bench/cm4bench/api/store"
	"github.com/cm4bench/cm4bench/internal/contract"
)

// Tech drives a running server through the technician API, as the
// dashboard does.
type Tech struct {
	URL   string // base URL, e.g. http://127.0.0.1:41234
	Token string // admin token
}

// Bench is a running server.
type Bench struct {
	Tech
	Addr   string // host:port it listens on
	Data   string // data directory (backups under Data/backups)
	Images string // image library directory
	Store  *store.Store
	Server *api.Server
}

// Start starts a server listening on addr ("127.0.0.1:0" for any port) and
// stops it when the test ends.
func Start(tb testing.TB, addr string) *Bench {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	data := tb.TempDir()
	st, err := store.Open(ctx, filepath.Join(data, "cm4bench.db"))
	if err != nil {
		tb.Fatalf("agenttest: open store: %v", err)
	}
	tok, _, err := api.LoadOrCreateToken(data)
	if err != nil {
		tb.Fatalf("agenttest: token: %v", err)
	}
	lib := &images.Library{Dir: filepath.Join(data, "images"), Cache: st}
	if err := os.MkdirAll(lib.Dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	srv := &api.Server{Store: st, Images: lib, DataDir: data, Token: tok, PollInterval: 200 * time.Millisecond}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		tb.Fatalf("agenttest: listen: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	tb.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				tb.Logf("agenttest: server: %v", err)
			}
		case <-time.After(10 * time.Second):
			tb.Errorf("agenttest: server did not stop")
		}
		st.Close()
	})
	b := &Bench{Tech: Tech{URL: "http://" + ln.Addr().String(), Token: tok}, Addr: ln.Addr().String(), Data: data, Images: lib.Dir, Store: st, Server: srv}
	b.AddAddress(b.URL)
	return b
}

// AddAddress tells the server another base URL it is reachable at (the
// address a QEMU guest uses, for example).
func (b *Bench) AddAddress(u string) { b.Server.AddAddress(u) }

// AddImage uploads an image through the technician API (POST
// /api/v1/images?name=NAME) and returns what the server computed.
func (b *Tech) AddImage(tb testing.TB, name string, data io.Reader) contract.Image {
	tb.Helper()
	var img contract.Image
	b.Do(tb, http.MethodPost, "/api/v1/images?name="+name, data, &img)
	return img
}

// SetAction asks for a deploy (of image) or backup of mac, as the
// dashboard's buttons do.
func (b *Tech) SetAction(tb testing.TB, mac, action, image string) contract.Action {
	tb.Helper()
	body, _ := json.Marshal(map[string]string{"action": action, "image": image})
	var a contract.Action
	b.Do(tb, http.MethodPost, "/api/v1/devices/"+mac+"/action", bytes.NewReader(body), &a)
	return a
}

// Device returns the device with its recent actions.
func (b *Tech) Device(tb testing.TB, mac string) contract.Device {
	tb.Helper()
	var d contract.Device
	b.Do(tb, http.MethodGet, "/api/v1/devices/"+mac, nil, &d)
	return d
}

// Backups lists the stored backups.
func (b *Tech) Backups(tb testing.TB) []contract.Backup {
	tb.Helper()
	var bs []contract.Backup
	b.Do(tb, http.MethodGet, "/api/v1/backups", nil, &bs)
	return bs
}

// DownloadBackup returns a stored backup as the technician API serves it.
func (b *Tech) DownloadBackup(tb testing.TB, id string) []byte {
	tb.Helper()
	req, _ := http.NewRequest(http.MethodGet, b.URL+"/api/v1/backups/"+id+"/download", nil)
	req.Header.Set("Authorization", "Bearer "+b.Token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatalf("agenttest: download backup: %v", err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		tb.Fatalf("agenttest: download backup: HTTP %d, %v", resp.StatusCode, err)
	}
	return out
}

// WaitRegistered waits until mac has registered.
func (b *Tech) WaitRegistered(tb testing.TB, mac string, timeout time.Duration) contract.Device {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		req, _ := http.NewRequest(http.MethodGet, b.URL+"/api/v1/devices/"+mac, nil)
		req.Header.Set("Authorization", "Bearer "+b.Token)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			var d contract.Device
			ok := resp.StatusCode == http.StatusOK && json.NewDecoder(resp.Body).Decode(&d) == nil
			resp.Body.Close()
			if ok {
				return d
			}
		}
		if time.Now().After(deadline) {
			tb.Fatalf("agenttest: %s did not register within %s", mac, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// WaitAction waits until the action id of mac is finished (done, failed or
// cancelled) and returns it.
func (b *Tech) WaitAction(tb testing.TB, mac, id string, timeout time.Duration) contract.Action {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		d := b.Device(tb, mac)
		for _, a := range append(d.Actions, deref(d.Action)...) {
			if a.ID == id && a.State != contract.StatePending && a.State != contract.StateRunning {
				return a
			}
		}
		if time.Now().After(deadline) {
			tb.Fatalf("agenttest: action %s of %s not finished within %s", id, mac, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func deref(a *contract.Action) []contract.Action {
	if a == nil {
		return nil
	}
	return []contract.Action{*a}
}

// Do makes a technician request and decodes a JSON answer into out.
func (b *Tech) Do(tb testing.TB, method, path string, body io.Reader, out any) {
	tb.Helper()
	req, err := http.NewRequest(method, b.URL+path, body)
	if err != nil {
		tb.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+b.Token)
	if body != nil && strings.HasPrefix(path, "/api/v1/devices") {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatalf("agenttest: %s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		tb.Fatalf("agenttest: %s %s: HTTP %d: %s", method, path, resp.StatusCode, raw)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			tb.Fatalf("agenttest: %s %s: decode %q: %v", method, path, raw, err)
		}
	}
}

// CutProxy is a TCP proxy in front of a server that drops each client
// connection once it has forwarded CutAfter bytes from the server, for the
// first Cuts connections that get that far.
type CutProxy struct {
	URL      string
	CutAfter int64
	cuts     chan struct{}
	ln       net.Listener
}

// StartCutProxy proxies to the host:port target.
func StartCutProxy(tb testing.TB, target string, cutAfter int64, cuts int) *CutProxy {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	p := &CutProxy{URL: "http://" + ln.Addr().String(), CutAfter: cutAfter, cuts: make(chan struct{}, cuts), ln: ln}
	for range cuts {
		p.cuts <- struct{}{}
	}
	tb.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.serve(c, target)
		}
	}()
	return p
}

// Cuts is how many cuts are still to come.
func (p *CutProxy) Cuts() int { return len(p.cuts) }

func (p *CutProxy) serve(c net.Conn, target string) {
	defer c.Close()
	up, err := net.Dial("tcp", target)
	if err != nil {
		return
	}
	defer up.Close()
	go func() { io.Copy(up, c); up.(*net.TCPConn).CloseWrite() }()
	buf := make([]byte, 32<<10)
	var n int64
	for {
		k, err := up.Read(buf)
		if k > 0 {
			if n+int64(k) > p.CutAfter {
				select {
				case <-p.cuts:
					// Forward up to the cut point, then reset the connection.
					c.Write(buf[:p.CutAfter-n])
					if tc, ok := c.(*net.TCPConn); ok {
						tc.SetLinger(0)
					}
					return
				default:
				}
			}
			if _, werr := c.Write(buf[:k]); werr != nil {
				return
			}
			n += int64(k)
		}
		if err != nil {
			return
		}
	}
}

// String describes the bench (for logs).
func (b *Bench) String() string { return fmt.Sprintf("cm4bench api at %s (data %s)", b.URL, b.Data) }

// ThrottleProxy is a TCP proxy that paces the server-to-client direction
// of each connection to a fixed rate, to give loopback the shape of a bench
// link (1 GbE carries about 117 MB/s of TCP payload). Uploads pass unpaced.
type ThrottleProxy struct {
	URL string
	ln  net.Listener
}

// StartThrottleProxy proxies to the host:port target at bytesPerSec.
func StartThrottleProxy(tb testing.TB, target string, bytesPerSec float64) *ThrottleProxy {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				up, err := net.Dial("tcp", target)
				if err != nil {
					return
				}
				defer up.Close()
				go func() { io.Copy(up, c); up.(*net.TCPConn).CloseWrite() }()
				buf := make([]byte, 256<<10)
				// Each chunk may leave at next; idle time earns no credit
				// (a kept-alive connection is paced like a new one).
				next := time.Now()
				for {
					k, err := up.Read(buf)
					if k > 0 {
						if now := time.Now(); now.Sub(next) > 50*time.Millisecond {
							next = now // idle: restart the schedule
						}
						next = next.Add(time.Duration(float64(k) / bytesPerSec * float64(time.Second)))
						if d := time.Until(next); d > 2*time.Millisecond {
							time.Sleep(d) // oversleeping is caught up on later chunks
						}
						if _, werr := c.Write(buf[:k]); werr != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	return &ThrottleProxy{URL: "http://" + ln.Addr().String(), ln: ln}
}
