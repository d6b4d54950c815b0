package store

import (
	"context"
	"database/sql"
	"errors"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/cm4bench/cm4bench/internal/contract"
)

func openTemp(t *testing.T, path string) *Store {
	t.Helper()
	st, err := Open(context.Background(), path)
	if err != nil {
		t.Fatalf("Open(%s): %v", path, err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func hw(t *testing.T, s string) net.HardwareAddr {
	t.Helper()
	m, err := net.ParseMAC(s)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestPersistence is the restart test at store level: a pending action, the
// switches, the history and the events survive closing and reopening.
func TestPersistence(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "bench.db")
	st := openTemp(t, path)
	const a, b = "dc:a6:32:00:00:01", "dc:a6:32:00:00:02"
	for _, m := range []string{a, b} {
		if _, err := st.Register(ctx, m, "10.0.0.5", &contract.Facts{Serial: "1000abcd"}); err != nil {
			t.Fatal(err)
		}
	}
	done, _, err := st.SetAction(ctx, a, contract.ActionDeploy, "golden.img")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.MarkPolled(ctx, done.ID, "10.0.0.5"); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Finish(ctx, done.ID, Result{OK: true, SHA256: "ab"}); err != nil {
		t.Fatal(err)
	}
	pend, _, err := st.SetAction(ctx, b, contract.ActionBackup, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := st.SetGlobalNetboot(ctx, false); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Emit(ctx, contract.Event{Kind: "test.one", Message: "hello"}); err != nil {
		t.Fatal(err)
	}
	st.Close()

	st2 := openTemp(t, path)
	if v, _ := st2.SchemaVersion(ctx); v != len(migrations) {
		t.Errorf("schema version = %d, want %d", v, len(migrations))
	}
	if st2.GlobalNetboot() {
		t.Error("global netboot came back on after restart")
	}
	if err := st2.SetGlobalNetboot(ctx, true); err != nil {
		t.Fatal(err)
	}
	if st2.NetbootEnabled(hw(t, a)) {
		t.Errorf("netboot of %s (deploy done) is on after restart", a)
	}
	if !st2.NetbootEnabled(hw(t, b)) {
		t.Errorf("netboot of %s is off", b)
	}
	got, err := st2.OpenAction(ctx, b)
	if err != nil {
		t.Fatalf("pending action lost over restart: %v", err)
	}
	if got.ID != pend.ID || got.Token != pend.Token || got.State != contract.StatePending {
		t.Errorf("open action = %+v, want id %s token %s pending", got, pend.ID, pend.Token)
	}
	hist, err := st2.Actions(ctx, a, 10)
	if err != nil || len(hist) != 1 || hist[0].State != contract.StateDone || hist[0].SHA256 != "ab" {
		t.Errorf("history of %s = %+v, %v", a, hist, err)
	}
	evs, err := st2.Events(ctx, 0, 10)
	if err != nil || len(evs) != 1 || evs[0].Kind != "test.one" {
		t.Errorf("events = %+v, %v", evs, err)
	}
}

func TestPolicy(t *testing.T) {
	ctx := context.Background()
	st := openTemp(t, filepath.Join(t.TempDir(), "bench.db"))
	const m = "dc:a6:32:00:00:09"
	unknown := hw(t, "e4:5f:01:00:00:01")
	if !st.NetbootEnabled(unknown) {
		t.Fatal("unknown MAC not enabled on a fresh store")
	}
	if err := st.SetDeviceNetboot(ctx, m, false); err != nil {
		t.Fatal(err)
	}
	if st.NetbootEnabled(hw(t, m)) {
		t.Error("per-MAC off not effective")
	}
	if !st.NetbootEnabled(unknown) {
		t.Error("per-MAC off leaked to another MAC")
	}
	if err := st.SetGlobalNetboot(ctx, false); err != nil {
		t.Fatal(err)
	}
	if st.NetbootEnabled(unknown) {
		t.Error("global off not effective")
	}
	st.SetGlobalNetboot(ctx, true)
	if err := st.SetDeviceNetboot(ctx, m, true); err != nil {
		t.Fatal(err)
	}
	if !st.NetbootEnabled(hw(t, m)) {
		t.Error("per-MAC on not effective")
	}
	if err := st.SetDeviceNetboot(ctx, "nonsense", true); err == nil {
		t.Error("SetDeviceNetboot accepted a malformed MAC")
	}
	// A switch set before the first boot makes a device that is not yet seen.
	if err := st.Touch(ctx, m, "1.2.3.4"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Touch of a never-registered device = %v, want ErrNotFound", err)
	}
	if d, err := st.Device(ctx, m); err != nil || d.State != contract.DeviceOffline || !d.Netboot {
		t.Errorf("switch-only device = %+v, %v; want offline with netboot on", d, err)
	}
}

func TestActionLifecycle(t *testing.T) {
	ctx := context.Background()
	st := openTemp(t, filepath.Join(t.TempDir(), "bench.db"))
	const m = "dc:a6:32:00:00:03"
	st.Register(ctx, m, "10.0.0.7", nil)

	a1, _, err := st.SetAction(ctx, m, contract.ActionDeploy, "x.img")
	if err != nil {
		t.Fatal(err)
	}
	a2, cancelled, err := st.SetAction(ctx, m, contract.ActionBackup, "")
	if err != nil {
		t.Fatal(err)
	}
	if cancelled == nil || cancelled.ID != a1.ID || a1.Token == a2.Token {
		t.Fatalf("replacing an action: cancelled=%+v; tokens %s %s", cancelled, a1.Token, a2.Token)
	}
	if got, _ := st.ActionByID(ctx, a1.ID); got.State != contract.StateCancelled {
		t.Errorf("replaced action state = %s", got.State)
	}
	if _, _, err := st.SetAction(ctx, m, "format", ""); err == nil {
		t.Error("SetAction accepted an unknown type")
	}
	if err := st.Progress(ctx, a2.ID, "read", 10, 100, 5); err != nil {
		t.Fatal(err)
	}
	d, _ := st.Device(ctx, m)
	if d.State != contract.DeviceRunning || d.Action.Done != 10 || d.Action.Phase != "read" {
		t.Errorf("device during progress = %+v / %+v", d, d.Action)
	}
	if err := st.AppendLog(ctx, a2.ID, []string{"line 1", "line 2"}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Finish(ctx, a2.ID, Result{OK: false, Error: "eMMC read error"}); err != nil {
		t.Fatal(err)
	}
	if !st.NetbootEnabled(hw(t, m)) {
		t.Error("a failed action switched netboot off")
	}
	if _, err := st.Finish(ctx, a2.ID, Result{OK: true}); !errors.Is(err, ErrConflict) {
		t.Errorf("second Finish = %v, want ErrConflict", err)
	}
	if err := st.Progress(ctx, a2.ID, "read", 11, 100, 5); !errors.Is(err, ErrConflict) {
		t.Errorf("Progress on a closed action = %v, want ErrConflict", err)
	}
	if _, err := st.AddBackup(ctx, a2.ID, Backup{}); !errors.Is(err, ErrConflict) {
		t.Errorf("AddBackup on a closed action = %v, want ErrConflict", err)
	}
	d, _ = st.Device(ctx, m)
	if d.State != contract.DeviceFailed || d.Action.Error != "eMMC read error" || len(d.Action.Log) != 2 {
		t.Errorf("device after failure = %+v / %+v", d, d.Action)
	}
	if _, err := st.CancelAction(ctx, m); !errors.Is(err, ErrNotFound) {
		t.Errorf("CancelAction with nothing open = %v", err)
	}
	// A failed action keeps the bytes it reached; a successful one reads 100 %
	// even when the last progress report said 77 %.
	if d.Action.Done != 10 {
		t.Errorf("failed action done = %d, want the 10 it reached", d.Action.Done)
	}
	a3, _, err := st.SetAction(ctx, m, contract.ActionDeploy, "x.img")
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Progress(ctx, a3.ID, "verify", 77, 100, 5); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Finish(ctx, a3.ID, Result{OK: true, SHA256: "ab"}); err != nil {
		t.Fatal(err)
	}
	if got, _ := st.ActionByID(ctx, a3.ID); got.Done != 100 || got.Total != 100 {
		t.Errorf("done action = %d of %d, want 100 of 100", got.Done, got.Total)
	}
	// Progress the server measured, written late, never replaces a phase the
	// device reported since.
	a5, _, err := st.SetAction(ctx, m, contract.ActionDeploy, "x.img")
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := st.ServerProgress(ctx, a5.ID, "download", 10, 100, 1, "download", "downloaded"); !ok || err != nil {
		t.Fatalf("first server progress: %v %v", ok, err)
	}
	if ok, err := st.ServerProgress(ctx, a5.ID, "downloaded", 100, 100, 1, "download", "downloaded"); !ok || err != nil {
		t.Fatalf("the server's next phase: %v %v", ok, err)
	}
	if err := st.Progress(ctx, a5.ID, "verify", 50, 100, 1); err != nil {
		t.Fatal(err)
	}
	if ok, _ := st.ServerProgress(ctx, a5.ID, "downloaded", 100, 100, 1, "download", "downloaded"); ok {
		t.Error("late server progress overwrote the device's verify phase")
	}
	if got, _ := st.ActionByID(ctx, a5.ID); got.Phase != "verify" || got.Done != 50 {
		t.Errorf("phase %q done %d, want verify 50", got.Phase, got.Done)
	}
	if _, err := st.CancelAction(ctx, m); err != nil {
		t.Fatal(err)
	}

	// An identify that finished leaves the board ready, and netboot as it was.
	st.SetDeviceNetboot(ctx, m, true)
	a4, _, err := st.SetAction(ctx, m, contract.ActionIdentify, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Finish(ctx, a4.ID, Result{OK: true}); err != nil {
		t.Fatal(err)
	}
	if d, _ := st.Device(ctx, m); d.State != contract.DeviceIdle || !d.Netboot {
		t.Errorf("after an identify: state %s, netboot %v; want idle and on", d.State, d.Netboot)
	}
}

func TestSubscribe(t *testing.T) {
	ctx := context.Background()
	st := openTemp(t, filepath.Join(t.TempDir(), "bench.db"))
	ch, cancel := st.Subscribe(4)
	defer cancel()
	ev, err := st.Emit(ctx, contract.Event{Kind: "action.progress", Fields: map[string]any{"done": 5}})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-ch:
		if got.ID != ev.ID || got.Kind != "action.progress" || got.Fields["done"] != float64(5) {
			t.Errorf("subscriber got %+v", got)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no event delivered")
	}
	// A subscriber that falls behind is cut off, not blocking Emit.
	for i := 0; i < 10; i++ {
		if _, err := st.Emit(ctx, contract.Event{Kind: "flood"}); err != nil {
			t.Fatal(err)
		}
	}
	n := 0
	for range ch {
		n++
	}
	if n != 4 {
		t.Errorf("slow subscriber got %d events before being cut off, want 4", n)
	}
	evs, _ := st.Events(ctx, -1, 3)
	if len(evs) != 3 || evs[2].ID != ev.ID+10 {
		t.Errorf("newest 3 events = %+v", evs)
	}
}

// TestMigrateFromV1: a database made by the first schema is upgraded in
// place, keeping its rows.
func TestMigrateFromV1(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "old.db")
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		`CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied INTEGER NOT NULL)`,
		migrations[0],
		`INSERT INTO schema_migrations VALUES (1, 0)`,
		`INSERT INTO devices (mac, first_seen, last_seen, last_action) VALUES ('dc:a6:32:00:00:01', 1, 1, 1)`,
		`INSERT INTO actions (mac, type, state, created, token) VALUES ('dc:a6:32:00:00:01', 'deploy', 'pending', 1, 'tok')`,
	} {
		if _, err := db.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	db.Close()
	st := openTemp(t, path)
	if v, _ := st.SchemaVersion(ctx); v != len(migrations) {
		t.Errorf("schema version after upgrade = %d, want %d", v, len(migrations))
	}
	a, err := st.OpenAction(ctx, "dc:a6:32:00:00:01")
	if err != nil || a.Token != "tok" || a.Served {
		t.Fatalf("action after upgrade = %+v, %v", a, err)
	}
	if err := st.MarkServed(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	if a, _ := st.ActionByID(ctx, a.ID); !a.Served {
		t.Error("MarkServed not recorded")
	}
}

// TestEventPages: a limit of zero or less is the default page, and a limit
// above the largest page is the largest page, not the default.
func TestEventPages(t *testing.T) {
	ctx := context.Background()
	st := openTemp(t, filepath.Join(t.TempDir(), "bench.db"))
	for i := 0; i < 600; i++ {
		if _, err := st.Emit(ctx, contract.Event{Kind: "flood"}); err != nil {
			t.Fatal(err)
		}
	}
	for _, tt := range []struct {
		since int64
		limit int
		want  int
	}{
		{0, 0, 500},
		{0, -1, 500},
		{0, 20, 20},
		{0, 550, 550},
		{0, 100000, 600},
		{-1, 100000, 600},
		{590, 100000, 10},
	} {
		evs, err := st.Events(ctx, tt.since, tt.limit)
		if err != nil || len(evs) != tt.want {
			t.Errorf("Events(%d, %d) = %d events, %v; want %d", tt.since, tt.limit, len(evs), err, tt.want)
		}
	}
}
