package agent_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cm4bench/cm4bench/internal/contract"
	"github.com/cm4bench/cm4bench/internal/sparseimg"
	"github.com/cm4bench/cm4bench/internal/syncbuf"
	"github.com/cm4bench/cm4bench/netboot/device/agent"
	"github.com/cm4bench/cm4bench/netboot/device/agenttest"
	"github.com/klauspost/compress/zstd"
)

func image(size int, zeroPct int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, size)
	for off := 0; off < size; off += 64 << 10 {
		if off > 0 && r.IntN(100) < zeroPct {
			continue
		}
		end := min(off+64<<10, size)
		for i := off; i < end; i++ {
			b[i] = byte(r.Uint32())
		}
	}
	return b
}

func zst(t testing.TB, raw []byte) []byte {
	var b bytes.Buffer
	w, _ := zstd.NewWriter(&b)
	w.Write(raw)
	w.Close()
	return b.Bytes()
}

// sparseWire is the length of raw's sparse stream.
func sparseWire(t testing.TB, raw []byte) int64 {
	t.Helper()
	ext, err := sparseimg.Map(context.Background(), bytes.NewReader(raw), int64(len(raw)))
	if err != nil {
		t.Fatal(err)
	}
	st, err := sparseimg.NewStream(bytes.NewReader(raw), int64(len(raw)), ext)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() >= int64(len(raw))*3/4 {
		t.Fatalf("the sparse stream of a half-zero image is %d of %d bytes", st.Size(), len(raw))
	}
	return st.Size()
}

