// Package powerswitch power-cycles a bench board through a command the
// bench owner supplies (serve --power-command): a USB hub port switch
// (uhubctl), a PoE switch, a relay board, or the demo bench's simulated
// power. cm4bench knows no switch itself; the command is the seam.
//
// The command runs as `/bin/sh -c CMD cm4bench-power MAC` with the board's
// MAC as $1, and CM4BENCH_MAC and CM4BENCH_SERIAL in its environment. Exit
// status 0 means the board's power was cut and restored. It is given a
// deadline and its output is kept, bounded, for the error message.
package powerswitch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"
)

// DefaultTimeout bounds one power cycle.
const DefaultTimeout = 30 * time.Second

// maxOutput bounds what is kept of the command's output.
const maxOutput = 4 << 10

// Command power-cycles boards by running a shell command.
type Command struct {
	Shell   string        // the command line, run by /bin/sh -c
	Timeout time.Duration // 0 = DefaultTimeout
	Logger  *slog.Logger  // nil = discard

	mu   sync.Mutex
	busy map[string]bool // one cycle per board at a time
}

// ErrBusy is returned while the same board is already being power-cycled.
var ErrBusy = errors.New("this board is already being power-cycled")

// PowerCycle cuts and restores the power of the board with this MAC.
func (c *Command) PowerCycle(ctx context.Context, mac, serial string) error {
	if strings.TrimSpace(c.Shell) == "" {
		return errors.New("powerswitch: no power command configured")
	}
	c.mu.Lock()
	if c.busy == nil {
		c.busy = map[string]bool{}
	}
	if c.busy[mac] {
		c.mu.Unlock()
		return fmt.Errorf("powerswitch: %s: %w", mac, ErrBusy)
	}
	c.busy[mac] = true
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.busy, mac)
		c.mu.Unlock()
	}()

	timeout := c.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", c.Shell, "cm4bench-power", mac)
	cmd.Env = append(os.Environ(), "CM4BENCH_MAC="+mac, "CM4BENCH_SERIAL="+serial)
	out := &capped{max: maxOutput}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.WaitDelay = time.Second
	start := time.Now()
	err := cmd.Run()
	lg := c.Logger
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	if err != nil {
		msg := strings.TrimSpace(out.String())
		if ctx.Err() != nil {
			return fmt.Errorf("powerswitch: power-cycle %s: the power command did not finish within %s: %s", mac, timeout, or(msg, "no output"))
		}
		return fmt.Errorf("powerswitch: power-cycle %s: the power command failed (%v): %s", mac, err, or(msg, "no output"))
	}
	lg.Info("board power-cycled", "mac", mac, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// capped keeps the first max bytes written to it.
type capped struct {
	mu  sync.Mutex
	buf bytes.Buffer
	max int
}

func (c *capped) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if room := c.max - c.buf.Len(); room > 0 {
		c.buf.Write(p[:min(room, len(p))])
	}
	return len(p), nil
}

func (c *capped) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.String()
}
