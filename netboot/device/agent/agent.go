// Package agent is cm4agent, the device side of cm4bench's netboot
// provisioning: it registers the board with the server, polls for an action,
// and runs it. A deploy streams an image (raw, gz, xz or zst) onto the
// target with download, decompression, hashing and writing pipelined, skips
// zero blocks, writes the first MiB last, and verifies the written range by
// reading it back around the page cache. A backup streams the target to the
// server zstd-compressed. Every result goes to the server with its hashes;
// every failure is shown on the console and reported, then polling goes on.
package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/cm4bench/cm4bench/internal/contract"
	"github.com/cm4bench/cm4bench/netboot/bootfs"
	"github.com/cm4bench/cm4bench/netboot/device/blockdev"
)

// Agent talks to one cm4bench server for one device.
type Agent struct {
	// Server is the base URL of the cm4bench API, e.g. http://10.0.2.2:5000.
	Server string
	// Version is the agent version, reported in the facts and the
	// User-Agent ("" = "dev").
	Version string
	// MAC identifies this device to the server (lower-case, colon form).
	MAC string
	// IP is reported at register (informational; the server sees the peer).
	IP string
	// Target is the device to deploy to and back up from (/dev/mmcblk0).
	Target string
	// AllowFile lets Target be a regular file (tests, demo bench).
	AllowFile bool
	// RefuseSD refuses a Target that the kernel reports as an SD card, not
	// an eMMC (a CM4 Lite on a carrier with an SD slot has the card at
	// mmcblk0). Set when the target is the default, not one the technician
	// named.
	RefuseSD bool
	// Pace, when set, wraps the opened target for a deploy (the bench twin
	// gives a file-backed target the speed of a real eMMC); nil = as is.
	Pace func(*blockdev.Device) Target
	// Sys is the sysfs root for the RefuseSD check ("" = /sys).
	Sys string
	// Facts returns the board facts sent at register; nil = none.
	Facts func() *contract.Facts
	// HTTP is the client for every request; nil = a client with sane
	// connect and header timeouts and no overall timeout.
	HTTP *http.Client
	// Log receives structured logs; nil = silent.
	Logger *slog.Logger
	// Console receives the human-readable progress and errors (the
	// technician may look at the board's screen); nil = discarded.
	Console io.Writer
	// Reboot is called after a verified deploy was reported; nil = keep
	// polling. If it returns, the agent goes on polling.
	Reboot func() error
	// PowerOff is called instead when the recipe says "poweroff"; nil =
	// keep polling.
	PowerOff func() error
	// Once makes Run return after the first deploy or backup, with its error.
	Once bool
	// PollInterval overrides the server's poll interval (0 = the server's,
	// or 5 s).
	PollInterval time.Duration
	// ProgressInterval is the progress report period (0 = 1 s).
	ProgressInterval time.Duration
	// Stall is how long a download may deliver nothing before it is
	// reconnected with a Range request (0 = 30 s).
	Stall time.Duration
	// IdentifyFor is how long an identify blinks the LED (0 =
	// contract.IdentifySeconds).
	IdentifyFor time.Duration
	// AcceptZstd asks the server for the zstd-compressed image stream (less
	// on the wire; the agent decompresses). Default off: set it when the
	// link, not the CPU, is the bottleneck.
	AcceptZstd bool
	// AcceptSparse asks for the sparse stream of a raw image: only its data
	// extents cross the network, the zero runs between them are neither
	// downloaded nor written. With AcceptZstd as well, a raw image comes
	// sparse and a compressed one as zstd.
	AcceptSparse bool

	mu    sync.Mutex
	tail  []string   // last console lines, sent with a failure
	conMu sync.Mutex // serialises Console writes
}

const tailLines = 40

func (a *Agent) identifyFor() time.Duration {
	if a.IdentifyFor > 0 {
		return a.IdentifyFor
	}
	return time.Duration(contract.IdentifySeconds) * time.Second
}

// UserAgent marks requests as the agent's (contract.AgentUserAgent), so the
// server leaves progress reporting to the agent.
func UserAgent(version string) string {
	if version == "" {
		version = "dev"
	}
	return contract.AgentUserAgent + "/" + version
}