func hexsum(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

func disk(t testing.TB, size int64) string {
	p := filepath.Join(t.TempDir(), "emmc.img")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(size)
	f.Close()
	return p
}

// console is a goroutine-safe buffer for the agent's console.
type console = syncbuf.Buffer

// runAgent runs one agent with Once against server until its first action
// ends, and returns Run's error and the console output.
func runAgent(t *testing.T, server, mac, target string, prep func(*agent.Agent)) (error, string) {
	t.Helper()
	var con console
	a := &agent.Agent{Server: server, MAC: mac, Target: target, AllowFile: true, Once: true, Console: &con,
		PollInterval: 100 * time.Millisecond, ProgressInterval: 100 * time.Millisecond, Stall: 5 * time.Second,
		Facts: func() *contract.Facts { return &contract.Facts{Serial: "abcdef12", Model: "test"} }}
	if prep != nil {
		prep(a)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	err := a.Run(ctx)
	return err, con.String()
}

// deployOnce runs an agent, waits for it to register, asks for a deploy of
// image (a backup if image is "") and returns the finished action.
func deployOnce(t *testing.T, b *agenttest.Bench, server, mac, target, image string, prep func(*agent.Agent)) (contract.Action, error, string) {
	t.Helper()
	errc := make(chan error, 1)
	outc := make(chan string, 1)
	// Register first (the technician sees the device, then clicks).
	go func() {
		err, out := runAgent(t, server, mac, target, prep)
		errc <- err
		outc <- out
	}()
	b.WaitRegistered(t, mac, 30*time.Second)
	var act contract.Action
	if image == "" {
		act = b.SetAction(t, mac, contract.ActionBackup, "")
	} else {
		act = b.SetAction(t, mac, contract.ActionDeploy, image)
	}
	err := <-errc
	out := <-outc
	return b.WaitAction(t, mac, act.ID, 30*time.Second), err, out
}

func TestAgentDeployThroughServer(t *testing.T) {
	b := agenttest.Start(t, "127.0.0.1:0")
	raw := image(9<<20, 50, 10)
	for _, tc := range []struct {
		name         string
		stored       []byte
		zstd, sparse bool
		wire         int64 // bytes downloaded, 0: not checked
	}{
		{name: "golden.img", stored: raw, wire: int64(len(raw))},
		{name: "golden.img.zst", stored: zst(t, raw)},
		{name: "golden2.img", stored: raw, zstd: true}, // raw stored, zstd on the wire
		// Only the data extents cross the network: half the grains are
		// zero, each extent costs a 16-byte record header.
		{name: "golden3.img", stored: raw, sparse: true, wire: sparseWire(t, raw)},
		{name: "golden3.img.zst", stored: zst(t, raw), sparse: true, zstd: true}, // a stored .zst stays zstd
	} {
		t.Run(tc.name, func(t *testing.T) {
			img := b.AddImage(t, tc.name, bytes.NewReader(tc.stored))
			if img.SHA256 != hexsum(raw) {
				t.Fatalf("server image sha256 %s", img.SHA256)
			}
			target := disk(t, 16<<20)
			mac := "dc:a6:32:00:00:0" + string(rune('1'+len(tc.name)%8))
			act, err, out := deployOnce(t, b, b.URL, mac, target, tc.name, func(a *agent.Agent) { a.AcceptZstd, a.AcceptSparse = tc.zstd, tc.sparse })
			if err != nil {
				t.Fatalf("agent: %v\n%s", err, out)
			}
			if act.State != contract.StateDone || act.SHA256 != hexsum(raw) || act.Bytes != int64(len(raw)) {
				t.Fatalf("server shows action %+v", act)
			}
			if tc.wire != 0 && act.CompressedBytes != tc.wire {
				t.Errorf("downloaded %d bytes, want %d", act.CompressedBytes, tc.wire)
			}
			got, _ := os.ReadFile(target)
			if !bytes.Equal(got[:len(raw)], raw) {
				t.Fatal("target differs from the image")
			}
			if !strings.Contains(out, "verified on read-back") {
				t.Errorf("console lacks the verify line:\n%s", out)
			}
		})
	}
}

// TestAgentDeployResumesAfterCut: the raw and the sparse stream each resume
// with Range requests on their own bytes after two connection resets, and
// nothing is downloaded twice.
func TestAgentDeployResumesAfterCut(t *testing.T) {
	for _, tc := range []struct {
		name   string
		raw    []byte
		sparse bool
	}{
		{"big.img", image(24<<20, 10, 11), false},
		{"sparse.img", image(24<<20, 40, 13), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := agenttest.Start(t, "127.0.0.1:0")
			raw := tc.raw
			b.AddImage(t, tc.name, bytes.NewReader(raw))
			// The proxy resets two connections once each has carried 4 MiB.
			p := agenttest.StartCutProxy(t, b.Addr, 4<<20, 2)
			target := disk(t, 32<<20)
			act, err, out := deployOnce(t, b, p.URL, "dc:a6:32:00:01:01", target, tc.name, func(a *agent.Agent) { a.AcceptSparse = tc.sparse })
			if err != nil {
				t.Fatalf("agent: %v\n%s", err, out)
			}
			if p.Cuts() != 0 {
				t.Fatalf("the proxy cut %d connections, want 2", 2-p.Cuts())
			}
			if act.State != contract.StateDone || act.SHA256 != hexsum(raw) {
				t.Fatalf("server shows %+v", act)
			}
			if !strings.Contains(out, "resumed 2 time(s) with a Range request") {
				t.Errorf("console does not show two range resumes:\n%s", out)
			}
			// Nothing was downloaded twice: the wire bytes are the stream's.
			want := int64(len(raw))
			if tc.sparse {
				want = sparseWire(t, raw)
			}
			if act.CompressedBytes != want {
				t.Errorf("downloaded %d bytes, want %d", act.CompressedBytes, want)
			}
			got, _ := os.ReadFile(target)
			if !bytes.Equal(got[:len(raw)], raw) {
				t.Fatal("target differs from the image")
			}
		})
	}
}

func TestAgentWrongHashFails(t *testing.T) {
	b := agenttest.Start(t, "127.0.0.1:0")
	raw := image(3<<20, 0, 12)
	b.AddImage(t, "g.img", bytes.NewReader(raw))
	// Let the server hash it, then corrupt one byte behind its back, keeping
	// size and mtime so its cached hash stays: the stream no longer matches.
	p := filepath.Join(b.Images, "g.img")
	st, _ := os.Stat(p)
	f, _ := os.OpenFile(p, os.O_WRONLY, 0)
	f.WriteAt([]byte{raw[2<<20] ^ 0xff}, 2<<20)
	f.Close()
	os.Chtimes(p, st.ModTime(), st.ModTime())

	target := disk(t, 4<<20)
	mac := "dc:a6:32:00:02:01"
	act, err, out := deployOnce(t, b, b.URL, mac, target, "g.img", nil)
	if !errors.Is(err, agent.ErrHashMismatch) {
		t.Fatalf("agent err = %v, want a hash mismatch\n%s", err, out)
	}
	if act.State != contract.StateFailed || !strings.Contains(act.Error, "sha256") {
		t.Fatalf("server shows %+v, want failed with a sha256 error", act)
	}
	if !strings.Contains(strings.Join(act.Log, "\n"), "deploy FAILED") {
		t.Errorf("the server got no log tail with the failure: %q", act.Log)
	}
	got, _ := os.ReadFile(target)
	if !bytes.Equal(got[:agent.HeadSize], make([]byte, agent.HeadSize)) {
		t.Error("a failed deploy left a first MiB on the target")
	}
	if !strings.Contains(out, "deploy FAILED") {
		t.Errorf("console does not show the failure:\n%s", out)
	}
}

func TestAgentRefusesSmallTarget(t *testing.T) {
	b := agenttest.Start(t, "127.0.0.1:0")
	raw := image(6<<20, 0, 13)
	b.AddImage(t, "g.img", bytes.NewReader(raw))
	target := disk(t, 4<<20)
	mac := "dc:a6:32:00:03:01"
	act, err, out := deployOnce(t, b, b.URL, mac, target, "g.img", nil)
	if !errors.Is(err, agent.ErrTooSmall) {
		t.Fatalf("agent err = %v, want ErrTooSmall\n%s", err, out)
	}
	if act.State != contract.StateFailed || !strings.Contains(act.Error, "smaller than image") {
		t.Fatalf("server shows %+v", act)
	}
	if got := b.Device(t, mac); !got.Netboot {
		t.Error("netboot switched off after a failed deploy")
	}
}

// P4: a default target that the kernel reports as an SD card (a CM4 Lite's
// carrier slot at mmcblk0) is refused, and nothing is written to it; a
// target the technician named is written.
func TestAgentRefusesSDCardTarget(t *testing.T) {
	b := agenttest.Start(t, "127.0.0.1:0")
	raw := image(1<<20, 0, 15)
	b.AddImage(t, "g.img", bytes.NewReader(raw))
	sys := t.TempDir()
	for _, tc := range []struct {
		name, typ string
		refuse    bool
		wantErr   bool
	}{
		{"default target is an SD card", "SD", true, true},
		{"default target is the eMMC", "MMC", true, false},
		{"named SD target", "SD", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			target := disk(t, 4<<20)
			dev := filepath.Join(sys, "block", filepath.Base(target), "device")
			if err := os.MkdirAll(dev, 0o755); err != nil {
				t.Fatal(err)
			}
			os.WriteFile(filepath.Join(dev, "type"), []byte(tc.typ+"\n"), 0o644)
			os.WriteFile(filepath.Join(dev, "cid"), []byte("035344534333324780e6b1d2e8013b00\n"), 0o644)
			mac := fmt.Sprintf("dc:a6:32:00:05:%02x", len(tc.name))
			act, err, out := deployOnce(t, b, b.URL, mac, target, "g.img", func(a *agent.Agent) { a.RefuseSD, a.Sys = tc.refuse, sys })
			if !tc.wantErr {
				if err != nil {
					t.Fatalf("deploy: %v\n%s", err, out)
				}
				return
			}
			if !errors.Is(err, agent.ErrSDCard) || act.State != contract.StateFailed || !strings.Contains(act.Error, "cm4bench.target=") ||
				!strings.Contains(act.Error, "035344534333") {
				t.Fatalf("err %v, action %+v\n%s", err, act, out)
			}
			if got, _ := os.ReadFile(target); bytes.Contains(got, raw[:4096]) {
				t.Error("the SD card was written")
			}
		})
	}
}

