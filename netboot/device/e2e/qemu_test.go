// Package e2e boots a real arm64 Linux kernel (Debian's linux-image-*-arm64,
// fetched by scripts/arm64-kernel.sh) in qemu-system-aarch64 with the
// initramfs cm4bench builds, and has cm4agent, as PID 1, deploy an image to
// a virtio disk standing in for the eMMC and back it up again, through the
// real `cm4bench netboot serve --no-dhcp --no-tftp` (the built binary) on
// 127.0.0.1, which the guest reaches as 10.0.2.2 through QEMU user
// networking. It takes about half a minute under TCG, so it is part of
// `make test`; `make e2e` fetches the kernel and runs it alone, verbosely.
// Without qemu or the kernel it fails in CI and skips elsewhere.
package e2e

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cm4bench/cm4bench/internal/contract"
	"github.com/cm4bench/cm4bench/internal/repotest"
	"github.com/cm4bench/cm4bench/internal/syncbuf"
	"github.com/cm4bench/cm4bench/netboot/device/agenttest"
	"github.com/klauspost/compress/zstd"
)

const (
	imageSize = 48 << 20 // golden image
	diskSize  = 64 << 20 // virtio "eMMC"
	guestMAC  = "52:54:00:c4:be:01"
)

// need fails in CI (where .ci/run installs everything) and skips elsewhere.
func need(t *testing.T, what string, err error) {
	t.Helper()
	if err == nil {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s: %v", what, err)
	}
	t.Skipf("%s: %v (run scripts/deps.sh and scripts/arm64-kernel.sh)", what, err)
}

func kernelCache(t *testing.T) string {
	dir := os.Getenv("CM4BENCH_KERNEL_CACHE")
	if dir == "" {
		dir = "/var/cache/cm4bench-test/arm64-kernel"
	}
	_, err := os.Stat(filepath.Join(dir, "vmlinuz"))
	need(t, "arm64 kernel (scripts/arm64-kernel.sh)", err)
	return dir
}

func goldenImage() []byte {
	r := rand.New(rand.NewPCG(42, 42))
	img := make([]byte, imageSize)
	copy(img[446:], []byte{0x80, 0, 0, 0, 0x0c}) // an MBR-ish first sector
	img[510], img[511] = 0x55, 0xaa
	for off := 64 << 10; off < imageSize; off += 64 << 10 {
		if r.IntN(100) < 60 {
			continue // 60% zero blocks, like a mostly empty file system
		}
		for i := off; i < off+64<<10; i++ {
			img[i] = byte(r.Uint32() >> 8)
		}
	}
	return img
}

