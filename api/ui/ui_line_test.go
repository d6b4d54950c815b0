package ui_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/chromedp/chromedp"

	"github.com/cm4bench/cm4bench/internal/contract"
	"github.com/cm4bench/cm4bench/netboot/bootfs/bootfstest"
)

// TestLineInBrowser: the production line on the dashboard. A recipe and the
// rules are written in the page's YAML editor (a bad one is refused with
// the reason and changes nothing); each card says which rule matched and
// why; the armed switch is large and plain, arming needs a confirmation and
// starts the waiting auto board; an ask rule's board starts with a click.
// uploadLineImage uploads a small disk image with a FAT boot partition as
// line.img (what the recipes of these tests pin) and returns its sha256.
func uploadLineImage(t *testing.T, base, token string) [sha256.Size]byte {
	t.Helper()
	img := filepath.Join(t.TempDir(), "line.img")
	if _, err := bootfstest.Make(img, bootfstest.Disk{StartMiB: 1, BootMiB: 2, FAT: 12, RootMiB: 1}); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(img)
	techDo(t, base, token, http.MethodPost, "/api/v1/images?name=line.img", bytes.NewReader(data), nil)
	return sha256.Sum256(data)
}

func TestLineInBrowser(t *testing.T) {
	bn := startBench(t)
	base, token := bn.URL, bn.Token
	dir := artifactsDir(t)
	sum := uploadLineImage(t, base, token)

	b := newBrowser(t)
	b.login(t, base, token)
	if got := b.text(t, `document.getElementById('armed-state').textContent`); got != "Off" {
		t.Errorf("armed switch reads %q before arming, want Off", got)
	}
	setYAML := func(y string) {
		t.Helper()
		js, _ := json.Marshal(y)
		b.do(t, "type the YAML", chromedp.Evaluate[chromedp.Void](`document.getElementById('yaml-text').value = `+string(js)))
		b.do(t, "save", chromedp.Click(chromedp.CSS(`[data-testid=yaml-save]`)))
	}
	recipe := `name: line-a
image: line.img
sha256: ` + hex.EncodeToString(sum[:]) + `
pools:
  - {name: hostnames, kind: counter, format: "a-%03d", start: 1}
files:
  - path: user-data
    template: "hostname: {{ pool \"hostnames\" }}\n"
`
	b.do(t, "click New recipe", chromedp.Click(chromedp.CSS(`[data-testid=recipe-new]`)))
	b.waitFor(t, "the editor", `!document.getElementById('yaml-editor').hidden`)
	setYAML(recipe + "colour: red\n")
	b.waitFor(t, "the refusal", `(() => { const e = document.getElementById('yaml-error'); return !e.hidden && e.textContent.includes('Not saved, nothing changed') && e.textContent.includes('colour'); })()`)
	var recipes []map[string]any
	techDo(t, base, token, http.MethodGet, "/api/v1/recipes", nil, &recipes)
	if len(recipes) != 0 {
		t.Fatalf("a refused recipe was stored: %v", recipes)
	}
	setYAML(recipe + "---\n" + strings.ReplaceAll(recipe, "line-a", "line-b"))
	b.waitFor(t, "two recipe rows", `document.querySelectorAll('[data-testid=recipe-row]').length === 2 && document.getElementById('yaml-editor').hidden`)

	b.do(t, "click Edit rules", chromedp.Click(chromedp.CSS(`[data-testid=rules-edit]`)))
	b.waitFor(t, "the rules editor", `!document.getElementById('yaml-editor').hidden`)
	setYAML(`rules:
  - {name: early, recipe: line-a, mode: auto, match: {serial_from: "10000000", serial_to: "100000ff"}}
  - {name: rest, recipe: line-b, mode: ask}
`)
	b.waitFor(t, "two rules listed", `document.querySelectorAll('[data-testid=rule-item]').length === 2`)

	auto := &simDevice{t: t, base: base, MAC: "dc:a6:32:0c:00:01", Serial: "10000001"}
	ask := &simDevice{t: t, base: base, MAC: "dc:a6:32:0c:00:02", Serial: "20000002"}
	auto.register()
	ask.register()
	b.waitFor(t, "both cards", card(auto.MAC)+` && `+card(ask.MAC))
	ruleText := func(mac string) string {
		return card(mac) + `.querySelector('[data-testid=device-rule]').textContent`
	}
	b.waitFor(t, "the auto board's rule and why", ruleText(auto.MAC)+`.includes('Rule early → line-a v1 · auto') && `+ruleText(auto.MAC)+`.includes('serial 10000001 in 10000000..100000ff') && `+ruleText(auto.MAC)+`.includes('not armed')`)
	b.waitFor(t, "the ask board's offer", ruleText(ask.MAC)+`.includes('Rule rest → line-b v1 · ask') && !`+card(ask.MAC)+`.querySelector('[data-testid=rule-start]').hidden`)
	b.screenshot(t, dir, "line-not-armed.png")

	// Arming: a confirmation naming the waiting board, then ARMED, loud.
	b.do(t, "click the armed switch", chromedp.Click(chromedp.CSS(`[data-testid=armed-switch]`)))
	b.waitFor(t, "the arming confirmation", `document.getElementById('confirm').open && document.getElementById('confirm-text').textContent.includes('1 board waiting now')`)
	b.confirm(t)
	b.waitFor(t, "ARMED", `document.getElementById('armed-state').textContent === 'ARMED' && !document.getElementById('armed-banner').hidden`)
	var armed contract.Armed
	techDo(t, base, token, http.MethodGet, "/api/v1/armed", nil, &armed)
	if !armed.Armed {
		t.Fatal("the server is not armed after arming in the dashboard")
	}
	b.waitFor(t, "the auto board started by its rule", card(auto.MAC)+`.dataset.state === 'pending' && `+ruleText(auto.MAC)+`.includes('Recipe line-a v1 (rule early)')`)
	b.waitFor(t, "the recipe named and its customise step", card(auto.MAC)+`.querySelector('[data-field=action]').textContent === 'Deploy recipe line-a v1' && !!`+card(auto.MAC)+`.querySelector('[data-step=customise]')`)

	// The ask board starts with a click and a confirmation.
	b.do(t, "click Start line-b", chromedp.Click(chromedp.CSS(`button[aria-label="Start recipe line-b on `+ask.MAC+`"]`)))
	b.waitFor(t, "the start confirmation", `document.getElementById('confirm').open && document.getElementById('confirm-text').textContent.includes('line-b v1')`)
	b.confirm(t)
	b.waitFor(t, "the ask board pending", card(ask.MAC)+`.dataset.state === 'pending' && `+ruleText(ask.MAC)+`.includes('Recipe line-b v1 (rule rest)')`)
	var dev contract.Device
	techDo(t, base, token, http.MethodGet, "/api/v1/devices/"+ask.MAC, nil, &dev)
	if dev.Action == nil || dev.Action.Recipe != "line-b" || dev.Action.Rule != "rest" || len(dev.Action.Values) != 1 {
		t.Errorf("ask board's action: %+v", dev.Action)
	}
	b.screenshot(t, dir, "line-armed.png")
	b.check(t)
}

