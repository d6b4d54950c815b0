package usbboot_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cm4bench/cm4bench/usbboot"
	"github.com/cm4bench/cm4bench/usbboot/usbboottest"
)

// rig is one simulated bus with boards and a boot directory per board.
type rig struct {
	clk    *usbboottest.Clock
	bus    *usbboottest.Bus
	boards []*usbboottest.Board
	dirs   map[string]string // port -> boot dir
}

func newRig(t *testing.T, cfgs ...usbboottest.BoardConfig) *rig {
	t.Helper()
	r := &rig{clk: usbboottest.NewClock(), dirs: map[string]string{}}
	r.bus = usbboottest.NewBus(r.clk)
	for _, c := range cfgs {
		c.Clock = r.clk
		b, err := usbboottest.NewBoard(c)
		if err != nil {
			t.Fatal(err)
		}
		r.bus.Add(b)
		r.boards = append(r.boards, b)
		cfg := b.Config()
		r.dirs[cfg.Port] = usbboottest.BootDir(t, filepath.Join(t.TempDir(), "boot"), cfg.SoC, cfg.Mode)
	}
	return r
}

// perPort serves each board from its own directory.
type perPort map[string]*usbboot.Dir

func (p perPort) Open(ctx context.Context, t usbboot.Target, name string) (io.ReadCloser, int64, error) {
	return p[t.Port].Open(ctx, t, name)
}

func (r *rig) files(t *testing.T) usbboot.FileSource {
	t.Helper()
	m := perPort{}
	for port, dir := range r.dirs {
		d, err := usbboot.NewDir(dir, false)
		if err != nil {
			t.Fatal(err)
		}
		m[port] = d
	}
	return m
}

// testLogger sends the server's log to t.Log.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func (r *rig) server(t *testing.T) *usbboot.Server {
	return &usbboot.Server{Bus: r.bus, Files: r.files(t), Clock: r.clk, Timeout: 2 * time.Minute,
		Logger: testLogger(t)}
}

// checkServed verifies every byte a board received against the files of
// its boot directory (sha256), and that the host broke no protocol rule.
func checkServed(t *testing.T, b *usbboottest.Board, dir string, res usbboot.Result, wantRead []string) {
	t.Helper()
	cfg := b.Config()
	if v := b.Violations(); len(v) > 0 {
		t.Errorf("%s: protocol violations: %q", cfg.Port, v)
	}
	var got []string
	for _, f := range b.Files() {
		want, exists := usbboottest.ExpectedSHA256(t, dir, cfg.SoC, f.Name)
		switch {
		case f.Received:
			got = append(got, f.Name)
			if !exists || f.SHA256 != want {
				t.Errorf("%s: %s received sha256 %s, want %s (exists %v)", cfg.Port, f.Name, f.SHA256, want, exists)
			}
			hs, ok := res.Served(f.Name)
			if !ok || hs.SHA256 != f.SHA256 {
				t.Errorf("%s: host reports %s as %+v, board got %s", cfg.Port, f.Name, hs, f.SHA256)
			}
		case f.Size == 0 && exists && f.Command == usbboot.GetFileSize && usbboot.CheckName(f.Name) == nil:
			t.Errorf("%s: %s exists in the boot dir but was answered as missing", cfg.Port, f.Name)
		}
	}
	if strings.Join(got, ",") != strings.Join(wantRead, ",") {
		t.Errorf("%s: files received %q, want %q", cfg.Port, got, wantRead)
	}
}

func memsys(n int) []string {
	out := []string{"mcb.bin"}
	for i := range n {
		out = append(out, fmt.Sprintf("memsys%02d.bin", i))
	}
	return append(out, "bootmain")
}

