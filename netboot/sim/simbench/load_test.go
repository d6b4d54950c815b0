package simbench_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/cm4bench/cm4bench/api/client"
	"github.com/cm4bench/cm4bench/internal/contract"
	"github.com/cm4bench/cm4bench/netboot/sim/simbench"
)

// soakDuration is how long the load run keeps actions going: 1 minute in
// make test, CM4BENCH_SOAK (e.g. 10m) in make soak.
func soakDuration(t *testing.T) time.Duration {
	if v := os.Getenv("CM4BENCH_SOAK"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("CM4BENCH_SOAK=%q: %v", v, err)
		}
		return d
	}
	return time.Minute
}

// stateLog timestamps every device state change.
type stateLog struct {
	mu   sync.Mutex
	last map[int]simbench.Status
	at   map[int]time.Time
	// durations per transition kind
	netboot []time.Duration // netbooting -> agent
	reboot  []time.Duration // agent -> booted-emmc (after a deploy's reboot)
}

func (l *stateLog) change(s simbench.Status) {
	l.mu.Lock()
	defer l.mu.Unlock()
	prev, ok := l.last[s.Index]
	now := time.Now()
	if ok && prev.State != s.State {
		d := now.Sub(l.at[s.Index])
		switch {
		case prev.State == simbench.StateNetboot && s.State == simbench.StateAgent:
			l.netboot = append(l.netboot, d)
		case prev.State == simbench.StateNetboot && s.State == simbench.StateEMMC:
			l.reboot = append(l.reboot, d)
		}
	}
	if !ok || prev.State != s.State {
		l.at[s.Index] = now
	}
	l.last[s.Index] = s
}

func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(p*float64(len(s))+0.5) - 1
	return s[max(0, min(i, len(s)-1))]
}

func mean(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	var sum time.Duration
	for _, d := range ds {
		sum += d
	}
	return sum / time.Duration(len(ds))
}

// metric reads one counter from the server's Prometheus text.
func metric(ctx context.Context, c *client.Client, name string) float64 {
	req, _ := http.NewRequestWithContext(ctx, "GET", c.BaseURL+contract.PathMetrics, nil)
	req.Header.Set("Authorization", "Bearer "+c.Token)
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	var sum float64
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, name+" ") || strings.HasPrefix(line, name+"{") {
			f := strings.Fields(line)
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			sum += v
		}
	}
	return sum
}

// pollProbe registers as a plain shell client and polls like one, timing
// each poll: the latency a device sees while the 50 agents and the actions
// load the server.
func pollProbe(ctx context.Context, c *client.Client, mac string, every time.Duration, out *[]time.Duration, mu *sync.Mutex, fails *int) {
	body := strings.NewReader(fmt.Sprintf(`{"mac":%q,"ip":"10.61.0.250"}`, mac))
	req, _ := http.NewRequestWithContext(ctx, "POST", c.BaseURL+contract.PathRegister, body)
	req.Header.Set("Content-Type", "application/json")
	if resp, err := c.HTTP.Do(req); err == nil {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	tk := time.NewTicker(every)
	defer tk.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tk.C:
		}
		start := time.Now()
		req, _ := http.NewRequestWithContext(ctx, "GET", c.BaseURL+contract.PathPoll+"?mac="+mac, nil)
		resp, err := c.HTTP.Do(req)
		var pr contract.PollResponse
		if err == nil {
			err = json.NewDecoder(resp.Body).Decode(&pr)
			resp.Body.Close()
		}
		d := time.Since(start)
		mu.Lock()
		if err != nil || pr.Action != contract.ActionNone {
			if ctx.Err() == nil {
				*fails++
			}
		} else {
			*out = append(*out, d)
		}
		mu.Unlock()
	}
}

type runStats struct {
	mu                  sync.Mutex
	deploys, backups    int
	failed              []string
	queue, run          map[string][]time.Duration
	verified            int
	deployBytes, backed int64
}

