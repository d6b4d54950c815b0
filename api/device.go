package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"github.com/cm4bench/cm4bench/api/store"
	"github.com/cm4bench/cm4bench/internal/contract"
	"github.com/gin-gonic/gin"
)

// emit appends an event and logs (never fails the request on) an error.
func (s *Server) emit(ctx context.Context, ev contract.Event) {
	if _, err := s.Store.Emit(context.WithoutCancel(ctx), ev); err != nil {
		s.log().Error("recording event", "kind", ev.Kind, "err", err)
	}
}

func (s *Server) handleRegister(c *gin.Context) error {
	req, mac, ip, err := parseRegister(c.Request, s.maxJSON())
	if err != nil {
		return err
	}
	if err := s.checkLease(c.Request, mac); err != nil {
		return err
	}
	created, err := s.Store.Register(c.Request.Context(), mac, ip, req.Facts)
	if err != nil {
		return err
	}
	ev := contract.Event{Kind: contract.EventDeviceRegister, MAC: mac, Message: "device registered from " + ip,
		Fields: map[string]any{"ip": ip, "new": created}}
	if f := req.Facts; f != nil {
		ev.Serial = f.Serial
		ev.Fields["facts"] = f
	}
	s.emit(c.Request.Context(), ev)
	// Zero-click: an auto rule starts the board's deploy now, so its first
	// poll picks it up.
	s.autoStart(context.WithoutCancel(c.Request.Context()), mac)
	writeJSON(c.Writer, http.StatusOK, contract.RegisterResponse{Status: "registered", MAC: mac, PollInterval: s.pollInterval().Seconds()})
	return nil
}

// Caps on what a device may store (security item 4).
const (
	maxFactsBytes   = 4 << 10
	maxLogPostLines = 200
	maxLogLineBytes = 1024
)

func isHex(s string) bool {
	for _, r := range s {
		if !strings.ContainsRune("0123456789abcdefABCDEF", r) {
			return false
		}
	}
	return len(s) > 0 && len(s) <= 16
}

func (s *Server) handlePoll(c *gin.Context) error {
	mac, err := parsePoll(c.Request)
	if err != nil {
		return err
	}
	if err := s.checkLease(c.Request, mac); err != nil {
		return err
	}
	ip := remoteIP(c.Request)
	if a, err := s.Store.OpenAction(c.Request.Context(), mac); err == nil && a.PolledIP != "" && a.PolledIP != ip {
		// The token and the streams belong to the address that fetched the
		// action first; another address gets neither, and the board's
		// recorded address does not move.
		return httpErr(http.StatusConflict, "%s %s of %s was fetched from %s, not %s: only that address may carry it out",
			a.Type, a.ID, mac, a.PolledIP, ip)
	}
	if err := s.Store.Touch(c.Request.Context(), mac, ip); errors.Is(err, store.ErrNotFound) {
		return httpErr(http.StatusNotFound, "unknown device %s: register first (POST %s)", mac, contract.PathRegister)
	} else if err != nil {
		return err
	}
	a, err := s.Store.OpenAction(c.Request.Context(), mac)
	if errors.Is(err, store.ErrNotFound) {
		writeJSON(c.Writer, http.StatusOK, contract.PollResponse{Action: contract.ActionNone})
		return nil
	}
	if err != nil {
		return err
	}
	if s.expire(c.Request.Context(), a) != nil {
		writeJSON(c.Writer, http.StatusOK, contract.PollResponse{Action: contract.ActionNone})
		return nil
	}
	resp := contract.PollResponse{Action: a.Type, ActionID: a.ID, Token: a.Token}
	base := baseURL(c.Request)
	q := "?token=" + url.QueryEscape(a.Token)
	switch a.Type {
	case contract.ActionDeploy:
		e, err := s.Images.Info(c.Request.Context(), a.Image)
		if err != nil {
			// The technician picked an image that is gone or unreadable:
			// fail the action now, with the reason, rather than hand the
			// device a URL that cannot work.
			s.failAction(c.Request.Context(), a, fmt.Sprintf("image %q is not usable: %v", a.Image, err))
			writeJSON(c.Writer, http.StatusOK, contract.PollResponse{Action: contract.ActionNone})
			return nil
		}
		if a.Recipe != "" {
			r, err := s.Store.Recipe(c.Request.Context(), a.Recipe, a.RecipeVersion)
			if err == nil && r.SHA256 != e.SHA256 {
				err = fmt.Errorf("image %s is now sha256 %s, not the %s recipe %s v%d pinned", a.Image, e.SHA256, r.SHA256, r.Name, r.Version)
			}
			if err == nil {
				resp.Customise, err = s.Store.Customisation(c.Request.Context(), a.ID)
			}
			if err != nil {
				s.failAction(c.Request.Context(), a, err.Error())
				writeJSON(c.Writer, http.StatusOK, contract.PollResponse{Action: contract.ActionNone})
				return nil
			}
		}
		resp.URL = base + contract.PathImage + "/" + a.ID + q
		resp.Image = &contract.ImageInfo{Name: e.Name, Format: e.Format, Size: e.Size, SHA256: e.SHA256, CompressedSize: e.CompressedSize}
	case contract.ActionBackup:
		resp.UploadURL = base + contract.PathBackup + "/" + a.ID + q
	}
	first := a.State == contract.StatePending
	if a, err = s.Store.MarkPolled(c.Request.Context(), a.ID, ip); errors.Is(err, store.ErrConflict) {
		return httpErr(http.StatusConflict, "%s", err.Error())
	} else if err != nil {
		return err
	}
	if first {
		s.emit(c.Request.Context(), contract.Event{Kind: contract.EventActionProgress, MAC: mac, Message: a.Type + " fetched by the device",
			Fields: map[string]any{"action_id": a.ID, "phase": "polled", "done": 0, "total": a.Total, "rate": 0.0}})
	}
	writeJSON(c.Writer, http.StatusOK, resp)
	return nil
}

