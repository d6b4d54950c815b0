package api_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cm4bench/cm4bench/internal/contract"
)

// benchImageSize is the deploy image of the benchmark: 2 GiB, sparse on
// disk apart from 64 MiB of random data at the start.
const benchImageSize = 2 << 30

// benchRounds is how many alternating rounds each comparison runs; the
// best round of each side counts.
const benchRounds = 2

func benchImage(b *testing.B, dir string) string {
	b.Helper()
	p := filepath.Join(dir, "golden.img")
	f, err := os.Create(p)
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	for i := 0; i < 64; i++ {
		rand.Read(buf)
		f.Write(buf)
	}
	if err := f.Truncate(benchImageSize); err != nil {
		b.Fatal(err)
	}
	f.Close()
	return p
}

// nginx runs nginx-light with our own config on a free loopback port,
// serving dir. It is never the system service.
func startNginx(b *testing.B, dir string) (base string, pids func() []int) {
	b.Helper()
	bin, err := exec.LookPath("nginx")
	if err != nil {
		b.Fatalf("nginx is not installed (scripts/deps.sh installs nginx-light): %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	prefix := b.TempDir()
	conf := filepath.Join(prefix, "nginx.conf")
	user := ""
	if os.Geteuid() == 0 {
		user = "user root;"
	}
	os.WriteFile(conf, []byte(fmt.Sprintf(`%s
worker_processes 2;
daemon off;
pid %s/nginx.pid;
error_log %s/error.log;
events { worker_connections 256; }
http {
	access_log off;
	sendfile on;
	tcp_nopush on;
	client_body_temp_path %s/body;
	proxy_temp_path %s/proxy;
	fastcgi_temp_path %s/fastcgi;
	uwsgi_temp_path %s/uwsgi;
	scgi_temp_path %s/scgi;
	server { listen %s; root %s; }
}
`, user, prefix, prefix, prefix, prefix, prefix, prefix, prefix, addr, dir)), 0o644)
	cmd := exec.Command(bin, "-p", prefix, "-c", conf)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("nginx did not start: %s", stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return "http://" + addr, func() []int {
		out, _ := exec.Command("pgrep", "-P", strconv.Itoa(cmd.Process.Pid)).Output()
		ps := []int{cmd.Process.Pid}
		for _, f := range strings.Fields(string(out)) {
			n, _ := strconv.Atoi(f)
			ps = append(ps, n)
		}
		return ps
	}
}

// vmHWM reads a process's peak resident set size in bytes.
func vmHWM(pid string) int64 {
	b, _ := os.ReadFile("/proc/" + pid + "/status")
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// cpuSeconds reads the user+system CPU time a process has used so far.
func cpuSeconds(pid string) float64 {
	b, _ := os.ReadFile("/proc/" + pid + "/stat")
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 {
		s = s[i+2:]
	}
	f := strings.Fields(s)
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // USER_HZ
}

func nginxCPU(pids []int) float64 {
	var t float64
	for _, p := range pids {
		t += cpuSeconds(strconv.Itoa(p))
	}
	return t
}

// resetHWM resets this process's peak RSS so a phase measures its own.
func resetHWM() { os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) }

// curlAll fetches each URL with its own curl process at once and returns
// the aggregate rate in bytes per second.
func curlAll(b *testing.B, urls []string, want int64) float64 {
	b.Helper()
	start := time.Now()
	var wg sync.WaitGroup
	errs := make([]error, len(urls))
	for i, u := range urls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, err := exec.Command("curl", "-s", "-f", "-o", "/dev/null", "-w", "%{size_download}", u).Output()
			if err == nil && string(out) != strconv.FormatInt(want, 10) {
				err = fmt.Errorf("got %s bytes, want %d", out, want)
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	d := time.Since(start)
	for _, err := range errs {
		if err != nil {
			b.Fatalf("curl: %v", err)
		}
	}
	return float64(want) * float64(len(urls)) / d.Seconds()
}

// BenchmarkDeploy serves a 2 GiB image to 1 and 16 concurrent curl clients
// from cm4bench and from nginx, in the same run, and reports aggregate
// MB/s, the ratio and the peak RSS of both servers.
func BenchmarkDeploy(b *testing.B) {
	dir := b.TempDir()
	img := benchImage(b, dir)
	srv := startServer(b, dir, img)
	nginx, nginxPIDs := startNginx(b, dir)
	if _, err := srv.srv.Images.Info(context.Background(), "golden.img"); err != nil { // hash once, outside the timing
		b.Fatal(err)
	}
	type row struct {
		clients         int
		ours, peer      float64
		oursRSS, ngxRSS int64
		// CPU seconds per GiB served (server process only; curl runs
		// apart): how much machine each server needs, whatever the load.
		oursCPU, peerCPU float64
	}
	var rows []row
	for _, n := range []int{1, 16} {
		b.Run(fmt.Sprintf("clients=%d", n), func(b *testing.B) {
			srv.t = b
			var urls []string
			for i := 0; i < n; i++ {
				mac := fmt.Sprintf("dc:a6:32:b0:%02x:%02x", n, i)
				srv.register(mac)
				srv.admin("POST", "/api/v1/devices/"+mac+"/action", contract.SetActionRequest{Action: "deploy"}, 200, nil)
				urls = append(urls, srv.poll(mac).URL)
			}
			peerURLs := make([]string, n)
			for i := range peerURLs {
				peerURLs[i] = nginx + "/golden.img"
			}
			var r row
			r.clients = n
			// The machine is shared: alternate the two servers and keep
			// each one's best round.
			resetHWM()
			var oursCPU, peerCPU float64
			for i := 0; i < b.N*benchRounds; i++ {
				c := cpuSeconds("self")
				r.ours = max(r.ours, curlAll(b, urls, benchImageSize))
				oursCPU += cpuSeconds("self") - c
				c = nginxCPU(nginxPIDs())
				r.peer = max(r.peer, curlAll(b, peerURLs, benchImageSize))
				peerCPU += nginxCPU(nginxPIDs()) - c
			}
			gib := float64(b.N*benchRounds*n) * benchImageSize / (1 << 30)
			r.oursCPU, r.peerCPU = oursCPU/gib, peerCPU/gib
			r.oursRSS = vmHWM("self")
			for _, p := range nginxPIDs() {
				r.ngxRSS += vmHWM(strconv.Itoa(p))
			}
			b.ReportMetric(r.ours/1e6, "MB/s")
			b.ReportMetric(r.peer/1e6, "nginx-MB/s")
			b.ReportMetric(r.ours/r.peer, "ratio")
			b.ReportMetric(float64(r.oursRSS)/(1<<20), "peak-RSS-MiB")
			b.ReportMetric(r.oursCPU, "cpu-s/GiB")
			b.ReportMetric(r.peerCPU, "nginx-cpu-s/GiB")
			rows = append(rows, r)
		})
	}
	fmt.Printf("\nDeploy of a 2 GiB image over loopback (curl clients)\n")
	fmt.Printf("%-8s %14s %14s %7s %16s %16s %12s %12s\n", "clients", "cm4bench MB/s", "nginx MB/s", "ratio", "cm4bench RSS MiB", "nginx RSS MiB", "ours CPU s/GiB", "nginx CPU s/GiB")
	for _, r := range rows {
		fmt.Printf("%-8d %14.0f %14.0f %7.2f %16.1f %16.1f %12.3f %12.3f\n", r.clients, r.ours/1e6, r.peer/1e6, r.ours/r.peer, float64(r.oursRSS)/(1<<20), float64(r.ngxRSS)/(1<<20), r.oursCPU, r.peerCPU)
	}
}

// BenchmarkBackup receives a 1 GiB backup from curl -T (PUT, raw) and
// compares its rate with a plain `cat > file` of the same bytes on the
// same disk, in the same run. cm4bench also hashes, fsyncs and renames.
func BenchmarkBackup(b *testing.B) {
	dir := b.TempDir()
	src := filepath.Join(dir, "disk.img")
	f, _ := os.Create(src)
	buf := make([]byte, 1<<20)
	for i := 0; i < 1024; i++ {
		rand.Read(buf[:4096]) // cheap variety; the rest repeats
		f.Write(buf)
	}
	f.Close()
	exec.Command("cat", src).Run() // into the page cache for both runs
	srv := startServer(b, dir, "")
	srv.t = b
	var ours, peer, peerSync float64
	var rss int64
	for i := 0; i < b.N*benchRounds; i++ {
		mac := fmt.Sprintf("dc:a6:32:c0:00:%02x", i%256)
		srv.register(mac)
		srv.admin("POST", "/api/v1/devices/"+mac+"/action", contract.SetActionRequest{Action: "backup"}, 200, nil)
		u := srv.poll(mac).UploadURL
		resetHWM()
		start := time.Now()
		out, err := exec.Command("curl", "-s", "-f", "-T", src, u).CombinedOutput()
		if err != nil {
			b.Fatalf("curl -T: %v %s", err, out)
		}
		ours = max(ours, float64(1<<30)/time.Since(start).Seconds())
		rss = max(rss, vmHWM("self"))
		dst := filepath.Join(dir, "cat.out")
		for _, withSync := range []bool{false, true} {
			script := "cat " + src + " > " + dst
			if withSync {
				script += " && sync " + dst // the durability cm4bench gives a backup
			}
			start = time.Now()
			if out, err := exec.Command("sh", "-c", script).CombinedOutput(); err != nil {
				b.Fatalf("cat: %v %s", err, out)
			}
			r := float64(1<<30) / time.Since(start).Seconds()
			if withSync {
				peerSync = max(peerSync, r)
			} else {
				peer = max(peer, r)
			}
			os.Remove(dst)
		}
		bs, _ := srv.st.Backups(context.Background()) // keep the disk use flat
		for _, bk := range bs {
			os.Remove(filepath.Join(dir, "backups", bk.File))
		}
	}
	b.ReportMetric(ours/1e6, "MB/s")
	b.ReportMetric(peer/1e6, "cat-MB/s")
	b.ReportMetric(peerSync/1e6, "cat+sync-MB/s")
	b.ReportMetric(ours/peer, "ratio")
	b.ReportMetric(ours/peerSync, "ratio-vs-sync")
	b.ReportMetric(float64(rss)/(1<<20), "peak-RSS-MiB")
	fmt.Printf("\nBackup receive of 1 GiB (curl -T over loopback; cm4bench hashes, fsyncs and renames)\n")
	fmt.Printf("%-14s %-10s %-15s %7s %13s %16s\n", "cm4bench MB/s", "cat MB/s", "cat+sync MB/s", "ratio", "ratio (sync)", "cm4bench RSS MiB")
	fmt.Printf("%-14.0f %-10.0f %-15.0f %7.2f %13.2f %16.1f\n", ours/1e6, peer/1e6, peerSync/1e6, ours/peer, ours/peerSync, float64(rss)/(1<<20))
}