func (r *runStats) add(a contract.Action) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if a.State != contract.StateDone {
		r.failed = append(r.failed, fmt.Sprintf("%s %s %s: %s", a.Type, a.MAC, a.State, a.Error))
		return
	}
	if a.Type == contract.ActionDeploy {
		r.deploys++
		r.deployBytes += a.Bytes
	} else {
		r.backups++
		r.backed += a.Bytes
	}
	if a.Started != nil && a.Finished != nil {
		r.queue[a.Type] = append(r.queue[a.Type], a.Started.Sub(a.Created))
		r.run[a.Type] = append(r.run[a.Type], a.Finished.Sub(*a.Started))
	}
}

// TestLoad: 50 simulated CM4s netboot, register and poll every 5 s; 16
// deploys and 4 backups run concurrently, slot after slot, for the soak
// duration; every deployed board reboots into its eMMC and is put back
// into netboot by the technician (netboot on + power cycle). Zero failed
// actions; every deploy is verified against the image on the board's eMMC
// file; p99 poll latency and a table of where the time went are reported.
func TestLoad(t *testing.T) {
	t.Parallel()
	const boards, deploySlots, backupSlots = 50, 16, 4
	dur := soakDuration(t)
	sl := &stateLog{last: map[int]simbench.Status{}, at: map[int]time.Time{}}
	// The poll probes are shell clients run from the bench namespace, which
	// has no lease: the server is told to accept unleased devices.
	r := testRig(t, simbench.RigConfig{Devices: boards, AgentArgs: []string{"--poll", "5s"}, OnChange: sl.change,
		ServerArgs: []string{"--allow-unleased-devices"}})
	setupStart := time.Now()
	waitRegistered(t, r, 4*time.Minute)
	setup := time.Since(setupStart)
	c := r.Client()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	var pollMu sync.Mutex
	var polls []time.Duration
	pollFails := 0
	var pwg sync.WaitGroup
	for i := 0; i < 5; i++ {
		pwg.Add(1)
		go func() {
			defer pwg.Done()
			pollProbe(ctx, c, fmt.Sprintf("02:cb:5e:00:00:%02x", i), 5*time.Second, &polls, &pollMu, &pollFails)
		}()
	}

	// A pool of boards ready for an action: running their agent, not claimed.
	var poolMu sync.Mutex
	claimed := map[int]bool{}
	claim := func() *simbench.Device {
		poolMu.Lock()
		defer poolMu.Unlock()
		for _, d := range r.Bench.Devices {
			if !claimed[d.Index] && d.Status().State == simbench.StateAgent {
				claimed[d.Index] = true
				return d
			}
		}
		return nil
	}
	release := func(d *simbench.Device) { poolMu.Lock(); delete(claimed, d.Index); poolMu.Unlock() }

	st := &runStats{queue: map[string][]time.Duration{}, run: map[string][]time.Duration{}}
	deadline := time.Now().Add(dur)
	runStart := time.Now()
	var wg sync.WaitGroup
	worker := func(kind string) {
		defer wg.Done()
		for time.Now().Before(deadline) {
			d := claim()
			if d == nil {
				time.Sleep(200 * time.Millisecond)
				continue
			}
			mac := d.Board.MAC.String()
			a, err := c.SetAction(ctx, mac, kind, "")
			if err != nil {
				st.mu.Lock()
				st.failed = append(st.failed, fmt.Sprintf("set %s on %s: %v", kind, mac, err))
				st.mu.Unlock()
				release(d)
				continue
			}
			got := waitActionQuiet(ctx, c, mac, a.ID, 5*time.Minute)
			st.add(got)
			if got.State == contract.StateDone && kind == contract.ActionDeploy {
				if sha := fileSHANoT(d.EMMC(), 16<<20); sha == r.ImageSHA {
					st.mu.Lock()
					st.verified++
					st.mu.Unlock()
				} else {
					st.mu.Lock()
					st.failed = append(st.failed, fmt.Sprintf("deploy %s done but eMMC sha256 %s != image %s", mac, sha, r.ImageSHA))
					st.mu.Unlock()
				}
				// Wait for the reboot into eMMC, then put it back in the pool:
				// netboot on, power cycle.
				waitState(ctx, d, simbench.StateEMMC, 2*time.Minute)
				c.SetDeviceNetboot(ctx, mac, true)
				d.PowerCycle()
				waitState(ctx, d, simbench.StateNetboot, 30*time.Second)
			} else if got.State == contract.StateDone {
				c.SetDeviceNetboot(ctx, mac, true) // a successful backup switched it off
			}
			release(d)
		}
	}
	for i := 0; i < deploySlots; i++ {
		wg.Add(1)
		go worker(contract.ActionDeploy)
	}
	for i := 0; i < backupSlots; i++ {
		wg.Add(1)
		go worker(contract.ActionBackup)
	}
	wg.Wait()
	elapsed := time.Since(runStart)
	cancel()
	pwg.Wait()

	served := metric(context.Background(), c, "cm4bench_image_bytes_served_total")
	received := metric(context.Background(), c, "cm4bench_backup_bytes_received_total")
	tftpBytes := metric(context.Background(), c, "cm4bench_tftp_bytes_total")
	var netboots, agentRuns, emmcBoots int
	for _, d := range r.Bench.Devices {
		s := d.Status()
		netboots += s.Netboots
		agentRuns += s.AgentRuns
		emmcBoots += s.EMMCBoots
	}
	sl.mu.Lock()
	nb, rb := sl.netboot, sl.reboot
	sl.mu.Unlock()
	pollMu.Lock()
	p50, p99, np := percentile(polls, 0.5), percentile(polls, 0.99), len(polls)
	pollMu.Unlock()

	var b strings.Builder
	fmt.Fprintf(&b, "\nLoad run: %d boards, %d deploy + %d backup slots, %v of actions (%v wall incl. drain), setup %v\n",
		boards, deploySlots, backupSlots, dur, elapsed.Round(time.Second), setup.Round(time.Second))
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "what\tcount\tbytes\tfailures\tmean\tp99\t")
	fmt.Fprintf(tw, "deploys (verified on eMMC)\t%d (%d)\t%d\t%d\t%v\t%v\t\n", st.deploys, st.verified, st.deployBytes, countPrefix(st.failed, "deploy"), mean(st.run["deploy"]).Round(time.Millisecond), percentile(st.run["deploy"], .99).Round(time.Millisecond))
	fmt.Fprintf(tw, "backups\t%d\t%d\t%d\t%v\t%v\t\n", st.backups, st.backed, countPrefix(st.failed, "backup"), mean(st.run["backup"]).Round(time.Millisecond), percentile(st.run["backup"], .99).Round(time.Millisecond))
	fmt.Fprintf(tw, "action queue (click to first poll)\t%d\t\t\t%v\t%v\t\n", len(st.queue["deploy"])+len(st.queue["backup"]), mean(append(st.queue["deploy"], st.queue["backup"]...)).Round(time.Millisecond), percentile(append(st.queue["deploy"], st.queue["backup"]...), .99).Round(time.Millisecond))
	fmt.Fprintf(tw, "netboot (power-on to agent running)\t%d\t%.0f\t\t%v\t%v\t\n", len(nb), tftpBytes, mean(nb).Round(time.Millisecond), percentile(nb, .99).Round(time.Millisecond))
	fmt.Fprintf(tw, "reboot to eMMC (no menu, DHCP_TIMEOUT 5 s)\t%d\t\t\t%v\t%v\t\n", len(rb), mean(rb).Round(time.Millisecond), percentile(rb, .99).Round(time.Millisecond))
	fmt.Fprintf(tw, "device polls (probe clients, every 5 s)\t%d\t\t%d\tp50 %v\t%v\t\n", np, pollFails, p50.Round(time.Microsecond), p99.Round(time.Microsecond))
	fmt.Fprintf(tw, "image bytes served / backup bytes received\t\t%.0f / %.0f\t\t\t\t\n", served, received)
	fmt.Fprintf(tw, "boards: netboots / agent runs / eMMC boots\t%d / %d / %d\t\t\t\t\t\n", netboots, agentRuns, emmcBoots)
	tw.Flush()
	// The line figures, as the dashboard and /metrics show them.
	lf, ferr := c.Figures(context.Background())
	if ferr != nil {
		t.Errorf("figures: %v", ferr)
	} else {
		fmt.Fprintf(&b, "\nLine figures (GET /api/v1/figures: the dashboard's and /metrics' numbers)\n")
		fw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(fw, "window\tboards\tdone\tboards/h\tfirst pass\twrite p50/p95 s\tverify p50/p95 s\ttotal p50/p95 s\t")
		for _, f := range append(lf.Hour[:1], lf.Shift[:1]...) {
			ph := func(n string) string { q := f.Phases[n]; return fmt.Sprintf("%.1f / %.1f", q.P50, q.P95) }
			fmt.Fprintf(fw, "%s\t%d\t%d\t%.0f\t%.0f%%\t%s\t%s\t%s\t\n", f.Window, f.Boards, f.Done, f.BoardsPerHour, 100*f.FirstPass, ph("write"), ph("verify"), ph("total"))
		}
		fw.Flush()
		rows, err := c.Ledger(context.Background(), client.LedgerQuery{})
		if err != nil || len(rows) != st.deploys {
			t.Errorf("the ledger has %d rows (%v) for %d deploys", len(rows), err, st.deploys)
		}
		if lf.Hour[0].Done == 0 || lf.Hour[0].BoardsPerHour <= 0 {
			t.Errorf("figures after %d deploys: %+v", st.deploys, lf.Hour[0])
		}
	}
	fmt.Print(b.String())
	t.Log(b.String())

	if len(st.failed) > 0 {
		t.Errorf("%d failed actions:\n%s", len(st.failed), strings.Join(st.failed, "\n"))
	}
	if st.deploys < deploySlots || st.backups < backupSlots || st.verified != st.deploys {
		t.Errorf("deploys %d (verified %d), backups %d: want at least one per slot, all verified", st.deploys, st.verified, st.backups)
	}
	if np == 0 || pollFails > 0 {
		t.Errorf("poll probes: %d polls, %d failures", np, pollFails)
	}
}