// Run registers and then polls until ctx ends (or, with Once, until the
// first action finished).
func (a *Agent) Run(ctx context.Context) error {
	if a.HTTP == nil {
		a.HTTP = &http.Client{Transport: &http.Transport{
			Proxy:                 nil,
			ResponseHeaderTimeout: 60 * time.Second,
			IdleConnTimeout:       90 * time.Second,
			DisableCompression:    true,
		}}
	}
	if _, err := url.Parse(a.Server); err != nil || a.Server == "" {
		return fmt.Errorf("agent: server URL %q: invalid", a.Server)
	}
	interval := 5 * time.Second
	registered := false
	for {
		if !registered {
			iv, err := a.register(ctx)
			if err != nil {
				a.say("register with %s failed: %v (retrying)", a.Server, err)
				if !sleep(ctx, min(interval, 5*time.Second)) {
					return ctx.Err()
				}
				continue
			}
			registered = true
			if iv > 0 {
				interval = iv
			}
			if a.PollInterval > 0 {
				interval = a.PollInterval
			}
			a.say("registered as %s with %s", a.MAC, a.Server)
		}
		pr, err := a.poll(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			a.say("poll failed: %v", err)
			var se *statusError
			if errors.As(err, &se) && se.code == http.StatusNotFound {
				registered = false // the server forgot us: register again
			}
			if !sleep(ctx, interval) {
				return ctx.Err()
			}
			continue
		}
		switch pr.Action {
		case contract.ActionDeploy, contract.ActionBackup, contract.ActionIdentify:
			err := a.runAction(ctx, pr)
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if a.Once {
				return err
			}
			if err == nil && pr.Action == contract.ActionDeploy {
				a.after(pr)
			}
			continue // poll again at once: the next action may be queued
		case contract.ActionNone, "":
		default:
			a.say("server asked for unknown action %q; ignoring", pr.Action)
		}
		if !sleep(ctx, interval) {
			return ctx.Err()
		}
	}
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// say prints a line on the console, keeps it for the log tail and logs it.
func (a *Agent) say(format string, args ...any) {
	line := fmt.Sprintf(format, args...)
	stamp := time.Now().UTC().Format("15:04:05")
	a.mu.Lock()
	a.tail = append(a.tail, stamp+" "+line)
	if len(a.tail) > tailLines {
		a.tail = a.tail[len(a.tail)-tailLines:]
	}
	a.mu.Unlock()
	switch {
	case a.Console != nil:
		a.print("cm4agent: %s\n", line)
	case a.Logger != nil:
		a.Logger.Info(line)
	}
}

// print writes to the console; the progress reporter and the action share it.
func (a *Agent) print(format string, args ...any) {
	a.conMu.Lock()
	defer a.conMu.Unlock()
	fmt.Fprintf(a.Console, format, args...)
}

func (a *Agent) logTail() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.tail...)
}

func (a *Agent) url(path string) string {
	return strings.TrimRight(a.Server, "/") + path
}

func (a *Agent) postJSON(ctx context.Context, path string, v, out any) error {
	body, err := json.Marshal(v)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, a.url(path), bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", UserAgent(a.Version))
	resp, err := a.HTTP.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return readStatusError(resp)
	}
	if out != nil {
		if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(out); err != nil {
			return fmt.Errorf("decode answer of %s: %w", path, err)
		}
	}
	return nil
}

func readStatusError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	var ae contract.APIError
	msg := strings.TrimSpace(string(b))
	if json.Unmarshal(b, &ae) == nil && ae.Error != "" {
		msg = ae.Error
	}
	return &statusError{resp.StatusCode, msg}
}

func (a *Agent) register(ctx context.Context) (time.Duration, error) {
	req := contract.RegisterRequest{MAC: a.MAC, IP: a.IP}
	if a.Facts != nil {
		req.Facts = a.Facts()
	}
	if req.Facts == nil {
		req.Facts = &contract.Facts{}
	}
	req.Facts.Agent = a.Version
	if req.Facts.Agent == "" {
		req.Facts.Agent = "dev"
	}
	var resp contract.RegisterResponse
	if err := a.postJSON(ctx, contract.PathRegister, req, &resp); err != nil {
		return 0, fmt.Errorf("agent: register: %w", err)
	}
	return time.Duration(resp.PollInterval * float64(time.Second)), nil
}

