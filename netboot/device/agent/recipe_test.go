package agent_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cm4bench/cm4bench/internal/contract"
	"github.com/cm4bench/cm4bench/netboot/bootfs/bootfstest"
	"github.com/cm4bench/cm4bench/netboot/device/agent"
	"github.com/cm4bench/cm4bench/netboot/device/agenttest"
)

// TestAgentRecipeDeploy: a recipe deploy through the real server writes the
// image, then the board's files into its boot partition (mtype reads them
// back), reports their hashes, and then reboots, powers off or holds as the
// recipe says; a stream-verified recipe skips the read-back.
func TestAgentRecipeDeploy(t *testing.T) {
	b := agenttest.Start(t, "127.0.0.1:0")
	img := filepath.Join(t.TempDir(), "fat.img")
	size, err := bootfstest.Make(img, bootfstest.Disk{StartMiB: 1, BootMiB: 2, FAT: 12, RootMiB: 1, Seed: 3})
	if err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(img)
	sum := sha256.Sum256(data)
	b.AddImage(t, "fat.img", bytes.NewReader(data))
	var y strings.Builder
	for _, after := range []string{"reboot", "poweroff", "hold"} {
		verify := "readback"
		if after == "hold" {
			verify = "stream"
		}
		fmt.Fprintf(&y, "---\nname: r-%s\nimage: fat.img\nsha256: %s\nafter: %s\nverify: %s\nfiles:\n  - path: hostname.txt\n    template: \"{{ .Serial }}-%s\\n\"\n",
			after, hex.EncodeToString(sum[:]), after, verify, after)
	}
	b.Do(t, http.MethodPut, "/api/v1/recipes", strings.NewReader(y.String()), nil)

	for i, after := range []string{"reboot", "poweroff", "hold"} {
		t.Run(after, func(t *testing.T) {
			mac := fmt.Sprintf("dc:a6:32:00:08:%02x", i)
			target := disk(t, size+(1<<20))
			var rebooted, poweredOff atomic.Int32
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			var con console
			a := &agent.Agent{Server: b.URL, MAC: mac, Target: target, AllowFile: true, Console: &con,
				PollInterval: 100 * time.Millisecond, ProgressInterval: 100 * time.Millisecond,
				Facts: func() *contract.Facts {
					return &contract.Facts{Serial: "1000abc" + fmt.Sprint(i), Model: "test", EMMCBytes: size + 1<<20}
				},
				Reboot:   func() error { rebooted.Add(1); cancel(); return nil },
				PowerOff: func() error { poweredOff.Add(1); cancel(); return nil }}
			errc := make(chan error, 1)
			go func() { errc <- a.Run(ctx) }()
			b.WaitRegistered(t, mac, 30*time.Second)
			var act contract.Action
			b.Do(t, http.MethodPost, "/api/v1/devices/"+mac+"/action", strings.NewReader(`{"action":"deploy","recipe":"r-`+after+`"}`), &act)
			done := b.WaitAction(t, mac, act.ID, 30*time.Second)
			if done.State != contract.StateDone {
				t.Fatalf("recipe deploy: %s %q\n%s", done.State, done.Error, con.String())
			}
			time.Sleep(500 * time.Millisecond) // a holding agent would have acted by now
			cancel()
			<-errc
			want := map[string][2]int32{"reboot": {1, 0}, "poweroff": {0, 1}, "hold": {0, 0}}[after]
			if rebooted.Load() != want[0] || poweredOff.Load() != want[1] {
				t.Errorf("after %s: rebooted %d, powered off %d", after, rebooted.Load(), poweredOff.Load())
			}
			out, err := exec.Command("mtype", "-i", target+"@@1048576", "::hostname.txt").Output()
			if err != nil || string(out) != "1000abc"+fmt.Sprint(i)+"-"+after+"\n" {
				t.Errorf("hostname.txt on the eMMC: %q %v", out, err)
			}
			if !strings.Contains(con.String(), "customised: 1 per-device files") {
				t.Errorf("console: %s", con.String())
			}
			// verify: stream (the hold recipe) skips the read-back and says so.
			if readBack := strings.Contains(con.String(), "verified on read-back"); readBack != (after != "hold") ||
				(after == "hold") != strings.Contains(con.String(), "checked on the stream only") {
				t.Errorf("verify policy %s: console %s", map[bool]string{true: "stream", false: "readback"}[after == "hold"], con.String())
			}
		})
	}
}