func hexsum(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

func freePort(t *testing.T) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// guest is one QEMU run.
type guest struct {
	cmd  *exec.Cmd
	log  *syncbuf.Buffer
	done chan error
}

// errGuestStall marks a run the emulated arm64 guest could not finish: its
// kernel reported a soft lockup or an RCU stall. Under TCG this happens now
// and then in virtio_net's receive poll when the host is loaded (the
// guest's CPU stops being scheduled for minutes); it is a fault of the
// emulation, not of the agent, and the run is repeated once.
var errGuestStall = errors.New("the emulated guest's kernel stalled (soft lockup / RCU stall under TCG)")

// stalled reports whether the console shows the guest kernel's own stall
// report.
func (g *guest) stalled() bool {
	c := g.log.String()
	return strings.Contains(c, "BUG: soft lockup") || strings.Contains(c, "self-detected stall on CPU")
}

// waitExit waits for QEMU to exit (the agent reboots after a verified
// deploy and -no-reboot ends QEMU). It returns errGuestStall at once when
// the guest kernel reports a stall.
func (g *guest) waitExit(timeout time.Duration) error {
	deadline := time.After(timeout)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-g.done:
			return nil
		case <-deadline:
			if g.stalled() {
				return errGuestStall
			}
			return fmt.Errorf("the guest did not reboot within %s", timeout)
		case <-tick.C:
			if g.stalled() {
				return errGuestStall
			}
		}
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func boot(t *testing.T, qemu, kdir, initrd, disk string, port int) *guest {
	t.Helper()
	args := []string{
		"-M", "virt", "-cpu", "cortex-a57", "-smp", "2", "-m", "512", "-nographic", "-no-reboot",
		"-kernel", filepath.Join(kdir, "vmlinuz"), "-initrd", initrd,
		"-append", "console=ttyAMA0 panic=-1 cm4bench.server=http://10.0.2.2:" + strconv.Itoa(port),
		"-netdev", "user,id=n0", "-device", "virtio-net-device,netdev=n0,mac=" + guestMAC,
		"-drive", "file=" + disk + ",if=none,format=raw,id=d0,discard=unmap,detect-zeroes=unmap", "-device", "virtio-blk-device,drive=d0",
	}
	g := &guest{log: &syncbuf.Buffer{}, done: make(chan error, 1)}
	g.cmd = exec.Command(qemu, args...)
	g.cmd.Stdout, g.cmd.Stderr = g.log, g.log
	g.cmd.Stdin = nil
	if err := g.cmd.Start(); err != nil {
		t.Fatalf("start qemu: %v", err)
	}
	go func() { g.done <- g.cmd.Wait() }()
	t.Cleanup(func() {
		if g.cmd.ProcessState == nil {
			g.cmd.Process.Kill()
			<-g.done
		}
		if t.Failed() {
			t.Logf("guest console (tail):\n%s", tail(g.log.String(), 60))
		}
	})
	return g
}

func TestQEMUDeployAndBackup(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("linux only")
	}
	qemu, err := exec.LookPath("qemu-system-aarch64")
	need(t, "qemu-system-aarch64 (qemu-system-arm)", err)
	kdir := kernelCache(t)
	root := repotest.Root(t)
	tmp := t.TempDir()

	// The agent for arm64, as `make build` embeds it, and cm4bench itself.
	agentBin := filepath.Join(tmp, "cm4agent-linux-arm64")
	cm4bench := filepath.Join(tmp, "cm4bench")
	for _, b := range []struct {
		out, pkg string
		env      []string
	}{
		{agentBin, "./cmd/cm4agent", []string{"CGO_ENABLED=0", "GOOS=linux", "GOARCH=arm64"}},
		{cm4bench, "./cmd/cm4bench", nil},
	} {
		build := exec.Command("go", "build", "-trimpath", "-o", b.out, b.pkg)
		build.Dir = root
		build.Env = append(os.Environ(), b.env...)
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", b.pkg, err, out)
		}
	}

	// The initramfs, built by `cm4bench netboot initramfs` with the virtio
	// drivers of this kernel.
	initrd := filepath.Join(tmp, "initrd.img")
	if out, err := exec.Command(cm4bench, "netboot", "initramfs", "-o", initrd, "--agent", agentBin, "--arch", "arm64",
		"--target", "/dev/vda", "--accept-zstd", "--modules-dir", filepath.Join(kdir, "modules"),
		"--modules", "virtio_mmio,virtio_blk,virtio_net").CombinedOutput(); err != nil {
		t.Fatalf("cm4bench netboot initramfs: %v\n%s", err, out)
	} else {
		t.Logf("%s", out)
	}

	// The emulator can stall (errGuestStall); such a run is repeated once
	// in fresh directories, with the stall written to the log.
	for attempt := 1; ; attempt++ {
		dir, err := os.MkdirTemp(tmp, fmt.Sprintf("run%d-", attempt))
		if err != nil {
			t.Fatal(err)
		}
		err = deployAndBackup(t, qemu, kdir, initrd, cm4bench, dir)
		if err == nil {
			return
		}
		if !errors.Is(err, errGuestStall) || attempt == 2 {
			t.Fatal(err)
		}
		t.Logf("attempt %d: %v; running the deploy and backup again", attempt, err)
	}
}

