package agent_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/cm4bench/cm4bench/internal/contract"
	"github.com/cm4bench/cm4bench/netboot/device/agent"
	"github.com/cm4bench/cm4bench/netboot/device/agenttest"
	"github.com/cm4bench/cm4bench/netboot/device/blockdev"
)

const benchMAC = "dc:a6:32:be:00:01"

// writeImage writes size bytes to w: 64 KiB blocks, zeroPct percent of them
// zero, the rest from a seeded ChaCha8 stream (incompressible data, like the
// used part of a file system). It streams: memory stays flat.
func writeImage(w io.Writer, size int64, zeroPct int, seed uint64) error {
	pick := rand.New(rand.NewPCG(seed, 3))
	data := rand.NewChaCha8([32]byte{byte(seed)})
	blk := make([]byte, 64<<10)
	zero := make([]byte, 64<<10)
	for off := int64(0); off < size; off += int64(len(blk)) {
		n := min(int64(len(blk)), size-off)
		if off > 0 && pick.IntN(100) < zeroPct {
			if _, err := w.Write(zero[:n]); err != nil {
				return err
			}
			continue
		}
		data.Read(blk[:n])
		if _, err := w.Write(blk[:n]); err != nil {
			return err
		}
	}
	return nil
}

// imageFile writes the image to path, zstd-compressed if the name ends in .zst.
func imageFile(tb testing.TB, path string, size int64, zeroPct int, seed uint64) {
	tb.Helper()
	f, err := os.Create(path)
	if err != nil {
		tb.Fatal(err)
	}
	var w io.Writer = f
	var enc *zstd.Encoder
	if strings.HasSuffix(path, ".zst") {
		enc, _ = zstd.NewWriter(f, zstd.WithEncoderLevel(zstd.SpeedDefault))
		w = enc
	}
	if err := writeImage(w, size, zeroPct, seed); err != nil {
		tb.Fatal(err)
	}
	if enc != nil {
		enc.Close()
	}
	if err := f.Close(); err != nil {
		tb.Fatal(err)
	}
}

// device plays the device side of the API by hand: register, and poll for
// the URL of the action just set.
func poll(tb testing.TB, b *agenttest.Bench, action, image string) contract.PollResponse {
	tb.Helper()
	body, _ := json.Marshal(contract.RegisterRequest{MAC: benchMAC, IP: "127.0.0.1"})
	resp, err := http.Post(b.URL+contract.PathRegister, "application/json", bytes.NewReader(body))
	if err != nil {
		tb.Fatal(err)
	}
	resp.Body.Close()
	b.SetAction(tb, benchMAC, action, image)
	resp, err = http.Get(b.URL + contract.PathPoll + "?mac=" + benchMAC)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	var pr contract.PollResponse
	if err := json.NewDecoder(resp.Body).Decode(&pr); err != nil || pr.Action != action {
		tb.Fatalf("poll: %+v, %v", pr, err)
	}
	return pr
}

func sparseFile(tb testing.TB, dir string, size int64) string {
	p := filepath.Join(dir, fmt.Sprintf("disk-%d.img", time.Now().UnixNano()))
	f, err := os.Create(p)
	if err != nil {
		tb.Fatal(err)
	}
	f.Truncate(size)
	f.Close()
	return p
}

type row struct {
	name                      string
	agentS, peerS, fsyncS     float64
	agentWire, peerWire       int64
	agentWritten, peerWritten int64
}

// reps is how often each side runs per benchmark iteration, interleaved;
// the best time of each counts (the bench machine is shared and noisy).
const reps = 3

