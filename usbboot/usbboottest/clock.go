package usbboottest

import (
	"context"
	"runtime"
	"sync"
	"time"

	"github.com/cm4bench/cm4bench/usbboot"
)

// Clock is a fake usbboot.Clock: Sleep returns at once and moves the
// virtual time forward, so a 20 s silent flash window costs nothing.
// It is shared by the host state machines and the simulated boards.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

var _ usbboot.Clock = (*Clock)(nil)

// NewClock returns a fake clock starting at a fixed instant.
func NewClock() *Clock {
	return &Clock{now: time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)}
}

// Now returns the virtual time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the virtual time forward by d.
func (c *Clock) Advance(d time.Duration) {
	if d <= 0 {
		return
	}
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// Sleep advances the virtual time by d and returns ctx.Err().
func (c *Clock) Sleep(ctx context.Context, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c.Advance(d)
	runtime.Gosched() // let the goroutine being waited for run
	return ctx.Err()
}
