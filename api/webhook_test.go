package api_test

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cm4bench/cm4bench/api"
	"github.com/cm4bench/cm4bench/api/webhook"
	"github.com/cm4bench/cm4bench/internal/contract"
)

// receiver is a real HTTP endpoint on loopback that checks every
// signature, deduplicates by delivery id, fails its first requests, and
// can go down and come back on the same port.
type receiver struct {
	t      *testing.T
	secret string
	addr   string

	mu       sync.Mutex
	failFor  int                 // answer 500 to this many more requests
	seen     map[string]string   // delivery id -> event
	keys     map[string][]string // event -> data keys, one per unique delivery
	requests int
	badSigs  int
	srv      *http.Server
}

func (r *receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.requests++
	if !webhook.Verify(r.secret, body, req.Header.Get(contract.HeaderWebhookSignature)) {
		r.badSigs++
		http.Error(w, "bad signature", http.StatusUnauthorized)
		return
	}
	if r.failFor > 0 {
		r.failFor--
		http.Error(w, "busy", http.StatusInternalServerError)
		return
	}
	var p contract.WebhookPayload
	if err := json.Unmarshal(body, &p); err != nil || p.Delivery != req.Header.Get(contract.HeaderWebhookDelivery) || p.Event != req.Header.Get(contract.HeaderWebhookEvent) {
		r.t.Errorf("payload %s does not match its headers", body)
	}
	if _, dup := r.seen[p.Delivery]; !dup {
		r.seen[p.Delivery] = p.Event
		var d struct {
			MAC    string `json:"mac"`
			Result string `json:"result"`
			State  string `json:"state"`
		}
		json.Unmarshal(p.Data, &d)
		r.keys[p.Event] = append(r.keys[p.Event], d.MAC+" "+d.Result+d.State)
	}
	w.WriteHeader(http.StatusNoContent)
}

func (r *receiver) up() {
	r.t.Helper()
	addr := r.addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		r.t.Fatal(err)
	}
	r.addr = ln.Addr().String()
	r.srv = &http.Server{Handler: r}
	go r.srv.Serve(ln)
}

func (r *receiver) down() { r.srv.Close() }

func (r *receiver) delivered(event string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := append([]string(nil), r.keys[event]...)
	sort.Strings(out)
	return out
}