// BenchmarkDeployVsCurlDD runs the agent's deploy pipeline and the shell
// client's `curl URL | dd of=FILE bs=4M` against the same real server, on
// the same images, in the same run, and prints a table. The agent's time
// includes fsync and the O_DIRECT read-back verification; plain dd has
// neither (its data may still be in the page cache when it exits), so the
// table also shows dd with conv=fsync, the durable equivalent.
func BenchmarkDeployVsCurlDD(b *testing.B) {
	if _, err := exec.LookPath("curl"); err != nil {
		b.Fatal("curl is needed as the peer")
	}
	const size = 256 << 20
	bench := agenttest.Start(b, "127.0.0.1:0")
	work := b.TempDir()
	imageFile(b, filepath.Join(bench.Images, "raw.img"), size, 30, 1)
	imageFile(b, filepath.Join(bench.Images, "os.img.zst"), size, 30, 1)
	imageFile(b, filepath.Join(bench.Images, "sparse.img.zst"), size, 70, 2)
	// The same runs through a proxy paced like 1 GbE (117 MB/s of payload).
	gbe := agenttest.StartThrottleProxy(b, bench.Addr, 117e6)
	viaGbE := func(u string) string { return strings.Replace(u, bench.URL, gbe.URL, 1) }
	direct := func(u string) string { return u }
	var rows []row
	for _, tc := range []struct {
		name, sub, image string
		zstd             bool
		via              func(string) string
	}{
		{"raw (30% zero)", "raw", "raw.img", false, direct},
		{"zstd (30% zero)", "zstd", "os.img.zst", true, direct},
		{"sparse zstd (70% zero)", "sparse-zstd", "sparse.img.zst", true, direct},
		{"raw, zstd on the wire", "raw-zwire", "raw.img", true, direct},
		{"raw, 1GbE pace", "raw-1gbe", "raw.img", false, viaGbE},
		{"raw, zstd wire, 1GbE", "raw-zwire-1gbe", "raw.img", true, viaGbE},
		{"zstd, 1GbE pace", "zstd-1gbe", "os.img.zst", true, viaGbE},
		{"sparse zstd, 1GbE pace", "sparse-zstd-1gbe", "sparse.img.zst", true, viaGbE},
	} {
		r := row{name: tc.name, agentS: 1e9, peerS: 1e9, fsyncS: 1e9}
		peer := func(fsync bool) float64 {
			pr := poll(b, bench, contract.ActionDeploy, tc.image)
			disk := sparseFile(b, work, size)
			defer os.Remove(disk)
			conv := ""
			if fsync {
				conv = "conv=fsync"
			}
			cmd := exec.Command("sh", "-c", `curl -sS --fail "$1" | dd of="$2" bs=4M iflag=fullblock status=none `+conv, "sh", tc.via(pr.URL), disk)
			start := time.Now()
			if out, err := cmd.CombinedOutput(); err != nil {
				b.Fatalf("curl | dd: %v\n%s", err, out)
			}
			secs := time.Since(start).Seconds()
			got, _ := os.ReadFile(disk)
			if hexsum(got) != pr.Image.SHA256 {
				b.Fatal("curl | dd wrote a different image")
			}
			r.peerWire, r.peerWritten = int64(len(got)), int64(len(got))
			return secs
		}
		b.Run(tc.sub, func(b *testing.B) {
			for b.Loop() {
				for range reps {
					pr := poll(b, bench, contract.ActionDeploy, tc.image)
					disk := sparseFile(b, work, size)
					dev, err := blockdev.Open(disk, true, true)
					if err != nil {
						b.Fatal(err)
					}
					src := &agent.Source{URL: tc.via(pr.URL), AcceptZstd: tc.zstd}
					start := time.Now()
					res, err := agent.Deploy(context.Background(), dev, src, agent.DeployOptions{Size: pr.Image.Size, SHA256: pr.Image.SHA256})
					r.agentS = min(r.agentS, time.Since(start).Seconds())
					src.Close()
					dev.Close()
					os.Remove(disk)
					if err != nil || !res.Verified {
						b.Fatalf("agent deploy: %v", err)
					}
					r.agentWire, r.agentWritten = res.WireBytes, res.Written
					b.Logf("%s: agent stream %.2fs, fsync+head %.2fs, verify %.2fs", tc.name, res.StreamSeconds, res.SyncSeconds, res.VerifySeconds)
					r.peerS = min(r.peerS, peer(false))
					r.fsyncS = min(r.fsyncS, peer(true))
				}
			}
			b.ReportMetric(r.peerS/r.agentS, "x-vs-curl|dd")
			b.ReportMetric(r.fsyncS/r.agentS, "x-vs-curl|dd-fsync")
		})
		rows = append(rows, r)
	}
	fmt.Printf("\nDeploy of a %d MiB image through the real server on loopback (and paced to 1 GbE), best of %d (agent: verified, fsync + O_DIRECT read-back)\n", size>>20, reps)
	fmt.Printf("%-24s %8s %9s %7s %9s %7s %11s %11s %11s %11s\n", "image", "agent s", "curl|dd s", "ratio", "+fsync s", "ratio", "agent wire", "peer wire", "agent write", "peer write")
	for _, r := range rows {
		fmt.Printf("%-24s %8.2f %9.2f %6.2fx %9.2f %6.2fx %11d %11d %11d %11d\n", r.name, r.agentS, r.peerS, r.peerS/r.agentS, r.fsyncS, r.fsyncS/r.agentS, r.agentWire, r.peerWire, r.agentWritten, r.peerWritten)
	}
}

