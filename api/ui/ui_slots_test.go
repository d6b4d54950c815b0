package ui_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/cm4bench/cm4bench/internal/contract"
)

// TestSixteenSlotsInBrowser: sixteen boards in every state fit a 1366x768
// screen in the compact grid, each with its slot number, its state in words
// and colour, and (when working) a big percentage; the first visit shows no
// error; the printed one-click link logs in once; routine events are hidden
// until asked for; a finished deploy says it was verified. The screenshot is
// the README's (make screenshot).
func TestSixteenSlotsInBrowser(t *testing.T) {
	bn := startBench(t)
	base := bn.URL
	dir := artifactsDir(t)
	b := newBrowser(t)
	b.do(t, "a 1366x768 screen", chromedp.EmulateViewport(1366, 768))

	// Item 3: a first visit shows the login form without "session has ended".
	b.do(t, "open the dashboard", chromedp.Navigate(base+"/"))
	b.waitFor(t, "the login form", `!document.getElementById('login').hidden`)
	if msg := b.text(t, `document.getElementById('login-error').hidden ? '' : document.getElementById('login-error').textContent`); msg != "" {
		t.Errorf("a first visit shows an error: %q", msg)
	}
	// The one-click link logs in, works once, and leaves no code in the address bar.
	link := bn.API.LoginLink(base)
	b.do(t, "open the login link", chromedp.Navigate(link))
	b.waitFor(t, "the live dashboard", `!document.getElementById('app').hidden && document.getElementById('live').dataset.state === 'live'`)
	if loc := b.text(t, `location.href`); strings.Contains(loc, "login=") {
		t.Errorf("the login code stays in the address bar: %s", loc)
	}

	// Sixteen boards: done, failed, running at 42 %, queued, idle.
	ctx := context.Background()
	devs := make([]*simDevice, 16)
	for i := range devs {
		devs[i] = &simDevice{t: t, base: base, MAC: fmt.Sprintf("dc:a6:32:10:00:%02x", i+1), Serial: fmt.Sprintf("1000%04x", i+1)}
		devs[i].register()
	}
	b.waitFor(t, "16 cards", `document.querySelectorAll('[data-testid=device-card]').length === 16`)
	want := map[string]string{}
	for i, d := range devs {
		switch i % 4 {
		case 0: // done, verified
			setAction(t, bn, d.MAC, contract.ActionDeploy)
			d.pollUntil(contract.ActionDeploy)
			n, sum := d.fetchImage()
			d.finish(contract.StatusSuccess, "", n, sum)
			want[d.MAC] = "done"
		case 1: // failed
			setAction(t, bn, d.MAC, contract.ActionDeploy)
			d.pollUntil(contract.ActionDeploy)
			d.finish(contract.StatusFailed, "sha256 mismatch on read-back", 0, "")
			want[d.MAC] = "failed"
		case 2: // running at 42 %
			setAction(t, bn, d.MAC, contract.ActionDeploy)
			d.pollUntil(contract.ActionDeploy)
			d.progress("write", 42<<20, 100<<20, 30e6)
			want[d.MAC] = "running"
		case 3:
			if i == 3 { // queued on a board that stopped polling
				setAction(t, bn, d.MAC, contract.ActionDeploy)
				want[d.MAC] = "pending"
			} else {
				want[d.MAC] = "idle"
			}
		}
	}
	for mac, st := range want {
		b.waitFor(t, mac+" "+st, card(mac)+`.dataset.state === '`+st+`'`)
	}
	b.waitFor(t, "42 % on a running card", card(devs[2].MAC)+`.querySelector('[data-testid=device-percent]').textContent === '42%'`)

	// Item 2: the compact grid was chosen by itself; every card is inside
	// the 1366x768 window at once, with a readable slot, state and percentage.
	b.waitFor(t, "the compact grid", `document.getElementById('device-grid').dataset.density === 'compact'`)
	b.text(t, `(() => { document.getElementById('devices').scrollIntoView(); return ''; })()`)
	fit := b.text(t, `(() => {
		const bad = [];
		const vh = window.innerHeight, vw = window.innerWidth;
		for (const c of document.querySelectorAll('[data-testid=device-card]')) {
			const r = c.getBoundingClientRect();
			if (r.top < 0 || r.bottom > vh || r.right > vw) bad.push(c.dataset.mac + ' at ' + Math.round(r.top) + '-' + Math.round(r.bottom));
			const slot = c.querySelector('[data-testid=device-slot]'), st = c.querySelector('[data-testid=device-state]');
			if (parseFloat(getComputedStyle(slot).fontSize) < 28) bad.push(c.dataset.mac + ' slot font ' + getComputedStyle(slot).fontSize);
			if (parseFloat(getComputedStyle(st).fontSize) < 16) bad.push(c.dataset.mac + ' state font ' + getComputedStyle(st).fontSize);
			if (!st.textContent.trim()) bad.push(c.dataset.mac + ' has no state word');
		}
		return bad.join('; ');
	})()`)
	if fit != "" {
		t.Errorf("not readable at 1366x768: %s", fit)
	}
	pct := b.text(t, `getComputedStyle(`+card(devs[2].MAC)+`.querySelector('[data-testid=device-percent]')).fontSize`)
	if px := parseFloat(pct); px < 40 {
		t.Errorf("the percentage is %s, want a big number", pct)
	}
	// Each state has its own header colour.
	colours := b.text(t, `(() => { const seen = {};
		for (const c of document.querySelectorAll('[data-testid=device-card]'))
			seen[c.dataset.state] = getComputedStyle(c.querySelector('.device-head')).backgroundColor;
		return JSON.stringify(seen); })()`)
	for _, a := range []string{"done", "failed", "running", "pending", "idle"} {
		if !strings.Contains(colours, `"`+a+`"`) {
			t.Errorf("no %s card coloured: %s", a, colours)
		}
	}
	if distinct := strings.Count(colours, "rgb("); distinct < 5 {
		t.Errorf("header colours %s", colours)
	}
	// ✓ and ✗ on done and failed.
	if icon := b.text(t, card(devs[0].MAC)+`.querySelector('[data-testid=device-state]').dataset.icon`); icon != "✓" {
		t.Errorf("done icon %q", icon)
	}
	if icon := b.text(t, card(devs[1].MAC)+`.querySelector('[data-testid=device-state]').dataset.icon`); icon != "✗" {
		t.Errorf("failed icon %q", icon)
	}
	b.screenshot(t, dir, "dashboard-16-slots.png")

	// Item 6: done says verified, and Deploy is no longer the primary button.
	b.do(t, "detailed cards", chromedp.Click(chromedp.CSS(`[data-testid=density-detailed]`)))
	b.waitFor(t, "verified words", card(devs[0].MAC)+`.querySelector('[data-testid=device-verified]').textContent.includes('Written and verified (sha256 ')`)
	if cls := b.text(t, card(devs[0].MAC)+`.querySelector('[data-testid=deploy]').className`); strings.Contains(cls, "primary") {
		t.Errorf("a done board invites a re-flash: %q", cls)
	}

	// Item 2: Identify asks the board to blink its LED (an identify action).
	b.do(t, "click Identify", chromedp.Click(chromedp.CSS(`[data-testid=device-card][data-mac="`+devs[15].MAC+`"] [data-testid=identify]`)))
	b.waitFor(t, "the identify queued", card(devs[15].MAC)+`.dataset.state === 'pending'`)
	var dv contract.Device
	techGET(t, base, bn.Token, "/api/v1/devices/"+devs[15].MAC, &dv)
	if dv.Action == nil || dv.Action.Type != contract.ActionIdentify {
		t.Errorf("after Identify the board's action is %+v", dv.Action)
	}

	// Item 1: the queued job on a board that stopped polling gets the power-cycle hint.
	b.waitFor(t, "the not-netbooted hint", `(() => { const h = `+card(devs[3].MAC)+`.querySelector('[data-testid=device-hint]');
		return !h.hidden && h.textContent.includes('press Power-cycle'); })()`)
	if vis := b.text(t, `String(`+card(devs[3].MAC)+`.querySelector('[data-testid=power-cycle]').offsetParent !== null)`); vis != "true" {
		t.Errorf("the waiting board's Power-cycle button is not visible in the compact grid")
	}

	// Item 7: routine events are hidden until "All events".
	if _, err := bn.Store.Emit(ctx, contract.Event{Time: time.Now(), Kind: contract.EventTFTPNotFound, Message: "dc-a6-32-10-00-01/start4.elf: not found"}); err != nil {
		t.Fatal(err)
	}
	b.waitFor(t, "the routine event arrives, hidden", `(() => { const li = document.querySelector('#log li[data-kind="tftp.notfound"]'); return li && li.hidden; })()`)
	b.do(t, "show all events", chromedp.Click(chromedp.CSS(`[data-testid=log-all]`)))
	b.waitFor(t, "the routine event shows", `!document.querySelector('#log li[data-kind="tftp.notfound"]').hidden`)

	// The link worked once: a second use is refused with a plain message.
	b.do(t, "log out", chromedp.Click(chromedp.CSS(`[data-testid=logout]`)))
	b.do(t, "reuse the login link", chromedp.Navigate(link))
	b.waitFor(t, "the used-link message", `!document.getElementById('login-error').hidden && document.getElementById('login-error').textContent.includes('already used')`)
	b.check(t)
}