// Webhooks across failures, an endpoint that is down, and a server restart:
// every event arrives (at least once; the receiver deduplicates by delivery
// id), every signature checks, and provisioning never waits for the endpoint.
func TestWebhooksAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	raw := filepath.Join(dir, "golden.img")
	img := makeImage(t, raw, 256<<10)
	fast := func(s *api.Server) { s.WebhookBackoff = func(int) time.Duration { return 30 * time.Millisecond } }
	b := startServer(t, dir, raw, fast)
	rc := &receiver{t: t, secret: "s3cret-for-the-test", failFor: 3, seen: map[string]string{}, keys: map[string][]string{}}
	rc.up()
	defer rc.down()

	for _, tc := range []struct {
		body string
		want string
	}{
		{`{"url":"ftp://x/y","events":["ledger.row"]}`, "want http(s)"},
		{`{"url":"http://","events":["ledger.row"]}`, "want http(s)"},
		{`{"url":"http://127.0.0.1:9/x","events":["board.exploded"]}`, `board.exploded`},
		{`{"url":"http://127.0.0.1:9/x","events":[]}`, "at least one event"},
	} {
		if code, out := b.call("POST", "/api/v1/webhooks", []byte(tc.body), b.token); code != 400 || !strings.Contains(string(out), tc.want) {
			t.Errorf("POST %s = %d %s, want 400 with %q", tc.body, code, out, tc.want)
		}
	}
	var hook contract.Webhook
	b.admin("POST", "/api/v1/webhooks", contract.WebhookRequest{URL: "http://" + rc.addr + "/cm4bench", Events: contract.WebhookEvents(), Secret: rc.secret}, 201, &hook)
	if hook.Secret != rc.secret {
		t.Fatalf("created webhook %+v", hook)
	}

	deploy := func(b *bench, mac string, ok bool) {
		t.Helper()
		b.register(mac)
		b.admin("POST", "/api/v1/devices/"+mac+"/action", contract.SetActionRequest{Action: "deploy"}, 200, nil)
		p := b.poll(mac)
		b.download(p)
		d := contract.ActionDone{MAC: mac, ActionID: p.ActionID, Token: p.Token, Status: "success", SHA256: sha(img)}
		if !ok {
			d.Status, d.Error = "failed", "write error"
		}
		start := time.Now()
		b.admin("POST", contract.PathActionDone, d, 200, nil)
		if el := time.Since(start); el > 2*time.Second {
			t.Errorf("action-done took %s with the endpoint failing", el)
		}
	}
	const m1, m2, m3, m4 = "dc:a6:32:00:c0:01", "dc:a6:32:00:c0:02", "dc:a6:32:00:c0:03", "dc:a6:32:00:c0:04"
	deploy(b, m1, true)
	// The endpoint goes down: m2's deliveries wait in the outbox while the
	// server is stopped and started again; m3's are made after the restart.
	rc.down()
	deploy(b, m2, false)
	time.Sleep(200 * time.Millisecond) // attempts fail against the closed port
	b.stop()
	b = startServer(t, dir, raw, fast)
	deploy(b, m3, true)
	time.Sleep(200 * time.Millisecond)
	if got := rc.delivered(contract.WebhookActionFailed); len(got) != 0 {
		t.Fatalf("delivered while the endpoint was down: %v", got)
	}
	rc.up()
	deploy(b, m4, true)

	want := map[string][]string{
		contract.WebhookBoardRegistered: {m1 + " ", m2 + " ", m3 + " ", m4 + " "},
		contract.WebhookActionDone:      {m1 + " done", m3 + " done", m4 + " done"},
		contract.WebhookActionFailed:    {m2 + " failed"},
		contract.WebhookLedgerRow:       {m1 + " done", m2 + " failed", m3 + " done", m4 + " done"},
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		all := true
		for ev, w := range want {
			all = all && strings.Join(rc.delivered(ev), "|") == strings.Join(w, "|")
		}
		if all {
			break
		}
		if time.Now().After(deadline) {
			for ev, w := range want {
				t.Errorf("%s: delivered %q, want %q", ev, rc.delivered(ev), w)
			}
			var ds []contract.Delivery
			b.admin("GET", "/api/v1/webhooks/deliveries?limit=100", nil, 200, &ds)
			t.Fatalf("deliveries: %+v", ds)
		}
		time.Sleep(50 * time.Millisecond)
	}
	rc.mu.Lock()
	bad, reqs, unique := rc.badSigs, rc.requests, len(rc.seen)
	rc.mu.Unlock()
	if bad != 0 || unique != 12 || reqs < unique+3 {
		t.Errorf("%d requests, %d unique deliveries, %d bad signatures; want 12 unique, at least 3 retries, no bad signature", reqs, unique, bad)
	}
	// The receiver records a delivery before the server has read its answer
	// and marked it delivered, so the log may lag the receiver by one write.
	var ds []contract.Delivery
	for {
		ds = nil
		b.admin("GET", "/api/v1/webhooks/deliveries?limit=100", nil, 200, &ds)
		pending := 0
		for _, d := range ds {
			if d.State != "delivered" {
				pending++
			}
		}
		if pending == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	retried := 0
	for _, d := range ds {
		if d.State != "delivered" {
			t.Errorf("delivery %+v not delivered", d)
		}
		if d.Attempts > 1 {
			retried++
		}
	}
	if len(ds) != 12 || retried == 0 {
		t.Errorf("delivery log: %d entries, %d retried", len(ds), retried)
	}
	if code, _ := b.call("DELETE", "/api/v1/webhooks/"+hook.ID, nil, b.token); code != 200 {
		t.Errorf("delete webhook = %d", code)
	}
}