func countPrefix(ss []string, p string) int {
	n := 0
	for _, s := range ss {
		if strings.HasPrefix(s, p) || strings.Contains(s, " "+p+" ") {
			n++
		}
	}
	return n
}

// waitActionQuiet is waitAction without failing the test: it returns the
// last state seen (a still-running action after timeout counts as failed).
func waitActionQuiet(ctx context.Context, c *client.Client, mac, id string, timeout time.Duration) contract.Action {
	deadline := time.Now().Add(timeout)
	last := contract.Action{ID: id, MAC: mac, State: "timeout"}
	for time.Now().Before(deadline) {
		acts, err := c.Actions(ctx, mac, 10)
		if err == nil {
			for _, a := range acts {
				if a.ID == id {
					last = a
					if a.State == contract.StateDone || a.State == contract.StateFailed || a.State == contract.StateCancelled {
						return a
					}
				}
			}
		}
		time.Sleep(500 * time.Millisecond)
	}
	last.Error = "still " + last.State + " after " + timeout.String()
	last.State = contract.StateFailed
	return last
}

func waitState(ctx context.Context, d *simbench.Device, state string, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if d.Status().State == state {
			return true
		}
		time.Sleep(100 * time.Millisecond)
	}
	return false
}

func fileSHANoT(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyN(h, f, n); err != nil {
		return err.Error()
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}
