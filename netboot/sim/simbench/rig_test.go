package simbench_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cm4bench/cm4bench/internal/contract"
	"github.com/cm4bench/cm4bench/internal/repotest"
	"github.com/cm4bench/cm4bench/netboot/sim/netns"
	"github.com/cm4bench/cm4bench/netboot/sim/pisim"
	"github.com/cm4bench/cm4bench/netboot/sim/simbench"
)

// binaries are built once per test run: the real cm4agent and the server.
var (
	binOnce             sync.Once
	agentBin, serverBin string
	serverIsReal        bool
	binErr              error
	binDir              string
	repoRoot            string
)

// buildBinaries builds the real cm4agent and cm4bench (whose netboot serve
// is the server) once per test run.
func buildBinaries(t testing.TB) (agent, server string) {
	t.Helper()
	binOnce.Do(func() {
		if repoRoot, binErr = repotest.FindRoot(); binErr != nil {
			return
		}
		if binDir, binErr = os.MkdirTemp("", "simbench-bin-"); binErr != nil {
			return
		}
		os.Chmod(binDir, 0o755)
		build := func(out, pkg string, cgo bool) error {
			cmd := exec.Command("go", "build", "-o", filepath.Join(binDir, out), pkg)
			cmd.Dir = repoRoot
			cmd.Env = os.Environ()
			if !cgo {
				cmd.Env = append(cmd.Env, "CGO_ENABLED=0")
			}
			if b, err := cmd.CombinedOutput(); err != nil {
				return fmt.Errorf("go build %s: %v\n%s", pkg, err, b)
			}
			return nil
		}
		if binErr = build("cm4agent", "./cmd/cm4agent", false); binErr != nil {
			return
		}
		agentBin = filepath.Join(binDir, "cm4agent")
		// cm4bench links gousb (cgo) for usbboot.
		if binErr = build("cm4bench", "./cmd/cm4bench", true); binErr != nil {
			return
		}
		serverBin = filepath.Join(binDir, "cm4bench")
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return agentBin, serverBin
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// testRig starts a rig with fast devices: network first, the EEPROM's
// minimum DHCP_TIMEOUT, agents polling every second.
func testRig(t testing.TB, cfg simbench.RigConfig) *simbench.Rig {
	t.Helper()
	requireRoot(t)
	agent, server := buildBinaries(t)
	cfg.Agent, cfg.Cm4bench = agent, server
	if cfg.ImageSize == 0 {
		cfg.ImageSize = 16 << 20
	}
	if cfg.EMMCBytes == 0 {
		cfg.EMMCBytes = 32 << 20
	}
	if cfg.EEPROM.BootOrder == 0 {
		cfg.EEPROM = pisim.EEPROM{BootOrder: 0xf12, DHCPTimeout: 5 * time.Second, DHCPReqTimeout: time.Second}
	}
	if cfg.AgentArgs == nil {
		cfg.AgentArgs = []string{"--poll", "1s"}
	}
	logs := &lockedLogs{m: map[int]*bytes.Buffer{}}
	if cfg.AgentOutput == nil {
		cfg.AgentOutput = logs.writer
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r, err := simbench.StartRig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("server log (tail):\n%s", tailLines(r.ServerLog.String(), 40))
			t.Logf("agent logs:\n%s", logs.dump())
		}
		prefix := simbench.DefaultPrefix + r.Bench.ID
		if err := r.Close(); err != nil {
			t.Errorf("rig close: %v", err)
		}
		if left, _ := netns.Namespaces(prefix); len(left) > 0 {
			t.Errorf("namespaces left: %v", left)
		}
	})
	return r
}

type lockedLogs struct {
	mu sync.Mutex
	m  map[int]*bytes.Buffer
}

func (l *lockedLogs) writer(i int) io.Writer {
	return writerFunc(func(p []byte) (int, error) {
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.m[i] == nil {
			l.m[i] = &bytes.Buffer{}
		}
		return l.m[i].Write(p)
	})
}

func (l *lockedLogs) dump() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var b strings.Builder
	for i, buf := range l.m {
		fmt.Fprintf(&b, "--- board %d\n%s\n", i, tailLines(buf.String(), 25))
	}
	return b.String()
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	last := ""
	for {
		ok, state := cond()
		if ok {
			return
		}
		last = state
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s; last: %s", timeout, what, last)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// waitRegistered waits until every board runs its agent and is registered.
func waitRegistered(t *testing.T, r *simbench.Rig, timeout time.Duration) {
	t.Helper()
	c := r.Client()
	waitFor(t, timeout, "every board registered", func() (bool, string) {
		devs, err := c.Devices(context.Background())
		if err != nil {
			return false, err.Error()
		}
		return len(devs) == len(r.Bench.Devices), fmt.Sprintf("%d of %d registered", len(devs), len(r.Bench.Devices))
	})
}

// waitAction waits until the action with id is in a final state.
func waitAction(t *testing.T, r *simbench.Rig, mac, id string, timeout time.Duration) contract.Action {
	t.Helper()
	c := r.Client()
	var got contract.Action
	waitFor(t, timeout, "action "+id, func() (bool, string) {
		acts, err := c.Actions(context.Background(), mac, 20)
		if err != nil {
			return false, err.Error()
		}
		for _, a := range acts {
			if a.ID == id {
				got = a
				return a.State == contract.StateDone || a.State == contract.StateFailed || a.State == contract.StateCancelled,
					fmt.Sprintf("%s %s %d/%d", a.State, a.Phase, a.Done, a.Total)
			}
		}
		return false, "not in history"
	})
	return got
}

func fileSHA(t *testing.T, path string, n int64) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyN(h, f, n); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// TestRigDeployBackupReboot is the demo flow end to end: boards netboot
// from the real server, the real agent registers, a deploy writes the
// golden image byte for byte and the board reboots into its eMMC (netboot
// switched off: no menu), and a backup stores the other board's eMMC with
// the right sha256.
func TestRigDeployBackupReboot(t *testing.T) {
	r := testRig(t, simbench.RigConfig{Devices: 2})
	waitRegistered(t, r, 90*time.Second)
	ctx := context.Background()
	c := r.Client()
	dep, back := r.Bench.Devices[0], r.Bench.Devices[1]
	da, err := c.SetAction(ctx, dep.Board.MAC.String(), contract.ActionDeploy, "")
	if err != nil {
		t.Fatal(err)
	}
	ba, err := c.SetAction(ctx, back.Board.MAC.String(), contract.ActionBackup, "")
	if err != nil {
		t.Fatal(err)
	}
	if got := waitAction(t, r, dep.Board.MAC.String(), da.ID, 2*time.Minute); got.State != contract.StateDone {
		t.Fatalf("deploy: %+v", got)
	}
	if got := fileSHA(t, dep.EMMC(), 16<<20); got != r.ImageSHA {
		t.Errorf("eMMC after deploy: sha256 %s, image %s", got, r.ImageSHA)
	}
	if got := waitAction(t, r, back.Board.MAC.String(), ba.ID, 2*time.Minute); got.State != contract.StateDone {
		t.Fatalf("backup: %+v", got)
	}
	bks, err := c.Backups(ctx)
	if err != nil || len(bks) != 1 {
		t.Fatalf("backups: %v %v", bks, err)
	}
	if want := fileSHA(t, back.EMMC(), 32<<20); bks[0].SHA256 != want || bks[0].Size != 32<<20 {
		t.Errorf("backup %+v, want sha256 %s of 32 MiB", bks[0], want)
	}
	// The deployed board rebooted: no menu for it any more, so it booted its eMMC.
	waitFor(t, 60*time.Second, "deployed board booted from eMMC", func() (bool, string) {
		s := dep.Status()
		return s.State == simbench.StateEMMC, fmt.Sprintf("%+v", s)
	})
	s := dep.Status()
	if s.Netboots != 1 || s.EMMCBoots != 1 || !strings.Contains(strings.Join(s.LastBoot, "; "), "NETBOOT init failed") {
		t.Errorf("deployed board: %+v", s)
	}
	dev, err := c.Device(ctx, dep.Board.MAC.String())
	if err != nil || dev.Netboot {
		t.Errorf("server still has netboot on for the deployed board: %+v %v", dev, err)
	}
	// The backed-up board keeps running its agent.
	if s := back.Status(); s.State != simbench.StateAgent {
		t.Errorf("backup board: %+v", s)
	}

	// A new job for the deployed board waits until its power is cycled:
	// through the API (the dashboard's Power-cycle), the server's power
	// command reaches this rig and the board netboots again.
	again, err := c.SetAction(ctx, dep.Board.MAC.String(), contract.ActionDeploy, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.PowerCycle(ctx, "dc:a6:32:ff:ff:fe"); err == nil {
		t.Error("power-cycling an unknown board worked")
	}
	if _, err := c.PowerCycle(ctx, dep.Board.MAC.String()); err != nil {
		t.Fatalf("power-cycle through the server: %v\n%s", err, tailLines(r.ServerLog.String(), 20))
	}
	// It netboots again (it may finish the small deploy and reboot before
	// this looks, so the count is what is checked, not the state).
	waitFor(t, 60*time.Second, "the power-cycled board to netboot again", func() (bool, string) {
		s := dep.Status()
		return s.Netboots >= 2, fmt.Sprintf("%+v", s)
	})
	if got := waitAction(t, r, dep.Board.MAC.String(), again.ID, 2*time.Minute); got.State != contract.StateDone {
		t.Fatalf("deploy after the power cycle: %+v", got)
	}
}
