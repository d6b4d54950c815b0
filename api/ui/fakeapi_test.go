package ui_test

// TEMPORARY: a small in-test stand-in for the technician and device API, used
// only until the real api server can be started in-process. It is replaced by
// the real server before the browser test is final.

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/cm4bench/cm4bench/api/ui"
	"github.com/cm4bench/cm4bench/api/wire"
)

type fakeAPI struct {
	token   string
	mu      sync.Mutex
	devices map[string]*wire.Device
	events  []wire.Event
	subs    map[chan wire.Event]bool
	netboot bool
	backups []wire.Backup
	nextAct int
}

func startBench(t *testing.T) (url, token string) {
	f := &fakeAPI{token: "s3cret-token", devices: map[string]*wire.Device{}, subs: map[chan wire.Event]bool{}, netboot: true}
	mux := http.NewServeMux()
	auth := func(h http.HandlerFunc) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			c, err := r.Cookie(wire.CookieSession)
			if (err != nil || c.Value != f.token) && r.Header.Get("Authorization") != "Bearer "+f.token {
				w.WriteHeader(401)
				json.NewEncoder(w).Encode(wire.APIError{Error: "not logged in"})
				return
			}
			h(w, r)
		}
	}
	js := func(w http.ResponseWriter, v any) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(v)
	}
	mux.HandleFunc("POST /api/v1/login", func(w http.ResponseWriter, r *http.Request) {
		var req wire.LoginRequest
		json.NewDecoder(r.Body).Decode(&req)
		if req.Token != f.token {
			w.WriteHeader(401)
			js(w, wire.APIError{Error: "wrong token"})
			return
		}
		http.SetCookie(w, &http.Cookie{Name: wire.CookieSession, Value: f.token, Path: "/", HttpOnly: true})
		js(w, map[string]bool{"ok": true})
	})
	mux.HandleFunc("GET /api/v1/status", auth(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		js(w, wire.Status{Version: "dev", Addresses: []string{"http://127.0.0.1"}, Netboot: f.netboot, DefaultImage: "golden.img"})
	}))
	mux.HandleFunc("GET /api/v1/images", auth(func(w http.ResponseWriter, r *http.Request) {
		js(w, []wire.Image{{Name: "golden.img", Format: "raw", Size: 2 << 30, Default: true}, {Name: "test.img.zst", Format: "zst", Size: 1 << 30}})
	}))
	mux.HandleFunc("GET /api/v1/backups", auth(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		js(w, append([]wire.Backup{}, f.backups...))
	}))
	mux.HandleFunc("GET /api/v1/devices", auth(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		out := []wire.Device{}
		for _, d := range f.devices {
			out = append(out, *d)
		}
		js(w, out)
	}))
	mux.HandleFunc("GET /api/v1/devices/{mac}", auth(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		d := f.devices[r.PathValue("mac")]
		if d == nil {
			w.WriteHeader(404)
			return
		}
		js(w, d)
	}))
	mux.HandleFunc("PUT /api/v1/netboot", auth(func(w http.ResponseWriter, r *http.Request) {
		var req wire.NetbootSwitch
		json.NewDecoder(r.Body).Decode(&req)
		f.mu.Lock()
		f.netboot = req.Enabled
		f.mu.Unlock()
		f.emit(wire.Event{Kind: "netboot.set", Message: "global netboot", Fields: map[string]any{"enabled": req.Enabled}})
		js(w, req)
	}))
	mux.HandleFunc("POST /api/v1/devices/{mac}/action", auth(func(w http.ResponseWriter, r *http.Request) {
		var req wire.SetActionRequest
		json.NewDecoder(r.Body).Decode(&req)
		f.mu.Lock()
		d := f.devices[r.PathValue("mac")]
		f.nextAct++
		a := &wire.Action{ID: strconv.Itoa(f.nextAct), MAC: d.MAC, Type: req.Action, Image: req.Image, State: "pending", Created: time.Now()}
		if a.Image == "" && req.Action == "deploy" {
			a.Image = "golden.img"
		}
		d.Action = a
		d.State = "pending"
		f.mu.Unlock()
		f.emit(wire.Event{Kind: "action.set", MAC: d.MAC, Message: req.Action + " queued"})
		js(w, a)
	}))
	mux.HandleFunc("GET /api/v1/events", auth(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		js(w, append([]wire.Event{}, f.events...))
	}))
	mux.HandleFunc("GET /api/events", auth(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		ch := make(chan wire.Event, 100)
		f.mu.Lock()
		f.subs[ch] = true
		f.mu.Unlock()
		defer func() { f.mu.Lock(); delete(f.subs, ch); f.mu.Unlock() }()
		w.(http.Flusher).Flush()
		for {
			select {
			case <-r.Context().Done():
				return
			case e := <-ch:
				b, _ := json.Marshal(e)
				fmt.Fprintf(w, "id: %d\nevent: %s\ndata: %s\n\n", e.ID, e.Kind, b)
				w.(http.Flusher).Flush()
			}
		}
	}))
	mux.HandleFunc("POST "+wire.PathRegister, func(w http.ResponseWriter, r *http.Request) {
		var req wire.RegisterRequest
		json.NewDecoder(r.Body).Decode(&req)
		f.mu.Lock()
		d := &wire.Device{MAC: req.MAC, IP: req.IP, Facts: req.Facts, State: "idle", Netboot: true, FirstSeen: time.Now(), LastSeen: time.Now()}
		if req.Facts != nil {
			d.Serial = req.Facts.Serial
		}
		f.devices[req.MAC] = d
		f.mu.Unlock()
		f.emit(wire.Event{Kind: "device.register", MAC: req.MAC, Message: "registered from " + req.IP})
		js(w, wire.RegisterResponse{Status: "registered", MAC: req.MAC, PollInterval: 1})
	})
	mux.HandleFunc("GET "+wire.PathPoll, func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		d := f.devices[r.URL.Query().Get("mac")]
		resp := wire.PollResponse{Action: "none"}
		if d.Action != nil && d.Action.State == "pending" {
			d.Action.State = "running"
			d.State = "running"
			now := time.Now()
			d.Action.Started = &now
			resp = wire.PollResponse{Action: d.Action.Type, ActionID: d.Action.ID, Token: "tok"}
		}
		f.mu.Unlock()
		js(w, resp)
	})
	mux.HandleFunc("POST "+wire.PathProgress, func(w http.ResponseWriter, r *http.Request) {
		var p wire.Progress
		json.NewDecoder(r.Body).Decode(&p)
		f.mu.Lock()
		d := f.devices[p.MAC]
		d.Action.Phase, d.Action.Done, d.Action.Total, d.Action.Rate = p.Phase, p.Done, p.Total, p.Rate
		f.mu.Unlock()
		f.emit(wire.Event{Kind: "action.progress", MAC: p.MAC, Fields: map[string]any{"action_id": p.ActionID, "phase": p.Phase, "done": p.Done, "total": p.Total, "rate": p.Rate}})
	})
	mux.HandleFunc("POST "+wire.PathActionDone, func(w http.ResponseWriter, r *http.Request) {
		var p wire.ActionDone
		json.NewDecoder(r.Body).Decode(&p)
		f.mu.Lock()
		d := f.devices[p.MAC]
		now := time.Now()
		d.Action.Finished = &now
		kind := "action.done"
		if p.Status == "failed" {
			d.Action.State, d.State, d.Action.Error = "failed", "failed", p.Error
			kind = "action.failed"
		} else {
			d.Action.State, d.State, d.Netboot = "done", "done", false
			d.Action.Bytes = p.Bytes
			if d.Action.Type == "backup" {
				f.backups = append(f.backups, wire.Backup{ID: d.Action.ID, MAC: d.MAC, Serial: d.Serial, Created: now, Size: p.Bytes, StoredSize: p.Bytes / 3, Compressed: true, SHA256: p.SHA256, Name: "backup.img.zst"})
			}
		}
		f.mu.Unlock()
		f.emit(wire.Event{Kind: kind, MAC: p.MAC, Message: "action finished " + p.Status + " " + p.Error})
		if d.Action.Type == "backup" && kind == "action.done" {
			f.emit(wire.Event{Kind: "backup.stored", MAC: p.MAC, Message: "backup stored"})
		}
	})
	mux.Handle("/", ui.Handler())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return "http://" + ln.Addr().String(), f.token
}

func (f *fakeAPI) emit(e wire.Event) {
	f.mu.Lock()
	defer f.mu.Unlock()
	e.ID = int64(len(f.events) + 1)
	e.Time = time.Now()
	f.events = append(f.events, e)
	for ch := range f.subs {
		select {
		case ch <- e:
		default:
		}
	}
	_ = slices.Clone(f.events)
}
