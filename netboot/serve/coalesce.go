package serve

import (
	"fmt"
	"time"

	"github.com/cm4bench/cm4bench/internal/contract"
)

// coalescer drops DHCP and TFTP events that repeat one already recorded
// within window (same kind, device and file or message): a flood of probes
// or "not found" answers becomes one row, and the next one recorded after
// the window says how many were left out (security item 4). It is used by
// the single event pump, so it needs no lock.
type coalescer struct {
	window     time.Duration
	last       map[string]time.Time
	suppressed map[string]int
}

const maxCoalesceKeys = 4096

// coalesced reports the kinds a flood repeats. Transfers and acks stay one
// row each: they show what a board is doing.
func coalesced(kind string) bool {
	switch kind {
	case contract.EventTFTPProbe, contract.EventTFTPNotFound, contract.EventTFTPError, contract.EventDHCPOffer, contract.EventDHCPNak, contract.EventDHCPDecline, contract.EventDHCPRelease, contract.EventDHCPError:
		return true
	}
	return false
}

func (c *coalescer) admit(ev contract.Event, now time.Time) (contract.Event, bool) {
	if !coalesced(ev.Kind) || ev.Level == "error" {
		return ev, true
	}
	if c.last == nil || len(c.last) > maxCoalesceKeys {
		c.last, c.suppressed = map[string]time.Time{}, map[string]int{}
	}
	key := ev.Kind + "|" + ev.MAC + "|" + fmt.Sprint(ev.Fields["file"]) + "|" + fmt.Sprint(ev.Fields["ip"])
	if ev.Fields["file"] == nil && ev.Fields["ip"] == nil {
		key += "|" + ev.Message
	}
	if at, ok := c.last[key]; ok && now.Sub(at) < c.window {
		c.suppressed[key]++
		return ev, false
	}
	if n := c.suppressed[key]; n > 0 {
		f := make(map[string]any, len(ev.Fields)+1)
		for k, v := range ev.Fields {
			f[k] = v
		}
		f["repeats_suppressed"] = n
		ev.Fields = f
		delete(c.suppressed, key)
	}
	c.last[key] = now
	return ev, true
}
