package usbboot_test

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cm4bench/cm4bench/usbboot/usbboottest"
)

var update = flag.Bool("update", false, "rewrite the golden transcripts in testdata/")

// TestGoldenTranscripts pins the exact wire behaviour of the host, every
// setup packet and bulk length (virtual time since the first record),
// against testdata/*.transcript. Regenerate with -update after a deliberate
// change, and compare with usbmon captures of real boards (HARDWARE.md).
func TestGoldenTranscripts(t *testing.T) {
	for _, tt := range []struct {
		name string
		cfg  usbboottest.BoardConfig
	}{
		{"msd-2711", usbboottest.BoardConfig{Port: "1-1.3", Mode: usbboottest.ModeMSD, Serial: "af04b2da"}},
		{"recovery-2711", usbboottest.BoardConfig{Port: "1-1.3", Mode: usbboottest.ModeRecovery, Serial: "af04b2da"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := newRig(t, tt.cfg)
			res, err := r.server(t).Serve(t.Context())
			if err != nil || len(res) != 1 || res[0].Err != nil {
				t.Fatalf("Serve: %v %+v", err, res)
			}
			recs := r.boards[0].Transcript()
			var b strings.Builder
			for _, rec := range recs {
				fmt.Fprintf(&b, "%8.3fs %s\n", rec.Time.Sub(recs[0].Time).Seconds(), rec)
			}
			path := filepath.Join("testdata", tt.name+".transcript")
			if *update {
				if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if got := b.String(); got != string(want) {
				gl, wl := strings.Split(got, "\n"), strings.Split(string(want), "\n")
				for i := range min(len(gl), len(wl)) {
					if gl[i] != wl[i] {
						t.Fatalf("%s differs at line %d:\n got %s\nwant %s", path, i+1, gl[i], wl[i])
					}
				}
				t.Fatalf("%s: %d lines, want %d", path, len(gl), len(wl))
			}
		})
	}
}
