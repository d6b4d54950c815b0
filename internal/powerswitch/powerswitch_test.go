package powerswitch

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestPowerCycle(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "calls")
	for _, tt := range []struct {
		name    string
		shell   string
		timeout time.Duration
		wantErr string // "" = success
		wantLog string
	}{
		{"mac as $1 and in the environment", `echo "$1 $CM4BENCH_MAC $CM4BENCH_SERIAL" >> ` + log, 0, "", "dc:a6:32:00:00:01 dc:a6:32:00:00:01 10000abc\n"},
		{"a failing switch names its output", `echo "port 3: no such port" >&2; exit 4`, 0, "failed (exit status 4): port 3: no such port", ""},
		{"silent failure", `exit 1`, 0, "no output", ""},
		{"a hung switch is given up", `sleep 10`, 200 * time.Millisecond, "did not finish within 200ms", ""},
		{"runaway output is bounded", `yes x | head -c 100000 >&2; exit 2`, 0, "failed", ""},
		{"no command", " ", 0, "no power command", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			os.Remove(log)
			c := &Command{Shell: tt.shell, Timeout: tt.timeout}
			err := c.PowerCycle(context.Background(), "dc:a6:32:00:00:01", "10000abc")
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("PowerCycle: %v", err)
				}
				got, _ := os.ReadFile(log)
				if string(got) != tt.wantLog {
					t.Errorf("the command saw %q, want %q", got, tt.wantLog)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("PowerCycle error %v, want one containing %q", err, tt.wantErr)
			}
			if len(err.Error()) > maxOutput+200 {
				t.Errorf("error of %d bytes: the output is not bounded", len(err.Error()))
			}
		})
	}
}

// One board is cycled once at a time; another board is not held up.
func TestPowerCycleOneAtATime(t *testing.T) {
	dir := t.TempDir()
	gate, started := filepath.Join(dir, "go"), filepath.Join(dir, "started-")
	c := &Command{Shell: `touch ` + started + `$1; while [ ! -e ` + gate + ` ]; do sleep 0.02; done`}
	first := make(chan error, 1)
	go func() { first <- c.PowerCycle(context.Background(), "dc:a6:32:00:00:01", "") }()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(started + "dc:a6:32:00:00:01"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the first power cycle never started")
		}
	}
	if err := c.PowerCycle(context.Background(), "dc:a6:32:00:00:01", ""); !errors.Is(err, ErrBusy) {
		t.Fatalf("a second cycle of the same board while the first runs: %v, want ErrBusy", err)
	}
	os.WriteFile(gate, nil, 0o644)
	if err := c.PowerCycle(context.Background(), "dc:a6:32:00:00:02", ""); err != nil {
		t.Errorf("another board: %v", err)
	}
	if err := <-first; err != nil {
		t.Errorf("first cycle: %v", err)
	}
}
