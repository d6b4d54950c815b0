package ui_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"image/png"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	"github.com/cm4bench/cm4bench/internal/contract"
)

// findChromium returns Debian's chromium. CI runs as root and installs it
// through scripts/deps.sh, so there a missing browser is a failure; a
// developer without it (not root) gets a skip that says what to install.
func findChromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Geteuid() == 0 {
		t.Fatal("chromium is not installed: run scripts/deps.sh (it installs Debian's chromium)")
	}
	t.Skip("chromium is not installed (apt-get install chromium, or run scripts/deps.sh as root)")
	return ""
}

// artifactsDir is where screenshots go: $CM4BENCH_ARTIFACTS if set, else a
// temp dir of the test.
func artifactsDir(t *testing.T) string {
	if d := os.Getenv("CM4BENCH_ARTIFACTS"); d != "" {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatalf("artifacts dir: %v", err)
		}
		return d
	}
	return t.TempDir()
}

// browser starts a fresh headless chromium (its own profile dir) and returns
// a tab context. Every request the page makes is recorded so the test can
// prove nothing left 127.0.0.1, and every uncaught exception is recorded.
type browser struct {
	ctx        context.Context
	mu         sync.Mutex
	offBox     []string
	exceptions []string
}

func newBrowser(t *testing.T) *browser {
	t.Helper()
	exe := findChromium(t)
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(exe),
		chromedp.Headless,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-default-apps", true),
		chromedp.Flag("disable-features", "Translate,MediaRouter,OptimizationHints"),
		chromedp.Flag("force-color-profile", "srgb"),
		chromedp.Flag("lang", "en-GB"),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1500, 1100),
	}
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelC := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	t.Cleanup(func() { cancelC(); cancelA() })
	b := &browser{ctx: ctx}
	err := chromedp.Listen(ctx, func(ev any) {
		switch ev := ev.(type) {
		case *network.EventRequestWillBeSent:
			u, err := url.Parse(ev.Request.URL)
			if err != nil || (u.Scheme != "data" && u.Scheme != "about" && u.Hostname() != "127.0.0.1") {
				b.mu.Lock()
				b.offBox = append(b.offBox, ev.Request.URL)
				b.mu.Unlock()
			}
		case *runtime.EventExceptionThrown:
			d := ev.ExceptionDetails
			msg := d.Text
			if d.Exception != nil && d.Exception.Description != "" {
				msg += ": " + d.Exception.Description
			}
			b.mu.Lock()
			b.exceptions = append(b.exceptions, fmt.Sprintf("%s:%d %s", d.URL, d.LineNumber+1, msg))
			b.mu.Unlock()
		}
	})
	if err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	// No animation, so that screenshots show the final state of each bar.
	b.media(t, "light")
	return b
}

// media sets the emulated colour scheme, with reduced motion.
func (b *browser) media(t *testing.T, scheme string) {
	t.Helper()
	_, err := chromedp.Call(b.ctx, emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{Features: []*emulation.MediaFeature{
		{Name: "prefers-reduced-motion", Value: "reduce"},
		{Name: "prefers-color-scheme", Value: scheme},
	}})
	if err != nil {
		t.Fatalf("browser: emulate media: %v", err)
	}
}

// do runs steps, failing the test with what was being done.
func (b *browser) do(t *testing.T, what string, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 40*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		t.Fatalf("browser: %s: %v", what, err)
	}
}

// waitFor polls a JavaScript predicate until it is truthy.
func (b *browser) waitFor(t *testing.T, what, expr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 40*time.Second)
	defer cancel()
	_, err := chromedp.Run(ctx, chromedp.Poll[chromedp.Void](expr,
		chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(30*time.Second)))
	if err != nil {
		state, _ := chromedp.Run(b.ctx, chromedp.Evaluate[string](`'confirm dialog: ' + (document.getElementById('confirm').open ? 'open' : 'closed') + '\n' + ['lost-banner', 'error-banner'].map(id => { const e = document.getElementById(id); return id + ': ' + (e.hidden ? '(hidden)' : e.innerText); }).join('\n') + '\n' + document.querySelector('main').innerText.slice(0, 1500)`))
		t.Fatalf("browser: waiting for %s (%s): %v\npage text:\n%s", what, expr, err, state)
	}
}

func (b *browser) text(t *testing.T, expr string) string {
	t.Helper()
	s, err := chromedp.Run(b.ctx, chromedp.Evaluate[string](expr, chromedp.EvalAwaitPromise))
	if err != nil {
		t.Fatalf("browser: evaluate %s: %v", expr, err)
	}
	return s
}