// checkLease refuses a request from an address the DHCP server leased to
// another MAC and, with RequireLease, from an address it leased to nobody.
// knownDevice checks that the request comes from mac's lease (checkLease)
// and that the server knows the device: the ground rule of the device
// endpoints after register.
func (s *Server) knownDevice(r *http.Request, mac string) error {
	if err := s.checkLease(r, mac); err != nil {
		return err
	}
	if _, err := s.Store.Device(r.Context(), mac); errors.Is(err, store.ErrNotFound) {
		return httpErr(http.StatusNotFound, "unknown device %s", mac)
	} else if err != nil {
		return err
	}
	return nil
}

func (s *Server) checkLease(r *http.Request, mac string) error {
	if s.MACForIP == nil {
		return nil
	}
	addr, err := netip.ParseAddr(remoteIP(r))
	if err != nil {
		if s.RequireLease {
			return httpErr(http.StatusForbidden, "cannot tell the address of this request: a device must come from its DHCP lease")
		}
		return nil
	}
	owner, ok := s.MACForIP(addr.Unmap())
	switch {
	case ok && owner.String() != mac:
		return httpErr(http.StatusForbidden, "%s is leased to %s, not %s: a device may act only for itself", addr, owner, mac)
	case !ok && s.RequireLease:
		return httpErr(http.StatusForbidden, "%s has no DHCP lease from this server: device requests must come from the address leased to %s", addr.Unmap(), mac)
	}
	return nil
}

// failAction closes an open action as failed and announces it.
func (s *Server) failAction(ctx context.Context, a store.Action, why string) {
	fa, err := s.Store.Finish(context.WithoutCancel(ctx), a.ID, store.Result{Error: why})
	if err != nil {
		if !errors.Is(err, store.ErrConflict) {
			s.log().Error("failing action", "action", a.ID, "err", err)
		}
		return
	}
	s.metrics.actionFinished(fa.Action)
	s.emit(ctx, contract.Event{Kind: contract.EventActionFailed, Level: contract.LevelError, MAC: a.MAC, Message: a.Type + " failed: " + why,
		Fields: map[string]any{"action_id": a.ID, "error": why, "type": a.Type}})
}

// deviceAction finds the open action a device request refers to and checks
// that this device may act on it: by token when one is sent, otherwise by
// the IP that polled the action (the shell client sends no token).
func (s *Server) deviceAction(ctx context.Context, r *http.Request, mac, id, token string) (store.Action, error) {
	var a store.Action
	var err error
	if id != "" {
		a, err = s.Store.ActionByID(ctx, id)
		if errors.Is(err, store.ErrNotFound) {
			return a, httpErr(http.StatusNotFound, "no action %s", id)
		}
	} else {
		a, err = s.Store.OpenAction(ctx, mac)
		if errors.Is(err, store.ErrNotFound) {
			return a, httpErr(http.StatusConflict, "no open action for %s", mac)
		}
	}
	if err != nil {
		return a, err
	}
	if a.MAC != mac {
		return a, httpErr(http.StatusForbidden, "action %s belongs to another device", a.ID)
	}
	if token != "" && !tokenEqual(token, a.Token) {
		return a, httpErr(http.StatusForbidden, "wrong token for action %s", a.ID)
	}
	if a.State != contract.StatePending && a.State != contract.StateRunning {
		return a, httpErr(http.StatusGone, "action %s is %s; its token has expired", a.ID, a.State)
	}
	if err := s.expire(ctx, a); err != nil {
		return a, err
	}
	if token == "" {
		if a.PolledIP == "" {
			return a, httpErr(http.StatusConflict, "action %s was never fetched by the device", a.ID)
		}
		if ip := remoteIP(r); ip != a.PolledIP {
			return a, httpErr(http.StatusForbidden, "action %s was fetched from %s, not %s", a.ID, a.PolledIP, ip)
		}
	}
	return a, nil
}

