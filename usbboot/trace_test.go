package usbboot_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cm4bench/cm4bench/internal/repotest"
	"github.com/cm4bench/cm4bench/usbboot"
	"github.com/cm4bench/cm4bench/usbboot/usbboottest"
)

// traceOf serves the rig's boards with a tracer and returns the trace.
func traceOf(t *testing.T, r *rig) string {
	t.Helper()
	var buf bytes.Buffer
	srv := r.server(t)
	srv.Trace = usbboot.NewTracer(&buf, r.clk)
	res, err := srv.Serve(t.Context())
	if err != nil {
		t.Fatalf("Serve: %v", err)
	}
	for _, x := range res {
		if x.Err != nil {
			t.Fatalf("board %s: %v", x.Port, x.Err)
		}
	}
	if err := srv.Trace.Err(); err != nil {
		t.Fatal(err)
	}
	return buf.String()
}

// bodies drops the times from a trace and groups it by port (boards run
// in parallel, so only each port's own order is fixed): what must match
// between a recording and its replay.
func bodies(t *testing.T, trace string) []string {
	t.Helper()
	recs, err := usbboot.ParseTrace(strings.NewReader(trace))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range recs {
		out = append(out, r.Port+" "+r.Body())
	}
	slices.SortStableFunc(out, func(a, b string) int {
		pa, _, _ := strings.Cut(a, " ")
		pb, _, _ := strings.Cut(b, " ")
		return strings.Compare(pa, pb)
	})
	return out
}

func sameBodies(t *testing.T, what string, got, want []string) {
	t.Helper()
	if strings.Join(got, "\n") == strings.Join(want, "\n") {
		return
	}
	for i := range min(len(got), len(want)) {
		if got[i] != want[i] {
			t.Fatalf("%s differs at record %d:\n got %s\nwant %s", what, i+1, got[i], want[i])
		}
	}
	t.Fatalf("%s has %d records, want %d", what, len(got), len(want))
}