// screenshot saves a full-page PNG and checks that it is a real, non-empty
// image of the expected width.
func (b *browser) screenshot(t *testing.T, dir, name string) string {
	t.Helper()
	buf, err := chromedp.Run(b.ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
	img, err := png.Decode(bytes.NewReader(buf))
	if err != nil {
		t.Fatalf("screenshot %s: not a PNG: %v", name, err)
	}
	if r := img.Bounds(); r.Dx() < 1000 || r.Dy() < 600 {
		t.Fatalf("screenshot %s: %dx%d, want a full page", name, r.Dx(), r.Dy())
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, buf, 0o644); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(p); err != nil || st.Size() == 0 {
		t.Fatalf("screenshot %s: empty file (%v)", p, err)
	}
	t.Logf("screenshot: %s (%d bytes)", p, len(buf))
	return p
}

func (b *browser) check(t *testing.T) {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, u := range b.offBox {
		t.Errorf("the page requested an off-box URL: %s", u)
	}
	for _, e := range b.exceptions {
		t.Errorf("uncaught exception in the page: %s", e)
	}
}

// simDevice plays a CM4's agent against the device API over HTTP, the way
// cm4agent does: register with facts, poll, stream the image or upload the
// backup through the per-action URL, report progress, then action-done.
type simDevice struct {
	t      *testing.T
	base   string
	MAC    string
	Serial string
	signed *uint32 // the bootloader's chosen/bootloader/signed bits (nil: not reported)
	poll   contract.PollResponse
}

func (d *simDevice) post(path string, v any) {
	d.t.Helper()
	body, _ := json.Marshal(v)
	res, err := http.Post(d.base+path, "application/json", bytes.NewReader(body))
	if err != nil {
		d.t.Fatalf("device %s: POST %s: %v", d.MAC, path, err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode/100 != 2 {
		d.t.Fatalf("device %s: POST %s: %s: %s", d.MAC, path, res.Status, b)
	}
}

func (d *simDevice) register() {
	d.t.Helper()
	d.post(contract.PathRegister, contract.RegisterRequest{MAC: d.MAC, IP: "127.0.0.1", Facts: &contract.Facts{
		Serial: d.Serial, Revision: "c03141", Model: "Raspberry Pi Compute Module 4 Rev 1.1",
		MACs: []string{d.MAC}, EMMCBytes: 31268536320, Bootloader: "2026-05-17", TempMilliC: 48300, Agent: "test",
		SignedBoot: d.signed,
	}})
}

// pollUntil polls until the server hands out the wanted action.
func (d *simDevice) pollUntil(want string) {
	d.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		res, err := http.Get(d.base + contract.PathPoll + "?mac=" + url.QueryEscape(d.MAC))
		if err != nil {
			d.t.Fatalf("device %s: poll: %v", d.MAC, err)
		}
		var p contract.PollResponse
		err = json.NewDecoder(res.Body).Decode(&p)
		res.Body.Close()
		if err != nil {
			d.t.Fatalf("device %s: poll: decode: %v", d.MAC, err)
		}
		if p.Action == want {
			d.poll = p
			return
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("device %s: poll: got action %q, want %q", d.MAC, p.Action, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (d *simDevice) progress(phase string, done, total int64, rate float64) {
	d.t.Helper()
	d.post(contract.PathProgress, contract.Progress{MAC: d.MAC, ActionID: d.poll.ActionID, Token: d.poll.Token,
		Phase: phase, Done: done, Total: total, Rate: rate})
}

func (d *simDevice) finish(status, msg string, n int64, sum string) {
	d.t.Helper()
	d.post(contract.PathActionDone, contract.ActionDone{MAC: d.MAC, Action: d.poll.Action, ActionID: d.poll.ActionID,
		Token: d.poll.Token, Status: status, Error: msg, Bytes: n, SHA256: sum, Seconds: 1})
}

// fetchImage reads the deploy stream the way `curl -s URL | dd` does and
// returns its length and sha256.
func (d *simDevice) fetchImage() (int64, string) {
	d.t.Helper()
	if d.poll.URL == "" {
		return 0, ""
	}
	res, err := http.Get(d.poll.URL)
	if err != nil {
		d.t.Fatalf("device %s: GET image: %v", d.MAC, err)
	}
	defer res.Body.Close()
	if res.StatusCode != 200 {
		d.t.Fatalf("device %s: GET image: %s", d.MAC, res.Status)
	}
	h := sha256.New()
	n, err := io.Copy(h, res.Body)
	if err != nil {
		d.t.Fatalf("device %s: read image: %v", d.MAC, err)
	}
	return n, hex.EncodeToString(h.Sum(nil))
}

// upload sends a backup through the upload URL and returns its sha256.
func (d *simDevice) upload(data []byte) string {
	d.t.Helper()
	sum := sha256.Sum256(data)
	if d.poll.UploadURL == "" {
		return hex.EncodeToString(sum[:])
	}
	req, _ := http.NewRequest(http.MethodPut, d.poll.UploadURL, bytes.NewReader(data))
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		d.t.Fatalf("device %s: upload: %v", d.MAC, err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode/100 != 2 {
		d.t.Fatalf("device %s: upload: %s: %s", d.MAC, res.Status, b)
	}
	return hex.EncodeToString(sum[:])
}

// techGET reads the technician API with the bearer token.
func techGET(t *testing.T, base, token, path string, v any) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, base+path, nil)
	req.Header.Set(contract.HeaderToken, "Bearer "+token)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer res.Body.Close()
	if res.StatusCode != 200 {
		b, _ := io.ReadAll(res.Body)
		t.Fatalf("GET %s: %s: %s", path, res.Status, b)
	}
	if err := json.NewDecoder(res.Body).Decode(v); err != nil {
		t.Fatalf("GET %s: decode: %v", path, err)
	}
}

func card(mac string) string {
	return `document.querySelector('[data-testid=device-card][data-mac="` + mac + `"]')`
}

// TestDashboardInBrowser drives the dashboard in headless Chromium against
// the bench server: a wrong token is refused with a visible message; the
// right one logs in; registered devices appear live; Deploy asks for
// confirmation (and a refusal queues nothing); progress posted by the
// device moves the bar through SSE to done; a failure shows its reason; a
// backup shows up in the backups list. Nothing loads from off the box and
// the page never reloads.
func TestDashboardInBrowser(t *testing.T) {
	bn := startBench(t)
	base, token := bn.URL, bn.Token
	dir := artifactsDir(t)
	b := newBrowser(t)

	// Log in: a wrong token first.
	b.do(t, "open the dashboard", chromedp.Navigate(base+"/"))
	b.waitFor(t, "the login form", `!document.getElementById('login').hidden && document.getElementById('app').hidden`)
	b.do(t, "type a wrong token", chromedp.SendKeys(chromedp.ID("token"), "not-the-token"),
		chromedp.Click(chromedp.CSS(`[data-testid=login-submit]`)))
	b.waitFor(t, "the refusal message", `(() => { const e = document.querySelector('[data-testid=login-error]');
		return !e.hidden && e.getAttribute('role') === 'alert' && /refused/.test(e.textContent); })()`)
	if !strings.Contains(b.text(t, `String(document.getElementById('app').hidden)`), "true") {
		t.Fatal("the dashboard is shown after a wrong token")
	}
	b.screenshot(t, dir, "dashboard-login-refused.png")

	b.do(t, "type the right token", chromedp.Evaluate[chromedp.Void](`document.getElementById("token").value = ""`),
		chromedp.SendKeys(chromedp.ID("token"), token+kb.Enter))
	b.waitFor(t, "the dashboard", `!document.getElementById('app').hidden && document.getElementById('login').hidden`)
	if c := b.text(t, `document.cookie`); strings.Contains(c, contract.CookieSession) {
		t.Errorf("session cookie is readable by scripts (not HttpOnly): %q", c)
	}
	b.waitFor(t, "the live stream", `document.getElementById('live').dataset.state === 'live'`)
	b.do(t, "mark the page", chromedp.Evaluate[chromedp.Void](`window.__cm4benchNoReload = 42`))

	// Devices register; their cards appear without a reload.
	locked, signedOnly := uint32(0x0d), uint32(0x01)
	devs := []*simDevice{
		{MAC: "dc:a6:32:01:02:01", Serial: "10000001", signed: &locked},
		{MAC: "dc:a6:32:01:02:02", Serial: "10000002", signed: &signedOnly},
		{MAC: "dc:a6:32:01:02:03", Serial: "10000003"},
		{MAC: "dc:a6:32:01:02:04", Serial: "10000004"},
	}
	for _, d := range devs {
		d.t, d.base = t, base
		d.register()
	}
	for _, d := range devs {
		b.waitFor(t, "the card of "+d.MAC, card(d.MAC)+` && `+card(d.MAC)+`.querySelector('[data-field=serial]').textContent === '`+d.Serial+`'`)
	}
	a, fail, bak, idle := devs[0], devs[1], devs[2], devs[3]
	// the secure-boot state in plain words, from the board's own facts
	for mac, want := range map[string]string{a.MAC: "Locked to the customer key", fail.MAC: "Signed config, not locked", bak.MAC: "–"} {
		if got := b.text(t, card(mac)+`.querySelector('[data-field=secure]').textContent`); got != want {
			t.Errorf("%s secure boot shows %q, want %q", mac, got, want)
		}
	}

	// Keyboard: Enter on Deploy opens the confirmation, Escape refuses it, and nothing is queued.
	b.do(t, "press Enter on Deploy", chromedp.SendKeys(chromedp.CSS(`button[aria-label="Deploy `+idle.MAC+`"]`), kb.Enter))
	b.waitFor(t, "the deploy confirmation", `document.getElementById('confirm').open && /overwrites everything on its eMMC/.test(document.getElementById('confirm-text').textContent)`)
	b.do(t, "press Escape", chromedp.KeyEvent(kb.Escape))
	b.waitFor(t, "the dialog to close", `!document.getElementById('confirm').open`)
	var dev contract.Device
	techGET(t, base, token, "/api/v1/devices/"+url.PathEscape(idle.MAC), &dev)
	if dev.State != contract.DeviceIdle || (dev.Action != nil && dev.Action.State == contract.StatePending) {
		t.Fatalf("refused deploy confirmation still queued something: state %q action %+v", dev.State, dev.Action)
	}

	// Escape and an immediate click on Deploy, in one task: the first
	// dialog's close event is still queued when the second opens, and must
	// not answer it (this lost a technician's confirmed deploy now and then).
	b.text(t, `(() => {
		document.querySelector('button[aria-label="Deploy `+idle.MAC+`"]').click();
		setTimeout(() => { document.getElementById('confirm').close('cancel');
			document.querySelector('button[aria-label="Deploy `+idle.MAC+`"]').click(); }, 200);
		return "clicked";
	})()`)
	time.Sleep(400 * time.Millisecond)
	b.waitFor(t, "the second confirmation", `document.getElementById('confirm').open`)
	b.confirm(t)
	b.waitFor(t, idle.MAC+" pending after the quick second click", card(idle.MAC)+`.dataset.state === 'pending'`)
	techDo(t, base, token, "POST", "/api/v1/devices/"+url.PathEscape(idle.MAC)+"/action", strings.NewReader(`{"action":"none"}`), nil)
	b.waitFor(t, idle.MAC+" idle again", card(idle.MAC)+`.dataset.state !== 'pending'`)

	// Deploy A: click, confirm, the card goes pending.
	deploy := func(d *simDevice) {
		t.Helper()
		b.do(t, "click Deploy on "+d.MAC, chromedp.Click(chromedp.CSS(`button[aria-label="Deploy `+d.MAC+`"]`)))
		b.waitFor(t, "the deploy confirmation", `document.getElementById('confirm').open`)
		b.confirm(t)
		b.waitFor(t, d.MAC+" pending", card(d.MAC)+`.dataset.state === 'pending'`)
	}
	deploy(a)
	deploy(fail)

	// A picks it up and reports progress; the bar follows the stream.
	a.pollUntil(contract.ActionDeploy)
	n, sum := a.fetchImage()
	total := int64(2_000_000_000)
	if n > 0 {
		total = n
	}
	for i, pct := range []int64{10, 35, 60} {
		done := total * pct / 100
		rate := 38.2e6 + float64(i)*1.1e6
		a.progress("write", done, total, rate)
		want := strconv.FormatInt(done*100/total, 10) // floor, as shown
		b.waitFor(t, fmt.Sprintf("%s at %d%%", a.MAC, pct), card(a.MAC)+`.querySelector('[role=progressbar]').getAttribute('aria-valuenow') === '`+want+`' && `+
			card(a.MAC)+`.querySelector('[data-testid=device-percent]').textContent === '`+want+`%'`)
		wantRate := fmt.Sprintf("%.0f MB/s", rate/1e6)
		b.waitFor(t, "rate "+wantRate, card(a.MAC)+`.querySelector('[data-testid=device-rate]').textContent === '`+wantRate+`'`)
	}
	if got := b.text(t, card(a.MAC)+`.querySelector('[data-testid=device-eta]').textContent`); !strings.HasPrefix(got, "ETA ") {
		t.Errorf("%s: ETA shows %q, want an ETA", a.MAC, got)
	}
	b.waitFor(t, "the Write step current", card(a.MAC)+`.querySelector('[data-testid=device-steps] [aria-current=step]').dataset.step === 'write'`)
	b.waitFor(t, "the bench throughput", `(document.querySelector('[data-testid=bench-rate]') || {}).textContent === '40 MB/s total'`)
	if got := b.text(t, card(a.MAC)+`.dataset.state`); got != "running" {
		t.Errorf("%s: state %q during progress, want running", a.MAC, got)
	}

	// The second deploy fails during verify: the card says why in plain words.
	fail.pollUntil(contract.ActionDeploy)
	fail.fetchImage()
	fail.progress("verify", total/2, total, 80e6)
	fail.post(contract.PathLog, contract.LogLines{MAC: fail.MAC, ActionID: fail.poll.ActionID, Token: fail.poll.Token,
		Lines: []string{"cm4agent: write done, 4194304 bytes", "cm4agent: verify: reading back /dev/mmcblk0"}})
	fail.finish(contract.StatusFailed, "verify: sha256 mismatch at offset 1048576", 0, "")
	b.waitFor(t, fail.MAC+" failed", card(fail.MAC)+`.dataset.state === 'failed' && !`+card(fail.MAC)+`.querySelector('[data-testid=device-error]').hidden`)
	b.waitFor(t, "the Verify step failed", `(() => { const s = `+card(fail.MAC)+`.querySelector('[data-testid=device-steps] [aria-current=step]');
		return s && s.dataset.step === 'verify' && s.className === 'failed'; })()`)
	if got := b.text(t, card(fail.MAC)+`.querySelector('[data-testid=device-error]').textContent`); !strings.Contains(got, "Verification failed") || !strings.Contains(got, "sha256 mismatch") {
		t.Errorf("%s: error shows %q, want the plain reason and the detail", fail.MAC, got)
	}
	b.waitFor(t, "the device log tail of "+fail.MAC, `(() => { const l = `+card(fail.MAC)+`.querySelector('[data-testid=device-log]');
		return !l.hidden && l.textContent.includes('verify: reading back /dev/mmcblk0'); })()`)

	// A backup: click, the device uploads, the backups list shows it.
	b.do(t, "click Backup on "+bak.MAC, chromedp.Click(chromedp.CSS(`button[aria-label="Backup `+bak.MAC+`"]`)))
	b.waitFor(t, bak.MAC+" pending", card(bak.MAC)+`.dataset.state === 'pending'`)
	bak.pollUntil(contract.ActionBackup)
	data := bytes.Repeat([]byte("cm4bench backup test block\n"), 40000)
	bsum := bak.upload(data)
	bak.progress("upload", int64(len(data)), int64(len(data)), 25e6)
	bak.finish(contract.StatusSuccess, "", int64(len(data)), bsum)
	b.waitFor(t, bak.MAC+" done", card(bak.MAC)+`.dataset.state === 'done'`)
	// A finished backup offers its download on the card (issue 14, item 6).
	b.waitFor(t, "the card's download link", `(() => { const a = `+card(bak.MAC)+`.querySelector('a[data-testid=device-backup-download]');
		return a && /\/api\/v1\/backups\/[^/]+\/download$/.test(a.getAttribute('href')); })()`)
	b.waitFor(t, "the backup row", `[...document.querySelectorAll('[data-testid=backup-row]')].some(r => r.textContent.includes('`+bak.MAC+`') && r.textContent.includes('`+bsum[:10]+`'))`)

	b.screenshot(t, dir, "dashboard-progress.png")

	// A finishes: the bar reaches 100 % and its netboot is switched off.
	a.progress("verify", total, total, 41e6)
	a.finish(contract.StatusSuccess, "", total, sum)
	b.waitFor(t, a.MAC+" done", card(a.MAC)+`.dataset.state === 'done' && `+card(a.MAC)+`.querySelector('[role=progressbar]').getAttribute('aria-valuenow') === '100'`)
	if got := b.text(t, `[...`+card(a.MAC)+`.querySelectorAll('[data-testid=device-steps] li')].map(l => l.dataset.step + ':' + l.className).join(' ')`); got != "queued:done write:done verify:done done:done" {
		t.Errorf("%s: steps at the end %q, want every step done", a.MAC, got)
	}
	if got := b.text(t, card(a.MAC)+`.querySelector('[data-testid=device-percent]').textContent`); got != "100%" {
		t.Errorf("%s: percent shows %q at the end, want 100%%", a.MAC, got)
	}
	b.waitFor(t, a.MAC+" netboot off", `/Netboot off/.test(`+card(a.MAC)+`.querySelector('[data-testid=device-netboot]').textContent)`)
	b.waitFor(t, "the golden image hashed", `(() => { const r = document.querySelector('[data-testid=image-row][data-name="golden.img"]');
		return r && !r.textContent.includes('hashing') && r.textContent.includes('4.19 MB'); })()`)
	b.screenshot(t, dir, "dashboard-done.png")
	b.media(t, "dark")
	b.screenshot(t, dir, "dashboard-done-dark.png")
	b.media(t, "light")
	b.do(t, "narrow the window", chromedp.EmulateViewport(1024, 768))
	b.screenshot(t, dir, "dashboard-narrow.png")

	if got := b.text(t, `String(window.__cm4benchNoReload)`); got != "42" {
		t.Errorf("the page reloaded during the run (marker %q)", got)
	}
	if got := b.text(t, `String(document.querySelectorAll('[data-testid=event-log] li').length)`); got == "0" {
		t.Error("the event log is empty")
	}
	b.check(t)
}

// techDo calls the technician API with the bearer token and decodes the answer into v (if not nil).
func techDo(t *testing.T, base, token, method, path string, body io.Reader, v any) {
	t.Helper()
	req, _ := http.NewRequest(method, base+path, body)
	req.Header.Set(contract.HeaderToken, "Bearer "+token)
	if body != nil && method != http.MethodPost || strings.Contains(path, "/action") {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode/100 != 2 {
		t.Fatalf("%s %s: %s: %s", method, path, res.Status, b)
	}
	if v != nil {
		if err := json.Unmarshal(b, v); err != nil {
			t.Fatalf("%s %s: decode %s: %v", method, path, b, err)
		}
	}
}

// confirm clicks OK in the confirmation dialog and waits for it to close.
// Under heavy load a synthetic click can land before the modal dialog is
// laid out; the click is then repeated (logged), never skipped.
func (b *browser) confirm(t *testing.T) {
	t.Helper()
	for try := 1; ; try++ {
		// What sits at the OK button's centre when it is clicked: if a
		// click ever closes the dialog without "ok", this names why.
		at := b.text(t, `(() => { const r = document.querySelector('[data-testid=confirm-ok]').getBoundingClientRect();
			const e = document.elementFromPoint(r.x + r.width / 2, r.y + r.height / 2);
			return e ? (e.dataset.testid || e.tagName) + ' "' + e.textContent.trim().slice(0, 30) + '"' : 'nothing'; })()`)
		b.do(t, "confirm", chromedp.Click(chromedp.CSS(`[data-testid=confirm-ok]`)))
		closed, _ := chromedp.Run(b.ctx, chromedp.Poll[bool](`!document.getElementById('confirm').open`,
			chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(3*time.Second)))
		if closed {
			if rv := b.text(t, `document.getElementById('confirm').returnValue`); rv != "ok" {
				t.Fatalf("the confirmation dialog closed with %q, not \"ok\", after a click on OK (at its centre: %s)", rv, at)
			}
			return
		}
		if try == 3 {
			t.Fatal("the confirmation dialog stayed open after three clicks on OK")
		}
		t.Logf("the click on OK did not close the dialog (try %d); clicking again", try)
	}
}

func (b *browser) login(t *testing.T, base, token string) {
	t.Helper()
	b.do(t, "open the dashboard", chromedp.Navigate(base+"/"))
	b.waitFor(t, "the login form", `!document.getElementById('login').hidden`)
	b.do(t, "log in", chromedp.SendKeys(chromedp.ID("token"), token+kb.Enter))
	b.waitFor(t, "the live dashboard", `!document.getElementById('app').hidden && document.getElementById('live').dataset.state === 'live'`)
}

// TestDashboardControlsInBrowser exercises the bench-wide controls against
// the real server: the rival DHCP banner, the global netboot switch, the
// per-device image picker feeding Deploy, Cancel, backup download (bytes
// checked in the page) and delete, and logout.
func TestDashboardControlsInBrowser(t *testing.T) {
	bn := startBench(t)
	base, token := bn.URL, bn.Token
	dir := artifactsDir(t)
	b := newBrowser(t)
	b.login(t, base, token)

	d := &simDevice{t: t, base: base, MAC: "dc:a6:32:0a:0b:01", Serial: "2000000a"}
	d.register()
	b.waitFor(t, "the card", card(d.MAC))

	// A rival DHCP server, reported the way the DHCP server reports it: an event in the store.
	bn.setRivals("192.168.7.1 (52:54:00:12:34:56)")
	if _, err := bn.Store.Emit(context.Background(), contract.Event{Time: time.Now(), Kind: contract.EventDHCPRival, Level: "warn",
		Message: "another DHCP server, 192.168.7.1 (52:54:00:12:34:56), answered a DISCOVER"}); err != nil {
		t.Fatal(err)
	}
	b.waitFor(t, "the rival DHCP banner", `(() => { const e = document.querySelector('[data-testid=rival-banner]');
		return !e.hidden && e.getAttribute('role') === 'alert' && e.textContent.includes('192.168.7.1'); })()`)

	// The global netboot switch: off needs a confirmation, and the server follows.
	b.do(t, "click the netboot switch", chromedp.Click(chromedp.CSS(`[role=switch][data-testid=netboot-switch]`)))
	b.waitFor(t, "the confirmation", `document.getElementById('confirm').open`)
	b.do(t, "confirm", chromedp.Click(chromedp.CSS(`[data-testid=confirm-ok]`)))
	b.waitFor(t, "the switch off", `document.getElementById('netboot-switch').getAttribute('aria-checked') === 'false' && document.getElementById('netboot-state').textContent === 'Off'`)
	var sw contract.NetbootSwitch
	techDo(t, base, token, http.MethodGet, "/api/v1/netboot", nil, &sw)
	if sw.Enabled {
		t.Fatal("global netboot still on after switching it off in the dashboard")
	}
	b.waitFor(t, "the bench-off banner", `!document.querySelector('[data-testid=netboot-off-banner]').hidden`)
	b.waitFor(t, "the card to mention the bench switch", `/off for the bench/.test(`+card(d.MAC)+`.querySelector('[data-testid=device-netboot]').textContent)`)
	b.screenshot(t, dir, "dashboard-controls.png")
	b.do(t, "switch netboot back on", chromedp.Click(chromedp.CSS(`[data-testid=netboot-switch]`)))
	b.waitFor(t, "the switch on", `document.getElementById('netboot-switch').getAttribute('aria-checked') === 'true'`)
	b.waitFor(t, "the bench-off banner to go", `document.querySelector('[data-testid=netboot-off-banner]').hidden`)
	techDo(t, base, token, http.MethodGet, "/api/v1/netboot", nil, &sw)
	if !sw.Enabled {
		t.Fatal("global netboot still off after switching it on in the dashboard")
	}

	// A second image appears in the picker as soon as it is uploaded; picking it assigns it.
	// The image is uploaded through the dashboard's file input.
	upload := func(name string, data []byte) {
		t.Helper()
		p := filepath.Join(t.TempDir(), name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		b.do(t, "upload "+name, chromedp.SetUploadFiles(chromedp.CSS(`input[data-testid=image-file]`), []string{p}))
		b.waitFor(t, name+" in the images list", `[...document.querySelectorAll('[data-testid=image-row]')].some(r => r.dataset.name === '`+name+`')`)
	}
	second := bytes.Repeat([]byte{0x5a}, 1<<20)
	upload("second.img", second)
	var imgs []contract.Image
	techDo(t, base, token, http.MethodGet, "/api/v1/images", nil, &imgs)
	found := false
	for _, im := range imgs {
		if im.Name == "second.img" {
			found = im.Size == int64(len(second))
		}
	}
	if !found {
		t.Fatalf("images after the dashboard upload: %+v, want second.img of %d bytes", imgs, len(second))
	}
	// Power-cycle runs the bench's power command for this board and says so.
	b.do(t, "click Power-cycle", chromedp.Click(chromedp.CSS(`button[aria-label="Power-cycle `+d.MAC+`"]`)))
	b.waitFor(t, "the button to say it worked", card(d.MAC)+`.querySelector('[data-testid=power-cycle]').textContent === 'Power-cycled ✓'`)
	if got, _ := os.ReadFile(bn.PowerLog()); string(got) != d.MAC+"\n" {
		t.Errorf("the power command ran for %q, want %s once", got, d.MAC)
	}
	b.waitFor(t, "the power cycle in the event log", `[...document.querySelectorAll('[data-testid=event-log] li')].some(li => li.dataset.kind === 'device.power')`)

	// One image choice: "Set as default" on the new image; the toolbar names it,
	// the board's picker offers it first, and it cannot be deleted while chosen.
	secondRow := `[...document.querySelectorAll('[data-testid=image-row]')].find(r => r.dataset.name === 'second.img')`
	b.do(t, "click Set as default", chromedp.Click(chromedp.CSS(`button[aria-label="Set second.img as the bench default"]`)))
	b.waitFor(t, "second.img named as the default", `document.getElementById('bench-default-name').textContent === 'second.img' && !!`+secondRow+`.querySelector('[data-testid=image-default-tag]')`)
	if del := b.text(t, `String(!!`+secondRow+`.querySelector('[data-testid=image-delete]'))`); del != "false" {
		t.Errorf("the chosen default offers Delete")
	}
	var st contract.Status
	techDo(t, base, token, http.MethodGet, "/api/v1/status", nil, &st)
	if st.DefaultImage != "second.img" {
		t.Fatalf("server default after Set as default: %q, want second.img", st.DefaultImage)
	}
	first := b.text(t, card(d.MAC)+`.querySelector('select[data-testid=device-image]').options[0].textContent`)
	if first != "Bench default (second.img)" {
		t.Errorf("board picker's first entry %q, want Bench default (second.img)", first)
	}
	techDo(t, base, token, http.MethodPut, "/api/v1/images/default", strings.NewReader(`{"image":""}`), nil)
	b.waitFor(t, "the default back to --image", `document.getElementById('bench-default-name').textContent !== 'second.img'`)

	sel := card(d.MAC) + `.querySelector('select[data-testid=device-image]')`
	b.waitFor(t, "second.img in the picker", `[...`+sel+`.options].some(o => o.value === 'second.img')`)
	label := b.text(t, `document.querySelector('label[for="' + `+sel+`.id + '"]').textContent`)
	if label != "Image" {
		t.Errorf("device image picker label %q, want Image", label)
	}
	// Deploy clicked in the same moment as the pick, before the pick is
	// stored, names and deploys the picked image: what the card shows.
	b.do(t, "pick second.img and click Deploy at once", chromedp.Evaluate[chromedp.Void](`(() => { const s = `+sel+`; s.focus(); s.value = 'second.img'; s.dispatchEvent(new Event('change'));
		document.querySelector('button[aria-label="Deploy `+d.MAC+`"]').click(); })()`))
	b.waitFor(t, "a confirmation naming second.img", `document.getElementById('confirm').open && document.getElementById('confirm-text').textContent.includes('second.img')`)
	deadline := time.Now().Add(10 * time.Second)
	for {
		var dev contract.Device
		techDo(t, base, token, http.MethodGet, "/api/v1/devices/"+url.PathEscape(d.MAC), nil, &dev)
		if dev.Image == "second.img" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("device image %q after picking second.img, want second.img", dev.Image)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got := b.text(t, sel+`.value`); got != "second.img" {
		t.Errorf("the picker shows %q once the pick is stored, want second.img", got)
	}
	b.do(t, "confirm", chromedp.Click(chromedp.CSS(`[data-testid=confirm-ok]`)))
	b.waitFor(t, "pending", card(d.MAC)+`.dataset.state === 'pending' && !`+card(d.MAC)+`.querySelector('[data-testid=cancel]').hidden`)
	var dev contract.Device
	techDo(t, base, token, http.MethodGet, "/api/v1/devices/"+url.PathEscape(d.MAC), nil, &dev)
	if dev.Action == nil || dev.Action.Image != "second.img" || dev.Action.State != contract.StatePending {
		t.Fatalf("after Deploy: action %+v, want a pending deploy of second.img", dev.Action)
	}
	b.do(t, "click Cancel", chromedp.Click(chromedp.CSS(`button[aria-label="Cancel action on `+d.MAC+`"]`)))
	b.waitFor(t, "the cancel to land", card(d.MAC)+`.dataset.state !== 'pending' && `+card(d.MAC)+`.querySelector('[data-testid=cancel]').hidden`)
	techDo(t, base, token, http.MethodGet, "/api/v1/devices/"+url.PathEscape(d.MAC), nil, &dev)
	if dev.Action == nil || dev.Action.State != contract.StateCancelled {
		t.Fatalf("after Cancel: action %+v, want cancelled", dev.Action)
	}

	// A backup: listed, downloadable with the session cookie (bytes hashed in the page), deletable.
	techDo(t, base, token, http.MethodPost, "/api/v1/devices/"+url.PathEscape(d.MAC)+"/action", strings.NewReader(`{"action":"backup"}`), nil)
	d.pollUntil(contract.ActionBackup)
	data := bytes.Repeat([]byte("0123456789abcdef"), 1<<16)
	sum := d.upload(data)
	d.finish(contract.StatusSuccess, "", int64(len(data)), sum)
	row := `[...document.querySelectorAll('[data-testid=backup-row]')].find(r => r.textContent.includes('` + d.MAC + `'))`
	b.waitFor(t, "the backup row", row)
	got := b.text(t, `(async () => {
		const a = `+row+`.querySelector('a[data-testid=backup-download]');
		const r = await fetch(a.href);
		if (!r.ok) return 'HTTP ' + r.status;
		const h = await crypto.subtle.digest('SHA-256', await r.arrayBuffer());
		return [...new Uint8Array(h)].map(x => x.toString(16).padStart(2, '0')).join('');
	})()`)
	if got != sum {
		t.Fatalf("backup downloaded through the dashboard link: sha256 %s, want %s", got, sum)
	}
	b.do(t, "click Delete", chromedp.Click(chromedp.CSS(`[data-testid=backup-row] [data-testid=backup-delete]`)))
	b.waitFor(t, "the delete confirmation", `document.getElementById('confirm').open`)
	b.do(t, "confirm", chromedp.Click(chromedp.CSS(`[data-testid=confirm-ok]`)))
	b.waitFor(t, "the row to go", `!(`+row+`) && !document.querySelector('[data-testid=no-backups]').hidden`)
	var backups []contract.Backup
	techDo(t, base, token, http.MethodGet, "/api/v1/backups", nil, &backups)
	if len(backups) != 0 {
		t.Fatalf("backups after delete: %+v, want none", backups)
	}

	// An image is deleted from the dashboard after a confirmation.
	upload("scratch.img", bytes.Repeat([]byte{0x11}, 64<<10))
	b.do(t, "click Delete on scratch.img", chromedp.Click(chromedp.CSS(`button[aria-label="Delete image scratch.img"]`)))
	b.waitFor(t, "the image delete confirmation", `document.getElementById('confirm').open`)
	b.do(t, "confirm", chromedp.Click(chromedp.CSS(`[data-testid=confirm-ok]`)))
	b.waitFor(t, "scratch.img to go", `![...document.querySelectorAll('[data-testid=image-row]')].some(r => r.dataset.name === 'scratch.img')`)
	techDo(t, base, token, http.MethodGet, "/api/v1/images", nil, &imgs)
	for _, im := range imgs {
		if im.Name == "scratch.img" {
			t.Fatal("scratch.img still on the server after delete")
		}
	}
	if n := b.text(t, `String(document.querySelectorAll('button[aria-label="Delete image golden.img"]').length)`); n != "0" {
		t.Error("the default image offers a Delete button")
	}

	// Deploy all ready: one confirmation, every idle device gets a deploy.
	// (d is done: it reboots from its eMMC, so it is not waiting for work.)
	e := &simDevice{t: t, base: base, MAC: "dc:a6:32:0a:0b:02", Serial: "2000000b"}
	f := &simDevice{t: t, base: base, MAC: "dc:a6:32:0a:0b:03", Serial: "2000000c"}
	e.register()
	f.register()
	b.waitFor(t, "two ready devices", `document.querySelector('[data-testid=deploy-all]').textContent === 'Deploy all ready (2)'`)
	b.do(t, "click Deploy all ready", chromedp.Click(chromedp.CSS(`[data-testid=deploy-all]`)))
	b.waitFor(t, "the bulk confirmation", `document.getElementById('confirm').open && document.getElementById('confirm-text').textContent.includes('`+e.MAC+`, `+f.MAC+`')`)
	b.do(t, "confirm", chromedp.Click(chromedp.CSS(`[data-testid=confirm-ok]`)))
	for _, m := range []string{e.MAC, f.MAC} {
		b.waitFor(t, m+" pending", card(m)+`.dataset.state === 'pending'`)
		techDo(t, base, token, http.MethodGet, "/api/v1/devices/"+url.PathEscape(m), nil, &dev)
		if dev.Action == nil || dev.Action.Type != contract.ActionDeploy || dev.Action.State != contract.StatePending {
			t.Fatalf("%s after Deploy all: action %+v, want a pending deploy", m, dev.Action)
		}
	}
	b.waitFor(t, "no ready device left", `document.querySelector('[data-testid=deploy-all]').disabled`)

	// Logout: back to the login form, and the session no longer works.
	b.do(t, "log out", chromedp.Click(chromedp.CSS(`[data-testid=logout]`)))
	b.waitFor(t, "the login form", `!document.getElementById('login').hidden && document.getElementById('app').hidden`)
	if got := b.text(t, `fetch('/api/v1/status').then(r => String(r.status))`); got != "401" {
		t.Errorf("status after logout: HTTP %s, want 401", got)
	}
	b.check(t)
}

// TestDashboardReconnectsInBrowser restarts the server under an open
// dashboard: the page shows that it lost the stream, reconnects by itself
// (EventSource with Last-Event-ID), receives the event recorded while it
// was away, and keeps following live events, without a reload.
func TestDashboardReconnectsInBrowser(t *testing.T) {
	bn := startBench(t)
	b := newBrowser(t)
	b.login(t, bn.URL, bn.Token)
	b.do(t, "mark the page", chromedp.Evaluate[chromedp.Void](`window.__cm4benchNoReload = 7`))
	d1 := &simDevice{t: t, base: bn.URL, MAC: "dc:a6:32:0c:00:01", Serial: "3000000a"}
	d1.register()
	b.waitFor(t, "the first card", card(d1.MAC))

	bn.restart(t, func() {
		b.waitFor(t, "the page to notice", `document.getElementById('live').dataset.state === 'reconnecting'`)
		// Recorded while no stream is open: only a replay can bring it to the page.
		if _, err := bn.Store.Emit(context.Background(), contract.Event{Time: time.Now(), Kind: contract.EventDHCPRival, Level: "warn",
			Message: "another DHCP server, 192.168.9.9, answered while the dashboard was away"}); err != nil {
			t.Fatal(err)
		}
	})
	b.waitFor(t, "the stream back", `document.getElementById('live').dataset.state === 'live'`)
	b.waitFor(t, "the replayed rival event", `(() => { const e = document.querySelector('[data-testid=rival-banner]');
		return !e.hidden && e.textContent.includes('192.168.9.9'); })()`)

	d2 := &simDevice{t: t, base: bn.URL, MAC: "dc:a6:32:0c:00:02", Serial: "3000000b"}
	d2.register()
	b.waitFor(t, "a card registered after the restart", card(d2.MAC))
	// An event of a kind the page has no listener for leaves a gap in the
	// ids; the page fills it from the history, so the log misses nothing.
	if _, err := bn.Store.Emit(context.Background(), contract.Event{Time: time.Now(), Kind: "tftp.someday", Message: "a kind added later"}); err != nil {
		t.Fatal(err)
	}
	d3 := &simDevice{t: t, base: bn.URL, MAC: "dc:a6:32:0c:00:03", Serial: "3000000c"}
	d3.register()
	b.waitFor(t, "the unlisted event in the log", `[...document.querySelectorAll('[data-testid=event-log] li')].some(li => li.dataset.kind === 'tftp.someday')`)
	if got := b.text(t, `String(window.__cm4benchNoReload)`); got != "7" {
		t.Errorf("the page reloaded (marker %q)", got)
	}
	b.check(t)
}