func (a *Agent) poll(ctx context.Context) (*contract.PollResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.url(contract.PathPoll)+"?mac="+url.QueryEscape(a.MAC), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("User-Agent", UserAgent(a.Version))
	resp, err := a.HTTP.Do(req)
	if err != nil {
		return nil, fmt.Errorf("agent: poll: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("agent: poll: %w", readStatusError(resp))
	}
	var pr contract.PollResponse
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&pr); err != nil {
		return nil, fmt.Errorf("agent: poll: decode: %w", err)
	}
	return &pr, nil
}

// runAction runs one deploy or backup and reports it; the error is the
// action's failure (already reported).
// after does what the recipe says once a deploy is verified and reported:
// reboot into the eMMC (the default), power off, or hold (keep polling).
func (a *Agent) after(pr *contract.PollResponse) {
	what := contract.AfterReboot
	if pr.Customise != nil && pr.Customise.After != "" {
		what = pr.Customise.After
	}
	switch {
	case what == contract.AfterHold:
		a.say("deploy verified; holding here as the recipe says (power off or unplug when ready)")
	case what == contract.AfterPowerOff && a.PowerOff != nil:
		a.say("deploy verified; powering off")
		if err := a.PowerOff(); err != nil {
			a.say("power off failed: %v", err)
		}
	case what == contract.AfterReboot && a.Reboot != nil:
		a.say("deploy verified; rebooting")
		if err := a.Reboot(); err != nil {
			a.say("reboot failed: %v", err)
		}
	}
}

func (a *Agent) runAction(ctx context.Context, pr *contract.PollResponse) error {
	meter := &Meter{}
	stop := a.reportProgress(ctx, pr, meter)
	done := contract.ActionDone{MAC: a.MAC, Action: pr.Action, ActionID: pr.ActionID, Token: pr.Token}
	var err error
	switch pr.Action {
	case contract.ActionDeploy:
		a.say("deploy %s to %s", imageName(pr), a.Target)
		var res *DeployResult
		res, err = a.deploy(ctx, pr, meter)
		if res != nil {
			done.Bytes, done.SHA256 = res.Bytes, res.SHA256
			done.CompressedBytes, done.CompressedSHA256 = res.WireBytes, res.WireSHA256
			done.Seconds = res.Seconds
			done.Files = res.Files
			done.Phases = &contract.PhaseSeconds{Write: res.StreamSeconds + res.SyncSeconds, Verify: res.VerifySeconds, Customise: res.CustomiseSeconds}
		}
		if err == nil && res.ZeroFallback {
			a.say("the target's discarded blocks did not read back as zeros; zeroed the skipped runs explicitly")
		}
		if err == nil {
			how := "verified on read-back (" + map[bool]string{true: "O_DIRECT", false: "cache dropped"}[res.Direct] + ")"
			if !res.Verified {
				how = "checked on the stream only, as the recipe says (verify: stream)"
			}
			a.say("deploy done: %d bytes (%s, %d on the wire), %d written, %d zero bytes skipped, sha256 %s %s",
				res.Bytes, res.Format, res.WireBytes, res.Written, res.Zeroed, res.SHA256, how)
		}
	case contract.ActionIdentify:
		a.say("identify: blinking the activity LED for %d s", contract.IdentifySeconds)
		err = a.identify(ctx, a.identifyFor())
	case contract.ActionBackup:
		a.say("backup %s", a.Target)
		var res *BackupResult
		res, err = a.backup(ctx, pr, meter)
		if res != nil {
			done.Bytes, done.SHA256 = res.Bytes, res.SHA256
			done.CompressedBytes, done.CompressedSHA256 = res.CompressedBytes, res.CompressedSHA256
			done.Seconds = res.Seconds
		}
		if err == nil {
			a.say("backup done: %d bytes, sha256 %s, %d bytes zstd", res.Bytes, res.SHA256, res.CompressedBytes)
		}
	}
	stop()
	if err != nil {
		done.Status = contract.StatusFailed
		done.Error = err.Error()
		a.say("%s FAILED: %v", pr.Action, err)
		a.sendLog(ctx, pr)
	} else {
		done.Status = contract.StatusSuccess
	}
	// The result must reach the server: retry a few times.
	var rerr error
	for i := range 5 {
		if rerr = a.postJSON(ctx, contract.PathActionDone, done, nil); rerr == nil {
			break
		}
		var se *statusError
		if errors.As(rerr, &se) && se.code < 500 {
			break
		}
		if !sleep(ctx, time.Duration(i+1)*time.Second) {
			break
		}
	}
	if rerr != nil {
		a.say("report %s result failed: %v", pr.Action, rerr)
		if err == nil {
			// The server refused the result (for example a backup it did not
			// store completely): this action did not succeed.
			err = fmt.Errorf("agent: report result: %w", rerr)
		}
	}
	return err
}

