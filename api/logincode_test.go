package api

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestLoginCodeUsedOnce: many requests racing with one login code: exactly
// one gets in; an expired code gets nobody in.
func TestLoginCodeUsedOnce(t *testing.T) {
	var ss sessions
	code := ss.add(time.Minute)
	var wins atomic.Int32
	var wg sync.WaitGroup
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if ss.take(code) {
				wins.Add(1)
			}
		}()
	}
	wg.Wait()
	if n := wins.Load(); n != 1 {
		t.Fatalf("%d logins with one code, want 1", n)
	}
	old := ss.add(-time.Second)
	if ss.take(old) || ss.valid(old) {
		t.Error("an expired code was accepted")
	}
	live := ss.add(time.Minute)
	if !ss.valid(live) || !ss.valid(live) {
		t.Error("valid() used up a session")
	}
}