// TestRecordsInBrowser: the line figures, the ledger download and the
// webhooks on the dashboard. A bad webhook URL is refused with the reason;
// a good one shows its secret once, and its deliveries (to a real receiver
// on loopback) appear in the log as delivered.
func TestRecordsInBrowser(t *testing.T) {
	bn := startBench(t)
	base, token := bn.URL, bn.Token
	var got atomic.Int32
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got.Add(1)
		w.WriteHeader(http.StatusNoContent)
	}))
	defer rcv.Close()
	b := newBrowser(t)
	b.login(t, base, token)

	b.do(t, "type a bad URL", chromedp.SendKeys(chromedp.CSS(`#webhook-url`), "ftp://mes.example/x"), chromedp.Click(chromedp.CSS(`[data-testid=webhook-add]`)))
	b.waitFor(t, "the refusal", `(() => { const e = document.getElementById('webhook-error'); return !e.hidden && e.textContent.includes('Not added') && e.textContent.includes('http(s)'); })()`)
	b.do(t, "type the receiver's URL", chromedp.Evaluate[chromedp.Void](`document.getElementById('webhook-url').value = '`+rcv.URL+`/hook'`), chromedp.Click(chromedp.CSS(`[data-testid=webhook-add]`)))
	b.waitFor(t, "the secret, once", `!document.getElementById('webhook-secret').hidden && /secret, shown only now: [0-9a-f]{48}/.test(document.getElementById('webhook-secret').textContent)`)
	b.waitFor(t, "the webhook listed", `document.querySelectorAll('[data-testid=webhook-item]').length === 1`)

	d := &simDevice{t: t, base: base, MAC: "dc:a6:32:0d:00:01", Serial: "10000d01"}
	d.register()
	techDo(t, base, token, http.MethodPost, "/api/v1/devices/"+d.MAC+"/action", strings.NewReader(`{"action":"deploy"}`), nil)
	d.pollUntil(contract.ActionDeploy)
	n, sum := d.fetchImage()
	d.finish(contract.StatusSuccess, "", n, sum)
	b.waitFor(t, "the figures", `document.querySelector('[data-testid=figures-hour]').textContent.includes('1 done, 1 board') && document.querySelector('[data-testid=figures-hour]').textContent.includes('first pass 100%')`)
	b.waitFor(t, "delivered events in the log", `[...document.querySelectorAll('[data-testid=delivery-row]')].filter(r => r.dataset.state === 'delivered').length >= 3`)
	if got.Load() < 3 {
		t.Errorf("the receiver got %d requests", got.Load())
	}
	head := b.text(t, `(async () => { const r = await fetch(document.querySelector('[data-testid=ledger-csv]').href); const t = await r.text(); return t.split('\r\n')[0] + '|' + (t.includes('`+d.MAC+`') ? 'row' : 'none'); })()`)
	if !strings.HasPrefix(head, "id,time,station,slot,operator,mac") || !strings.HasSuffix(head, "|row") {
		t.Errorf("the ledger download: %q", head)
	}
	b.screenshot(t, artifactsDir(t), "records.png")
	b.check(t)
}