func successStatus(s string) (ok bool, known bool) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "", contract.StatusSuccess, "ok", "done", "0", "true":
		return true, true
	case contract.StatusFailed, "fail", "failure", "error":
		return false, true
	}
	return false, false
}

func (s *Server) handleActionDone(c *gin.Context) error {
	req, mac, err := parseActionDone(c.Request, s.maxJSON())
	if err != nil {
		return err
	}
	if err := s.knownDevice(c.Request, mac); err != nil {
		return err
	}
	a, err := s.deviceAction(c.Request.Context(), c.Request, mac, req.ActionID, req.Token)
	if err != nil {
		if repeatedDone(a, mac, req) {
			writeJSON(c.Writer, http.StatusOK, a.Action)
			return nil
		}
		return err
	}
	if req.Action != "" && req.Action != a.Type {
		return httpErr(http.StatusConflict, "action-done says %q but the open action %s is a %s", req.Action, a.ID, a.Type)
	}
	ok, known := successStatus(req.Status)
	res := store.Result{OK: ok, SHA256: strings.ToLower(req.SHA256), Bytes: req.Bytes,
		CompressedSHA256: strings.ToLower(req.CompressedSHA256), CompressedBytes: req.CompressedBytes, Phases: req.Phases}
	switch {
	case !known:
		res.OK, res.Error = false, fmt.Sprintf("device reported status %q", req.Status)
	case !ok:
		res.Error = req.Error
		if res.Error == "" {
			res.Error = "device reported failure"
		}
	}
	if res.OK {
		res.Error = s.checkDone(c.Request.Context(), a, req)
		res.OK = res.Error == ""
	}
	fa, err := s.Store.Finish(c.Request.Context(), a.ID, res)
	if err != nil {
		return err
	}
	s.cov.remove(a.ID)
	s.metrics.actionFinished(fa.Action)
	s.autoPrint(fa.Action)
	if res.OK {
		s.emit(c.Request.Context(), contract.Event{Kind: contract.EventActionDone, MAC: mac, Message: a.Type + " done",
			Fields: map[string]any{"action_id": a.ID, "type": a.Type, "sha256": fa.SHA256, "bytes": fa.Bytes}})
		if contract.EMMCAction(a.Type) {
			s.emit(c.Request.Context(), contract.Event{Kind: contract.EventNetbootSet, MAC: mac, Message: "netboot switched off after a successful " + a.Type,
				Fields: map[string]any{"enabled": false}})
		}
	} else {
		s.emit(c.Request.Context(), contract.Event{Kind: contract.EventActionFailed, Level: contract.LevelError, MAC: mac, Message: a.Type + " failed: " + res.Error,
			Fields: map[string]any{"action_id": a.ID, "type": a.Type, "error": res.Error}})
	}
	writeJSON(c.Writer, http.StatusOK, fa.Action)
	return nil
}

// repeatedDone recognises an agent sending the same result again: the
// first report was recorded, but the answer was lost (the server was
// killed or the link cut before it replied), so the agent retried. a is the
// action deviceAction found (and refused as finished). With the action's
// own token and the result it already holds (success with the same
// sha256, or failure), the repeat gets the recorded action instead of 410,
// so the board goes on (reboots) instead of waiting for a job that is
// finished. Anything else keeps deviceAction's answer.
func repeatedDone(a store.Action, mac string, req contract.ActionDone) bool {
	if req.Token == "" || req.ActionID == "" || a.ID != req.ActionID || a.MAC != mac || !tokenEqual(req.Token, a.Token) {
		return false
	}
	ok, known := successStatus(req.Status)
	switch {
	case !known:
		return false
	case ok && a.State == contract.StateDone:
		return req.SHA256 == "" || strings.EqualFold(req.SHA256, a.SHA256)
	case !ok && a.State == contract.StateFailed:
		return true
	}
	return false
}

