package api_test

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cm4bench/cm4bench/internal/contract"
)

type sseEvent struct {
	id   int64
	kind string
	ev   contract.Event
}

// openSSE connects to /api/events and returns a channel of parsed events.
func (b *bench) openSSE(ctx context.Context, lastID string) <-chan sseEvent {
	b.t.Helper()
	req, _ := http.NewRequestWithContext(ctx, "GET", b.base+contract.PathEvents, nil)
	req.Header.Set("Authorization", "Bearer "+b.token)
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		b.t.Fatal(err)
	}
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		b.t.Fatalf("SSE: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	ch := make(chan sseEvent, 100)
	go func() {
		defer resp.Body.Close()
		defer close(ch)
		sc := bufio.NewScanner(resp.Body)
		var cur sseEvent
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, "id: "):
				cur.id, _ = strconv.ParseInt(line[4:], 10, 64)
			case strings.HasPrefix(line, "event: "):
				cur.kind = line[7:]
			case strings.HasPrefix(line, "data: "):
				json.Unmarshal([]byte(line[6:]), &cur.ev)
			case line == "" && cur.kind != "":
				ch <- cur
				cur = sseEvent{}
			}
		}
	}()
	return ch
}

func next(t *testing.T, ch <-chan sseEvent, kind string) sseEvent {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case e, ok := <-ch:
			if !ok {
				t.Fatalf("SSE stream ended waiting for %s", kind)
			}
			if e.kind == kind {
				return e
			}
		case <-timeout:
			t.Fatalf("no %s event", kind)
		}
	}
}

// TestSSEAndMetrics follows a deploy through the live event stream, checks
// Last-Event-ID replay, and reads the Prometheus metrics it produced.
func TestSSEAndMetrics(t *testing.T) {
	dir := t.TempDir()
	golden := makeImage(t, filepath.Join(dir, "golden.img"), 3<<20)
	b := startServer(t, dir, filepath.Join(dir, "golden.img"))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := b.openSSE(ctx, "")

	const mac = "dc:a6:32:00:70:01"
	b.register(mac)
	reg := next(t, ch, contract.EventDeviceRegister)
	if reg.ev.MAC != mac || reg.id == 0 || reg.ev.ID != reg.id {
		t.Errorf("register event = %+v", reg)
	}
	b.admin("POST", "/api/v1/devices/"+mac+"/action", contract.SetActionRequest{Action: "deploy"}, 200, nil)
	set := next(t, ch, contract.EventActionSet)
	if set.ev.Fields["type"] != "deploy" {
		t.Errorf("action.set = %+v", set.ev)
	}
	p := b.poll(mac)
	// The agent reports progress; the dashboard sees it.
	code, out := b.call("POST", contract.PathProgress, contract.Progress{MAC: mac, ActionID: p.ActionID, Token: p.Token, Phase: "write", Done: 1 << 20, Total: int64(len(golden)), Rate: 5e6}, "")
	if code != 200 {
		t.Fatalf("progress = %d %s", code, out)
	}
	var pr sseEvent
	for pr.ev.Fields["phase"] != "write" {
		pr = next(t, ch, contract.EventActionProgress)
	}
	if pr.ev.Fields["done"] != float64(1<<20) || pr.ev.Fields["total"] != float64(len(golden)) {
		t.Errorf("progress event = %+v", pr.ev)
	}
	code, _ = b.call("POST", contract.PathLog, contract.LogLines{MAC: mac, ActionID: p.ActionID, Token: p.Token, Lines: []string{"writing", "verifying"}}, "")
	if code != 200 {
		t.Fatalf("log = %d", code)
	}
	b.download(p)
	done := contract.ActionDone{MAC: mac, ActionID: p.ActionID, Token: p.Token, Status: "success", SHA256: sha(golden), Bytes: int64(len(golden))}
	if code, out := b.call("POST", contract.PathActionDone, done, ""); code != 200 {
		t.Fatalf("done = %d %s", code, out)
	}
	fin := next(t, ch, contract.EventActionDone)
	nb := next(t, ch, contract.EventNetbootSet)
	if nb.ev.MAC != mac || nb.ev.Fields["enabled"] != false {
		t.Errorf("netboot.set = %+v", nb.ev)
	}
	var d contract.Device
	b.admin("GET", "/api/v1/devices/"+mac, nil, 200, &d)
	if len(d.Action.Log) != 2 || d.Action.SHA256 != sha(golden) {
		t.Errorf("device action = %+v", d.Action)
	}

	// A reconnecting dashboard replays from Last-Event-ID without gaps.
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	replay := b.openSSE(ctx2, strconv.FormatInt(reg.id, 10))
	first := <-replay
	if first.id != reg.id+1 {
		t.Errorf("replay starts at %d, want %d", first.id, reg.id+1)
	}
	last := first.id
	for last < nb.id {
		e := <-replay
		if e.id != last+1 {
			t.Fatalf("replay gap: %d after %d", e.id, last)
		}
		last = e.id
	}
	_ = fin

	// History endpoints.
	var evs []contract.Event
	b.admin("GET", "/api/v1/events?since="+strconv.FormatInt(reg.id-1, 10)+"&limit=2", nil, 200, &evs)
	if len(evs) != 2 || evs[0].ID != reg.id {
		t.Errorf("events since = %+v", evs)
	}
	var acts []contract.Action
	b.admin("GET", "/api/v1/actions?mac="+mac, nil, 200, &acts)
	if len(acts) != 1 || acts[0].State != contract.StateDone {
		t.Errorf("actions = %+v", acts)
	}

	// Metrics: devices by state, bytes served, action durations, events.
	code, m := b.call("GET", contract.PathMetrics, nil, "")
	if code != 200 {
		t.Fatalf("metrics = %d", code)
	}
	for _, want := range []string{
		`cm4bench_devices{state="done"} 1`,
		`cm4bench_action_duration_seconds_count{state="done",type="deploy"} 1`,
		`cm4bench_events_total{kind="device.register"} 1`,
	} {
		if !strings.Contains(string(m), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	if v := metricValue(string(m), "cm4bench_image_bytes_served_total"); v != float64(len(golden)) {
		t.Errorf("bytes served = %v, want %d", v, len(golden))
	}
}

func metricValue(text, name string) float64 {
	for _, l := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return -1
}