// deployAndBackup runs the real server on loopback, boots the guest to
// deploy the golden image, then again to back the disk up, checking every
// byte. It returns errGuestStall when the emulated kernel stalled; other
// failures fail the test.
func deployAndBackup(t *testing.T, qemu, kdir, initrd, cm4bench, tmp string) error {
	// The golden image, stored zstd-compressed as the server's default.
	img := goldenImage()
	var z bytes.Buffer
	enc, _ := zstd.NewWriter(&z)
	enc.Write(img)
	enc.Close()
	golden := filepath.Join(tmp, "golden.img.zst")
	os.WriteFile(golden, z.Bytes(), 0o644)

	// A used eMMC: every byte non-zero, so skipped zero blocks must really
	// have been zeroed (discard/write-zeroes) to pass.
	disk := filepath.Join(tmp, "emmc.img")
	os.WriteFile(disk, bytes.Repeat([]byte("old eMMC"), diskSize/8), 0o644)

	// The real server: `cm4bench netboot serve --no-dhcp --no-tftp` on loopback.
	port := freePort(t)
	data := filepath.Join(tmp, "data")
	srvLog := &syncbuf.Buffer{}
	srv := exec.Command(cm4bench, "netboot", "serve", "--no-dhcp", "--no-tftp", "--http", "127.0.0.1:"+strconv.Itoa(port),
		"--data", data, "--image", golden, "--poll-interval", "1s")
	srv.Stdout, srv.Stderr = srvLog, srvLog
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	srvDone := make(chan error, 1)
	go func() { srvDone <- srv.Wait() }()
	t.Cleanup(func() {
		srv.Process.Signal(syscall.SIGTERM)
		select {
		case <-srvDone:
		case <-time.After(10 * time.Second):
			srv.Process.Kill()
			<-srvDone
		}
		if t.Failed() {
			t.Logf("server log (tail):\n%s", tail(srvLog.String(), 30))
		}
	})
	var token []byte
	for deadline := time.Now().Add(60 * time.Second); ; {
		token, _ = os.ReadFile(filepath.Join(data, contract.FileAdminToken))
		if len(token) > 0 {
			if resp, err := http.Get("http://127.0.0.1:" + strconv.Itoa(port) + contract.PathOpenAPI); err == nil {
				resp.Body.Close()
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("cm4bench netboot serve did not come up:\n%s", srvLog.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	tech := &agenttest.Tech{URL: "http://127.0.0.1:" + strconv.Itoa(port), Token: strings.TrimSpace(string(token))}

	// Boot 1: deploy. After a verified deploy the agent reboots, and
	// -no-reboot makes QEMU exit.
	start := time.Now()
	g := boot(t, qemu, kdir, initrd, disk, port)
	d := tech.WaitRegistered(t, guestMAC, 3*time.Minute)
	t.Logf("guest registered after %s: facts %+v", time.Since(start).Round(time.Second), d.Facts)
	if d.Facts == nil || d.Facts.EMMCBytes != diskSize || len(d.Facts.MACs) == 0 || d.Facts.MACs[0] != guestMAC {
		t.Errorf("facts from the guest: %+v", d.Facts)
	}
	act := tech.SetAction(t, guestMAC, contract.ActionDeploy, filepath.Base(golden))
	if err := g.waitExit(4 * time.Minute); errors.Is(err, errGuestStall) {
		t.Logf("guest console (tail):\n%s", tail(g.log.String(), 30))
		g.cmd.Process.Kill()
		<-g.done
		return err
	} else if err != nil {
		t.Fatal(err)
	}
	done := tech.WaitAction(t, guestMAC, act.ID, 10*time.Second)
	t.Logf("deploy: %s after %s, %+v", done.State, time.Since(start).Round(time.Second), done)
	if done.State != contract.StateDone || done.SHA256 != hexsum(img) {
		t.Fatalf("deploy action %+v\nconsole:\n%s", done, tail(g.log.String(), 40))
	}
	if !strings.Contains(g.log.String(), "verified on read-back (O_DIRECT)") {
		t.Errorf("the guest did not verify with O_DIRECT:\n%s", tail(g.log.String(), 20))
	}
	for _, l := range strings.Split(g.log.String(), "\n") {
		if strings.Contains(l, "deploy done") || strings.Contains(l, "did not read back as zeros") {
			t.Logf("guest: %s", strings.TrimSpace(l))
		}
	}
	got, _ := os.ReadFile(disk)
	if !bytes.Equal(got[:imageSize], img) {
		t.Fatal("virtio disk differs from the image after the deploy")
	}
	if !bytes.Equal(got[imageSize:imageSize+8], []byte("old eMMC")) {
		t.Error("the deploy wrote past the image")
	}

	// Boot 2: backup of the whole disk.
	act = tech.SetAction(t, guestMAC, contract.ActionBackup, "")
	start = time.Now()
	g = boot(t, qemu, kdir, initrd, disk, port)
	done = tech.WaitAction(t, guestMAC, act.ID, 4*time.Minute)
	t.Logf("backup: %s after %s, %+v", done.State, time.Since(start).Round(time.Second), done)
	if done.State != contract.StateDone || done.SHA256 != hexsum(got) || done.Bytes != diskSize {
		t.Fatalf("backup action %+v", done)
	}
	var bk *contract.Backup
	for _, b := range tech.Backups(t) {
		if b.ActionID == act.ID {
			bk = &b
		}
	}
	if bk == nil || bk.SHA256 != hexsum(got) {
		t.Fatalf("stored backup %+v", bk)
	}
	stored := tech.DownloadBackup(t, bk.ID)
	if bytes.HasPrefix(stored, []byte{0x28, 0xb5, 0x2f, 0xfd}) {
		dec, _ := zstd.NewReader(bytes.NewReader(stored))
		stored, _ = io.ReadAll(dec)
	}
	if !bytes.Equal(stored, got) {
		t.Fatal("the stored backup differs from the virtio disk")
	}
	fmt.Fprintf(os.Stderr, "e2e: deploy %d bytes and backup %d bytes through a real arm64 kernel: ok\n", imageSize, diskSize)
	return nil
}

// TestGuestStallDetected: the retry above is taken only for the guest
// kernel's own stall report, never for a guest that just failed.
func TestGuestStallDetected(t *testing.T) {
	for _, tc := range []struct {
		console string
		exited  bool
		want    error
	}{
		{"[  240.09] watchdog: BUG: soft lockup - CPU#0 stuck for 223s! [ksoftirqd/0:13]\n", false, errGuestStall},
		{"[  215.42] rcu: INFO: rcu_sched self-detected stall on CPU\n", false, errGuestStall},
		{"cm4agent: deploy FAILED: sha256 mismatch\n", false, nil},
		{"cm4agent: deploy done\n", true, nil},
	} {
		g := &guest{log: &syncbuf.Buffer{}, done: make(chan error, 1)}
		g.log.Write([]byte(tc.console))
		if tc.exited {
			g.done <- nil
		}
		err := g.waitExit(1500 * time.Millisecond)
		switch {
		case tc.want != nil && !errors.Is(err, tc.want):
			t.Errorf("%q: err = %v, want %v", tc.console, err, tc.want)
		case tc.want == nil && tc.exited && err != nil:
			t.Errorf("%q: err = %v, want nil", tc.console, err)
		case tc.want == nil && !tc.exited && (err == nil || errors.Is(err, errGuestStall)):
			t.Errorf("%q: err = %v, want a plain timeout", tc.console, err)
		}
	}
}