// checkDone decides whether a reported success really is one; it returns
// the reason it is not, or "".
func (s *Server) checkDone(ctx context.Context, a store.Action, req contract.ActionDone) string {
	switch a.Type {
	case contract.ActionBackup:
		if a.BackupID == "" {
			return "backup upload did not complete"
		}
		if req.SHA256 != "" && !strings.EqualFold(req.SHA256, a.SHA256) {
			return fmt.Sprintf("device read sha256 %s but the server stored %s", strings.ToLower(req.SHA256), a.SHA256)
		}
	case contract.ActionDeploy:
		e, err := s.Images.Info(ctx, a.Image)
		if err != nil {
			return fmt.Sprintf("image %q is no longer readable: %v", a.Image, err)
		}
		if req.SHA256 != "" && !strings.EqualFold(req.SHA256, e.SHA256) {
			return fmt.Sprintf("device wrote sha256 %s but image %s is %s", strings.ToLower(req.SHA256), a.Image, e.SHA256)
		}
		if msg := checkFiles(a, req); msg != "" {
			return msg
		}
		// Success needs proof: the server itself streamed the whole image
		// to this action (every client; the shell client's curl | dd stream
		// is exactly that proof).
		if !a.Served {
			s.cov.settle(a.ID, 5*time.Second)
			done, got, err := s.cov.complete(a.ID, e.Size, e.CompressedSize)
			if err != nil || !done {
				return fmt.Sprintf("the server has streamed %d of the image's %d bytes to this board: a deploy is done only after the whole image went out", got, e.Size)
			}
		}
	}
	return ""
}

func (s *Server) handleProgress(c *gin.Context) error {
	p, mac, err := parseProgress(c.Request, s.maxJSON())
	if err != nil {
		return err
	}
	if err := s.checkLease(c.Request, mac); err != nil {
		return err
	}
	a, err := s.deviceAction(c.Request.Context(), c.Request, mac, p.ActionID, p.Token)
	if err != nil {
		return err
	}
	if err := s.Store.Progress(c.Request.Context(), a.ID, p.Phase, p.Done, p.Total, p.Rate); err != nil {
		return err
	}
	s.emit(c.Request.Context(), contract.Event{Kind: contract.EventActionProgress, MAC: mac, Message: p.Phase,
		Fields: map[string]any{"action_id": a.ID, "phase": p.Phase, "done": p.Done, "total": p.Total, "rate": p.Rate}})
	writeJSON(c.Writer, http.StatusOK, map[string]string{"status": "ok"})
	return nil
}

func (s *Server) handleLog(c *gin.Context) error {
	l, mac, err := parseLog(c.Request, s.maxJSON())
	if err != nil {
		return err
	}
	if err := s.knownDevice(c.Request, mac); err != nil {
		return err
	}
	ev := contract.Event{Kind: contract.EventDeviceLog, MAC: mac, Message: l.Lines[len(l.Lines)-1], Fields: map[string]any{"lines": l.Lines}}
	if l.ActionID != "" {
		a, err := s.deviceAction(c.Request.Context(), c.Request, mac, l.ActionID, l.Token)
		if err != nil {
			return err
		}
		if err := s.Store.AppendLog(c.Request.Context(), a.ID, l.Lines); err != nil {
			return err
		}
		ev.Fields["action_id"] = a.ID
	}
	s.emit(c.Request.Context(), ev)
	writeJSON(c.Writer, http.StatusOK, map[string]string{"status": "ok"})
	return nil
}

// checkFiles: a recipe deploy succeeds only if the board read back every
// per-device file with the hash the server rendered, and reported the
// image's hash too.
func checkFiles(a store.Action, req contract.ActionDone) string {
	if a.Recipe == "" {
		return ""
	}
	if req.SHA256 == "" {
		return "the board reported no image sha256: a recipe deploy needs the agent"
	}
	got := map[string]string{}
	for _, f := range req.Files {
		got[f.Path] = strings.ToLower(f.SHA256)
	}
	for _, f := range a.Files {
		switch h, ok := got[f.Path]; {
		case !ok:
			return fmt.Sprintf("the board did not report per-device file %s: customisation not verified", f.Path)
		case h != f.SHA256:
			return fmt.Sprintf("per-device file %s read back as sha256 %s, the server rendered %s", f.Path, h, f.SHA256)
		}
	}
	if len(got) != len(a.Files) {
		return fmt.Sprintf("the board reported %d per-device files, the recipe rendered %d", len(got), len(a.Files))
	}
	return ""
}