func imageName(pr *contract.PollResponse) string {
	if pr.Image != nil && pr.Image.Name != "" {
		return pr.Image.Name
	}
	return "image"
}

func (a *Agent) sendLog(ctx context.Context, pr *contract.PollResponse) {
	ll := contract.LogLines{MAC: a.MAC, ActionID: pr.ActionID, Token: pr.Token, Lines: a.logTail()}
	if err := a.postJSON(ctx, contract.PathLog, ll, nil); err != nil && a.Logger != nil {
		a.Logger.Warn("send log tail", "err", err)
	}
}

// reportProgress posts the meter every ProgressInterval until stop is called.
func (a *Agent) reportProgress(ctx context.Context, pr *contract.PollResponse, m *Meter) (stop func()) {
	iv := a.ProgressInterval
	if iv <= 0 {
		iv = time.Second
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(iv)
		defer t.Stop()
		var lastDone int64
		lastPhase := ""
		last := time.Now()
		for {
			select {
			case <-ctx.Done():
				return
			case now := <-t.C:
				phase, done, total := m.Sample()
				if phase == "" {
					continue
				}
				rate := 0.0
				if phase == lastPhase && now.After(last) {
					rate = float64(done-lastDone) / now.Sub(last).Seconds()
				}
				lastDone, lastPhase, last = done, phase, now
				p := contract.Progress{MAC: a.MAC, ActionID: pr.ActionID, Token: pr.Token, Phase: phase, Done: done, Total: total, Rate: rate}
				if err := a.postJSON(ctx, contract.PathProgress, p, nil); err != nil && a.Logger != nil && ctx.Err() == nil {
					a.Logger.Debug("progress report", "err", err)
				}
				if a.Console != nil {
					pct := ""
					if total > 0 {
						pct = fmt.Sprintf(" %5.1f%%", 100*float64(done)/float64(total))
					}
					a.print("cm4agent: %s %d/%d%s %.1f MB/s\n", phase, done, total, pct, rate/1e6)
				}
			}
		}
	}()
	return func() { cancel(); wg.Wait() }
}

// ErrSDCard marks a default target that is an SD card, not the eMMC.
var ErrSDCard = errors.New("the target is an SD card, not the eMMC")

// checkTarget applies RefuseSD: the MMC core publishes the card type (MMC
// for eMMC, SD for SD cards) next to the CID in
// /sys/block/<dev>/device/type.
func (a *Agent) checkTarget() error {
	if !a.RefuseSD {
		return nil
	}
	sys := a.Sys
	if sys == "" {
		sys = "/sys"
	}
	dev := filepath.Join(sys, "block", filepath.Base(a.Target), "device")
	typ, err := os.ReadFile(filepath.Join(dev, "type"))
	if err != nil || strings.TrimSpace(string(typ)) != "SD" {
		return nil // not an MMC device, or an eMMC
	}
	cid, _ := os.ReadFile(filepath.Join(dev, "cid"))
	return fmt.Errorf("%s has CID %s and type SD: %w (a CM4 Lite with an SD card in its carrier?); to write it anyway, name it: cm4bench.target=%s on the kernel command line",
		a.Target, strings.TrimSpace(string(cid)), ErrSDCard, a.Target)
}