// TestErrorsInBrowser: an image larger than the board's eMMC is refused
// before any confirmation, in one plain sentence that stays until
// dismissed; losing the server shows a banner, greys the cards and disables
// the actions, and recovering clears it.
func TestErrorsInBrowser(t *testing.T) {
	bn := startBench(t)
	bn.API.Images.Warm(context.Background()) // as serve does at start: sizes and hashes known
	b := newBrowser(t)
	b.login(t, bn.URL, bn.Token)
	small := &simDevice{t: t, base: bn.URL, MAC: "dc:a6:32:20:00:01", Serial: "20000001"}
	small.post(contract.PathRegister, contract.RegisterRequest{MAC: small.MAC, IP: "127.0.0.1", Facts: &contract.Facts{
		Serial: small.Serial, MACs: []string{small.MAC}, EMMCBytes: 1 << 20, Agent: "test"}}) // a 1 MiB eMMC; the golden image is 4 MiB
	b.waitFor(t, "the card", card(small.MAC))
	b.waitFor(t, "the image hashed (its size known)", `(() => { const r = document.querySelector('[data-testid=image-row]'); return r && !r.textContent.includes('hashing'); })()`)
	b.do(t, "click Deploy", chromedp.Click(chromedp.CSS(`[data-testid=device-card][data-mac="`+small.MAC+`"] [data-testid=deploy]`)))
	b.waitFor(t, "the refusal", `(() => { const e = document.querySelector('[data-testid=error-item]');
		return e && e.textContent.includes('Cannot deploy to `+small.MAC+`') && e.textContent.includes('eMMC holds'); })()`)
	if open := b.text(t, `String(document.getElementById('confirm').open)`); open != "false" {
		t.Error("the deploy was offered for confirmation although the image cannot fit")
	}
	var acts []contract.Action
	techGET(t, bn.URL, bn.Token, "/api/v1/actions?mac="+small.MAC, &acts)
	if len(acts) != 0 {
		t.Errorf("an action was queued: %+v", acts)
	}
	// It stays (no timer) until dismissed.
	time.Sleep(11 * time.Second)
	b.waitFor(t, "the error still shown", `document.querySelectorAll('[data-testid=error-item]').length === 1`)
	b.do(t, "dismiss", chromedp.Click(chromedp.CSS(`[data-testid=error-dismiss]`)))
	b.waitFor(t, "no error", `document.getElementById('error-banner').hidden`)

	// Item 5: the server goes away.
	bn.restart(t, func() {
		b.text(t, `(() => { document.querySelector('[data-testid=netboot-switch]').click(); return ''; })()`)
		b.waitFor(t, "the lost banner", `!document.querySelector('[data-testid=lost-banner]').hidden && document.body.classList.contains('lost')`)
		b.waitFor(t, "actions disabled", card(small.MAC)+`.querySelector('[data-testid=backup]').disabled`)
	})
	b.waitFor(t, "recovered", `document.querySelector('[data-testid=lost-banner]').hidden && !document.body.classList.contains('lost') && !`+card(small.MAC)+`.querySelector('[data-testid=backup]').disabled`)
	b.check(t)
}

func setAction(t *testing.T, bn *bench, mac, action string) {
	t.Helper()
	body, _ := json.Marshal(contract.SetActionRequest{Action: action})
	techDo(t, bn.URL, bn.Token, "POST", "/api/v1/devices/"+mac+"/action", bytes.NewReader(body), nil)
}

func parseFloat(s string) float64 {
	var f float64
	fmt.Sscanf(strings.TrimSuffix(s, "px"), "%g", &f)
	return f
}
