package simbench_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cm4bench/cm4bench/api/client"
	"github.com/cm4bench/cm4bench/internal/contract"
	"github.com/cm4bench/cm4bench/netboot/sim/simbench"
)

// faultReport prints the one-line-per-fact table every fault run ends with.
func faultReport(t *testing.T, title string, rows [][2]string) {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "\n%s\n", title)
	for _, r := range rows {
		fmt.Fprintf(&b, "  %-34s %s\n", r[0], r[1])
	}
	fmt.Print(b.String())
	t.Log(b.String())
}

// waitProgress waits until the device's current action has moved at least
// frac of its total.
func waitProgress(t *testing.T, c *client.Client, mac, id string, frac float64, timeout time.Duration) contract.Action {
	t.Helper()
	var got contract.Action
	waitFor(t, timeout, fmt.Sprintf("action %s at %.0f%%", id, frac*100), func() (bool, string) {
		acts, err := c.Actions(context.Background(), mac, 5)
		if err != nil {
			return false, err.Error()
		}
		for _, a := range acts {
			if a.ID == id {
				got = a
				if a.State != contract.StatePending && a.State != contract.StateRunning {
					return true, a.State
				}
				return a.Total > 0 && float64(a.Done) >= frac*float64(a.Total), fmt.Sprintf("%s %s %d/%d", a.State, a.Phase, a.Done, a.Total)
			}
		}
		return false, "not found"
	})
	if got.State != contract.StateRunning {
		t.Fatalf("action finished before the fault could be injected: %+v (slow the link down)", got)
	}
	return got
}

// TestFaultServerKilledMidDeploy: SIGKILL the server in the middle of a
// deploy and start it again. The agent resumes the download with a Range
// request, the deploy completes verified, and the action's history shows
// the interruption.
func TestFaultServerKilledMidDeploy(t *testing.T) {
	t.Parallel() // each run has its own namespaces; the waits overlap
	agentLog := &lockedLogs{m: map[int]*bytes.Buffer{}}
	r := testRig(t, simbench.RigConfig{Devices: 1, ImageSize: 32 << 20, EMMCBytes: 64 << 20, AgentOutput: agentLog.writer})
	waitRegistered(t, r, 90*time.Second)
	d := r.Bench.Devices[0]
	mac := d.Board.MAC.String()
	ctx := context.Background()
	if err := d.SetRate(ctx, "24mbit"); err != nil { // 32 MiB take ~11 s
		t.Fatal(err)
	}
	c := r.Client()
	a, err := c.SetAction(ctx, mac, contract.ActionDeploy, "")
	if err != nil {
		t.Fatal(err)
	}
	at := waitProgress(t, c, mac, a.ID, 0.25, 60*time.Second)
	killedAt := time.Now()
	r.KillServer()
	time.Sleep(2 * time.Second) // the agent sees the connection die
	restartedAt := time.Now()
	if err := r.StartServer(ctx); err != nil {
		t.Fatal(err)
	}
	downtime := time.Since(killedAt)
	got := waitAction(t, r, mac, a.ID, 2*time.Minute)
	if got.State != contract.StateDone {
		t.Fatalf("deploy after server restart: %+v", got)
	}
	if sha := fileSHA(t, d.EMMC(), 32<<20); sha != r.ImageSHA {
		t.Errorf("eMMC sha256 %s, image %s", sha, r.ImageSHA)
	}
	if got.SHA256 != r.ImageSHA {
		t.Errorf("action sha256 %q, image %q", got.SHA256, r.ImageSHA)
	}
	// The server's history of this one action spans the crash: progress
	// before the kill, none while it was down, progress after the restart.
	events, err := c.Events(ctx, 0, 100000)
	if err != nil {
		t.Fatal(err)
	}
	var before, during, after int
	var lastBefore, firstAfter time.Time
	for _, e := range events {
		if e.Kind != contract.EventActionProgress || fmt.Sprint(e.Fields["action_id"]) != a.ID {
			continue
		}
		switch {
		case e.Time.Before(killedAt):
			before++
			lastBefore = e.Time
		case e.Time.Before(restartedAt):
			during++
		default:
			after++
			if firstAfter.IsZero() {
				firstAfter = e.Time
			}
		}
	}
	if before == 0 || after == 0 || during != 0 {
		t.Errorf("progress events of the action: %d before the kill, %d while down, %d after the restart", before, during, after)
	}
	console := agentLog.dump()
	if !strings.Contains(console, "resuming") {
		t.Errorf("the agent did not resume the download:\n%s", console)
	}
	// And the action's own log on the server says so.
	full, err := c.Device(ctx, mac)
	if err != nil {
		t.Fatal(err)
	}
	var history string
	for _, x := range full.Actions {
		if x.ID == a.ID {
			history = strings.Join(x.Log, "\n")
		}
	}
	if !strings.Contains(history, "resumed") {
		t.Errorf("the action's log on the server does not show the resume:\n%s", history)
	}
	faultReport(t, "Fault: server SIGKILLed mid-deploy, restarted", [][2]string{
		{"killed at", fmt.Sprintf("%d of %d bytes (%s)", at.Done, at.Total, at.Phase)},
		{"server down for", downtime.Round(time.Millisecond).String()},
		{"deploy", fmt.Sprintf("%s, %d bytes, sha256 verified on eMMC", got.State, got.Bytes)},
		{"run time (first poll to done)", got.Finished.Sub(*got.Started).Round(time.Millisecond).String()},
		{"history: progress events", fmt.Sprintf("%d before the kill, gap %v, %d after the restart", before, firstAfter.Sub(lastBefore).Round(time.Millisecond), after)},
		{"agent", firstLine(console, "resuming")},
		{"action log on the server", firstLine(history, "resumed")},
	})
}

