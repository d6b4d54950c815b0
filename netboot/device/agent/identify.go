package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// ledNames are the activity LED's names under /sys/class/leds: "ACT" on
// current Raspberry Pi kernels, "led0" on older ones.
var ledNames = []string{"ACT", "led0"}

// ErrNoLED marks a board whose kernel shows no activity LED.
var ErrNoLED = errors.New("no activity LED under /sys/class/leds (ACT or led0)")

// identify blinks the activity LED (the kernel's "timer" trigger, 100 ms
// on and off) for d, then puts back the trigger it found. Nothing else on
// the board changes.
func (a *Agent) identify(ctx context.Context, d time.Duration) error {
	sys := a.Sys
	if sys == "" {
		sys = "/sys"
	}
	var dir string
	for _, n := range ledNames {
		p := filepath.Join(sys, "class", "leds", n)
		if _, err := os.Stat(filepath.Join(p, "trigger")); err == nil {
			dir = p
			break
		}
	}
	if dir == "" {
		return fmt.Errorf("identify: %w", ErrNoLED)
	}
	was, err := currentTrigger(filepath.Join(dir, "trigger"))
	if err != nil {
		return fmt.Errorf("identify: %w", err)
	}
	write := func(name, v string) error { return os.WriteFile(filepath.Join(dir, name), []byte(v), 0o644) }
	if err := write("trigger", "timer"); err != nil {
		return fmt.Errorf("identify: set the LED trigger: %w", err)
	}
	defer func() {
		if err := write("trigger", was); err != nil {
			a.say("identify: could not restore the LED trigger %q: %v", was, err)
		}
	}()
	// The timer trigger creates delay_on and delay_off; a fake sysfs in
	// tests has them as plain files.
	_ = write("delay_on", "100")
	_ = write("delay_off", "100")
	if !sleep(ctx, d) {
		return ctx.Err()
	}
	return nil
}

// currentTrigger reads the selected trigger: the kernel lists them all and
// marks the current one as [name].
func currentTrigger(p string) (string, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return "", fmt.Errorf("read %s: %w", p, err)
	}
	for _, f := range strings.Fields(string(b)) {
		if strings.HasPrefix(f, "[") && strings.HasSuffix(f, "]") {
			return strings.Trim(f, "[]"), nil
		}
	}
	if f := strings.Fields(string(b)); len(f) == 1 {
		return f[0], nil // a plain file holding just the name
	}
	return "none", nil
}