// BenchmarkBackupVsDDCurl compares the agent's backup (read around the page
// cache, zstd, streamed upload, two hashes) with `dd if=FILE bs=4M | curl -T - URL`.
func BenchmarkBackupVsDDCurl(b *testing.B) {
	const size = 256 << 20
	bench := agenttest.Start(b, "127.0.0.1:0")
	disk := filepath.Join(b.TempDir(), "emmc.img")
	imageFile(b, disk, size, 30, 5)
	agentS, peerS := 1e9, 1e9
	var sent int64
	for b.Loop() {
		for range reps {
			agentS, peerS, sent = backupOnce(b, bench, disk, agentS, peerS)
		}
	}
	b.ReportMetric(peerS/agentS, "x-vs-dd|curl")
	fmt.Printf("\nBackup of a %d MiB disk (30%% zero) to the real server on loopback, best of %d\n", size>>20, reps)
	fmt.Printf("%-14s %9s %14s\n", "client", "seconds", "bytes sent")
	fmt.Printf("%-14s %9.2f %14d (zstd, raw+zstd sha256, O_DIRECT reads)\n", "agent", agentS, sent)
	fmt.Printf("%-14s %9.2f %14d (raw)\n", "dd | curl -T", peerS, int64(size))
	fmt.Printf("ratio %.2fx\n", peerS/agentS)
}

func backupOnce(b *testing.B, bench *agenttest.Bench, disk string, bestAgent, bestPeer float64) (agentS, peerS float64, sent int64) {
	{
		pr := poll(b, bench, contract.ActionBackup, "")
		dev, err := blockdev.Open(disk, false, true)
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		res, err := agent.Backup(context.Background(), dev, 0, nil, func(ctx context.Context, body io.Reader, _ func() string) error {
			req, _ := http.NewRequestWithContext(ctx, http.MethodPut, pr.UploadURL, body)
			req.Header.Set("Content-Encoding", "zstd")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			if resp.StatusCode/100 != 2 {
				msg, _ := io.ReadAll(resp.Body)
				return fmt.Errorf("HTTP %d: %s", resp.StatusCode, msg)
			}
			return nil
		})
		agentS = min(bestAgent, time.Since(start).Seconds())
		dev.Close()
		if err != nil {
			b.Fatal(err)
		}
		sent = res.CompressedBytes

		pr = poll(b, bench, contract.ActionBackup, "")
		cmd := exec.Command("sh", "-c", `dd if="$2" bs=4M status=none | curl -sS --fail -T - "$1" >/dev/null`, "sh", pr.UploadURL, disk)
		start = time.Now()
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("dd | curl: %v\n%s", err, out)
		}
		peerS = min(bestPeer, time.Since(start).Seconds())
	}
	return agentS, peerS, sent
}

// BenchmarkAgentPeakRSS deploys an 8 GiB sparse image with the real
// cm4agent binary as a subprocess and reads its peak RSS (VmHWM of
// /proc/self/status, printed by --print-peak-rss). The rusage maxrss of the
// child is no measure here: it counts the parent's memory the child shared
// between fork and exec.
func BenchmarkAgentPeakRSS(b *testing.B) {
	const size = 8 << 30
	bench := agenttest.Start(b, "127.0.0.1:0")
	work := b.TempDir()
	bin := filepath.Join(work, "cm4agent")
	build := exec.Command("go", "build", "-o", bin, "github.com/cm4bench/cm4bench/cmd/cm4agent")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		b.Fatalf("build cm4agent: %v\n%s", err, out)
	}
	// 8 GiB, 97% zero 64 KiB blocks: 256 MiB of data, as zstd.
	imageFile(b, filepath.Join(bench.Images, "big.img.zst"), size, 97, 9)
	var hwmKB int64
	var secs float64
	for b.Loop() {
		disk := sparseFile(b, work, size)
		cmd := exec.Command(bin, "--server", bench.URL, "--target", disk, "--mac", benchMAC, "--once", "--accept-zstd", "--poll", "100ms", "--print-peak-rss")
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		bench.WaitRegistered(b, benchMAC, 30*time.Second)
		act := bench.SetAction(b, benchMAC, contract.ActionDeploy, "big.img.zst")
		start := time.Now()
		if err := cmd.Wait(); err != nil {
			b.Fatalf("cm4agent: %v\n%s", err, out.String())
		}
		secs = time.Since(start).Seconds()
		if a := bench.WaitAction(b, benchMAC, act.ID, time.Minute); a.State != contract.StateDone {
			b.Fatalf("action %+v", a)
		}
		m := regexp.MustCompile(`VmHWM\) (\d+) kB`).FindStringSubmatch(out.String())
		if m == nil {
			b.Fatalf("no VmHWM in the agent's output:\n%s", out.String())
		}
		hwmKB, _ = strconv.ParseInt(m[1], 10, 64)
		os.Remove(disk)
	}
	b.ReportMetric(float64(hwmKB)/1024, "peak-RSS-MiB")
	fmt.Printf("\ncm4agent deploying an 8 GiB sparse zstd image (256 MiB of data): %.1f s, peak RSS %.1f MiB (VmHWM); goal < 64 MiB\n",
		secs, float64(hwmKB)/1024)
}