func firstLine(s, sub string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			return strings.TrimSpace(l)
		}
	}
	return "(none)"
}

// TestFaultLinkCutMidBackup: pull the board's cable while it uploads a
// backup. No backup may be recorded as complete, the action ends failed,
// and netboot stays on for the board.
func TestFaultLinkCutMidBackup(t *testing.T) {
	// Parallel: most of this run is the server's upload idle timeout
	// (api.DefaultUploadIdle, 30 s) noticing the dead link, which overlaps
	// the others.
	t.Parallel()
	r := testRig(t, simbench.RigConfig{Devices: 1, EMMCBytes: 64 << 20, Prepare: func(r *simbench.Rig) error {
		return fillEMMC(r.Bench.Devices[0].EMMC(), 64<<20, 11)
	}})
	waitRegistered(t, r, 90*time.Second)
	d := r.Bench.Devices[0]
	mac := d.Board.MAC.String()
	ctx := context.Background()
	if err := d.SetRate(ctx, "16mbit"); err != nil {
		t.Fatal(err)
	}
	c := r.Client()
	a, err := c.SetAction(ctx, mac, contract.ActionBackup, "")
	if err != nil {
		t.Fatal(err)
	}
	at := waitProgress(t, c, mac, a.ID, 0.15, 60*time.Second)
	cut := time.Now()
	if err := d.SetLink(ctx, false); err != nil {
		t.Fatal(err)
	}
	// Well past the 30 s idle timeout, far short of TCP's own give-up.
	got := waitAction(t, r, mac, a.ID, 90*time.Second)
	failedAfter := time.Since(cut)
	if got.State != contract.StateFailed {
		t.Errorf("backup with the cable pulled: %+v", got)
	}
	bks, err := c.Backups(ctx)
	if err != nil || len(bks) != 0 {
		t.Errorf("backups after a cut upload: %+v %v", bks, err)
	}
	dev, err := c.Device(ctx, mac)
	if err != nil || !dev.Netboot {
		t.Errorf("netboot for the board after a failed backup: %+v %v", dev.Netboot, err)
	}
	faultReport(t, "Fault: link cut mid-backup", [][2]string{
		{"cut at", fmt.Sprintf("%d of %d bytes (%s)", at.Done, at.Total, at.Phase)},
		{"action", fmt.Sprintf("%s after %v: %s", got.State, failedAfter.Round(time.Second), got.Error)},
		{"backups recorded", fmt.Sprint(len(bks))},
		{"netboot for the board", fmt.Sprint(dev.Netboot)},
	})
}

