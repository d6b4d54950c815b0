package tftp_test

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/cm4bench/cm4bench/internal/contract"
	"github.com/cm4bench/cm4bench/netboot/sim/nettest"
	"github.com/cm4bench/cm4bench/netboot/tftp"
)

// serveIn runs srv on addr inside ns until the test ends. The socket is
// open when serveIn returns.
func serveIn(t testing.TB, ns *nettest.NS, srv *tftp.Server, addr string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan error, 1)
	errc := make(chan error, 1)
	go func() {
		errc <- ns.Do(func() error {
			la, err := net.ResolveUDPAddr("udp4", addr)
			if err != nil {
				ready <- err
				return err
			}
			conn, err := net.ListenUDP("udp4", la)
			ready <- err
			if err != nil {
				return err
			}
			return srv.ServeConn(ctx, conn)
		})
	}()
	if err := <-ready; err != nil {
		cancel()
		t.Fatalf("listen %s in %s: %v", addr, ns.Name, err)
	}
	t.Cleanup(func() {
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("ServeConn: %v", err)
		}
	})
}

func writeFile(t testing.TB, path string, b []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func randomBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

type evLog struct {
	mu  sync.Mutex
	evs []contract.Event
}

func (l *evLog) add(e contract.Event) { l.mu.Lock(); l.evs = append(l.evs, e); l.mu.Unlock() }

// TestAtftpPiRequests fetches files over a veth link with atftp sending the
// Pi's exact RRQ ("octet tsize 0 blksize 1024"), and at blksize 1468, and
// compares checksums; traversal attempts get errors and no bytes.
func TestAtftpPiRequests(t *testing.T) {
	nettest.Require(t)
	nettest.RequireTool(t, "atftp")
	topo := nettest.New(t, nettest.Options{Prefix: "cbn", ClientAddrs: true})
	c := topo.Clients[0]
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	start4 := randomBytes(t, 3<<20+123)
	writeFile(t, filepath.Join(root, "start4.elf"), start4)
	writeFile(t, filepath.Join(root, "config.txt"), []byte("root\n"))
	writeFile(t, filepath.Join(root, "abcd1234", "config.txt"), []byte("serial override\n"))
	writeFile(t, filepath.Join(root, tftp.DashedMAC(c.MAC), "cmdline.txt"), []byte("mac override\n"))
	writeFile(t, filepath.Join(root, "cmdline.txt"), []byte("root cmdline\n"))
	writeFile(t, filepath.Join(dir, "secret"), []byte("secret"))
	if err := os.Symlink(filepath.Join(dir, "secret"), filepath.Join(root, "link")); err != nil {
		t.Fatal(err)
	}
	ev := &evLog{}
	srv := &tftp.Server{
		Root:   root,
		Events: ev.add,
		MACForIP: func(ip netip.Addr) (net.HardwareAddr, bool) {
			return c.MAC, ip == c.Addr.Addr()
		},
	}
	serveIn(t, topo.Server, srv, topo.Server.Addr.Addr().String()+":69")
	server := topo.Server.Addr.Addr().String()

	get := func(t *testing.T, remote, blksize string) (string, []byte, error) {
		t.Helper()
		local := filepath.Join(t.TempDir(), "out")
		out, err := c.Command(context.Background(), "atftp", "--trace", "--get", "-r", remote, "-l", local,
			"--option", "tsize 0", "--option", "blksize "+blksize, server).CombinedOutput()
		b, _ := os.ReadFile(local)
		return string(out), b, err
	}
	for _, tt := range []struct {
		remote, blksize string
		want            []byte
	}{
		{"abcd1234/start4.elf", "1024", start4}, // serial prefix, falls back to root
		{"start4.elf", "1468", start4},
		{"abcd1234/config.txt", "1024", []byte("serial override\n")},
		{"cmdline.txt", "1024", []byte("mac override\n")}, // per-MAC folder of the asking client
		{tftp.DashedMAC(c.MAC) + "/config.txt", "1024", []byte("root\n")},
	} {
		t.Run(strings.ReplaceAll(tt.remote, "/", "_")+"_"+tt.blksize, func(t *testing.T) {
			out, got, err := get(t, tt.remote, tt.blksize)
			if err != nil {
				t.Fatalf("atftp: %v\n%s", err, out)
			}
			if sha256.Sum256(got) != sha256.Sum256(tt.want) {
				t.Fatalf("%s: %d bytes, checksum differs from the served file (%d bytes)", tt.remote, len(got), len(tt.want))
			}
			// The OACK must grant the requested blksize and carry tsize.
			if !strings.Contains(out, "received OACK <tsize: "+itoa(len(tt.want))+", blksize: "+tt.blksize+",") {
				t.Errorf("OACK does not grant blksize %s and tsize %d:\n%s", tt.blksize, len(tt.want), firstLines(out, 6))
			}
		})
	}
	for _, remote := range []string{"../secret", "/etc/passwd", "link", "abcd1234/../../secret", "missing.bin"} {
		t.Run("refused_"+strings.ReplaceAll(remote, "/", "_"), func(t *testing.T) {
			out, got, err := get(t, remote, "1024")
			if err == nil && len(got) > 0 {
				t.Fatalf("%q was served (%d bytes)", remote, len(got))
			}
			if len(got) > 0 {
				t.Fatalf("%q: %d bytes written", remote, len(got))
			}
			if strings.Contains(out, dir) {
				t.Fatalf("error leaks a server path: %s", out)
			}
		})
	}
	st := srv.Stats()
	if st.Transfers != 5 || st.Denied != 4 || st.NotFound != 1 || st.Failures != 0 {
		t.Errorf("stats %+v, want 5 transfers, 4 denied, 1 not found", st)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

func firstLines(s string, n int) string {
	lines := strings.SplitN(s, "\n", n+1)
	if len(lines) > n {
		lines = lines[:n]
	}
	return strings.Join(lines, "\n")
}
