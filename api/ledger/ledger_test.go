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