func TestAgentRefusesRegularFileInBlockMode(t *testing.T) {
	b := agenttest.Start(t, "127.0.0.1:0")
	b.AddImage(t, "g.img", bytes.NewReader(image(1<<20, 0, 14)))
	target := disk(t, 4<<20)
	act, err, out := deployOnce(t, b, b.URL, "dc:a6:32:00:04:01", target, "g.img", func(a *agent.Agent) { a.AllowFile = false })
	if err == nil || act.State != contract.StateFailed || !strings.Contains(act.Error, "not a block device") {
		t.Fatalf("err %v, action %+v\n%s", err, act, out)
	}
}

func TestAgentBackupThroughServer(t *testing.T) {
	b := agenttest.Start(t, "127.0.0.1:0")
	content := image(10<<20+512, 60, 15)
	target := disk(t, int64(len(content)))
	os.WriteFile(target, content, 0o644)
	mac := "dc:a6:32:00:05:01"
	act, err, out := deployOnce(t, b, b.URL, mac, target, "", nil)
	if err != nil {
		t.Fatalf("agent: %v\n%s", err, out)
	}
	if act.State != contract.StateDone || act.SHA256 != hexsum(content) || act.Bytes != int64(len(content)) {
		t.Fatalf("server shows %+v", act)
	}
	var found *contract.Backup
	for _, bk := range b.Backups(t) {
		if bk.MAC == mac {
			found = &bk
		}
	}
	if found == nil || found.SHA256 != hexsum(content) || found.Size != int64(len(content)) || found.Serial != "abcdef12" {
		t.Fatalf("stored backup %+v", found)
	}
	stored := b.DownloadBackup(t, found.ID)
	if bytes.HasPrefix(stored, []byte{0x28, 0xb5, 0x2f, 0xfd}) {
		d, _ := zstd.NewReader(bytes.NewReader(stored))
		stored, _ = io.ReadAll(d)
	}
	if !bytes.Equal(stored, content) {
		t.Fatal("downloaded backup differs from the device")
	}
}