// TestLabelInBrowser: a provisioned board's card offers Print label and a
// preview; a printer that is off is reported in plain words (the board
// stays done), one that answers gets the label.
func TestLabelInBrowser(t *testing.T) {
	bn := startBench(t)
	base, token := bn.URL, bn.Token
	sum := uploadLineImage(t, base, token)
	printer, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := printer.Addr().String()
	printer.Close() // off for now
	techDo(t, base, token, http.MethodPut, "/api/v1/recipes", strings.NewReader(`name: line-l
image: line.img
sha256: `+hex.EncodeToString(sum[:])+`
label: {width_mm: 50, height_mm: 25, lines: ["SN {{ .Serial }}"], code: {kind: qr, data: "{{ .Serial }}"}, printer: "tcp:`+addr+`"}
`), nil)
	b := newBrowser(t)
	b.login(t, base, token)
	d := &simDevice{t: t, base: base, MAC: "dc:a6:32:0e:00:01", Serial: "10000e01"}
	d.register()
	techDo(t, base, token, http.MethodPost, "/api/v1/devices/"+d.MAC+"/action", strings.NewReader(`{"action":"deploy","recipe":"line-l"}`), nil)
	d.pollUntil(contract.ActionDeploy)
	n, got := d.fetchImage()
	d.post(contract.PathActionDone, contract.ActionDone{MAC: d.MAC, ActionID: d.poll.ActionID, Token: d.poll.Token, Status: contract.StatusSuccess, Bytes: n, SHA256: got})
	btn := `button[aria-label="Print the label of ` + d.MAC + `"]`
	b.waitFor(t, "the card", card(d.MAC))
	b.waitFor(t, "Print label on the done card", card(d.MAC)+`.dataset.state === 'done' && !!document.querySelector('`+btn+`') && !document.querySelector('`+btn+`').hidden`)
	b.do(t, "click Print label (printer off)", chromedp.Click(chromedp.CSS(btn)))
	b.waitFor(t, "the plain error", `[...document.querySelectorAll('[data-testid=error-item]')].some(e => e.textContent.includes('did not print') && e.textContent.includes('The board itself is provisioned'))`)
	if st := b.text(t, card(d.MAC)+`.dataset.state`); st != "done" {
		t.Errorf("the card reads %s after a failed print, want done", st)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	recv := make(chan int, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		all, _ := io.ReadAll(c)
		c.Close()
		recv <- len(all)
	}()
	b.do(t, "click Print label (printer on)", chromedp.Click(chromedp.CSS(btn)))
	b.waitFor(t, "Printed", `document.querySelector('`+btn+`').textContent === 'Printed ✓'`)
	if n := <-recv; n < 1000 {
		t.Errorf("the printer got %d bytes", n)
	}
	if href := b.text(t, card(d.MAC)+`.querySelector('[data-testid=label-preview]').href`); !strings.HasSuffix(href, "/label.png") {
		t.Errorf("label preview link %q", href)
	}
	b.check(t)
}