// fillEMMC writes a golden-style image (data and zeros) to an eMMC file.
func fillEMMC(path string, size int64, seed uint64) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if _, err := simbench.GoldenImage(f, size, seed); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// TestFaultBackupDiskFull: the backup disk (a small tmpfs mounted on the
// server's backups directory) fills up during the second backup. The
// action fails with a clear error on the dashboard's event stream, and the
// first backup is intact.
func TestFaultBackupDiskFull(t *testing.T) {
	requireRoot(t)
	data := t.TempDir()
	backups := filepath.Join(data, "backups")
	if err := os.MkdirAll(backups, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=14m", "cm4bench-test-backups", backups).CombinedOutput(); err != nil {
		t.Fatalf("mount a 14 MiB tmpfs as the backup disk: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", backups).Run() })
	// No disk reserve: the tmpfs really fills up.
	r := testRig(t, simbench.RigConfig{Devices: 2, DataDir: data, EMMCBytes: 32 << 20, ServerArgs: []string{"--backup-reserve", "0"}, Prepare: func(r *simbench.Rig) error {
		// ~10 MiB of incompressible data each: one backup fits, two do not.
		for i, d := range r.Bench.Devices {
			if err := fillEMMC(d.EMMC(), 32<<20, uint64(20+i)); err != nil {
				return err
			}
		}
		return nil
	}})
	waitRegistered(t, r, 90*time.Second)
	ctx := context.Background()
	c := r.Client()
	first, second := r.Bench.Devices[0], r.Bench.Devices[1]
	a1, err := c.SetAction(ctx, first.Board.MAC.String(), contract.ActionBackup, "")
	if err != nil {
		t.Fatal(err)
	}
	if got := waitAction(t, r, first.Board.MAC.String(), a1.ID, 2*time.Minute); got.State != contract.StateDone {
		t.Fatalf("first backup: %+v", got)
	}
	events, _ := c.Events(ctx, 0, 1000)
	since := int64(0)
	if len(events) > 0 {
		since = events[len(events)-1].ID
	}
	a2, err := c.SetAction(ctx, second.Board.MAC.String(), contract.ActionBackup, "")
	if err != nil {
		t.Fatal(err)
	}
	got := waitAction(t, r, second.Board.MAC.String(), a2.ID, 2*time.Minute)
	if got.State != contract.StateFailed {
		t.Fatalf("backup onto a full disk: %+v", got)
	}
	if !strings.Contains(strings.ToLower(got.Error), "space") {
		t.Errorf("error %q does not say the disk is full", got.Error)
	}
	// Every event since the second backup was asked for, page by page (a
	// busy bench logs more than one page of DHCP/TFTP events meanwhile).
	var failEv *contract.Event
	var kinds []string
	for {
		events, err = c.Events(ctx, since, 1000)
		if err != nil {
			t.Fatal(err)
		}
		for i, e := range events {
			if e.Kind == "action.failed" && e.MAC == second.Board.MAC.String() {
				failEv = &events[i]
			}
			if e.MAC == second.Board.MAC.String() {
				kinds = append(kinds, e.Kind)
			}
		}
		if len(events) < 1000 {
			break
		}
		since = events[len(events)-1].ID
	}
	if failEv == nil || !strings.Contains(strings.ToLower(failEv.Message+fmt.Sprint(failEv.Fields)), "space") {
		t.Fatalf("no action.failed event naming the full disk for the dashboard: %+v (the board's events: %v)", failEv, kinds)
	}
	bks, err := c.Backups(ctx)
	if err != nil || len(bks) != 1 {
		t.Fatalf("backups: %+v %v", bks, err)
	}
	want := fileSHA(t, first.EMMC(), 32<<20)
	if bks[0].SHA256 != want || bks[0].MAC != first.Board.MAC.String() {
		t.Errorf("first backup %+v, want sha256 %s", bks[0], want)
	}
	// And it is still readable in full.
	var body bytes.Buffer
	req, _ := http.NewRequestWithContext(ctx, "GET", c.BaseURL+"/api/v1/backups/"+bks[0].ID+"/download", nil)
	req.Header.Set("Authorization", "Bearer "+c.Token)
	resp, err := c.HTTP.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(&body, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || int64(body.Len()) != bks[0].StoredSize && int64(body.Len()) != bks[0].Size {
		t.Errorf("download of the first backup: HTTP %d, %d bytes (stored %d, raw %d)", resp.StatusCode, body.Len(), bks[0].StoredSize, bks[0].Size)
	}
	dev, _ := c.Device(ctx, second.Board.MAC.String())
	faultReport(t, "Fault: backup disk full", [][2]string{
		{"backup disk", "tmpfs 14 MiB on <data>/backups"},
		{"first backup", fmt.Sprintf("done, %d bytes raw, %d stored, sha256 intact", bks[0].Size, bks[0].StoredSize)},
		{"second backup", fmt.Sprintf("%s: %s", got.State, got.Error)},
		{"dashboard event", failEv.Kind + ": " + failEv.Message},
		{"netboot for the second board", fmt.Sprint(dev.Netboot)},
	})
}

