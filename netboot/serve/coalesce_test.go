package serve

import (
	"testing"
	"time"

	"github.com/cm4bench/cm4bench/internal/contract"
)

func TestCoalescer(t *testing.T) {
	c := &coalescer{window: 30 * time.Second}
	t0 := time.Unix(1000, 0)
	probe := contract.Event{Kind: "tftp.probe", MAC: "dc:a6:32:00:00:01", Fields: map[string]any{"file": "start4.elf"}}
	kept := 0
	for i := range 20000 { // a TFTP flood: 20,000 identical events in 20 s
		if _, ok := c.admit(probe, t0.Add(time.Duration(i)*time.Millisecond)); ok {
			kept++
		}
	}
	if kept != 1 {
		t.Errorf("%d of 20000 identical events kept, want 1", kept)
	}
	ev, ok := c.admit(probe, t0.Add(31*time.Second))
	if !ok || ev.Fields["repeats_suppressed"] != 19999 {
		t.Errorf("after the window: kept %v, fields %v", ok, ev.Fields)
	}
	// other files, devices, kinds and errors are not merged
	for _, e := range []contract.Event{
		{Kind: "tftp.probe", MAC: "dc:a6:32:00:00:01", Fields: map[string]any{"file": "fixup4.dat"}},
		{Kind: "tftp.probe", MAC: "dc:a6:32:00:00:02", Fields: map[string]any{"file": "start4.elf"}},
		{Kind: "tftp.error", Level: "error", MAC: "dc:a6:32:00:00:01", Fields: map[string]any{"file": "start4.elf"}},
		{Kind: contract.EventDHCPRival, Message: "rival"},
		{Kind: contract.EventActionDone, MAC: "dc:a6:32:00:00:01"},
	} {
		if _, ok := c.admit(e, t0.Add(32*time.Second)); !ok {
			t.Errorf("%+v dropped", e)
		}
	}
	// the map is bounded
	for i := range 3 * maxCoalesceKeys {
		c.admit(contract.Event{Kind: "dhcp.offer", Message: string(rune(i + 32))}, t0)
	}
	if len(c.last) > maxCoalesceKeys+1 {
		t.Errorf("%d keys kept", len(c.last))
	}
}
