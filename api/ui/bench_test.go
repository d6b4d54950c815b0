package ui_test

import (
	"context"
	"crypto/rand"
	"errors"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/cm4bench/cm4bench/api"
	"github.com/cm4bench/cm4bench/api/images"
	"github.com/cm4bench/cm4bench/api/store"
)

// bench is the real cm4bench HTTP server (api.Server over a fresh SQLite
// store, an image library with a random 4 MiB golden image, and the
// dashboard, api/ui, that it mounts by default) listening on 127.0.0.1.
type bench struct {
	URL   string
	Token string
	Store *store.Store // events emitted here reach the dashboard as the DHCP server's would

	mu     sync.Mutex
	rivals []string
}

// setRivals sets what the server reports as rival DHCP servers.
func (b *bench) setRivals(r ...string) {
	b.mu.Lock()
	b.rivals = r
	b.mu.Unlock()
}

func startBench(t *testing.T) *bench {
	t.Helper()
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	st, err := store.Open(ctx, filepath.Join(dir, "cm4bench.db"))
	if err != nil {
		cancel()
		t.Fatalf("open store: %v", err)
	}
	golden := make([]byte, 4<<20)
	rand.Read(golden)
	gp := filepath.Join(dir, "golden.img")
	if err := os.WriteFile(gp, golden, 0o644); err != nil {
		t.Fatal(err)
	}
	tok, created, err := api.LoadOrCreateToken(dir)
	if err != nil || !created {
		t.Fatalf("admin token: created=%v err=%v", created, err)
	}
	b := &bench{Token: tok, Store: st}
	srv := &api.Server{
		Store:        st,
		Images:       &images.Library{Dir: filepath.Join(dir, "images"), Default: gp, Cache: st},
		DataDir:      dir,
		Token:        tok,
		Version:      "test",
		PollInterval: 200 * time.Millisecond,
		Rivals: func() []string {
			b.mu.Lock()
			defer b.mu.Unlock()
			return append([]string(nil), b.rivals...)
		},
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b.URL = "http://" + ln.Addr().String()
	srv.AddAddress(b.URL)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("server: %v", err)
		}
		st.Close()
	})
	return b
}