// TestTraceGoldenAndReplay pins the --trace format against
// testdata/usb/*.trace (the top-level fixtures; -update rewrites them),
// then replays each recording: the simulator plays the device side the
// trace recorded, and the host must do exactly what it did then. A trace
// from the first real bench run goes into testdata/usb/ and is replayed
// the same way.
func TestTraceGoldenAndReplay(t *testing.T) {
	for _, tt := range []struct {
		name string
		cfgs []usbboottest.BoardConfig
	}{
		{"recovery-2711", []usbboottest.BoardConfig{{Port: "1-1.3", Mode: usbboottest.ModeRecovery, Serial: "af04b2da"}}},
		{"msd-2711-two-boards", []usbboottest.BoardConfig{
			{Port: "1-1.2", Mode: usbboottest.ModeMSD, Serial: "10000001"},
			{Port: "1-1.3", Mode: usbboottest.ModeMSD, Serial: "10000002", TwoInterfaces: true, ShortRequests: true}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got := traceOf(t, newRig(t, tt.cfgs...))
			path := filepath.Join(repotest.Root(t), "testdata", "usb", tt.name+".trace")
			if *update {
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if len(tt.cfgs) == 1 && got != string(want) {
				gl, wl := strings.Split(got, "\n"), strings.Split(string(want), "\n")
				for i := range min(len(gl), len(wl)) {
					if gl[i] != wl[i] {
						t.Fatalf("%s differs at line %d:\n got %s\nwant %s", path, i+1, gl[i], wl[i])
					}
				}
				t.Fatalf("%s: %d lines, want %d", path, len(gl), len(wl))
			}
			sameBodies(t, path, bodies(t, got), bodies(t, string(want)))

			// Replay the recording.
			recs, err := usbboot.ParseTrace(bytes.NewReader(want))
			if err != nil {
				t.Fatal(err)
			}
			cfgs, err := usbboottest.ReplayConfigs(recs)
			if err != nil {
				t.Fatal(err)
			}
			if len(cfgs) != len(tt.cfgs) {
				t.Fatalf("replay has %d boards, want %d", len(cfgs), len(tt.cfgs))
			}
			r := newRig(t, cfgs...)
			// serve the same files as the recording
			for i, c := range tt.cfgs {
				r.dirs[cfgs[i].Port] = usbboottest.BootDir(t, filepath.Join(t.TempDir(), "boot"), c.SoC, c.Mode)
			}
			replayed := traceOf(t, r)
			sameBodies(t, "the replay", bodies(t, replayed), bodies(t, string(want)))
		})
	}
}

func TestParseTraceRejects(t *testing.T) {
	for _, line := range []string{
		"garbage",
		"   0.000s 1-1 addr x   open",
		"   0.000s 1-1 addr 2   control 40 00 wValue=zz wIndex=0000 wLength=0 -> 0",
		"   0.000s 1-1 addr 2   bulk    ep=01 len=10 -> 11",
		"   0.000s 1-1 addr 2   teleport",
		"  -1.000s 1-1 addr 2   open",
	} {
		if _, err := usbboot.ParseTraceLine(line); err == nil {
			t.Errorf("ParseTraceLine(%q) accepted", line)
		}
	}
	if _, err := usbboot.ParseTrace(strings.NewReader(usbboot.TraceHeader + "\n\nnot a line\n")); err == nil || !strings.Contains(err.Error(), "line 3") {
		t.Errorf("ParseTrace error %v does not name line 3", err)
	}
}

func FuzzParseTraceLine(f *testing.F) {
	for _, s := range []string{
		`   2.500s 1-1.3 addr 3   control c0 00 wValue=0104 wIndex=0000 wLength=260 -> 260 (GetFileSize "config.txt")`,
		`   0.000s 1-1.3 addr 2   bulk    ep=01 len=16384 -> 16384`,
		`   1.000s 1-1.3 addr 2   control c0 00 wValue=0004 wIndex=0000 wLength=4 -> 0 error: input/output error`,
		`   0.000s 1-1.3 addr 2   attach (0a5c:2711 high-speed serial "af04b2da")`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := usbboot.ParseTraceLine(s)
		if err != nil {
			return
		}
		// what parses re-renders to a line that parses to the same record
		r2, err := usbboot.ParseTraceLine(r.String())
		if err != nil {
			t.Fatalf("re-render of %q: %q: %v", s, r.String(), err)
		}
		r.Elapsed, r2.Elapsed = 0, 0
		if r != r2 {
			t.Fatalf("round trip: %+v != %+v", r, r2)
		}
	})
}

// U4: requests shorter than 260 bytes are accepted, zero-filled, counted.
func TestShortRequestsAccepted(t *testing.T) {
	r := newRig(t, usbboottest.BoardConfig{Port: "1-1.2", Mode: usbboottest.ModeRecovery, ShortRequests: true})
	res, err := r.server(t).Serve(t.Context())
	if err != nil || len(res) != 1 || res[0].Err != nil {
		t.Fatalf("Serve: %v %+v", err, res)
	}
	if res[0].ShortRequests == 0 || len(res[0].Warnings) == 0 || !strings.Contains(res[0].Warnings[0], "zero-filled") {
		t.Errorf("short requests %d, warnings %q", res[0].ShortRequests, res[0].Warnings)
	}
	if v, _ := res[0].Metadata.Get("EEPROM_UPDATE"); v != "success" {
		t.Errorf("EEPROM_UPDATE=%q", v)
	}
}

// U10: one device whose descriptors fail to parse fails gousb's whole
// listing; the boards that were listed are still served, with a warning.
func TestPartialListingUsed(t *testing.T) {
	r := newRig(t, usbboottest.BoardConfig{Port: "1-1.2", Mode: usbboottest.ModeMSD})
	r.bus.SetListError(errors.New("libusb: descriptor of 1-4 is corrupt"))
	srv := r.server(t)
	var warned []string
	srv.OnEvent = func(e usbboot.Event) {
		if e.Kind == usbboot.EventWarning {
			warned = append(warned, e.Message)
		}
	}
	res, err := srv.Serve(t.Context())
	if err != nil || len(res) != 1 || res[0].Err != nil {
		t.Fatalf("Serve: %v %+v", err, res)
	}
	if len(warned) == 0 || !strings.Contains(warned[0], "partial device listing") {
		t.Errorf("warnings %q", warned)
	}
}
