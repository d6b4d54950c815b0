// cm4bench dashboard. Plain JavaScript, no build step, no external resources.
// It speaks only to the technician API on this origin (/api/v1/...) with the
// session cookie set by POST /api/v1/login, and follows /api/events (SSE).
// All server-supplied text is inserted with textContent, never as HTML.
"use strict";

(() => {
  const $ = (sel, root = document) => root.querySelector(sel);

  // Event kinds the stream may carry. EventSource delivers a named event only
  // to a listener for that exact name; the server sends the list it can emit
  // as ui/kinds.js (from package contract). A gap in event ids is filled from
  // the history endpoint.
  const KINDS = ["message", ...(window.CM4BENCH_KINDS || [])];
  const QUIET_KINDS = new Set(["action.progress"]); // not written to the event log
  const LOG_MAX = 300;
  const REFRESH_MS = 15000;

  const S = {
    devices: new Map(),   // mac -> device (as the API returns it)
    cards: new Map(),     // mac -> card element
    live: new Map(),      // mac -> latest progress {actionId, phase, done, total, rate, at}
    images: [],
    backups: [],
    status: null,
    lastId: 0,
    seen: new Set(),      // event ids already handled (bounded)
    es: null,
    retry: 0,
    rivalUntil: 0,        // a dhcp.rival event keeps the banner up until this time
    rivalText: "",
    slots: new Map(),     // mac -> slot number (first contact order)
    density: (() => { try { return localStorage.getItem("cm4bench.density") || ""; } catch { return ""; } })(),
    logAll: false,        // show every event, not only the important ones
    hadSession: false,
    lost: false,
    refreshTimer: 0,
    pendingDevice: new Map(),
    seq: 0,               // request sequence: a device answer older than the one shown is dropped
    applied: new Map(),   // mac -> seq of the device state shown
    pendingImage: new Map(), // mac -> {image} picked on the card, while its PUT is in flight
    loggedIn: false,
  };

  // ---------- small helpers ----------
  function pick(o, ...names) {
    if (!o) return undefined;
    for (const n of names) if (o[n] !== undefined && o[n] !== null) return o[n];
    return undefined;
  }
  function fmtBytes(n) {
    if (n === undefined || n === null || isNaN(n)) return "";
    const u = ["B", "kB", "MB", "GB", "TB"];
    let i = 0, v = Number(n);
    while (v >= 1000 && i < u.length - 1) { v /= 1000; i++; }
    return (i === 0 ? v.toFixed(0) : v.toFixed(v < 10 ? 2 : 1)) + " " + u[i];
  }
  function fmtRate(bps) {
    if (!bps || bps <= 0) return "";
    return (bps / 1e6).toFixed(bps < 1e7 ? 1 : 0) + " MB/s";
  }
  function fmtDuration(sec) {
    if (!isFinite(sec) || sec < 0) return "";
    sec = Math.round(sec);
    const h = Math.floor(sec / 3600), m = Math.floor((sec % 3600) / 60), s = sec % 60;
    const mm = h ? String(m).padStart(2, "0") : String(m);
    return (h ? h + ":" : "") + mm + ":" + String(s).padStart(2, "0");
  }
  function toDate(t) {
    if (!t) return null;
    const d = new Date(t);
    return isNaN(d) || d.getFullYear() < 2000 ? null : d;
  }
  function fmtTime(t) {
    const d = toDate(t);
    return d ? d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false }) : "";
  }
  function fmtDateTime(t) {
    const d = toDate(t);
    if (!d) return "";
    const o = { month: "short", day: "numeric" };
    if (d.getFullYear() !== new Date().getFullYear()) o.year = "numeric";
    return d.toLocaleDateString([], o) + " " +
      d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hour12: false });
  }
  function ago(t) {
    const d = toDate(t);
    if (!d) return "";
    const s = (Date.now() - d.getTime()) / 1000;
    if (s < 10) return "just now";
    if (s < 90) return Math.round(s) + " s ago";
    if (s < 5400) return Math.round(s / 60) + " min ago";
    return fmtDateTime(t);
  }
  function el(tag, attrs = {}, text) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  }
  const PHASES = {
    download: "downloading", write: "writing eMMC", verify: "verifying", read: "reading eMMC",
    upload: "uploading", customise: "writing per-device files", erase: "erasing", sync: "flushing", hash: "hashing", boot: "booting",
  };
  const STATE_ICONS = { done: "✓", failed: "✗", running: "▶", pending: "…", offline: "–", idle: "" };
  const STATE_WORDS = {
    idle: "Ready", pending: "Queued", running: "Working", done: "Done", failed: "Failed",
    offline: "Offline", cancelled: "Cancelled",
  };

  // ---------- API ----------
  class APIError extends Error {
    constructor(status, msg) { super(msg); this.status = status; }
  }
  async function api(method, path, body) {
    const opts = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
    if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(path, opts);
    } catch (e) {
      setLost(true);
      throw new APIError(0, "the bench server did not answer (" + e.message + ")");
    }
    setLost(false);
    let data = null;
    const text = await res.text();
    if (text) {
      try { data = JSON.parse(text); } catch { data = null; }
    }
    if (!res.ok) {
      const msg = (data && data.error) || text || res.statusText;
      if (res.status === 401 && path !== "/api/v1/login") showLogin(S.hadSession ? "Your session has ended. Log in again." : "");
      throw new APIError(res.status, msg);
    }
    return data;
  }

  // showError keeps an error until the technician dismisses it: one plain
  // sentence saying what failed and what to do, the raw text under
  // "Details". At most five are kept, newest first.
  function showError(what, err, todo) {
    const b = $("#error-banner");
    const raw = err && err.message !== undefined ? err.message : (err || "");
    const item = el("div", { class: "error-item", "data-testid": "error-item" });
    item.append(el("strong", {}, what.replace(/[.:]?$/, ".")));
    const hint = todo || (err && err.status === 0 ? "Check that cm4bench netboot serve is running; the page retries by itself." : "");
    if (hint) item.append(el("span", { "data-testid": "error-todo" }, hint));
    if (raw) {
      const det = el("details");
      det.append(el("summary", {}, "Details"), el("code", { "data-testid": "error-details" }, String(raw)));
      item.append(det);
    }
    const x = el("button", { type: "button", class: "btn quiet", "data-testid": "error-dismiss" }, "Dismiss");
    x.addEventListener("click", () => { item.remove(); b.hidden = b.children.length === 0; });
    item.append(x);
    b.prepend(item);
    while (b.children.length > 5) b.lastChild.remove();
    b.hidden = false;
  }
  // setLost shows (or clears) that the server stopped answering: a banner,
  // greyed cards and disabled actions, until a request works again.
  function setLost(lost) {
    if (lost && !S.loggedIn) return;
    if (S.lost === lost) return;
    S.lost = lost;
    document.body.classList.toggle("lost", lost);
    $("#lost-banner").hidden = !lost;
    $("#deploy-all").disabled = lost || readyMACs().length === 0;
    for (const [mac, d] of S.devices) renderDevice(S.cards.get(mac), d);
  }

  // ---------- login ----------
  function showLogin(message) {
    S.loggedIn = false;
    if (S.es) { S.es.close(); S.es = null; }
    $("#app").hidden = true;
    $("#top-controls").hidden = true;
    $("#netboot-off-banner").hidden = true;
    $("#armed-banner").hidden = true;
    hideRival();
    $("#login").hidden = false;
    const err = $("#login-error");
    if (message) { err.textContent = message; err.hidden = false; } else { err.hidden = true; }
    $("#token").focus();
  }
  async function onLogin(ev) {
    ev.preventDefault();
    const input = $("#token");
    const err = $("#login-error");
    const token = input.value.trim();
    if (!token) {
      err.textContent = "Enter the admin token.";
      err.hidden = false;
      input.focus();
      return;
    }
    const btn = $("[data-testid=login-submit]");
    btn.disabled = true;
    try {
      await api("POST", "/api/v1/login", { token });
      input.value = "";
      err.hidden = true;
      await start();
    } catch (e) {
      err.textContent = e.status === 401 || e.status === 403
        ? "That token was refused. Check the admin-token file in the server's data directory."
        : "Login failed: " + e.message;
      err.hidden = false;
      input.select();
      input.focus();
    } finally {
      btn.disabled = false;
    }
  }
  async function onLogout() {
    try { await api("POST", "/api/v1/logout"); } catch { /* the session is gone either way */ }
    S.devices.clear();
    for (const c of S.cards.values()) c.remove();
    S.cards.clear();
    showLogin("");
  }

  // loginFromLink logs in with the one-time code of the link the server
  // printed (?login=CODE), then removes the code from the address bar.
  async function loginFromLink() {
    const code = new URLSearchParams(location.search).get("login");
    if (!code) return;
    history.replaceState(null, "", location.pathname);
    try {
      await api("POST", "/api/v1/login", { code });
    } catch (e) {
      showLogin(e.status === 401
        ? "That login link was already used or has expired. Paste the admin token, or restart the server for a new link."
        : "Login with the link failed: " + e.message);
      throw e;
    }
  }

  // ---------- start ----------
  async function start() {
    let st;
    try {
      st = await api("GET", "/api/v1/status");
    } catch (e) {
      if (e.status === 0) {
        // The server is not answering (restarting?): say so and try again.
        showLogin("Cannot reach the bench server; trying again…");
        setTimeout(() => { if (!S.loggedIn) start(); }, 3000);
      } else if (e.status !== 401) {
        showLogin("Cannot load the bench status: " + e.message);
      }
      return;
    }
    S.loggedIn = true;
    S.hadSession = true;
    $("#login").hidden = true;
    $("#app").hidden = false;
    $("#top-controls").hidden = false;
    applyStatus(st);
    await Promise.allSettled([loadImages(), loadDevices(), loadBackups(), loadHistory(), loadLine(), loadRecords()]);
    connect();
    clearInterval(S.refreshTimer);
    S.refreshTimer = setInterval(periodic, REFRESH_MS);
  }
  async function periodic() {
    if (!S.loggedIn) return;
    try {
      applyStatus(await api("GET", "/api/v1/status"));
      await loadDevices();
      loadRecords();
    } catch { /* shown by the live indicator / login */ }
  }

  // ---------- status, netboot switch, rival banner ----------
  function applyStatus(st) {
    S.status = st || {};
    const info = [];
    const ver = pick(st, "version", "Version");
    if (ver) info.push("cm4bench " + ver);
    const addrs = pick(st, "addresses", "addrs", "listen");
    if (Array.isArray(addrs) && addrs.length) info.push(addrs.join(", "));
    else if (typeof addrs === "string" && addrs) info.push(addrs);
    $("#server-info").textContent = info.length ? info.join(" · ") : "Provisioning bench";
    let nb = pick(st, "netboot", "netboot_enabled", "global_netboot");
    if (nb && typeof nb === "object") nb = pick(nb, "enabled");
    if (typeof nb === "boolean") setSwitch(nb);
    setArmed(!!pick(st, "armed"));
    // The server omits rival_dhcp when it has seen none.
    const rivals = pick(st, "rival_dhcp", "rivals", "dhcp_rivals") || [];
    const list = (Array.isArray(rivals) ? rivals : [rivals]).filter(Boolean).map(r =>
      typeof r === "string" ? r : (pick(r, "message", "server", "addr", "ip") || JSON.stringify(r)));
    if (list.length) showRival(list.join("; "), 0);
    else if (Date.now() > S.rivalUntil) hideRival();
  }
  function setArmed(on) {
    if (S.status) S.status.armed = on;
    const sw = $("#armed-switch");
    sw.setAttribute("aria-checked", on ? "true" : "false");
    const state = $("#armed-state");
    state.textContent = on ? "ARMED" : "Off";
    state.dataset.armed = on ? "true" : "false";
    $("#armed-banner").hidden = !on || !S.loggedIn;
    sw.title = on ? "Armed: auto rules start deploys with no click. Click to disarm."
      : "Not armed: auto rules wait. Click to arm.";
    for (const [mac, d] of S.devices) renderDevice(S.cards.get(mac), d);
  }
  async function onArmed() {
    const on = !(S.status && S.status.armed);
    if (on) {
      const waiting = [...S.devices.values()].filter(d => {
        const m = pick(d, "match") || {};
        return m.mode === "auto" && deviceState(d) === "idle";
      }).length;
      if (!(await confirmDialog("Arm the bench?",
        "From now on, every board an auto rule matches is overwritten the moment it netboots, with no click" +
        (waiting ? ", starting with the " + waiting + (waiting === 1 ? " board" : " boards") + " waiting now." : "."), "Arm"))) return;
    }
    try {
      await api("PUT", "/api/v1/armed", { armed: on });
      setArmed(on);
      loadDevices();
    } catch (e) {
      showError(on ? "Could not arm the bench" : "Could not disarm the bench", e);
    }
  }

  // ---------- line figures, webhooks, deliveries ----------
  async function loadRecords() {
    let figs, hooks, dels;
    try {
      [figs, hooks, dels] = await Promise.all([api("GET", "/api/v1/figures"), api("GET", "/api/v1/webhooks"), api("GET", "/api/v1/webhooks/deliveries?limit=20")]);
    } catch (e) {
      if (e.status !== 401) showError("Could not load the line figures and webhooks", e);
      return;
    }
    const dl = $("#figures");
    dl.textContent = "";
    for (const [label, set] of [["Last hour", figs.hour], ["Shift", figs.shift]]) {
      const f = (set || [])[0] || {};
      const total = (f.phases || {}).total;
      dl.append(el("dt", {}, label), el("dd", { "data-testid": "figures-" + (label === "Shift" ? "shift" : "hour") },
        (f.boards_per_hour || 0).toFixed(1) + " boards/h · " + (f.done || 0) + " done, " + (f.boards || 0) + ((f.boards || 0) === 1 ? " board" : " boards") +
        " · first pass " + Math.round((f.first_pass_yield || 0) * 100) + "%" +
        (total ? " · median " + Math.round(total.p50) + " s, p95 " + Math.round(total.p95) + " s" : "")));
    }
    const list = $("#webhook-list");
    list.textContent = "";
    for (const h of hooks || []) {
      const li = el("li", { "data-testid": "webhook-item" });
      li.append(el("span", { class: "mono" }, h.url), " ");
      const del = el("button", { type: "button", class: "btn quiet", "aria-label": "Remove webhook " + h.url }, "Remove");
      del.addEventListener("click", async () => {
        if (!(await confirmDialog("Remove this webhook?", h.url + " gets no more events; its undelivered ones are dropped.", "Remove"))) return;
        try { await api("DELETE", "/api/v1/webhooks/" + h.id); } catch (e) { showError("Could not remove the webhook", e); }
        loadRecords();
      });
      li.append(del);
      list.append(li);
    }
    const rows = $("#delivery-rows");
    rows.textContent = "";
    for (const d of dels || []) {
      const tr = el("tr", { "data-testid": "delivery-row", "data-state": d.state, "data-tries": String(d.attempts) });
      const state = d.state === "pending" ? (d.attempts ? "retrying (" + (d.last_error || "failed") + ")" : "queued")
        : d.state === "failed" ? "gave up: " + (d.last_error || "") : "delivered";
      tr.append(el("td", { class: "mono" }, d.event), el("td", { class: "small" }, d.url), el("td", {}, state), el("td", {}, String(d.attempts)));
      rows.append(tr);
    }
    $("#deliveries").hidden = !(dels || []).length;
    $("#no-deliveries").hidden = !!(dels || []).length;
  }
  async function onWebhookAdd(ev) {
    ev.preventDefault();
    const err = $("#webhook-error"), sec = $("#webhook-secret");
    err.hidden = true; sec.hidden = true;
    try {
      const h = await api("POST", "/api/v1/webhooks", { url: $("#webhook-url").value.trim(), events: ["board.registered", "action.done", "action.failed", "ledger.row"] });
      sec.textContent = "Added. Its signing secret, shown only now: " + h.secret;
      sec.hidden = false;
      $("#webhook-url").value = "";
      loadRecords();
    } catch (e) {
      err.textContent = "Not added: " + e.message;
      err.hidden = false;
    }
  }

  // ---------- recipes and rules ----------
  async function loadLine() {
    let recipes = [], rules = { rules: [] };
    try {
      [recipes, rules] = await Promise.all([api("GET", "/api/v1/recipes"), api("GET", "/api/v1/rules")]);
    } catch (e) {
      if (e.status !== 401) showError("Could not list the recipes and rules", e);
      return;
    }
    S.recipes = recipes || [];
    const rows = $("#recipe-rows");
    rows.textContent = "";
    for (const r of S.recipes) {
      const tr = el("tr", { "data-testid": "recipe-row", "data-name": r.name });
      const name = el("td");
      name.append(el("strong", {}, r.name), " ", el("span", { class: "tag quiet" }, "v" + r.version));
      tr.append(name, el("td", { class: "mono" }, r.image));
      const pools = (r.pool_states || []).map(p => {
        const st = p.states || {};
        if (p.kind === "counter") return p.pool + ": next " + p.next;
        return p.pool + ": " + (st.free || 0) + " left" + (st.used ? ", " + st.used + " used" : "");
      });
      tr.append(el("td", { class: "small" }, pools.join("; ") || "–"));
      const act = el("td", { class: "actions" });
      const edit = el("button", { type: "button", class: "btn", "data-testid": "recipe-edit", "aria-label": "Edit recipe " + r.name }, "Edit");
      edit.addEventListener("click", async () => {
        try {
          const res = await fetch("/api/v1/recipes/" + encodeURIComponent(r.name) + "?format=yaml", { credentials: "same-origin" });
          if (!res.ok) throw new APIError(res.status, await res.text());
          openEditor("Recipe " + r.name + " (saving an edit of a version boards used makes version " + (r.version + 1) + ")", await res.text(), "recipes");
        } catch (e) { showError("Could not load recipe " + r.name, e); }
      });
      act.append(edit);
      tr.append(act);
      rows.append(tr);
    }
    $("#recipes").hidden = S.recipes.length === 0;
    $("#no-recipes").hidden = S.recipes.length !== 0;
    const list = $("#rules-list");
    list.textContent = "";
    for (const r of (rules && rules.rules) || []) {
      const li = el("li", { "data-testid": "rule-item" });
      li.append(el("strong", {}, r.name), " → " + r.recipe + " (" + r.mode + ")");
      list.append(li);
    }
  }
  function openEditor(title, text, kind) {
    const f = $("#yaml-editor");
    f.dataset.kind = kind;
    $("#yaml-title").textContent = title;
    $("#yaml-text").value = text;
    $("#yaml-error").hidden = true;
    f.hidden = false;
    $("#yaml-text").focus();
  }
  async function onEditorSave(ev) {
    ev.preventDefault();
    const f = $("#yaml-editor");
    const kind = f.dataset.kind;
    const err = $("#yaml-error");
    try {
      const res = await fetch("/api/v1/" + kind, { method: "PUT", credentials: "same-origin",
        headers: { "Content-Type": "application/yaml" }, body: $("#yaml-text").value });
      const text = await res.text();
      if (!res.ok) {
        let msg = text;
        try { msg = JSON.parse(text).error || text; } catch { /* plain text */ }
        err.textContent = "Not saved, nothing changed: " + msg;
        err.hidden = false;
        return;
      }
      f.hidden = true;
      loadLine();
      loadDevices();
    } catch (e) {
      err.textContent = "Not saved: the bench server did not answer.";
      err.hidden = false;
    }
  }
  async function onRulesEdit() {
    try {
      const res = await fetch("/api/v1/rules?format=yaml", { credentials: "same-origin" });
      openEditor("Rules (first match wins)", await res.text(), "rules");
    } catch (e) { showError("Could not load the rules", e); }
  }
  function onRecipeNew() {
    const img = defaultImageName() || "IMAGE.img";
    const im = S.images.find(i => pick(i, "name", "Name") === img);
    const sha = (im && pick(im, "sha256", "SHA256")) || "SHA256-OF-THE-IMAGE";
    openEditor("New recipe", `name: line-a
image: ${img}
sha256: ${sha}
after: reboot            # or poweroff, hold
pools:
  - name: hostnames
    kind: counter
    format: line-a-%04d
    start: 1
files:
  - path: user-data
    template: |
      #cloud-config
      hostname: {{ pool "hostnames" }}
`, "recipes");
  }

  function setSwitch(on) {
    if (S.status) S.status.netboot = on;
    for (const [mac, d] of S.devices) renderDevice(S.cards.get(mac), d);
    const sw = $("#netboot-switch");
    sw.setAttribute("aria-checked", on ? "true" : "false");
    $("#netboot-state").textContent = on ? "On" : "Off";
    $("#netboot-off-banner").hidden = on || !S.loggedIn;
    sw.title = on ? "Network boot is on for the bench: click to turn it off"
      : "Network boot is off for the whole bench: click to turn it on";
  }
  async function onSwitch() {
    const sw = $("#netboot-switch");
    const on = sw.getAttribute("aria-checked") !== "true";
    if (!on && !(await confirmDialog("Turn network boot off?",
      "No CM4 on the bench will network boot until it is turned on again.", "Turn off"))) return;
    sw.disabled = true;
    try {
      const r = await api("PUT", "/api/v1/netboot", { enabled: on });
      setSwitch(r && typeof r.enabled === "boolean" ? r.enabled : on);
    } catch (e) {
      showError("Could not switch network boot", e);
    } finally {
      sw.disabled = false;
    }
  }
  function showRival(text, holdMs) {
    S.rivalText = text;
    if (holdMs) S.rivalUntil = Date.now() + holdMs;
    $("#rival-text").textContent = text;
    $("#rival-banner").hidden = false;
  }
  function hideRival() { $("#rival-banner").hidden = true; }

  // ---------- images ----------
  async function loadImages() {
    try {
      S.images = (await api("GET", "/api/v1/images")) || [];
    } catch (e) {
      S.images = [];
      if (e.status !== 401) showError("Could not list images", e);
    }
    renderBenchDefault();
    for (const [mac, card] of S.cards) renderDeviceImage(card, S.devices.get(mac));
    renderImages();
  }
  function renderImages() {
    const rows = $("#image-rows");
    rows.textContent = "";
    for (const img of S.images) {
      const name = pick(img, "name", "Name");
      if (!name) continue;
      const tr = el("tr", { "data-testid": "image-row", "data-name": name });
      const nameTd = el("td", { class: "mono" }, name);
      const isDefault = !!pick(img, "default", "Default");
      if (isDefault) nameTd.append(el("span", { class: "tag", "data-testid": "image-default-tag" }, "default"));
      if (pick(img, "golden", "Golden")) nameTd.append(el("span", { class: "tag quiet", title: "The file the server was started with (--image): it is never deleted from here" }, "--image"));
      tr.append(nameTd);
      const rawSize = Number(pick(img, "size", "Size") || 0);
      const sizeTd = el("td", { class: "nowrap" }, rawSize > 0 ? fmtBytes(rawSize) : "–");
      const fmt = pick(img, "format", "Format");
      const csize = pick(img, "compressed_size", "CompressedSize");
      if (fmt && fmt !== "raw" && csize) sizeTd.append(el("div", { class: "muted" }, fmt + " " + fmtBytes(csize)));
      tr.append(sizeTd);
      const sha = String(pick(img, "sha256", "SHA256") || "");
      tr.append(el("td", { class: "mono", title: sha }, sha ? sha.slice(0, 10) + "…" : "hashing…"));
      const actions = el("td", { class: "actions" });
      if (!isDefault) {
        const set = el("button", { type: "button", class: "btn", "data-testid": "image-set-default", "aria-label": "Set " + name + " as the bench default" }, "Set as default");
        set.addEventListener("click", async () => {
          set.disabled = true;
          try {
            await api("PUT", "/api/v1/images/default", { image: name });
          } catch (e) {
            showError("Could not make " + name + " the default image", e);
          }
          await loadImages();
        });
        actions.append(set);
      }
      if (!isDefault && !pick(img, "golden", "Golden")) {
        const del = el("button", { type: "button", class: "btn quiet", "data-testid": "image-delete", "aria-label": "Delete image " + name }, "Delete");
        del.addEventListener("click", async () => {
          if (!(await confirmDialog("Delete " + name + "?", "The image is removed from the server. Devices assigned to it go back to the bench default.", "Delete"))) return;
          try {
            await api("DELETE", "/api/v1/images/" + encodeURIComponent(name));
            await loadImages();
          } catch (e) {
            showError("Could not delete " + name, e);
          }
        });
        actions.append(del);
      }
      tr.append(actions);
      rows.append(tr);
    }
    $("#images").hidden = S.images.length === 0;
    $("#no-images").hidden = S.images.length !== 0;
    // The server hashes new images in the background: look again until done.
    clearTimeout(S.hashTimer);
    if (S.loggedIn && S.images.some(i => !pick(i, "sha256", "SHA256"))) S.hashTimer = setTimeout(loadImages, 2000);
  }
  // onUpload streams the chosen file to POST /api/v1/images?name=... with
  // upload progress (XMLHttpRequest reports it; fetch does not).
  function onUpload(ev) {
    const input = ev.target;
    const file = input.files && input.files[0];
    if (!file) return;
    const box = $("#upload-progress"), bar = box.querySelector(".bar"), fill = bar.querySelector(".fill"), text = $("#upload-text");
    box.hidden = false;
    input.disabled = true;
    const show = (pct, msg) => {
      fill.style.width = pct.toFixed(1) + "%";
      bar.setAttribute("aria-valuenow", String(Math.floor(pct)));
      text.textContent = msg;
    };
    show(0, "Uploading " + file.name + "…");
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/api/v1/images?name=" + encodeURIComponent(file.name));
    xhr.setRequestHeader("Content-Type", "application/octet-stream");
    xhr.upload.onprogress = e => {
      if (e.lengthComputable && e.total > 0) {
        show(e.loaded / e.total * 100, "Uploading " + file.name + ": " + fmtBytes(e.loaded) + " of " + fmtBytes(e.total));
      }
    };
    const finish = (msg, raw) => {
      input.disabled = false;
      input.value = "";
      if (msg) showError(msg, raw);
      box.hidden = true;
      loadImages();
    };
    xhr.onload = () => {
      if (xhr.status >= 200 && xhr.status < 300) { show(100, file.name + " uploaded"); finish(""); return; }
      let msg = xhr.statusText;
      try { msg = JSON.parse(xhr.responseText).error || msg; } catch { /* not JSON */ }
      if (xhr.status === 401) showLogin("Your session has ended. Log in again.");
      finish("Could not upload " + file.name, msg);
    };
    xhr.onerror = () => finish("Could not upload " + file.name, "the connection to the server broke");
    xhr.send(file);
  }
  function defaultImageName() {
    const d = S.images.find(i => pick(i, "default", "Default"));
    return d ? pick(d, "name", "Name") : pick(S.status, "default_image", "image_default", "image");
  }
  function imageLabel(img) {
    const name = pick(img, "name", "Name");
    const size = fmtBytes(pick(img, "size", "Size"));
    return name + (size ? " (" + size + ")" : "");
  }
  // renderBenchDefault names, in the toolbar, what Deploy writes to a board
  // with no image of its own: the one image choice, set in the Images list.
  function renderBenchDefault() {
    const def = defaultImageName();
    const name = $("#bench-default-name");
    name.textContent = def || "nothing: no image on the server";
    name.title = def ? "Choose another with Set as default in the Images list" : "Upload one under Images, or start the server with --image";
  }
  // renderImageSelect fills a board's own image picker; its first entry is
  // the bench default, so the precedence reads in the picker itself.
  function renderImageSelect(sel, current) {
    sel.textContent = "";
    const def = defaultImageName();
    sel.append(el("option", { value: "" }, def ? "Bench default (" + def + ")" : "Bench default (none yet)"));
    for (const img of S.images) {
      const name = pick(img, "name", "Name");
      if (!name) continue;
      sel.append(el("option", { value: name }, imageLabel(img)));
    }
    if (current && ![...sel.options].some(o => o.value === current)) {
      sel.append(el("option", { value: current }, current + " (missing)"));
    }
    sel.value = current || "";
  }

  // ---------- devices ----------
  async function loadDevices() {
    let list;
    const seq = ++S.seq;
    try {
      list = (await api("GET", "/api/v1/devices")) || [];
    } catch (e) {
      if (e.status !== 401) showError("Could not list devices", e);
      return;
    }
    const keep = new Set();
    for (const d of list) {
      const mac = pick(d, "mac", "MAC");
      if (!mac) continue;
      keep.add(mac);
      upsertDevice(d, seq);
    }
    for (const mac of [...S.cards.keys()]) {
      if (!keep.has(mac) && (S.applied.get(mac) || 0) < seq) { S.cards.get(mac).remove(); S.cards.delete(mac); S.devices.delete(mac); }
    }
    renderCounts();
  }
  // refreshDevice reloads one device soon, coalescing bursts of events.
  function refreshDevice(mac) {
    if (!mac) { loadDevices(); return; }
    if (S.pendingDevice.has(mac)) return;
    S.pendingDevice.set(mac, setTimeout(async () => {
      S.pendingDevice.delete(mac);
      const seq = ++S.seq;
      try {
        upsertDevice(await api("GET", "/api/v1/devices/" + encodeURIComponent(mac)), seq);
        renderCounts();
      } catch (e) {
        if (e.status === 404) loadDevices();
      }
    }, 120));
  }
  // upsertDevice shows a device answer unless a newer one is already shown
  // (answers can arrive out of order).
  function upsertDevice(d, seq) {
    const mac = pick(d, "mac", "MAC");
    if (!mac) return;
    if (seq !== undefined) {
      if ((S.applied.get(mac) || 0) > seq) return;
      S.applied.set(mac, seq);
    }
    // An image picked on the card and not yet stored wins over any
    // answer: Deploy must name what the technician sees.
    if (S.pendingImage.has(mac)) d.image = S.pendingImage.get(mac).image;
    // List answers carry no log tail: keep the one already shown for this action.
    const prev = S.devices.get(mac);
    const pa = currentAction(prev), na = currentAction(d);
    if (pa && na && pa.id === na.id && pa.log && !na.log) na.log = pa.log;
    S.devices.set(mac, d);
    let card = S.cards.get(mac);
    if (!card) {
      card = $("#device-card").content.firstElementChild.cloneNode(true);
      card.dataset.mac = mac;
      card.setAttribute("data-testid", "device-card");
      card.setAttribute("aria-label", "Device " + mac);
      const id = "dev-" + mac.replace(/[^0-9a-zA-Z]/g, "");
      card.querySelector("[data-role=image]").id = id + "-image";
      card.querySelector("[data-role=image-label]").setAttribute("for", id + "-image");
      for (const b of card.querySelectorAll("button[data-act]")) {
        b.addEventListener("click", () => onDeviceButton(mac, b.dataset.act, b));
      }
      card.querySelector("[data-role=image]").addEventListener("change", ev => onAssignImage(mac, ev.target));
      insertSorted(card, mac);
      S.cards.set(mac, card);
    }
    renderDevice(card, d);
  }
  // Slots: each board gets the next number when it first appears and keeps
  // it while the page is open; cards are in slot order.
  function slotOf(mac) {
    if (!S.slots.has(mac)) S.slots.set(mac, S.slots.size + 1);
    return S.slots.get(mac);
  }
  function insertSorted(card, mac) {
    const grid = $("#device-grid");
    const n = slotOf(mac);
    const after = [...grid.children].find(c => slotOf(c.dataset.mac) > n);
    grid.insertBefore(card, after || null);
  }
  // setDensity: "compact" fits 16 boards on a 1366x768 screen; it is chosen
  // by itself above six boards unless the technician picked one.
  function setDensity(d, chosen) {
    if (chosen) { S.density = d; try { localStorage.setItem("cm4bench.density", d); } catch { /* private mode */ } }
    const use = S.density || (S.devices.size > 6 ? "compact" : "detailed");
    $("#device-grid").dataset.density = use;
    $("#density-compact").setAttribute("aria-pressed", String(use === "compact"));
    $("#density-detailed").setAttribute("aria-pressed", String(use === "detailed"));
  }
  function currentAction(d) { return pick(d, "action", "Action") || null; }
  function deviceState(d) {
    const st = pick(d, "state", "State") || "idle";
    return st;
  }
  function renderDevice(card, d) {
    if (!card || !d) return;
    const mac = pick(d, "mac", "MAC");
    const facts = pick(d, "facts", "Facts") || {};
    const st = deviceState(d);
    const act = currentAction(d);
    const actType = pick(act, "type", "Type", "action") || "";
    const actState = pick(act, "state", "State") || "";
    card.dataset.state = st;
    const set = (f, v) => { card.querySelector(`[data-field=${f}]`).textContent = v || "–"; };
    set("mac", mac);
    const serialText = pick(d, "serial", "Serial") || pick(facts, "serial");
    set("serial", serialText);
    set("slot", String(slotOf(mac)));
    card.querySelector("[data-field=serial-big]").textContent = serialText ? "serial " + serialText : "";
    set("ip", pick(d, "ip", "IP"));
    set("model", shortModel(pick(facts, "model")));
    set("emmc", fmtBytes(pick(facts, "emmc_bytes")));
    set("secure", secureWords(pick(facts, "signed_boot")));
    let word = STATE_WORDS[st] || st;
    if (st === "running" && actType === "deploy") word = "Deploying";
    if (st === "running" && actType === "backup") word = "Backing up";
    const stEl = card.querySelector("[data-field=state]");
    stEl.textContent = word;
    stEl.dataset.icon = STATE_ICONS[st] || "";
    stEl.setAttribute("aria-label", "State: " + word);
    card.setAttribute("aria-label", "Slot " + slotOf(mac) + ", device " + mac + ", " + word);

    const imgSel = card.querySelector("[data-role=image]");
    if (document.activeElement !== imgSel) renderDeviceImage(card, d);

    // Progress: the live stream wins over the stored action while it is newer.
    const actID = pick(act, "id", "ID");
    let lv = S.live.get(mac);
    if (lv && actID && lv.actionId && lv.actionId !== actID) { S.live.delete(mac); lv = null; }
    const prog = {
      phase: pick(act, "phase", "Phase") || "",
      done: Number(pick(act, "done", "Done") || 0),
      total: Number(pick(act, "total", "Total") || 0),
      rate: Number(pick(act, "rate", "rate_bps", "Rate") || 0),
    };
    if (lv && (actState === "running" || actState === "pending" || !actState) && lv.done >= prog.done) {
      Object.assign(prog, { phase: lv.phase || prog.phase, done: lv.done, total: lv.total || prog.total, rate: lv.rate });
    }
    renderProgress(card, d, act, prog);

    const netboot = pick(d, "netboot", "Netboot");
    const nbOn = netboot !== false;
    const seen = pick(d, "last_seen", "LastSeen") ? " · seen " + ago(pick(d, "last_seen", "LastSeen")) : "";
    const benchOff = S.status && S.status.netboot === false;
    card.querySelector("[data-field=netboot]").textContent = (nbOn
      ? (benchOff ? "Netboot on, but off for the bench" : "Netboot on")
      : "Netboot off: boots from eMMC") + seen;
    const busy = st === "pending" || st === "running" || actState === "pending" || actState === "running";
    card.querySelector("[data-act=deploy]").disabled = busy || S.lost;
    card.querySelector("[data-act=backup]").disabled = busy || S.lost;
    card.querySelector("[data-act=netboot]").disabled = S.lost;
    card.querySelector("[data-act=identify]").disabled = busy || S.lost;
    card.querySelector("[data-act=identify]").setAttribute("aria-label", "Identify " + mac + ": blink its activity LED");
    card.querySelector("[data-act=cancel]").disabled = S.lost;
    const power = card.querySelector("[data-act=power]");
    power.hidden = !(S.status && S.status.power_control);
    power.disabled = S.lost;
    power.setAttribute("aria-label", "Power-cycle " + mac);
    // A finished deploy is not an invitation to flash again.
    card.querySelector("[data-act=deploy]").classList.toggle("primary", st !== "done");
    // A queued job on a board that does not poll: it booted its eMMC.
    const hint = card.querySelector("[data-field=hint]");
    const why = queuedHint(d, act, actState);
    hint.hidden = !why;
    hint.textContent = why;
    card.querySelector("[data-act=cancel]").hidden = !busy;
    renderRule(card, d, busy);
    // A finished recipe deploy whose recipe has a label: print it again, or look at it.
    const rcpName = act && pick(act, "recipe");
    const hasLabel = !!(rcpName && actState === "done" && (S.recipes || []).some(r => r.name === rcpName && r.label));
    const lb = card.querySelector("[data-act=label]"), lp = card.querySelector("[data-field=label-preview]");
    lb.hidden = lp.hidden = !hasLabel;
    if (hasLabel) {
      lb.setAttribute("aria-label", "Print the label of " + mac);
      lb.disabled = S.lost;
      lp.href = "api/v1/actions/" + encodeURIComponent(pick(act, "id", "ID")) + "/label.png";
    }
    const nbBtn = card.querySelector("[data-act=netboot]");
    nbBtn.textContent = nbOn ? "Disable netboot" : "Enable netboot";
    nbBtn.setAttribute("aria-label", (nbOn ? "Disable netboot for " : "Enable netboot for ") + mac);
    card.querySelector("[data-act=deploy]").setAttribute("aria-label", "Deploy " + mac);
    card.querySelector("[data-act=backup]").setAttribute("aria-label", "Backup " + mac);
    card.querySelector("[data-act=cancel]").setAttribute("aria-label", "Cancel action on " + mac);
  }
  // renderRule says which rule matched the board and why, and offers an
  // ask rule's recipe as a button.
  function renderRule(card, d, busy) {
    const box = card.querySelector("[data-testid=device-rule]");
    const m = pick(d, "match");
    const act = currentAction(d);
    const recipe = act && pick(act, "recipe");
    const ask = card.querySelector("[data-act=ask]");
    if (!m && !recipe) { box.hidden = true; return; }
    box.hidden = false;
    let line = "", why = (m && m.why) || "";
    if (recipe && (busy || deviceState(d) === "done")) {
      line = "Recipe " + recipe + " v" + pick(act, "recipe_version") + (pick(act, "rule") ? " (rule " + pick(act, "rule") + ")" : " (started by hand)");
      why = "";
    } else if (m && m.rule) {
      line = "Rule " + m.rule + " → " + m.recipe + (m.version ? " v" + m.version : "") + " · " + m.mode;
    } else {
      line = "No rule matches: waits for a technician.";
      why = "";
    }
    box.dataset.kind = m && m.rule ? m.mode : "none";
    card.querySelector("[data-field=rule]").textContent = line;
    card.querySelector("[data-field=rule-why]").textContent = why ? "(" + why + ")" : "";
    const offer = !!(m && m.rule && (m.mode === "ask" || !(S.status && S.status.armed)) && !busy && deviceState(d) !== "done");
    ask.hidden = !offer;
    if (offer) {
      ask.textContent = "Start " + m.recipe + (m.version ? " v" + m.version : "");
      ask.setAttribute("aria-label", "Start recipe " + m.recipe + " on " + pick(d, "mac"));
      ask.disabled = S.lost;
    }
  }
  // queuedHint: the server marks a queued job whose board missed two polls.
  function queuedHint(d, act, actState) {
    if (actState !== "pending" || !pick(d, "not_polling")) return "";
    return "Not network-booted now: " + (S.status && S.status.power_control ? "press Power-cycle (or reset the board)" : "power-cycle or reset the board") + " so it boots from the network and picks the job up.";
  }
  function shortModel(m) {
    if (!m) return "";
    return String(m).replace(/^Raspberry Pi /, "").replace(/Compute Module /, "CM").replace(/ Rev /, " rev ");
  }
  function renderDeviceImage(card, d) {
    if (!d) return;
    renderImageSelect(card.querySelector("[data-role=image]"), pick(d, "image", "Image") || "");
  }
  function renderProgress(card, d, act, p) {
    const st = deviceState(d);
    const actType = pick(act, "type", "Type", "action") || "";
    const actState = pick(act, "state", "State") || "";
    const bar = card.querySelector(".bar");
    const fill = bar.querySelector(".fill");
    const set = (f, v) => { card.querySelector(`[data-field=${f}]`).textContent = v || ""; };
    let pct = p.total > 0 ? Math.min(100, (p.done / p.total) * 100) : 0;
    const finished = actState === "done" || (st === "done" && actState !== "failed");
    if (finished) pct = 100;
    const img = pick(act, "image", "Image");
    const rcp = act && pick(act, "recipe");
    set("action", act ? (actType === "deploy" ? (rcp ? "Deploy recipe " + rcp + " v" + pick(act, "recipe_version") : "Deploy" + (img ? " " + img : "")) : actType === "backup" ? "Backup" : actType) : "");
    let phase = "";
    if (act) {
      if (actState === "pending") phase = "· waiting for the device to pick it up";
      else if (actState === "running") phase = "· " + (PHASES[p.phase] || p.phase || "starting");
      else if (actState === "done") phase = "· finished";
      else if (actState === "failed") phase = "· failed" + (p.phase ? " while " + (PHASES[p.phase] || p.phase) : "");
      else if (actState === "cancelled") phase = "· cancelled";
    } else {
      phase = "No action yet: ready for Deploy or Backup";
    }
    set("phase", phase);
    card.querySelector(".activity").toggleAttribute("data-idle", !act);
    renderSteps(card.querySelector(".steps"), act ? actType : "", actState || st, p.phase, !!(act && (pick(act, "files") || []).length));
    fill.style.width = pct.toFixed(1) + "%";
    bar.setAttribute("aria-valuenow", String(Math.floor(pct)));
    bar.setAttribute("aria-label", "Progress of " + pick(d, "mac", "MAC"));
    set("pct", act && (p.total > 0 || finished) ? Math.floor(pct) + "%" : "–");
    const remaining = p.total - p.done;
    if (actState === "running" || (!actState && st === "running")) {
      set("bytes", p.total ? fmtBytes(p.done) + " of " + fmtBytes(p.total) : fmtBytes(p.done));
      set("rate", fmtRate(p.rate));
      set("eta", p.rate > 0 && p.total > 0 && remaining > 0 ? "ETA " + fmtDuration(Math.max(1, remaining / p.rate)) : "");
      const t0 = toDate(pick(act, "started", "Started"));
      const secs = t0 ? (Date.now() - t0.getTime()) / 1000 : 0;
      set("avg", secs >= 2 && p.done > 0 ? "avg " + fmtRate(p.done / secs) : "");
      bar.setAttribute("aria-valuetext", Math.floor(pct) + "%" + (p.rate > 0 ? ", " + fmtRate(p.rate) : ""));
    } else if (finished) {
      const bytes = Number(pick(act, "bytes", "Bytes") || p.total || 0);
      const t0 = toDate(pick(act, "started", "Started")), t1 = toDate(pick(act, "finished", "Finished"));
      const secs = t0 && t1 ? (t1 - t0) / 1000 : NaN;
      set("bytes", bytes ? fmtBytes(bytes) : "");
      set("rate", secs > 0 && bytes ? "avg " + fmtRate(bytes / secs) : "");
      set("eta", secs >= 0 ? "took " + fmtDuration(secs) : "");
      set("avg", "");
      bar.setAttribute("aria-valuetext", "done");
    } else {
      set("bytes", p.total && act ? fmtBytes(p.done) + " of " + fmtBytes(p.total) : "");
      set("rate", "");
      set("eta", "");
      set("avg", "");
      bar.setAttribute("aria-valuetext", actState || st);
    }
    const ver = card.querySelector("[data-field=verified]");
    const sha = String(pick(act, "sha256", "SHA256") || "");
    if (finished && actType === "deploy" && sha) {
      ver.textContent = "Written and verified (sha256 " + sha.slice(0, 12) + "…), netboot off: it boots from eMMC. You can unplug it.";
      ver.hidden = false;
    } else if (finished && actType === "backup" && sha) {
      ver.textContent = "Backup stored and verified (sha256 " + sha.slice(0, 12) + "…). ";
      const bid = pick(act, "backup_id", "BackupID");
      if (bid) {
        ver.append(el("a", { href: "/api/v1/backups/" + encodeURIComponent(bid) + "/download", "data-testid": "device-backup-download",
          download: "" }, "Download it"));
      }
      ver.hidden = false;
    } else {
      ver.hidden = true;
    }
    const errEl = card.querySelector("[data-field=error]");
    const err = pick(act, "error", "Error");
    const showErr = err && (actState === "failed" || st === "failed");
    errEl.hidden = !showErr;
    errEl.textContent = showErr ? plainError(err, act) : "";
    // The agent's log tail (GET /devices/:mac carries it) helps with a failure.
    const lines = pick(act, "log", "Log");
    const logBox = card.querySelector("[data-testid=device-log]");
    const hasLog = Array.isArray(lines) && lines.length > 0 && (actState === "failed" || st === "failed");
    logBox.hidden = !hasLog;
    if (hasLog) logBox.querySelector("pre").textContent = lines.slice(-12).join("\n");
  }
  // renderSteps shows where an action is: queued, then the agent's phases
  // (deploy: write, verify; backup: upload), then done.
  const STEP_WORDS = { queued: "Queued", write: "Write", verify: "Verify", customise: "Customise", upload: "Upload", done: "Done" };
  function renderSteps(ol, type, state, phase, customise) {
    const steps = type === "deploy" ? (customise ? ["queued", "write", "verify", "customise", "done"] : ["queued", "write", "verify", "done"])
      : type === "backup" ? ["queued", "upload", "done"] : [];
    let cur = 0;
    if (state === "done") cur = steps.length; // every step passed
    else if (state === "running" || state === "failed") cur = Math.max(1, steps.indexOf(phase));
    const key = steps.join() + "|" + cur + "|" + state;
    if (ol.dataset.key === key) return;
    ol.dataset.key = key;
    ol.textContent = "";
    steps.forEach((name, i) => {
      const li = el("li", { "data-step": name }, STEP_WORDS[name] || name);
      if (i < cur || (state === "done" && i === steps.length - 1)) li.className = "done";
      else if (i === cur) {
        li.className = state === "failed" ? "failed" : state === "cancelled" ? "cancelled" : "current";
        li.setAttribute("aria-current", "step");
      }
      ol.append(li);
    });
  }
  // plainError turns an agent or server error into words a technician can act on.
  function plainError(err, act) {
    const e = String(err);
    const rules = [
      [/no space|ENOSPC|disk full/i, "The server ran out of disk space while storing the backup."],
      [/does not fit|too (large|big)|larger than/i, "The image does not fit on this module's eMMC."],
      [/sha256|checksum|hash mismatch|verify/i, "Verification failed: what was written does not match the image."],
      [/no (emmc|mmc|block device)|mmcblk0.*(not found|no such)/i, "No eMMC found on this module (a Lite module needs an SD card)."],
      [/timed? ?out|deadline/i, "The device stopped responding (timed out)."],
      [/connection (reset|refused)|broken pipe|unexpected EOF|EOF/i, "The network transfer was cut off."],
      [/cancel/i, "The action was cancelled."],
    ];
    for (const [re, words] of rules) if (re.test(e)) return words + " (" + e + ")";
    return e;
  }
  // imageTooBig says why an image cannot go to a board, before the
  // technician confirms: its raw size against the eMMC the agent reported.
  function imageTooBig(name, d) {
    const im = S.images.find(i => pick(i, "name", "Name") === name);
    const size = Number(pick(im, "size", "Size") || 0);
    const emmc = Number(pick(pick(d, "facts", "Facts") || {}, "emmc_bytes") || 0);
    if (!size || !emmc || size <= emmc) return "";
    return name + " is " + fmtBytes(size) + ", this board's eMMC holds " + fmtBytes(emmc) + ". Choose a smaller image.";
  }
  function renderCounts() {
    const c = $("#counts");
    c.textContent = "";
    const n = {};
    for (const d of S.devices.values()) { const s = deviceState(d); n[s] = (n[s] || 0) + 1; }
    const order = ["running", "pending", "failed", "done", "idle", "offline"];
    let rate = 0;
    for (const d of S.devices.values()) {
      const a = currentAction(d);
      if (a && pick(a, "state", "State") === "running") rate += Number(pick(a, "rate", "rate_bps", "Rate") || 0);
    }
    if (rate > 0) c.append(el("span", { class: "count total", "data-testid": "bench-rate", title: "Sum of the running transfers" }, fmtRate(rate) + " total"));
    c.append(el("span", { class: "count total" }, S.devices.size + (S.devices.size === 1 ? " device" : " devices")));
    for (const s of order) {
      if (n[s]) c.append(el("span", { class: "count " + s, "data-testid": "count-" + s }, n[s] + " " + (STATE_WORDS[s] || s).toLowerCase()));
    }
    $("#no-devices").hidden = S.devices.size > 0;
    setDensity();
    const ready = readyMACs().length;
    const all = $("#deploy-all");
    all.disabled = ready === 0;
    all.textContent = ready ? "Deploy all ready (" + ready + ")" : "Deploy all ready";
  }
  // readyMACs lists the devices that are netbooted and waiting for work.
  function readyMACs() {
    return [...S.devices.values()].filter(d => deviceState(d) === "idle").map(d => pick(d, "mac", "MAC")).sort();
  }
  async function onDeployAll() {
    const every = readyMACs();
    const skipped = every.filter(m => imageTooBig(pick(S.devices.get(m), "image", "Image") || defaultImageName(), S.devices.get(m)));
    if (skipped.length) showError("Left out " + skipped.join(", "), "", "The image is larger than their eMMC.");
    const macs = every.filter(m => !skipped.includes(m));
    if (!macs.length) return;
    const shown = defaultImageName() || "the bench default image";
    const assigned = macs.filter(m => pick(S.devices.get(m), "image", "Image")).length;
    if (!(await confirmDialog("Deploy to " + macs.length + (macs.length === 1 ? " device?" : " devices?"),
      "This overwrites the eMMC of " + macs.join(", ") + " with " + shown +
      (assigned ? " (or the board's own image, where it has one)" : "") + ".", "Deploy and overwrite all"))) return;
    const btn = $("#deploy-all");
    btn.disabled = true;
    try {
      const body = { macs, action: "deploy" };
      const acts = (await api("POST", "/api/v1/actions", body)) || [];
      for (const a of acts) noteAction(pick(a, "mac", "MAC"), a);
      if (acts.length < macs.length) showError("Only " + acts.length + " of " + macs.length + " deploys were queued", "", "Look at the boards left idle and try them one by one.");
    } catch (e) {
      showError("Could not request the deploys", e);
      loadDevices();
    } finally {
      renderCounts();
    }
  }

  async function onDeviceButton(mac, act, btn) {
    const d = S.devices.get(mac) || {};
    const serial = pick(d, "serial", "Serial") || pick(pick(d, "facts") || {}, "serial");
    const who = mac + (serial ? " (serial " + serial + ")" : "");
    try {
      if (act === "deploy") {
        const img = pick(d, "image", "Image") || "";
        const shown = img || defaultImageName() || "the bench default image";
        const tooBig = imageTooBig(img || defaultImageName(), d);
        if (tooBig) {
          showError("Cannot deploy to " + mac, "", tooBig);
          return;
        }
        if (!(await confirmDialog("Deploy to " + mac + "?",
          "This writes " + shown + " to " + who + " and overwrites everything on its eMMC.", "Deploy and overwrite"))) return;
        const body = { action: "deploy" };
        if (img) body.image = img;
        btn.disabled = true;
        noteAction(mac, await api("POST", "/api/v1/devices/" + encodeURIComponent(mac) + "/action", body));
      } else if (act === "backup") {
        btn.disabled = true;
        noteAction(mac, await api("POST", "/api/v1/devices/" + encodeURIComponent(mac) + "/action", { action: "backup" }));
      } else if (act === "identify") {
        btn.disabled = true;
        noteAction(mac, await api("POST", "/api/v1/devices/" + encodeURIComponent(mac) + "/action", { action: "identify" }));
      } else if (act === "ask") {
        const m = pick(d, "match") || {};
        if (!(await confirmDialog("Start " + m.recipe + " on " + mac + "?",
          "This writes recipe " + m.recipe + " v" + m.version + " to " + who + ", overwriting its eMMC, and gives it its own values from the recipe's pools.", "Start and overwrite"))) return;
        btn.disabled = true;
        noteAction(mac, await api("POST", "/api/v1/devices/" + encodeURIComponent(mac) + "/action", { action: "deploy", recipe: m.recipe, rule: m.rule }));
      } else if (act === "label") {
        btn.disabled = true;
        const a = currentAction(d);
        try {
          await api("POST", "/api/v1/actions/" + encodeURIComponent(pick(a, "id", "ID")) + "/label/print");
          btn.textContent = "Printed ✓";
          setTimeout(() => { btn.textContent = "Print label"; }, 4000);
        } catch (e) {
          showError("The label for " + mac + " did not print", e, "The board itself is provisioned. Check the printer (power, paper, cable) and press Print label again.");
        }
      } else if (act === "power") {
        const running = deviceState(d) === "running";
        if (running && !(await confirmDialog("Power-cycle " + mac + " now?",
          "It is working on a job: cutting its power stops it, and the job fails or starts again.", "Power-cycle"))) return;
        btn.disabled = true;
        await api("POST", "/api/v1/devices/" + encodeURIComponent(mac) + "/power-cycle");
        // Say it worked on the button itself for a few seconds; the card
        // follows the board as it boots again.
        btn.textContent = "Power-cycled ✓";
        btn.dataset.done = "1";
        setTimeout(() => { btn.textContent = "Power-cycle"; delete btn.dataset.done; }, 4000);
      } else if (act === "cancel") {
        btn.disabled = true;
        noteAction(mac, await api("POST", "/api/v1/devices/" + encodeURIComponent(mac) + "/action", { action: "none" }));
      } else if (act === "netboot") {
        const on = pick(d, "netboot", "Netboot") === false;
        btn.disabled = true;
        await api("PUT", "/api/v1/devices/" + encodeURIComponent(mac) + "/netboot", { enabled: on });
        refreshDevice(mac);
      }
    } catch (e) {
      const verb = { deploy: "request a deploy", backup: "request a backup", identify: "blink the LED", power: "power-cycle the board", ask: "start the recipe", cancel: "cancel the job", netboot: "switch netboot" }[act] || act;
      showError("Could not " + verb + " for " + mac, e);
      refreshDevice(mac);
    } finally {
      btn.disabled = false;
      const cur = S.devices.get(mac);
      if (cur) renderDevice(S.cards.get(mac), cur);
    }
  }
  // noteAction shows a just-created action at once; the stream confirms it.
  function noteAction(mac, action) {
    const d = S.devices.get(mac);
    if (d && action && typeof action === "object" && !Array.isArray(action)) {
      S.applied.set(mac, ++S.seq); // answers to requests sent before this one are stale
      d.action = action;
      const st = pick(action, "state", "State");
      if (st === "pending" || st === "running") d.state = st;
      else if (st === "cancelled") d.state = "idle";
      S.live.delete(mac);
      renderDevice(S.cards.get(mac), d);
      renderCounts();
    }
    refreshDevice(mac);
  }
  // onAssignImage stores the image picked on a card. The pick counts at
  // once (Deploy right after it names the picked image): while the PUT is
  // in flight every device answer shows it, and answers requested before
  // the PUT landed, which still carry the old image, are then dropped.
  async function onAssignImage(mac, sel) {
    const image = sel.value;
    const mine = { image }; // this pick, told apart from a later one by identity
    S.pendingImage.set(mac, mine);
    const d = S.devices.get(mac);
    if (d) d.image = image;
    let failed;
    try {
      await api("PUT", "/api/v1/devices/" + encodeURIComponent(mac) + "/image", { image });
    } catch (e) {
      failed = e;
    }
    if (S.pendingImage.get(mac) !== mine) return; // a later pick is in flight and settles it
    S.pendingImage.delete(mac);
    if (failed) {
      showError("Could not assign the image to " + mac, failed);
      refreshDevice(mac);
      return;
    }
    S.applied.set(mac, ++S.seq);
    const cur = S.devices.get(mac);
    if (cur) {
      cur.image = image;
      renderDevice(S.cards.get(mac), cur);
    }
  }

  // secureWords says what the bootloader's chosen/bootloader/signed bits
  // mean: 0x8 the customer key is in OTP (locked for good), 0x1 a signed
  // config only (can still be flashed back).
  function secureWords(bits) {
    if (typeof bits !== "number") return "";
    if (bits & 0x8) return "Locked to the customer key";
    if (bits & 0x1) return "Signed config, not locked";
    return "Off";
  }

  // ---------- confirm dialog ----------
  let confirmSeq = 0;
  function confirmDialog(title, text, okLabel) {
    const dlg = $("#confirm");
    $("#confirm-title").textContent = title;
    $("#confirm-text").textContent = text;
    $("#confirm-ok").textContent = okLabel || "OK";
    dlg.returnValue = "";
    const my = ++confirmSeq;
    return new Promise(resolve => {
      const onClose = () => {
        // The close event of the dialog's previous use can still be queued
        // when it is opened again (Escape, then a quick click on Deploy):
        // it is no answer to this question while the dialog is open.
        if (dlg.open && my === confirmSeq) return;
        dlg.removeEventListener("close", onClose);
        resolve(my === confirmSeq && dlg.returnValue === "ok");
      };
      dlg.addEventListener("close", onClose);
      if (!dlg.open) dlg.showModal();
      $("[data-testid=confirm-cancel]").focus(); // the safe choice has focus
    });
  }

  // ---------- backups ----------
  async function loadBackups() {
    try {
      S.backups = (await api("GET", "/api/v1/backups")) || [];
    } catch (e) {
      if (e.status !== 401) showError("Could not list backups", e);
      return;
    }
    const rows = $("#backup-rows");
    rows.textContent = "";
    const list = [...S.backups].sort((a, b) =>
      String(pick(b, "created", "Created") || "").localeCompare(String(pick(a, "created", "Created") || "")));
    for (const b of list) {
      const id = pick(b, "id", "ID");
      const mac = pick(b, "mac", "MAC") || "";
      const serial = pick(b, "serial", "Serial");
      const tr = el("tr", { "data-testid": "backup-row", "data-id": String(id) });
      const dev = el("td");
      dev.append(el("div", { class: "mono" }, mac));
      if (serial) dev.append(el("div", { class: "muted" }, "serial " + serial));
      tr.append(dev);
      tr.append(el("td", { class: "nowrap" }, fmtDateTime(pick(b, "created", "Created"))));
      const size = fmtBytes(pick(b, "size", "Size"));
      const stored = pick(b, "stored_size", "StoredSize");
      const comp = pick(b, "compressed", "Compressed");
      const sizeTd = el("td", { class: "nowrap" }, size);
      if (comp && stored) sizeTd.append(el("div", { class: "muted" }, "zstd " + fmtBytes(stored)));
      tr.append(sizeTd);
      const sha = String(pick(b, "sha256", "SHA256") || "");
      tr.append(el("td", { class: "mono", title: sha }, sha ? sha.slice(0, 10) + "…" : ""));
      const actions = el("td", { class: "actions" });
      const name = pick(b, "name", "Name") || ("backup-" + mac.replace(/:/g, "") + ".img");
      const a = el("a", {
        class: "btn", href: "/api/v1/backups/" + encodeURIComponent(id) + "/download", download: name,
        "aria-label": "Download backup of " + mac + " taken " + fmtDateTime(pick(b, "created", "Created")),
        "data-testid": "backup-download",
      }, "Download");
      const del = el("button", {
        type: "button", class: "btn quiet", "data-testid": "backup-delete",
        "aria-label": "Delete backup of " + mac + " taken " + fmtDateTime(pick(b, "created", "Created")),
      }, "Delete");
      del.addEventListener("click", async () => {
        if (!(await confirmDialog("Delete this backup?", "The backup of " + mac + " taken " +
          fmtDateTime(pick(b, "created", "Created")) + " (" + size + ") is removed from the server for good.", "Delete"))) return;
        try {
          await api("DELETE", "/api/v1/backups/" + encodeURIComponent(id));
          await loadBackups();
        } catch (e) {
          showError("Could not delete the backup", e);
        }
      });
      actions.append(a, " ", del);
      tr.append(actions);
      rows.append(tr);
    }
    $("#backups").hidden = list.length === 0;
    $("#no-backups").hidden = list.length !== 0;
  }

  // ---------- events ----------
  async function loadHistory() {
    try {
      const evs = (await api("GET", "/api/v1/events?limit=100")) || [];
      evs.sort((a, b) => (a.id || 0) - (b.id || 0));
      for (const e of evs) handleEvent(e, true);
    } catch { /* the stream still works */ }
  }
  // catchUp fetches the events after id from the history (those the stream
  // did not deliver, e.g. of a kind this page has no listener for).
  async function catchUp(from) {
    try {
      const evs = (await api("GET", "/api/v1/events?since=" + from + "&limit=500")) || [];
      evs.sort((a, b) => (a.id || 0) - (b.id || 0));
      for (const e of evs) handleEvent(e, false);
    } catch { /* the periodic refresh still brings the devices up to date */ }
  }
  function setLive(state, text) {
    const l = $("#live");
    l.dataset.state = state;
    l.textContent = text;
  }
  function connect() {
    if (S.es) S.es.close();
    // since= makes the server replay what happened after the last event shown.
    const es = new EventSource("/api/events" + (S.lastId ? "?since=" + S.lastId : ""), { withCredentials: true });
    S.es = es;
    setLive("connecting", "Connecting…");
    const onEv = m => {
      let e;
      try { e = JSON.parse(m.data); } catch { return; }
      if (!e || typeof e !== "object") return;
      if (!e.id && m.lastEventId) e.id = Number(m.lastEventId);
      if (!e.kind && m.type !== "message") e.kind = m.type;
      handleEvent(e, false);
    };
    for (const k of KINDS) es.addEventListener(k, onEv);
    es.onopen = () => {
      S.retry = 0;
      setLive("live", "Live");
    };
    es.onerror = () => {
      if (S.es !== es) return;
      if (es.readyState === EventSource.CLOSED) {
        // The browser gave up (e.g. 401 or a non-stream answer): find out why, then retry.
        setLive("reconnecting", "Reconnecting…");
        es.close();
        S.es = null;
        const wait = Math.min(30000, 1000 * 2 ** S.retry++);
        setTimeout(async () => {
          if (!S.loggedIn) return;
          try { await api("GET", "/api/v1/status"); } catch (e) { if (e.status === 401) return; }
          if (S.loggedIn && !S.es) connect();
        }, wait);
      } else {
        setLive("reconnecting", "Reconnecting…"); // the browser retries with Last-Event-ID
      }
    };
  }
  function handleEvent(e, history) {
    const id = Number(e.id || 0);
    if (id) {
      if (S.seen.has(id)) return;
      S.seen.add(id);
      if (S.seen.size > 5000) S.seen = new Set([...S.seen].slice(-2500));
      if (!history && S.lastId && id > S.lastId + 1) { const from = S.lastId; setTimeout(() => catchUp(from), 0); }
      if (id > S.lastId) S.lastId = id;
    }
    const kind = String(e.kind || "");
    const mac = e.mac || "";
    const f = e.fields || {};
    if (!QUIET_KINDS.has(kind)) logEvent(e);
    if (history) {
      if (kind === "dhcp.rival" && toDate(e.time) && Date.now() - toDate(e.time) < 120000) showRival(e.message || "", 120000);
      return;
    }
    if (kind === "action.progress") {
      applyProgress(mac, f);
    } else if (kind.startsWith("device.") || kind.startsWith("action.")) {
      refreshDevice(mac);
      if (kind === "action.done" || kind === "action.failed") { setTimeout(loadBackups, 300); setTimeout(loadRecords, 1000); }
    } else if (kind === "netboot.set") {
      if (mac) refreshDevice(mac);
      else if (typeof f.enabled === "boolean") setSwitch(f.enabled);
      else api("GET", "/api/v1/status").then(applyStatus, () => {});
    } else if (kind.startsWith("backup.")) {
      loadBackups();
    } else if (kind.startsWith("image.")) {
      loadImages();
    } else if (kind === "armed.set") {
      if (typeof f.armed === "boolean") setArmed(f.armed);
      loadDevices();
    } else if (kind === "recipe.applied" || kind === "rules.set") {
      loadLine();
      loadDevices();
    } else if (kind === "rule.matched") {
      refreshDevice(mac);
    } else if (kind === "dhcp.rival") {
      showRival(e.message || "A second DHCP server answered on the bench network.", 120000);
    }
  }
  function applyProgress(mac, f) {
    if (!mac) return;
    const p = {
      actionId: f.action_id || f.actionId || "",
      phase: f.phase || "",
      done: Number(f.done || 0),
      total: Number(f.total || 0),
      rate: Number(f.rate || f.rate_bps || 0),
      at: Date.now(),
    };
    S.live.set(mac, p);
    const d = S.devices.get(mac);
    const card = S.cards.get(mac);
    if (!d || !card) { refreshDevice(mac); return; }
    const act = currentAction(d);
    if (act) {
      const actID = pick(act, "id", "ID");
      if (p.actionId && actID && p.actionId !== actID) { refreshDevice(mac); return; }
      if (pick(act, "state", "State") === "pending") { act.state = "running"; d.state = "running"; }
      act.phase = p.phase; act.done = p.done; act.total = p.total; act.rate = p.rate; act.rate_bps = p.rate;
    } else {
      refreshDevice(mac);
      return;
    }
    renderDevice(card, d);
    renderCounts();
  }
  // Routine events (size probes, "not found" answers of the firmware's file
  // search, offers, transfers, progress) show only with "All events";
  // warnings and errors always show.
  const ROUTINE = new Set(["tftp.probe", "tftp.notfound", "tftp.transfer", "dhcp.offer", "dhcp.ack", "dhcp.release", "action.progress", "device.log"]);
  function important(li) {
    return li.dataset.level === "warn" || li.dataset.level === "error" || !ROUTINE.has(li.dataset.kind);
  }
  function filterLog() {
    for (const li of $("#log").children) li.hidden = !S.logAll && !important(li);
  }
  function logEvent(e) {
    const log = $("#log");
    const li = el("li", { "data-level": e.level || "info", "data-kind": e.kind || "" });
    li.hidden = !S.logAll && !important(li);
    li.append(el("time", { datetime: e.time || "" }, fmtTime(e.time)));
    li.append(el("span", { class: "kind" }, e.kind || ""));
    const msg = el("span", { class: "msg" }, (e.mac ? e.mac + " " : "") + (e.message || ""));
    li.append(msg);
    // Newest first, kept in id order when history arrives late.
    const id = Number(e.id || 0);
    li.dataset.id = String(id);
    let before = null;
    if (id) before = [...log.children].find(c => Number(c.dataset.id) < id) || null;
    else before = log.firstChild;
    log.insertBefore(li, before);
    while (log.children.length > LOG_MAX) log.lastChild.remove();
  }

  // ---------- wiring ----------
  document.addEventListener("DOMContentLoaded", () => {
    $("#login-form").addEventListener("submit", onLogin);
    $("#logout").addEventListener("click", onLogout);
    $("#netboot-switch").addEventListener("click", onSwitch);
    $("#armed-switch").addEventListener("click", onArmed);
    $("#yaml-editor").addEventListener("submit", onEditorSave);
    $("#yaml-cancel").addEventListener("click", () => { $("#yaml-editor").hidden = true; });
    $("#rules-edit").addEventListener("click", onRulesEdit);
    $("#recipe-new").addEventListener("click", onRecipeNew);
    $("#webhook-form").addEventListener("submit", onWebhookAdd);
    $("#deploy-all").addEventListener("click", onDeployAll);
    $("#image-file").addEventListener("change", onUpload);
    // Keep the "seen … ago" notes fresh without a reload.
    setInterval(() => { for (const [mac, d] of S.devices) renderDevice(S.cards.get(mac), d); }, 30000);
    $("#density-compact").addEventListener("click", () => setDensity("compact", true));
    $("#density-detailed").addEventListener("click", () => setDensity("detailed", true));
    $("#log-all").addEventListener("change", () => { S.logAll = $("#log-all").checked; filterLog(); });
    loginFromLink().then(start, () => {});
  });
})();
