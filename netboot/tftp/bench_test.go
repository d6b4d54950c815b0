package tftp_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cm4bench/cm4bench/netboot/sim/nettest"
	"github.com/cm4bench/cm4bench/netboot/tftp"
)

// BenchmarkTFTPvsDnsmasq serves the same 32 MiB file from cm4bench and from
// dnsmasq (both in the bench namespace, on two addresses of the same veth)
// to 1 and 16 concurrent atftp clients at blksize 1024 and 1468, in the same
// run, alternating servers, median of 5 rounds (1 client) or 3 rounds (16
// clients) per case. It reports aggregate MB/s and the
// ratio ours/dnsmasq, and prints a table.
func BenchmarkTFTPvsDnsmasq(b *testing.B) {
	nettest.Require(b)
	nettest.RequireTool(b, "atftp")
	nettest.RequireTool(b, "dnsmasq")
	topo := nettest.New(b, nettest.Options{Prefix: "cbn", ClientAddrs: true})
	srvNS, c := topo.Server, topo.Clients[0]
	peerAddr := "10.42.0.2"
	srvNS.Run(b, "ip", "addr", "add", peerAddr+"/24", "dev", srvNS.Iface)

	dir := b.TempDir()
	root := filepath.Join(dir, "root")
	const size = 32 << 20
	writeFile(b, filepath.Join(root, "kernel8.img"), randomBytes(b, size))
	// dnsmasq drops privileges and serves only world-readable files.
	for _, p := range []string{dir, root} {
		if err := os.Chmod(p, 0o755); err != nil {
			b.Fatal(err)
		}
	}

	ours := &tftp.Server{Root: root}
	serveIn(b, srvNS, ours, "10.42.0.1:69")
	srvNS.Start(b, "dnsmasq", "-k", "--conf-file=/dev/null", "--port=0", "--enable-tftp", "--tftp-root="+root,
		"--listen-address="+peerAddr, "--bind-interfaces", "--tftp-max=64", "--user=root",
		"--pid-file="+filepath.Join(dir, "dnsmasq.pid"), "--log-facility="+filepath.Join(dir, "dnsmasq.log"))
	waitTFTP(b, c, peerAddr)

	type row struct {
		blksize, clients int
		ours, peer       float64 // MB/s aggregate
	}
	var rows []row
	for i := 0; i < b.N; i++ {
		rows = rows[:0]
		for _, blksize := range []int{1024, 1468} {
			for _, clients := range []int{1, 16} {
				// Alternate the servers and keep the median of several rounds:
				// the machine is shared, so single runs are noisy.
				rounds := 3
				if clients == 1 {
					rounds = 5
				}
				var ourRuns, peerRuns []float64
				for round := 0; round < rounds; round++ {
					peerRuns = append(peerRuns, fetchAll(b, c, peerAddr, blksize, clients, size))
					ourRuns = append(ourRuns, fetchAll(b, c, "10.42.0.1", blksize, clients, size))
				}
				rows = append(rows, row{blksize: blksize, clients: clients, ours: median(ourRuns), peer: median(peerRuns)})
			}
		}
	}
	b.StopTimer()
	var sb strings.Builder
	fmt.Fprintf(&sb, "\nTFTP, 32 MiB file over veth, atftp clients (aggregate MB/s, median of 5 or 3 rounds)\n")
	fmt.Fprintf(&sb, "%-8s %-8s %12s %12s %8s\n", "blksize", "clients", "cm4bench", "dnsmasq", "ratio")
	for _, r := range rows {
		ratio := r.ours / r.peer
		fmt.Fprintf(&sb, "%-8d %-8d %12.1f %12.1f %7.2fx\n", r.blksize, r.clients, r.ours, r.peer, ratio)
		b.ReportMetric(ratio, fmt.Sprintf("ratio-bs%d-c%d", r.blksize, r.clients))
		b.ReportMetric(r.ours, fmt.Sprintf("MB/s-bs%d-c%d", r.blksize, r.clients))
	}
	fmt.Print(sb.String())
	if st := ours.Stats(); st.Failures != 0 {
		b.Errorf("cm4bench had %d failed transfers", st.Failures)
	}
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}

// waitTFTP waits until server answers TFTP (dnsmasq starts asynchronously).
func waitTFTP(b *testing.B, c *nettest.NS, server string) {
	b.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := c.Command(context.Background(), "atftp", "--get", "-r", "kernel8.img", "-l", "/dev/null",
			"--option", "tsize 0", "--option", "blksize 1468", server).Run()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("%s does not serve TFTP: %v", server, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// fetchAll runs n concurrent atftp downloads and returns aggregate MB/s.
func fetchAll(b *testing.B, c *nettest.NS, server string, blksize, n int, size int64) float64 {
	b.Helper()
	out := b.TempDir()
	var wg sync.WaitGroup
	errs := make([]error, n)
	outputs := make([][]byte, n)
	start := time.Now()
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			local := filepath.Join(out, fmt.Sprint(i))
			outputs[i], errs[i] = c.Command(context.Background(), "atftp", "--get", "-r", "kernel8.img", "-l", local,
				"--option", "tsize 0", "--option", fmt.Sprintf("blksize %d", blksize), server).CombinedOutput()
		}(i)
	}
	wg.Wait()
	elapsed := time.Since(start)
	for i := 0; i < n; i++ {
		if errs[i] != nil {
			b.Fatalf("atftp from %s (blksize %d, %d clients): %v\n%s", server, blksize, n, errs[i], outputs[i])
		}
		st, err := os.Stat(filepath.Join(out, fmt.Sprint(i)))
		if err != nil || st.Size() != size {
			b.Fatalf("atftp from %s: got %v bytes, want %d (%v)", server, st, size, err)
		}
	}
	return float64(int64(n)*size) / elapsed.Seconds() / 1e6
}