func TestBootEveryMode(t *testing.T) {
	for _, tt := range []struct {
		name      string
		cfg       usbboottest.BoardConfig
		wantRead  []string
		wantState string
	}{
		{"2711 legacy msd", usbboottest.BoardConfig{Port: "1-1.3", SoC: usbboot.SoC2711, Mode: usbboottest.ModeMSD},
			[]string{"bootcode4.bin", "start4.elf"}, "mass-storage"},
		{"2711 msd two interfaces, named Done", usbboottest.BoardConfig{Port: "1-2", SoC: usbboot.SoC2711, Mode: usbboottest.ModeMSD, TwoInterfaces: true, DoneName: "done"},
			[]string{"bootcode4.bin", "start4.elf"}, "mass-storage"},
		{"2835 msd", usbboottest.BoardConfig{Port: "2-1", SoC: usbboot.SoC2835, Mode: usbboottest.ModeMSD},
			[]string{"bootcode.bin", "start.elf"}, "mass-storage"},
		{"2711 gadget64", usbboottest.BoardConfig{Port: "1-1.4", SoC: usbboot.SoC2711, Mode: usbboottest.ModeGadget},
			append(append([]string{"bootcode4.bin"}, memsys(9)...), "config.txt", "boot.img"), "mass-storage"},
		{"2712 gadget64", usbboottest.BoardConfig{Port: "3-1", SoC: usbboot.SoC2712, Mode: usbboottest.ModeGadget},
			append(append([]string{"bootcode5.bin"}, memsys(4)...), "config.txt", "boot.img"), "mass-storage"},
		{"2711 recovery", usbboottest.BoardConfig{Port: "1-1.1", SoC: usbboot.SoC2711, Mode: usbboottest.ModeRecovery},
			[]string{"bootcode4.bin", "config.txt", "pieeprom.sig", "pieeprom.bin"}, "done"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := newRig(t, tt.cfg)
			res, err := r.server(t).Serve(t.Context())
			if err != nil {
				t.Fatalf("Serve: %v", err)
			}
			if len(res) != 1 {
				t.Fatalf("Serve returned %d results, want 1", len(res))
			}
			if res[0].Err != nil || !res[0].Done {
				t.Fatalf("result: err %v, done %v", res[0].Err, res[0].Done)
			}
			b := r.boards[0]
			checkServed(t, b, r.dirs[tt.cfg.Port], res[0], tt.wantRead)
			if s := b.State(); s != tt.wantState {
				// the payload re-enumerates 2 s after Done; let virtual time pass
				r.clk.Advance(3 * time.Second)
				if s = b.State(); s != tt.wantState {
					t.Errorf("board state %q, want %q", s, tt.wantState)
				}
			}
			if tt.cfg.Mode == usbboottest.ModeRecovery {
				if _, err := res[0].CheckEEPROM(true); err != nil {
					t.Errorf("CheckEEPROM: %v", err)
				}
				if got := len(b.Metadata()); got != len(res[0].Metadata) || got == 0 {
					t.Errorf("board acknowledged %d metadata items, host recorded %d", got, len(res[0].Metadata))
				}
			}
			wantSerial := b.Config().Serial
			if tt.cfg.SoC == usbboot.SoC2835 {
				wantSerial = "" // no ROM serial; the second stage only says "Broadcom"
			}
			if res[0].Serial != wantSerial {
				t.Errorf("serial %q, want %q", res[0].Serial, wantSerial)
			}
		})
	}
}

