package ledger

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/cm4bench/cm4bench/internal/contract"
)

func TestWriters(t *testing.T) {
	row := contract.LedgerRow{ID: 7, Time: time.Date(2026, 12, 3, 8, 0, 0, 0, time.UTC), MAC: "dc:a6:32:00:00:01",
		MACs: []string{"dc:a6:32:00:00:01", "dc:a6:32:00:00:02"}, Serial: "10000abc", Error: `verify failed: "sha256", mismatch` + "\nline 2",
		Values: []contract.PoolValue{{Pool: "serials", Value: "SN, 1"}}, Result: "failed"}
	if len(Record(row)) != len(Header) {
		t.Fatalf("%d fields for %d columns", len(Record(row)), len(Header))
	}
	for _, tc := range []struct {
		format string
		check  func(t *testing.T, out []byte)
	}{
		{"csv", func(t *testing.T, out []byte) {
			recs, err := csv.NewReader(bytes.NewReader(out)).ReadAll()
			if err != nil || len(recs) != 2 {
				t.Fatalf("%d records, %v", len(recs), err)
			}
			got := map[string]string{}
			for i, h := range recs[0] {
				got[h] = recs[1][i]
			}
			if got["error"] != row.Error || got["values"] != "serials=SN, 1" || got["macs"] != "dc:a6:32:00:00:01;dc:a6:32:00:00:02" || got["time"] != "2026-12-03T08:00:00Z" {
				t.Errorf("fields after a round trip: %v", got)
			}
		}},
		{"jsonl", func(t *testing.T, out []byte) {
			var back contract.LedgerRow
			if strings.Count(string(out), "\n") != 1 || json.Unmarshal(out, &back) != nil || back.Error != row.Error {
				t.Errorf("jsonl %q", out)
			}
		}},
	} {
		t.Run(tc.format, func(t *testing.T) {
			var buf bytes.Buffer
			w, err := NewWriter(&buf, tc.format)
			if err != nil {
				t.Fatal(err)
			}
			if err := w.Write(row); err != nil {
				t.Fatal(err)
			}
			if err := w.Flush(); err != nil {
				t.Fatal(err)
			}
			tc.check(t, buf.Bytes())
		})
	}
	if _, err := NewWriter(&bytes.Buffer{}, "xml"); err == nil {
		t.Error("format xml accepted")
	}
}

func TestSummary(t *testing.T) {
	at := time.Date(2026, 12, 3, 8, 0, 0, 0, time.UTC)
	row := func(serial, recipe, result string, total float64) contract.LedgerRow {
		return contract.LedgerRow{Serial: serial, Recipe: recipe, Result: result, Time: at, Seconds: contract.PhaseSeconds{Write: total / 2, Total: total}}
	}
	s := NewSummary("shift", at.Add(-8*time.Hour), 8)
	for _, r := range []contract.LedgerRow{
		row("a", "line-a", "failed", 0), row("a", "line-a", "done", 100), // a retry: done, not first pass
		row("b", "line-a", "done", 80), row("c", "line-a", "done", 120), row("d", "line-b", "done", 60),
		row("e", "line-b", "cancelled", 0),
	} {
		s.Add(r)
	}
	figs := s.Figures()
	byRecipe := map[string]Figures{}
	for _, f := range figs {
		byRecipe[f.Recipe] = f
	}
	for _, tc := range []struct {
		recipe             string
		boards, done       int
		bph, fpy, p50, p95 float64
	}{
		{"", 5, 4, 0.5, 3.0 / 5, 80, 120}, // nearest rank of 60, 80, 100, 120
		{"line-a", 3, 3, 3.0 / 8, 2.0 / 3, 100, 120},
		{"line-b", 2, 1, 1.0 / 8, 0.5, 60, 60},
	} {
		f := byRecipe[tc.recipe]
		if f.Boards != tc.boards || f.Done != tc.done || f.BoardsPerHour != tc.bph || f.FirstPass != tc.fpy ||
			f.Phases["total"].P50 != tc.p50 || f.Phases["total"].P95 != tc.p95 {
			t.Errorf("recipe %q: %+v, want boards %d done %d bph %v fpy %v p50 %v p95 %v", tc.recipe, f, tc.boards, tc.done, tc.bph, tc.fpy, tc.p50, tc.p95)
		}
	}
	if figs[0].Recipe != "" {
		t.Errorf("the bench's figures come first: %+v", figs[0])
	}
}
