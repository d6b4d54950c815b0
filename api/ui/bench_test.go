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
	"github.com/cm4bench/cm4bench/internal/powerswitch"
)

// bench is the real cm4bench HTTP server (api.Server over a fresh SQLite
// store, an image library with a random 4 MiB golden image, and the
// dashboard, api/ui, that it mounts by default) listening on 127.0.0.1.
type bench struct {
	URL   string
	Token string
	API   *api.Server  // the running server (for its one-time login links)
	Store *store.Store // events emitted here reach the dashboard as the DHCP server's would

	dir    string
	golden string
	addr   string
	stop   func() // stops the running server and waits for it

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
	st, err := store.Open(context.Background(), filepath.Join(dir, "cm4bench.db"))
	if err != nil {
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
	b := &bench{Token: tok, Store: st, dir: dir, golden: gp, addr: "127.0.0.1:0"}
	b.serve(t)
	t.Cleanup(func() {
		b.stop()
		st.Close()
	})
	return b
}

// PowerLog is the file the bench's power command appends each MAC to.
func (b *bench) PowerLog() string { return filepath.Join(b.dir, "power-cycles") }

// serve starts a new api.Server on b.addr (the same port after a restart).
func (b *bench) serve(t *testing.T) {
	t.Helper()
	srv := &api.Server{
		Store:        b.Store,
		Images:       &images.Library{Dir: filepath.Join(b.dir, "images"), Default: b.golden, Cache: b.Store},
		DataDir:      b.dir,
		Token:        b.Token,
		Version:      "test",
		PollInterval: 200 * time.Millisecond,
		// The bench's power switch: a real command, recording each board.
		Power: &powerswitch.Command{Shell: `echo "$1" >> ` + b.PowerLog()},
		Rivals: func() []string {
			b.mu.Lock()
			defer b.mu.Unlock()
			return append([]string(nil), b.rivals...)
		},
	}
	ln, err := net.Listen("tcp", b.addr)
	if err != nil {
		t.Fatalf("listen %s: %v", b.addr, err)
	}
	b.addr = ln.Addr().String()
	b.URL = "http://" + b.addr
	srv.AddAddress(b.URL)
	b.API = srv
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	b.stop = func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("server: %v", err)
		}
	}
}

// restart stops the server (closing every stream, as a crash or an upgrade
// would), runs between while it is down, and starts a new one on the same
// address over the same store.
func (b *bench) restart(t *testing.T, between func()) {
	t.Helper()
	b.stop()
	if between != nil {
		between()
	}
	b.serve(t)
}