func TestFaults(t *testing.T) {
	f := func(k usbboottest.FaultKind, at string) []usbboottest.Fault {
		return []usbboottest.Fault{{Kind: k, At: at}}
	}
	msd := usbboottest.ModeMSD
	for _, tt := range []struct {
		name     string
		mode     usbboottest.Mode
		faults   []usbboottest.Fault
		timeout  time.Duration
		wantErrs []error // nil: the board must boot
		check    func(t *testing.T, b *usbboottest.Board)
	}{
		{"SIZE timeout at the boot message, every try", msd, []usbboottest.Fault{{Kind: usbboottest.FaultSizeTimeout, At: "bootmsg", Times: -1}}, 0, []error{usbboot.ErrTimeout}, nil},
		{"SIZE timeout at the boot message once is retried", msd, f(usbboottest.FaultSizeTimeout, "bootmsg"), 0, nil, func(t *testing.T, b *usbboottest.Board) {
			if n := b.ROMLoads(); n != 1 {
				t.Errorf("ROM loaded the bootcode %d times, want 1", n)
			}
		}},
		{"SIZE timeout at a file", msd, f(usbboottest.FaultSizeTimeout, "start4.elf"), 0, []error{usbboot.ErrTimeout}, nil},
		{"stall", msd, f(usbboottest.FaultStall, "start4.elf"), 0, []error{usbboot.ErrStall}, nil},
		{"short bulk", msd, f(usbboottest.FaultShortBulk, "start4.elf"), 0, []error{usbboot.ErrShortWrite}, nil},
		{"short bulk at the ROM, every try", msd, []usbboottest.Fault{{Kind: usbboottest.FaultShortBulk, At: "bootcode4.bin", Times: -1}}, 0, []error{usbboot.ErrShortWrite}, nil},
		{"short bulk at the ROM once is retried", msd, f(usbboottest.FaultShortBulk, "bootcode4.bin"), 0, nil, nil},
		{"disconnect mid-file", msd, f(usbboottest.FaultDisconnect, "start4.elf"), 0, []error{usbboot.ErrVanished, usbboot.ErrDisconnected}, nil},
		{"full-speed ROM", msd, f(usbboottest.FaultFullSpeed, ""), 0, []error{usbboot.ErrFullSpeed, usbboot.ErrTimeout}, nil},
		{"bootcode rejected", msd, f(usbboottest.FaultRejectBootcode, ""), 0, []error{usbboot.ErrBootcodeRejected}, nil},
		{"second stage never appears", msd, f(usbboottest.FaultNoSecondStage, ""), 0, []error{usbboot.ErrDeadline}, nil},
		{"access denied", msd, f(usbboottest.FaultAccessDenied, ""), 0, []error{usbboot.ErrAccess}, nil},
		{"wrong EEPROM_HASH", usbboottest.ModeRecovery, f(usbboottest.FaultWrongHash, ""), 0, []error{usbboot.ErrEEPROMUpdate}, nil},
		{"EEPROM_UPDATE=fail", usbboottest.ModeRecovery, f(usbboottest.FaultFlashFails, ""), 0, []error{usbboot.ErrEEPROMUpdate}, nil},
		{"silent longer than the deadline", usbboottest.ModeRecovery,
			[]usbboottest.Fault{{Kind: usbboottest.FaultSilentFlash, Duration: 5 * time.Minute}}, time.Minute, []error{usbboot.ErrDeadline}, nil},
		{"open fails once after re-enumeration", msd, f(usbboottest.FaultOpenFailsOnce, ""), 0, nil, nil},
		{"ROM seen twice", msd, f(usbboottest.FaultROMTwice, ""), 0, nil, func(t *testing.T, b *usbboottest.Board) {
			if n := b.ROMLoads(); n != 2 {
				t.Errorf("ROM loaded the bootcode %d times, want 2", n)
			}
		}},
		{"20 s silent flash window", usbboottest.ModeRecovery,
			[]usbboottest.Fault{{Kind: usbboottest.FaultSilentFlash, Duration: 25 * time.Second}}, 0, nil, func(t *testing.T, b *usbboottest.Board) {
				timeouts := 0
				for _, rec := range b.Transcript() {
					if rec.Kind == "control" && rec.Setup.RequestType == 0xC0 && rec.Err != "" {
						timeouts++
					}
				}
				if timeouts == 0 {
					t.Error("no READ timed out during the silent window")
				}
			}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := newRig(t, usbboottest.BoardConfig{Port: "1-1.2", SoC: usbboot.SoC2711, Mode: tt.mode, Faults: tt.faults})
			srv := r.server(t)
			if tt.timeout > 0 {
				srv.Timeout = tt.timeout
			}
			res, err := srv.Serve(t.Context())
			if err != nil {
				t.Fatalf("Serve: %v", err)
			}
			if len(res) != 1 {
				t.Fatalf("%d results, want 1", len(res))
			}
			got := res[0].Err
			if tt.wantErrs == nil {
				if got != nil {
					t.Fatalf("board failed: %v", got)
				}
				if v := r.boards[0].Violations(); len(v) > 0 {
					t.Errorf("protocol violations: %q", v)
				}
			}
			for _, want := range tt.wantErrs {
				if !errors.Is(got, want) {
					t.Errorf("error %v, want errors.Is %v", got, want)
				}
			}
			if got != nil && !strings.Contains(got.Error(), "1-1.2") {
				t.Errorf("error %q does not name the port", got)
			}
			if tt.check != nil {
				tt.check(t, r.boards[0])
			}
		})
	}
}

