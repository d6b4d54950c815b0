package store

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cm4bench/cm4bench/api/ledger"
	"github.com/cm4bench/cm4bench/internal/contract"
)

// BenchmarkLedgerExport streams the ledger as CSV from a real SQLite file
// with 10,000 and 100,000 rows: rows per second, and the peak Go heap
// while exporting (sampled every millisecond), which must not grow with
// the number of rows.
func BenchmarkLedgerExport(b *testing.B) {
	ctx := context.Background()
	type result struct {
		rows       int
		rowsPerSec float64
		peakMiB    float64
	}
	var results []result
	for _, n := range []int{10000, 100000} {
		st, err := Open(ctx, filepath.Join(b.TempDir(), "db"))
		if err != nil {
			b.Fatal(err)
		}
		tx, _ := st.db.BeginTx(ctx, nil)
		for i := range n {
			r := contract.LedgerRow{Time: time.Unix(1e9+int64(i), 0), Station: "bench-1", Slot: "10.42.0.17", Operator: "rule line-a (zero-click)",
				MAC: fmt.Sprintf("dc:a6:32:%02x:%02x:%02x", i>>16&255, i>>8&255, i&255), Serial: fmt.Sprintf("1%07x", i),
				Model: "Raspberry Pi Compute Module 4 Rev 1.1", Revision: "c03141", Bootloader: "2026-05-17", EMMCBytes: 31268536320,
				EMMCCID: "150100424a544434520778a1bc4cd4c3", EMMCCSD: "d0270132ff", ActionID: fmt.Sprint(i + 1), Recipe: "line-a", RecipeVersion: 3,
				Rule: "line-a", Image: "golden.img.zst", ImageSHA256: "598f3c1b6b3e3a24a4b7d2f0d1e9c8b7a6f5e4d3c2b1a09f8e7d6c5b4a392817",
				Values: []contract.PoolValue{{Pool: "hostnames", Value: fmt.Sprintf("line-a-%05d", i)}, {Pool: "serials", Value: fmt.Sprintf("SN-%06d", i)}},
				Files:  []contract.FileHash{{Path: "user-data", SHA256: "aa"}, {Path: "serial.txt", SHA256: "bb"}},
				Result: "done", Seconds: contract.PhaseSeconds{Netboot: 9.1, Register: 0.4, Write: 61, Verify: 20, Customise: 0.2, Total: 91}}
			row, _ := json.Marshal(r)
			if _, err := tx.ExecContext(ctx, `INSERT INTO ledger (time, action_id, mac, serial, recipe, result, row) VALUES (?, ?, ?, ?, ?, ?, ?)`,
				r.Time.UnixNano(), i+1, r.MAC, r.Serial, r.Recipe, r.Result, string(row)); err != nil {
				b.Fatal(err)
			}
		}
		if err := tx.Commit(); err != nil {
			b.Fatal(err)
		}
		runtime.GC()
		var peak atomic.Uint64
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			var ms runtime.MemStats
			for {
				runtime.ReadMemStats(&ms)
				if ms.HeapInuse > peak.Load() {
					peak.Store(ms.HeapInuse)
				}
				select {
				case <-stop:
					return
				case <-time.After(time.Millisecond):
				}
			}
		}()
		t0 := time.Now()
		count := 0
		w, _ := ledger.NewWriter(io.Discard, "csv")
		if err := st.Ledger(ctx, LedgerFilter{}, func(r contract.LedgerRow) error { count++; return w.Write(r) }); err != nil {
			b.Fatal(err)
		}
		w.Flush()
		el := time.Since(t0)
		close(stop)
		<-done
		st.Close()
		if count != n {
			b.Fatalf("exported %d rows of %d", count, n)
		}
		results = append(results, result{n, float64(n) / el.Seconds(), float64(peak.Load()) / (1 << 20)})
	}
	b.ReportMetric(results[1].rowsPerSec, "rows/s")
	b.ReportMetric(results[1].peakMiB, "peak-heap-MiB")
	fmt.Printf("\nLedger CSV export, streamed from SQLite (peak Go heap sampled every 1 ms)\n")
	fmt.Printf("%9s %11s %15s\n", "rows", "rows/s", "peak heap MiB")
	for _, r := range results {
		fmt.Printf("%9d %11.0f %15.1f\n", r.rows, r.rowsPerSec, r.peakMiB)
	}
	fmt.Printf("heap at 100,000 rows / heap at 10,000 rows: %.2fx (flat = about 1)\n", results[1].peakMiB/results[0].peakMiB)
}