// corruptingProxy forwards the device API to the server and flips one byte
// in every image stream (GET /api/device/image/...) at offset 5 MiB.
type corruptingProxy struct {
	flipped atomic.Int64
}

type flipReader struct {
	r   io.ReadCloser
	off int64
	at  int64
	p   *corruptingProxy
}

func (f *flipReader) Read(b []byte) (int, error) {
	n, err := f.r.Read(b)
	if f.at >= f.off && f.at < f.off+int64(n) {
		b[f.at-f.off] ^= 0x5a
		f.p.flipped.Add(1)
	}
	f.off += int64(n)
	return n, err
}

func (f *flipReader) Close() error { return f.r.Close() }

// TestFaultCorruptImageStream: a proxy between the board and the server
// corrupts bytes of the image stream. The agent's verification fails, the
// action is failed (never done), and netboot stays on.
func TestFaultCorruptImageStream(t *testing.T) {
	proxyURL := "http://10.61.0.1:5001"
	// The proxy's requests come from the bench address, which has no lease.
	r := testRig(t, simbench.RigConfig{Devices: 1, DeviceURL: proxyURL, ServerArgs: []string{"--allow-unleased-devices"}})
	target, _ := url.Parse(r.URL)
	p := &corruptingProxy{}
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.Transport = &http.Transport{DialContext: r.Bench.Server.DialContext}
	director := rp.Director
	rp.Director = func(req *http.Request) {
		host := req.Host
		director(req)
		req.Host = host // the server builds the device's URLs from the Host it reached
		req.Header.Del("Accept-Encoding")
	}
	rp.ModifyResponse = func(resp *http.Response) error {
		if strings.HasPrefix(resp.Request.URL.Path, contract.PathImage) {
			resp.Body = &flipReader{r: resp.Body, at: 5 << 20, p: p}
		}
		return nil
	}
	ln, err := r.Bench.Server.Listen("tcp", "10.61.0.1:5001")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: rp}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	waitRegistered(t, r, 90*time.Second)
	d := r.Bench.Devices[0]
	mac := d.Board.MAC.String()
	ctx := context.Background()
	c := r.Client()
	a, err := c.SetAction(ctx, mac, contract.ActionDeploy, "")
	if err != nil {
		t.Fatal(err)
	}
	got := waitAction(t, r, mac, a.ID, 2*time.Minute)
	if p.flipped.Load() == 0 {
		t.Fatal("the proxy corrupted nothing: the image did not pass through it")
	}
	if got.State == contract.StateDone {
		t.Fatalf("corrupted deploy marked done: %+v", got)
	}
	if got.State != contract.StateFailed || !strings.Contains(strings.ToLower(got.Error), "sha256") && !strings.Contains(strings.ToLower(got.Error), "verif") {
		t.Errorf("corrupted deploy: state %s, error %q: want failed verification", got.State, got.Error)
	}
	dev, err := c.Device(ctx, mac)
	if err != nil || !dev.Netboot {
		t.Errorf("netboot after a failed deploy: %v %v", dev.Netboot, err)
	}
	if s := d.Status(); s.State != simbench.StateAgent || s.EMMCBoots != 0 {
		t.Errorf("board after a failed deploy: %+v (it must not reboot into a bad image)", s)
	}
	faultReport(t, "Fault: corrupted image stream (1 byte flipped at 5 MiB by a proxy)", [][2]string{
		{"bytes flipped", fmt.Sprint(p.flipped.Load())},
		{"action", fmt.Sprintf("%s: %s", got.State, got.Error)},
		{"netboot for the board", fmt.Sprint(dev.Netboot)},
		{"board", d.Status().State + " (no reboot)"},
	})
}