func TestMissingRequiredFileHitsDeadline(t *testing.T) {
	r := newRig(t, usbboottest.BoardConfig{Port: "1-3", Mode: usbboottest.ModeGadget})
	if err := os.Remove(filepath.Join(r.dirs["1-3"], "boot.img")); err != nil {
		t.Fatal(err)
	}
	srv := r.server(t)
	srv.Timeout = 90 * time.Second
	res, err := srv.Serve(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if !errors.Is(res[0].Err, usbboot.ErrDeadline) {
		t.Fatalf("error %v, want ErrDeadline", res[0].Err)
	}
	if s := r.boards[0].State(); s != "halted: missing boot.img" {
		t.Errorf("board state %q", s)
	}
}

func TestNoDevice(t *testing.T) {
	clk := usbboottest.NewClock()
	bus := usbboottest.NewBus(clk)
	bus.AddOther(usbboot.Desc{Bus: 1, Port: "1-4", Address: 9, VID: 0x046d, PID: 0xc52b, Speed: usbboot.SpeedFull})
	dir := usbboottest.BootDir(t, t.TempDir(), usbboot.SoC2711, usbboottest.ModeMSD)
	src, err := usbboot.NewDir(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	srv := &usbboot.Server{Bus: bus, Files: src, Clock: clk, Timeout: 30 * time.Second}
	start := clk.Now()
	_, err = srv.Serve(t.Context())
	if !errors.Is(err, usbboot.ErrNoDevice) {
		t.Fatalf("Serve: %v, want ErrNoDevice", err)
	}
	if waited := clk.Now().Sub(start); waited < 30*time.Second {
		t.Errorf("gave up after %s of virtual time, want 30s", waited)
	}
	if n := bus.Opens("1-4"); n != 0 {
		t.Errorf("opened the unrelated device %d times", n)
	}
}

func TestFourBoardsInParallel(t *testing.T) {
	r := newRig(t,
		usbboottest.BoardConfig{Port: "1-1.1", Mode: usbboottest.ModeMSD},
		usbboottest.BoardConfig{Port: "1-1.2", Mode: usbboottest.ModeGadget},
		usbboottest.BoardConfig{Port: "1-1.3", Mode: usbboottest.ModeRecovery},
		usbboottest.BoardConfig{Port: "1-1.4", Mode: usbboottest.ModeMSD, Faults: []usbboottest.Fault{{Kind: usbboottest.FaultROMTwice}}},
	)
	srv := r.server(t)
	srv.Timeout = 10 * time.Minute // four state machines share one virtual clock
	// Every session blocks at its start until all four have started: a
	// server that served boards one at a time would never get past it.
	var attached sync.WaitGroup
	attached.Add(4)
	allIn := make(chan struct{})
	go func() { attached.Wait(); close(allIn) }()
	var barrierFailed atomic.Bool
	srv.OnEvent = func(e usbboot.Event) {
		if e.Kind != usbboot.EventAttached {
			return
		}
		attached.Done()
		select {
		case <-allIn:
		case <-time.After(20 * time.Second):
			barrierFailed.Store(true)
		}
	}
	res, err := srv.Serve(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 4 {
		t.Fatalf("%d results, want 4", len(res))
	}
	if barrierFailed.Load() {
		t.Error("the four boards were not all in flight at once")
	}
	usbboot.SortResults(res)
	for i, b := range r.boards {
		cfg := b.Config()
		if res[i].Port != cfg.Port || res[i].Err != nil {
			t.Errorf("result %d: port %s err %v", i, res[i].Port, res[i].Err)
			continue
		}
		var want []string
		for _, f := range b.Files() {
			if f.Received {
				want = append(want, f.Name)
			}
		}
		checkServed(t, b, r.dirs[cfg.Port], res[i], want)
	}
}

func TestFilterNeverOpensOthers(t *testing.T) {
	r := newRig(t,
		usbboottest.BoardConfig{Port: "1-1.1", Mode: usbboottest.ModeMSD, Serial: "aaaa0001"},
		usbboottest.BoardConfig{Port: "1-1.2", Mode: usbboottest.ModeMSD, Serial: "bbbb0002"},
		usbboottest.BoardConfig{Port: "1-1.3", Mode: usbboottest.ModeMSD, Serial: "cccc0003"},
	)
	for _, tt := range []struct {
		name  string
		match func(usbboot.Desc) bool
		want  string
	}{
		{"port", func(d usbboot.Desc) bool { return d.Port == "1-1.3" }, "1-1.3"},
	} {
		srv := r.server(t)
		srv.Match = tt.match
		res, err := srv.Serve(t.Context())
		if err != nil || len(res) != 1 || res[0].Port != tt.want || res[0].Err != nil {
			t.Fatalf("%s: results %+v, err %v", tt.name, res, err)
		}
		for _, b := range r.boards {
			p := b.Config().Port
			if p != tt.want && r.bus.Opens(p) != 0 {
				t.Errorf("%s filter opened %s %d times", tt.name, p, r.bus.Opens(p))
			}
		}
	}
	srv := r.server(t)
	srv.Match = func(d usbboot.Desc) bool { return d.Serial == "nobody" } // 1-1.3 is mass storage by now
	srv.Timeout = 10 * time.Second
	if _, err := srv.Serve(t.Context()); !errors.Is(err, usbboot.ErrNoDevice) || !strings.Contains(err.Error(), "2 RPIBOOT device(s) did not match") {
		t.Errorf("a filter matching nothing: %v", err)
	}
	// by serial: the ROM's serial string selects the board; its second
	// stage is followed by port path.
	srv = r.server(t)
	srv.Match = func(d usbboot.Desc) bool { return d.Serial == "bbbb0002" }
	res, err := srv.Serve(t.Context())
	if err != nil || len(res) != 1 || res[0].Port != "1-1.2" || res[0].Err != nil || res[0].Serial != "bbbb0002" {
		t.Fatalf("serial filter: %+v, %v", res, err)
	}
	if n := r.bus.Opens("1-1.1"); n != 0 {
		t.Errorf("serial filter opened 1-1.1 %d times", n)
	}
}

func TestLoopServesBoardAfterBoard(t *testing.T) {
	r := newRig(t, usbboottest.BoardConfig{Port: "1-1.1", Mode: usbboottest.ModeRecovery})
	second, err := usbboottest.NewBoard(usbboottest.BoardConfig{Port: "1-1.1", Mode: usbboottest.ModeRecovery, Clock: r.clk, Serial: "12345678"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	srv := r.server(t)
	srv.Loop = true
	var n int
	srv.OnResult = func(res usbboot.Result) {
		n++
		if res.Err != nil {
			t.Errorf("board %d: %v", n, res.Err)
		}
		switch n {
		case 1:
			// the technician swaps boards on the same port
			r.boards[0].Unplug()
			r.bus.Add(second)
		case 2:
			cancel()
		}
	}
	res, err := srv.Serve(ctx)
	if err != nil {
		t.Fatalf("Serve in a loop ends with nil on cancel, got %v", err)
	}
	if len(res) != 2 || res[1].Serial != "12345678" {
		t.Fatalf("results %+v", res)
	}
	if v := second.Violations(); len(v) > 0 {
		t.Errorf("violations: %q", v)
	}
}

// A finished recovery board stays enumerated; a loop must not flash it again.
func TestLoopDoesNotReserveAFinishedBoard(t *testing.T) {
	r := newRig(t, usbboottest.BoardConfig{Port: "1-1.1", Mode: usbboottest.ModeRecovery})
	srv := r.server(t)
	srv.Loop = true
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var results int
	srv.OnResult = func(usbboot.Result) { results++ }
	go func() {
		// after the first board, let many polls of virtual time pass
		for r.clk.Now().Sub(time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)) < 10*time.Minute {
			time.Sleep(time.Millisecond)
		}
		cancel()
	}()
	if _, err := srv.Serve(ctx); err != nil {
		t.Fatal(err)
	}
	if results != 1 || r.boards[0].ROMLoads() != 1 {
		t.Errorf("served %d times, ROM loads %d; want 1 and 1", results, r.boards[0].ROMLoads())
	}
}

// The host's answers to odd requests follow rpiboot: a ReadFile with no
// file opened by a GetFileSize gets size 0, names with ".." are "missing",
// metadata is acknowledged with size 0 whatever the command.
func TestOddRequests(t *testing.T) {
	r := newRig(t, usbboottest.BoardConfig{Port: "1-5", Mode: usbboottest.ModeMSD, Extra: []usbboot.Request{
		{Command: usbboot.ReadFile, Name: "start4.elf"},
		{Command: usbboot.GetFileSize, Name: "../../etc/passwd"},
		{Command: usbboot.GetFileSize, Name: "/etc/passwd"},
		{Command: usbboot.ReadFile, Name: "*BOARD_ATTR*00000000"},
		{Command: usbboot.GetFileSize, Name: "*FLAG"},
	}})
	res, err := r.server(t).Serve(t.Context())
	if err != nil || len(res) != 1 || res[0].Err != nil {
		t.Fatalf("Serve: %v %+v", err, res)
	}
	b := r.boards[0]
	files := b.Files()
	for i, want := range []struct {
		name string
		size int64
	}{{"bootcode4.bin", 73120}, {"start4.elf", 0}, {"../../etc/passwd", 0}, {"/etc/passwd", 0}, {"*BOARD_ATTR*00000000", 0}, {"*FLAG", 0}} {
		if i >= len(files) || files[i].Name != want.name || files[i].Size != want.size {
			t.Fatalf("file %d: %+v, want %s answered %d", i, files, want.name, want.size)
		}
	}
	if v, ok := res[0].Metadata.Get("BOARD_ATTR"); !ok || v != "00000000" {
		t.Errorf("metadata %+v", res[0].Metadata)
	}
	if _, ok := res[0].Metadata.Get("FLAG"); !ok {
		t.Errorf("metadata without a value lost: %+v", res[0].Metadata)
	}
	checkServed(t, b, r.dirs["1-5"], res[0], []string{"bootcode4.bin", "start4.elf"})
}

// flakyBus fails the first fails listings with err.
type flakyBus struct {
	usbboot.Bus
	mu    sync.Mutex
	fails int
	err   error
	calls int
}

func (f *flakyBus) List(ctx context.Context) ([]usbboot.Desc, error) {
	f.mu.Lock()
	f.calls++
	fail := f.fails != 0
	if f.fails > 0 {
		f.fails--
	}
	f.mu.Unlock()
	if fail {
		return nil, f.err
	}
	return f.Bus.List(ctx)
}

func TestListErrors(t *testing.T) {
	for _, tt := range []struct {
		name      string
		fails     int // -1: always
		err       error
		wantErr   error
		wantCalls int // upper bound on listings before giving up (0: no bound)
	}{
		{"transient", 3, errors.New("libusb: device left during the scan"), nil, 0},
		{"lasting", -1, errors.New("libusb: other error"), errors.New("list devices"), 20},
		{"no USB", -1, fmt.Errorf("gousbdev: %w", usbboot.ErrNoUSB), usbboot.ErrNoUSB, 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := newRig(t, usbboottest.BoardConfig{Port: "1-1", Mode: usbboottest.ModeMSD})
			fb := &flakyBus{Bus: r.bus, fails: tt.fails, err: tt.err}
			srv := r.server(t)
			srv.Bus = fb
			res, err := srv.Serve(t.Context())
			if tt.wantErr == nil {
				if err != nil || len(res) != 1 || res[0].Err != nil {
					t.Fatalf("Serve after transient listing errors: %v %+v", err, res)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr.Error()) {
				t.Fatalf("Serve: %v, want %v", err, tt.wantErr)
			}
			if errors.Is(tt.wantErr, usbboot.ErrNoUSB) && !errors.Is(err, usbboot.ErrNoUSB) {
				t.Errorf("error %v does not wrap ErrNoUSB", err)
			}
			if fb.calls > tt.wantCalls {
				t.Errorf("listed %d times before giving up, want at most %d", fb.calls, tt.wantCalls)
			}
		})
	}
}