// TestAgentKeepsPolling runs one agent without Once: a failed deploy is
// reported and polling goes on, a good deploy calls Reboot, and a backup
// after that still works - all in the same process.
func TestAgentKeepsPolling(t *testing.T) {
	b := agenttest.Start(t, "127.0.0.1:0")
	raw := image(2<<20, 30, 16)
	b.AddImage(t, "small.img", bytes.NewReader(raw))
	b.AddImage(t, "big.img", bytes.NewReader(image(8<<20, 0, 17)))
	target := disk(t, 4<<20)
	mac := "dc:a6:32:00:06:01"
	reboots := make(chan struct{}, 4)
	var con console
	a := &agent.Agent{Server: b.URL, MAC: mac, Target: target, AllowFile: true, Console: &con,
		PollInterval: 100 * time.Millisecond, Reboot: func() error { reboots <- struct{}{}; return nil }}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Run returned %v after cancel", err)
		}
	}()
	b.WaitRegistered(t, mac, 30*time.Second)

	act := b.SetAction(t, mac, contract.ActionDeploy, "big.img")
	if got := b.WaitAction(t, mac, act.ID, 30*time.Second); got.State != contract.StateFailed {
		t.Fatalf("too-big deploy: %+v", got)
	}
	act = b.SetAction(t, mac, contract.ActionDeploy, "small.img")
	if got := b.WaitAction(t, mac, act.ID, 30*time.Second); got.State != contract.StateDone {
		t.Fatalf("deploy after a failure: %+v\n%s", got, con.String())
	}
	select {
	case <-reboots:
	case <-time.After(10 * time.Second):
		t.Fatal("no reboot after a verified deploy")
	}
	act = b.SetAction(t, mac, contract.ActionBackup, "")
	got := b.WaitAction(t, mac, act.ID, 30*time.Second)
	content, _ := os.ReadFile(target)
	if got.State != contract.StateDone || got.SHA256 != hexsum(content) {
		t.Fatalf("backup after a deploy: %+v", got)
	}
	if len(reboots) != 0 {
		t.Error("a backup rebooted the board")
	}
}

// TestAgentResumeZstdLive: a raw image sent zstd-compressed on the fly has
// no Range support; after a cut the agent re-reads the same stream (same
// ETag) up to where it was, and the deploy still completes verified.
func TestAgentResumeZstdLive(t *testing.T) {
	b := agenttest.Start(t, "127.0.0.1:0")
	raw := image(16<<20, 20, 18)
	b.AddImage(t, "live.img", bytes.NewReader(raw))
	p := agenttest.StartCutProxy(t, b.Addr, 4<<20, 1)
	target := disk(t, 16<<20)
	mac := "dc:a6:32:00:07:01"
	act, err, out := deployOnce(t, b, p.URL, mac, target, "live.img", func(a *agent.Agent) { a.AcceptZstd = true })
	if err != nil {
		t.Fatalf("agent: %v\n%s", err, out)
	}
	if p.Cuts() != 0 || act.State != contract.StateDone || act.SHA256 != hexsum(raw) {
		t.Fatalf("cuts left %d, action %+v\n%s", p.Cuts(), act, out)
	}
	if !strings.Contains(out, "resumed 1 time(s)") {
		t.Errorf("no resume on the console:\n%s", out)
	}
	got, _ := os.ReadFile(target)
	if !bytes.Equal(got, raw) {
		t.Fatal("target differs from the image")
	}
}
