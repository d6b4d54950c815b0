package tokenbucket

import (
	"testing"
	"time"
)

func TestBucket(t *testing.T) {
	t0 := time.Unix(1000, 0)
	b := &Bucket{Rate: 2, Burst: 3}
	n := 0
	for range 10 {
		if b.Allow(t0) {
			n++
		}
	}
	if n != 3 {
		t.Errorf("burst allowed %d, want 3", n)
	}
	if b.Full(t0) || b.Allow(t0.Add(100*time.Millisecond)) {
		t.Error("refilled too fast")
	}
	if !b.Allow(t0.Add(500 * time.Millisecond)) {
		t.Error("no token after half a second at 2/s")
	}
	if !b.Full(t0.Add(10 * time.Second)) {
		t.Error("not full after a long idle")
	}
}