func (a *Agent) deploy(ctx context.Context, pr *contract.PollResponse, meter *Meter) (*DeployResult, error) {
	if pr.URL == "" {
		return nil, errors.New("deploy: the server sent no image URL")
	}
	if err := a.checkTarget(); err != nil {
		return nil, fmt.Errorf("deploy: %w", err)
	}
	dev, err := blockdev.Open(a.Target, true, a.AllowFile)
	if err != nil {
		return nil, fmt.Errorf("deploy: %w", err)
	}
	defer dev.Close()
	opts := DeployOptions{Meter: meter}
	var files []contract.CustomFile
	if c := pr.Customise; c != nil {
		switch c.Verify {
		case "", contract.VerifyReadback:
		case contract.VerifyStream:
			opts.NoVerify = true // the recipe trusts the stream's hash
		default:
			return nil, fmt.Errorf("deploy: unknown verify policy %q (a newer server?)", c.Verify)
		}
		files = c.Files
	}
	if pr.Image != nil {
		opts.Size, opts.SHA256 = pr.Image.Size, strings.ToLower(pr.Image.SHA256)
	}
	src := &Source{URL: pr.URL, Client: a.HTTP, AcceptZstd: a.AcceptZstd, AcceptSparse: a.AcceptSparse, Stall: a.Stall, Logger: a.Logger, UserAgent: UserAgent(a.Version)}
	defer src.Close()
	var target Target = dev
	if a.Pace != nil {
		target = a.Pace(dev)
	}
	res, err := Deploy(ctx, target, src, opts)
	if n := src.Resumes(); n > 0 {
		a.say("download resumed %d time(s) with a Range request", n)
		a.sendLog(ctx, pr) // the server's history of the action shows the interruption
	}
	if _, announced := src.Announced(); err == nil && opts.SHA256 == "" && announced == "" {
		// Still verified (read back == stream), but say it.
		a.say("the server gave no image sha256; verified the read-back against the stream hash")
	}
	if err != nil || len(files) == 0 {
		return res, err
	}
	// The image is written and verified: now the board's own files.
	meter.Set("customise", int64(len(files)))
	for _, f := range files {
		if s := sha256Hex(f.Data); s != f.SHA256 {
			return res, fmt.Errorf("customise: %s arrived with sha256 %s, the server sent %s", f.Path, s, f.SHA256)
		}
	}
	t0 := time.Now()
	hashes, err := bootfs.Write(dev.File(), dev.Size(), files)
	if err != nil {
		return res, fmt.Errorf("customise: %w", err)
	}
	res.CustomiseSeconds = time.Since(t0).Seconds()
	meter.Add(int64(len(files)))
	res.Files = hashes
	a.say("customised: %d per-device files written to the boot partition and read back", len(hashes))
	return res, nil
}

func (a *Agent) backup(ctx context.Context, pr *contract.PollResponse, meter *Meter) (*BackupResult, error) {
	if pr.UploadURL == "" {
		return nil, errors.New("backup: the server sent no upload URL")
	}
	if err := a.checkTarget(); err != nil {
		return nil, fmt.Errorf("backup: %w", err)
	}
	dev, err := blockdev.Open(a.Target, false, a.AllowFile)
	if err != nil {
		return nil, fmt.Errorf("backup: %w", err)
	}
	defer dev.Close()
	var answer []byte
	res, err := Backup(ctx, dev, 0, meter, func(ctx context.Context, body io.Reader, rawSHA256 func() string) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodPut, pr.UploadURL, nil)
		if err != nil {
			return err
		}
		// The raw hash goes in a trailer: it is known only at the end.
		req.Trailer = http.Header{contract.HeaderRawSHA256: nil}
		req.Body = io.NopCloser(&trailerBody{r: body, done: func() {
			req.Trailer.Set(contract.HeaderRawSHA256, rawSHA256())
		}})
		req.ContentLength = -1
		req.Header.Set("Content-Type", "application/zstd")
		req.Header.Set("Content-Encoding", "zstd")
		req.Header.Set("User-Agent", UserAgent(a.Version))
		resp, err := a.HTTP.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		answer, _ = io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if resp.StatusCode/100 != 2 {
			return readStatusError(&http.Response{StatusCode: resp.StatusCode, Body: io.NopCloser(bytes.NewReader(answer))})
		}
		return nil
	})
	if err != nil {
		return res, err
	}
	// If the server says what it stored, it must match what was read.
	var stored struct {
		SHA256 string `json:"sha256"`
		Size   int64  `json:"size"`
	}
	if json.Unmarshal(answer, &stored) == nil && stored.SHA256 != "" {
		if !strings.EqualFold(stored.SHA256, res.SHA256) && !strings.EqualFold(stored.SHA256, res.CompressedSHA256) {
			return res, fmt.Errorf("backup: server stored sha256 %s, device read %s: %w", stored.SHA256, res.SHA256, ErrHashMismatch)
		}
	}
	return res, nil
}

// trailerBody calls done once when the body reaches EOF.
type trailerBody struct {
	r    io.Reader
	done func()
	once sync.Once
}

func (t *trailerBody) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	if err == io.EOF {
		t.once.Do(t.done)
	}
	return n, err
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
