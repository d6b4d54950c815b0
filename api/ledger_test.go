package api_test

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cm4bench/cm4bench/api"
	"github.com/cm4bench/cm4bench/api/ledger"
	"github.com/cm4bench/cm4bench/internal/contract"
)

// The ledger over HTTP: one row per deploy that ended (done, failed or
// cancelled; none for a backup or identify), who started it, filters, and
// the CSV and JSON-lines exports.
func TestLedgerRowsAndExports(t *testing.T) {
	dir := t.TempDir()
	raw := filepath.Join(dir, "golden.img")
	img := makeImage(t, raw, 1<<20)
	b := startServer(t, dir, raw)
	const m1, m2, m3 = "dc:a6:32:00:b0:01", "dc:a6:32:00:b0:02", "dc:a6:32:00:b0:03"
	for i, m := range []string{m1, m2, m3} {
		body := `{"mac":"` + m + `","ip":"127.0.0.1","facts":{"serial":"1000b00` + string(rune('1'+i)) + `","model":"Raspberry Pi Compute Module 4 Rev 1.1","emmc_bytes":8000000000}}`
		if code, out := b.call("POST", contract.PathRegister, []byte(body), ""); code != 200 {
			t.Fatalf("register = %d %s", code, out)
		}
	}
	deploy := func(mac string, ok bool) {
		t.Helper()
		b.admin("POST", "/api/v1/devices/"+mac+"/action", contract.SetActionRequest{Action: "deploy"}, 200, nil)
		p := b.poll(mac)
		b.download(p)
		done := contract.ActionDone{MAC: mac, ActionID: p.ActionID, Token: p.Token, Status: "success", SHA256: sha(img), Bytes: int64(len(img)),
			Phases: &contract.PhaseSeconds{Write: 1.5, Verify: 0.5}}
		if !ok {
			done.Status, done.Error = "failed", "verify failed: sha256 mismatch"
		}
		b.admin("POST", contract.PathActionDone, done, 200, nil)
	}
	deploy(m1, true)
	deploy(m2, false)
	b.admin("POST", "/api/v1/devices/"+m3+"/action", contract.SetActionRequest{Action: "deploy"}, 200, nil)
	b.admin("POST", "/api/v1/devices/"+m3+"/action", contract.SetActionRequest{Action: "none"}, 200, nil)
	b.admin("POST", "/api/v1/devices/"+m1+"/action", contract.SetActionRequest{Action: "identify"}, 200, nil)

	var rows []contract.LedgerRow
	b.admin("GET", "/api/v1/ledger", nil, 200, &rows)
	if len(rows) != 3 {
		t.Fatalf("%d ledger rows, want 3 (done, failed, cancelled; no identify): %+v", len(rows), rows)
	}
	got := map[string]contract.LedgerRow{}
	for _, r := range rows {
		got[r.Result] = r
	}
	if r := got["done"]; r.MAC != m1 || r.Serial != "1000b001" || r.ImageSHA256 != sha(img) || r.Operator != "admin token" ||
		r.Seconds.Write != 1.5 || r.Seconds.Verify != 0.5 || r.WrittenBytes != int64(len(img)) || r.Station == "" || r.Slot != "127.0.0.1" {
		t.Errorf("done row: %+v", r)
	}
	if r := got["failed"]; r.MAC != m2 || !strings.Contains(r.Error, "sha256 mismatch") {
		t.Errorf("failed row: %+v", r)
	}
	if r := got["cancelled"]; r.MAC != m3 || r.Error == "" {
		t.Errorf("cancelled row: %+v", r)
	}
	for _, tc := range []struct {
		query string
		n     int
	}{
		{"result=failed", 1}, {"serial=1000b001", 1}, {"since=1h", 3}, {"until=2000-01-01T00:00:00Z", 0}, {"recipe=none", 0}, {"limit=2", 2},
	} {
		var rs []contract.LedgerRow
		b.admin("GET", "/api/v1/ledger?"+tc.query, nil, 200, &rs)
		if len(rs) != tc.n {
			t.Errorf("?%s: %d rows, want %d", tc.query, len(rs), tc.n)
		}
	}
	for _, bad := range []string{"since=yesterday", "result=great", "format=xml", "limit=-1"} {
		if code, out := b.call("GET", "/api/v1/ledger?"+bad, nil, b.token); code != 400 {
			t.Errorf("?%s = %d %s, want 400", bad, code, out)
		}
	}
	code, out := b.call("GET", "/api/v1/ledger?format=csv", nil, b.token)
	recs, err := csv.NewReader(bytes.NewReader(out)).ReadAll()
	if code != 200 || err != nil || len(recs) != 4 || strings.Join(recs[0], ",") != strings.Join(ledger.Header, ",") {
		t.Fatalf("CSV export = %d, %v, %d records: %s", code, err, len(recs), out)
	}
	if !bytes.Contains(out, []byte("\r\n")) {
		t.Error("CSV lines do not end with CRLF (RFC 4180)")
	}
	// Line figures: the last hour holds all three; one board of three passed.
	var lf api.LineFigures
	b.admin("GET", "/api/v1/figures", nil, 200, &lf)
	if len(lf.Hour) == 0 || lf.Hour[0].Boards != 3 || lf.Hour[0].Done != 1 || lf.Hour[0].BoardsPerHour != 1 ||
		lf.Hour[0].FirstPass != 1.0/3 || lf.Hour[0].Phases["write"].P50 != 1.5 || lf.Shift[0].BoardsPerHour != 1.0/8 {
		t.Errorf("figures: %+v", lf)
	}
	code, out = b.call("GET", "/metrics", nil, b.token)
	if code != 200 || !strings.Contains(string(out), `cm4bench_boards_per_hour{recipe="",window="hour"} 1`) ||
		!strings.Contains(string(out), `cm4bench_phase_seconds{phase="write",quantile="0.5",recipe="",window="hour"} 1.5`) {
		t.Errorf("/metrics lacks the line figures: %d", code)
	}
	code, out = b.call("GET", "/api/v1/ledger?format=jsonl&result=done", nil, b.token)
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	var one contract.LedgerRow
	if code != 200 || len(lines) != 1 || json.Unmarshal([]byte(lines[0]), &one) != nil || one.MAC != m1 {
		t.Errorf("JSON lines export = %d %s", code, out)
	}
}
