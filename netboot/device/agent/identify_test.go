package agent_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cm4bench/cm4bench/internal/contract"
	"github.com/cm4bench/cm4bench/netboot/device/agent"
	"github.com/cm4bench/cm4bench/netboot/device/agenttest"
)

// TestAgentIdentify: an identify blinks the activity LED (the kernel's timer
// trigger) through the real server, puts the trigger back, and leaves the
// board's netboot switch on; a board without the LED fails in words.
func TestAgentIdentify(t *testing.T) {
	b := agenttest.Start(t, "127.0.0.1:0")
	for _, tc := range []struct {
		name, led, mac string
		wantState      string
	}{
		{"ACT", "ACT", "dc:a6:32:00:07:01", contract.StateDone},
		{"led0 on older kernels", "led0", "dc:a6:32:00:07:02", contract.StateDone},
		{"no LED", "", "dc:a6:32:00:07:03", contract.StateFailed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sys := t.TempDir()
			trig := ""
			if tc.led != "" {
				dir := filepath.Join(sys, "class", "leds", tc.led)
				os.MkdirAll(dir, 0o755)
				trig = filepath.Join(dir, "trigger")
				os.WriteFile(trig, []byte("none [mmc0] timer heartbeat\n"), 0o644)
			}
			seen := make(chan string, 1)
			errc := make(chan error, 1)
			go func() {
				err, _ := runAgent(t, b.URL, tc.mac, disk(t, 1<<20), func(a *agent.Agent) {
					a.Sys, a.IdentifyFor = sys, 700*time.Millisecond
				})
				errc <- err
			}()
			b.WaitRegistered(t, tc.mac, 30*time.Second)
			act := b.SetAction(t, tc.mac, contract.ActionIdentify, "")
			if trig != "" {
				go func() { // what the LED trigger is while it blinks
					for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
						if v, _ := os.ReadFile(trig); strings.TrimSpace(string(v)) == "timer" {
							seen <- "timer"
							return
						}
					}
					seen <- "never timer"
				}()
			}
			err := <-errc
			done := b.WaitAction(t, tc.mac, act.ID, 30*time.Second)
			if done.State != tc.wantState {
				t.Fatalf("identify = %s (%s), agent err %v", done.State, done.Error, err)
			}
			if trig == "" {
				if !strings.Contains(done.Error, "no activity LED") {
					t.Errorf("failure in words: %q", done.Error)
				}
				return
			}
			if got := <-seen; got != "timer" {
				t.Errorf("the LED trigger was %s during the identify", got)
			}
			if v, _ := os.ReadFile(trig); strings.TrimSpace(string(v)) != "mmc0" {
				t.Errorf("trigger after the identify = %q, want mmc0 back", v)
			}
			if d := b.Device(t, tc.mac); !d.Netboot {
				t.Error("an identify switched the board's netboot off")
			}
		})
	}
}
