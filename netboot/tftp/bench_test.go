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
	"github.com/cm4bench/cm4bench/netboot/sim/simbench"
)

// BenchmarkTFTPvsDnsmasq serves the same 32 MiB file from cm4bench and from
// dnsmasq, each in its own process in the bench namespace (two addresses of
// the same veth), to 1 and 16 concurrent atftp clients at blksize 1024 and
// 1468, in the same run, 7 rounds per case in ABBA order. It reports the
// medians of the aggregate MB/s and of the server's CPU per transfer
// (utime+stime of its process over a round, divided by the transfers),
// their ratios ours/dnsmasq, and prints a table.
func BenchmarkTFTPvsDnsmasq(b *testing.B) {
	nettest.Require(b)
	nettest.RequireTool(b, "atftp")
	nettest.RequireTool(b, "dnsmasq")
	topo := nettest.New(b, nettest.Options{Prefix: "cbn", ClientAddrs: true})
	srvNS, c := topo.Server, topo.Clients[0]
	ourAddr, peerAddr := "10.42.0.1", "10.42.0.2"
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

	self, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	ours, _ := srvNS.Start(b, "env", helperEnv+"="+root+" "+ourAddr+":69", self) // env execs: same pid
	peer, _ := srvNS.Start(b, "dnsmasq", "-k", "--conf-file=/dev/null", "--port=0", "--enable-tftp", "--tftp-root="+root,
		"--listen-address="+peerAddr, "--bind-interfaces", "--tftp-max=64", "--user=root",
		"--pid-file="+filepath.Join(dir, "dnsmasq.pid"), "--log-facility="+filepath.Join(dir, "dnsmasq.log"))
	waitTFTP(b, c, ourAddr)
	waitTFTP(b, c, peerAddr)

	type side struct {
		rate []float64 // aggregate MB/s per round
		cpu  []float64 // server CPU ms per transfer, per round
	}
	type row struct {
		blksize, clients int
		ours, peer       side
	}
	run := func(s *side, pid int, addr string, blksize, clients int) {
		before := procCPU(b, pid)
		s.rate = append(s.rate, fetchAll(b, c, addr, blksize, clients, size))
		s.cpu = append(s.cpu, float64(procCPU(b, pid)-before)/float64(time.Millisecond)/float64(clients))
	}
	var rows []row
	for i := 0; i < b.N; i++ {
		rows = rows[:0]
		for _, blksize := range []int{1024, 1468} {
			for _, clients := range []int{1, 16} {
				// The machine is shared, so single runs are noisy: several
				// rounds, the servers in ABBA order (neither always goes
				// first), and the median of each figure.
				const rounds = 7
				r := row{blksize: blksize, clients: clients}
				for round := 0; round < rounds; round++ {
					if round%2 == 0 {
						run(&r.peer, peer.Process.Pid, peerAddr, blksize, clients)
						run(&r.ours, ours.Process.Pid, ourAddr, blksize, clients)
					} else {
						run(&r.ours, ours.Process.Pid, ourAddr, blksize, clients)
						run(&r.peer, peer.Process.Pid, peerAddr, blksize, clients)
					}
				}
				rows = append(rows, r)
			}
		}
	}
	b.StopTimer()
	var sb strings.Builder
	fmt.Fprintf(&sb, "\nTFTP, 32 MiB file over veth, atftp clients: aggregate MB/s and server CPU ms per transfer (medians of 7 rounds)\n")
	fmt.Fprintf(&sb, "%-8s %-8s %10s %10s %8s %12s %12s %8s\n", "blksize", "clients", "cm4bench", "dnsmasq", "rate", "cm4bench ms", "dnsmasq ms", "CPU")
	for _, r := range rows {
		rate := median(r.ours.rate) / median(r.peer.rate)
		cpu := median(r.ours.cpu) / median(r.peer.cpu)
		fmt.Fprintf(&sb, "%-8d %-8d %10.1f %10.1f %7.2fx %12.1f %12.1f %7.2fx\n", r.blksize, r.clients,
			median(r.ours.rate), median(r.peer.rate), rate, median(r.ours.cpu), median(r.peer.cpu), cpu)
		b.ReportMetric(rate, fmt.Sprintf("rate-ratio-bs%d-c%d", r.blksize, r.clients))
		b.ReportMetric(cpu, fmt.Sprintf("cpu-ratio-bs%d-c%d", r.blksize, r.clients))
		b.ReportMetric(median(r.ours.rate), fmt.Sprintf("MB/s-bs%d-c%d", r.blksize, r.clients))
	}
	fmt.Print(sb.String())
}

// procCPU is the user+system CPU time pid has used, all threads.
func procCPU(b *testing.B, pid int) time.Duration {
	b.Helper()
	cpu, _, err := simbench.ProcUsage(pid)
	if err != nil {
		b.Fatalf("server CPU: %v", err)
	}
	return cpu
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
