package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/cm4bench/cm4bench/api/store"
	"github.com/cm4bench/cm4bench/internal/contract"
	"github.com/gin-gonic/gin"
)

func (s *Server) handleStatus(c *gin.Context) error {
	devs, err := s.Store.Devices(c)
	if err != nil {
		return err
	}
	counts := map[string]int{}
	for _, d := range devs {
		counts[d.State]++
	}
	imgs, err := s.Images.List(c)
	if err != nil {
		return err
	}
	nb, err := s.Store.BackupCount(c)
	if err != nil {
		return err
	}
	def, err := s.defaultImage(c)
	if err != nil {
		return err
	}
	armed, err := s.Store.Armed(c)
	if err != nil {
		return err
	}
	rules, err := s.Store.Rules(c)
	if err != nil {
		return err
	}
	recipes, err := s.Store.Recipes(c)
	if err != nil {
		return err
	}
	st := contract.Status{Armed: armed, Rules: len(rules.Rules), Recipes: len(recipes), PowerControl: s.Power != nil, Version: s.Version, Addresses: s.addresses(), Netboot: s.Store.GlobalNetboot(),
		DefaultImage: def, Devices: counts, Images: len(imgs), Backups: nb, Started: s.started}
	if s.Rivals != nil {
		st.RivalDHCP = s.Rivals()
	}
	writeJSON(c.Writer, http.StatusOK, st)
	return nil
}

func (s *Server) handleDevices(c *gin.Context) error {
	devs, err := s.Store.Devices(c)
	if err != nil {
		return err
	}
	lv, err := s.lineView(c)
	if err != nil {
		return err
	}
	for i := range devs {
		stripAction(devs[i].Action)
		s.markNotPolling(&devs[i])
		lv.match(&devs[i])
	}
	writeJSON(c.Writer, http.StatusOK, devs)
	return nil
}

// markNotPolling sets d.NotPolling: its job has waited two poll intervals
// and the board has not polled in that time.
func (s *Server) markNotPolling(d *contract.Device) {
	a, two := d.Action, 2*s.pollInterval()
	d.NotPolling = a != nil && a.State == contract.StatePending && time.Since(a.Created) > two && time.Since(d.LastSeen) > two
}

// stripAction drops the log tail from list views (GET /devices/:mac and
// /actions keep it).
func stripAction(a *contract.Action) {
	if a != nil {
		a.Log = nil
	}
}

// device finds a board by MAC or, for the technician's convenience, by
// the serial number printed on its label (contract.LooksLikeSerial).
func (s *Server) device(ctx context.Context, macParam string) (contract.Device, error) {
	mac, err := normMAC(macParam)
	if err != nil && contract.LooksLikeSerial(macParam) {
		return s.deviceBySerial(ctx, macParam)
	}
	if err != nil {
		return contract.Device{}, err
	}
	d, err := s.Store.Device(ctx, mac)
	if errors.Is(err, store.ErrNotFound) {
		return d, httpErr(http.StatusNotFound, "unknown device %s", mac)
	}
	return d, err
}

// deviceBySerial finds the one board with this serial.
func (s *Server) deviceBySerial(ctx context.Context, serial string) (contract.Device, error) {
	devs, err := s.Store.Devices(ctx)
	if err != nil {
		return contract.Device{}, err
	}
	var found []contract.Device
	for _, d := range devs {
		if d.Serial != "" && strings.EqualFold(strings.TrimLeft(d.Serial, "0"), strings.TrimLeft(serial, "0")) {
			found = append(found, d)
		}
	}
	switch len(found) {
	case 0:
		return contract.Device{}, httpErr(http.StatusNotFound, "no board with serial %s has registered", serial)
	case 1:
		return found[0], nil
	}
	return contract.Device{}, httpErr(http.StatusConflict, "%d boards report serial %s: name one by MAC", len(found), serial)
}

func (s *Server) handleDevice(c *gin.Context) error {
	d, err := s.device(c.Request.Context(), c.Param("mac"))
	if err != nil {
		return err
	}
	acts, err := s.Store.Actions(c.Request.Context(), d.MAC, 20)
	if err != nil {
		return err
	}
	d.Actions = make([]contract.Action, len(acts))
	for i, a := range acts {
		d.Actions[i] = a.Action
	}
	s.markNotPolling(&d)
	lv, err := s.lineView(c)
	if err != nil {
		return err
	}
	lv.match(&d)
	writeJSON(c.Writer, http.StatusOK, d)
	return nil
}

// setAction gives one device an action, or cancels its open one ("none").
// A new action switches the device's netboot back on, since it has to
// netboot to run it.
func (s *Server) setAction(ctx context.Context, macParam, typ, image string) (contract.Action, error) {
	d, err := s.device(ctx, macParam)
	if err != nil {
		return contract.Action{}, err
	}
	switch typ {
	case contract.ActionNone:
		a, err := s.Store.CancelAction(ctx, d.MAC)
		if errors.Is(err, store.ErrNotFound) {
			return contract.Action{}, httpErr(http.StatusConflict, "%s has no open action to cancel", d.MAC)
		}
		if err != nil {
			return contract.Action{}, err
		}
		s.emit(ctx, contract.Event{Kind: contract.EventActionSet, MAC: d.MAC, Message: a.Type + " cancelled",
			Fields: map[string]any{"action_id": a.ID, "type": a.Type, "state": a.State}})
		return a.Action, nil
	case contract.ActionDeploy:
		if image == "" {
			image = d.Image
		}
		if image == "" {
			if image, err = s.defaultImage(ctx); err != nil {
				return contract.Action{}, err
			}
		}
		if image == "" {
			return contract.Action{}, httpErr(http.StatusBadRequest, "no image for %s: name one, assign one to the device, or start the server with --image", d.MAC)
		}
		e, err := s.Images.Stat(ctx, image)
		if err != nil {
			return contract.Action{}, err
		}
		// Refuse what cannot fit before the board is asked, not after.
		if d.Facts != nil && d.Facts.EMMCBytes > 0 && e.Size > d.Facts.EMMCBytes {
			return contract.Action{}, httpErr(http.StatusUnprocessableEntity,
				"%s is %d bytes and the eMMC of %s holds %d: choose a smaller image", image, e.Size, d.MAC, d.Facts.EMMCBytes)
		}
	case contract.ActionBackup, contract.ActionIdentify:
		image = ""
	default:
		return contract.Action{}, httpErr(http.StatusBadRequest, "unknown action %q: want deploy, backup, identify or none", typ)
	}
	a, cancelled, err := s.Store.SetAction(ctx, d.MAC, typ, image)
	if err != nil {
		return contract.Action{}, err
	}
	if cancelled != nil {
		s.emit(ctx, contract.Event{Kind: contract.EventActionSet, MAC: d.MAC, Message: cancelled.Type + " cancelled (replaced)",
			Fields: map[string]any{"action_id": cancelled.ID, "type": cancelled.Type, "state": cancelled.State}})
	}
	s.emit(ctx, contract.Event{Kind: contract.EventActionSet, MAC: d.MAC, Message: typ + " requested",
		Fields: map[string]any{"action_id": a.ID, "type": typ, "image": image, "state": a.State}})
	if !d.Netboot && contract.EMMCAction(typ) {
		if err := s.Store.SetDeviceNetboot(ctx, d.MAC, true); err != nil {
			return contract.Action{}, err
		}
		s.emit(ctx, contract.Event{Kind: contract.EventNetbootSet, MAC: d.MAC, Message: "netboot switched on for the new " + typ,
			Fields: map[string]any{"enabled": true}})
	}
	return a.Action, nil
}

// handlePowerCycle cuts and restores one board's power through the bench's
// power command, so a board that booted its eMMC netboots again for a
// queued job.
func (s *Server) handlePowerCycle(c *gin.Context) error {
	ctx := c.Request.Context()
	d, err := s.device(ctx, c.Param("mac"))
	if err != nil {
		return err
	}
	if s.Power == nil {
		return httpErr(http.StatusNotImplemented, "this bench cannot switch board power: start the server with --power-command")
	}
	serial := ""
	if d.Facts != nil {
		serial = d.Facts.Serial
	}
	if err := s.Power.PowerCycle(ctx, d.MAC, serial); err != nil {
		s.emit(ctx, contract.Event{Kind: contract.EventDevicePower, Level: contract.LevelWarn, MAC: d.MAC,
			Message: "power-cycle failed: " + err.Error()})
		return &HTTPError{Code: http.StatusBadGateway, Msg: "the power switch did not power-cycle " + d.MAC + ": " + err.Error(), Err: err}
	}
	s.emit(ctx, contract.Event{Kind: contract.EventDevicePower, MAC: d.MAC, Message: "power-cycled"})
	writeJSON(c.Writer, http.StatusOK, contract.PowerCycled{MAC: d.MAC, Status: "power-cycled"})
	return nil
}

func (s *Server) handleSetAction(c *gin.Context) error {
	var req contract.SetActionRequest
	if err := s.decodeJSON(c.Request, &req); err != nil {
		return err
	}
	if req.Recipe != "" {
		if req.Action != contract.ActionDeploy || req.Image != "" {
			return httpErr(http.StatusBadRequest, "a recipe is deployed with {\"action\":\"deploy\",\"recipe\":NAME} and no image")
		}
		d, err := s.device(c.Request.Context(), c.Param("mac"))
		if err != nil {
			return err
		}
		a, err := s.startRecipe(c.Request.Context(), d.MAC, req.Rule, req.Recipe)
		if err != nil {
			return err
		}
		writeJSON(c.Writer, http.StatusOK, a)
		return nil
	}
	a, err := s.setAction(c.Request.Context(), c.Param("mac"), req.Action, req.Image)
	if err != nil {
		return err
	}
	writeJSON(c.Writer, http.StatusOK, a)
	return nil
}

func (s *Server) handleBulkAction(c *gin.Context) error {
	var req contract.BulkActionRequest
	if err := s.decodeJSON(c.Request, &req); err != nil {
		return err
	}
	if len(req.MACs) == 0 {
		return httpErr(http.StatusBadRequest, "no macs given")
	}
	// Check everything first so that a typo changes nothing.
	for _, m := range req.MACs {
		if _, err := s.device(c.Request.Context(), m); err != nil {
			return err
		}
	}
	out := []contract.Action{}
	var errs []string
	for _, m := range req.MACs {
		a, err := s.setAction(c.Request.Context(), m, req.Action, req.Image)
		if err != nil {
			_, msg := statusOf(err)
			errs = append(errs, m+": "+msg)
			continue
		}
		out = append(out, a)
	}
	if len(errs) > 0 && len(out) == 0 {
		return httpErr(http.StatusConflict, "%s", strings.Join(errs, "; "))
	}
	if len(errs) > 0 {
		c.Header("X-Cm4bench-Partial", strings.Join(errs, "; "))
	}
	writeJSON(c.Writer, http.StatusOK, out)
	return nil
}

func (s *Server) handleSetDeviceImage(c *gin.Context) error {
	var req contract.SetImageRequest
	if err := s.decodeJSON(c.Request, &req); err != nil {
		return err
	}
	d, err := s.device(c.Request.Context(), c.Param("mac"))
	if err != nil {
		return err
	}
	if req.Image != "" {
		if _, err := s.Images.Stat(c.Request.Context(), req.Image); err != nil {
			return err
		}
	}
	if err := s.Store.SetDeviceImage(c.Request.Context(), d.MAC, req.Image); err != nil {
		return err
	}
	s.emit(c.Request.Context(), contract.Event{Kind: contract.EventDeviceImage, MAC: d.MAC, Message: "image assigned: " + orDefault(req.Image),
		Fields: map[string]any{"image": req.Image}})
	d, err = s.Store.Device(c.Request.Context(), d.MAC)
	if err != nil {
		return err
	}
	writeJSON(c.Writer, http.StatusOK, d)
	return nil
}

func orDefault(s string) string {
	if s == "" {
		return "(default)"
	}
	return s
}

func (s *Server) handleSetDeviceNetboot(c *gin.Context) error {
	var req contract.NetbootSwitch
	if err := s.decodeJSON(c.Request, &req); err != nil {
		return err
	}
	mac, err := normMAC(c.Param("mac"))
	if err != nil {
		return err
	}
	// Known or not: a switch may be set before a board first boots.
	if err := s.Store.SetDeviceNetboot(c.Request.Context(), mac, req.Enabled); err != nil {
		return err
	}
	s.emit(c.Request.Context(), contract.Event{Kind: contract.EventNetbootSet, MAC: mac, Message: "netboot " + onOff(req.Enabled) + " by the technician",
		Fields: map[string]any{"enabled": req.Enabled}})
	writeJSON(c.Writer, http.StatusOK, contract.NetbootSwitch{MAC: mac, Enabled: req.Enabled})
	return nil
}

func (s *Server) handleGetDeviceNetboot(c *gin.Context) error {
	d, err := s.device(c.Request.Context(), c.Param("mac"))
	if err != nil {
		return err
	}
	writeJSON(c.Writer, http.StatusOK, contract.NetbootSwitch{MAC: d.MAC, Enabled: d.Netboot})
	return nil
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

func (s *Server) handleGetNetboot(c *gin.Context) error {
	writeJSON(c.Writer, http.StatusOK, contract.NetbootSwitch{Enabled: s.Store.GlobalNetboot()})
	return nil
}

func (s *Server) handleSetNetboot(c *gin.Context) error {
	var req contract.NetbootSwitch
	if err := s.decodeJSON(c.Request, &req); err != nil {
		return err
	}
	if req.MAC != "" {
		return httpErr(http.StatusBadRequest, "the global switch takes no mac; use PUT /api/v1/devices/%s/netboot", req.MAC)
	}
	if err := s.Store.SetGlobalNetboot(c.Request.Context(), req.Enabled); err != nil {
		return err
	}
	s.emit(c.Request.Context(), contract.Event{Kind: contract.EventNetbootSet, Message: "global netboot " + onOff(req.Enabled),
		Fields: map[string]any{"enabled": req.Enabled, "global": true}})
	writeJSON(c.Writer, http.StatusOK, contract.NetbootSwitch{Enabled: req.Enabled})
	return nil
}

func (s *Server) handleBackups(c *gin.Context) error {
	bs, err := s.Store.Backups(c)
	if err != nil {
		return err
	}
	out := make([]contract.Backup, len(bs))
	for i, b := range bs {
		out[i] = b.Backup
	}
	writeJSON(c.Writer, http.StatusOK, out)
	return nil
}

func (s *Server) backup(ctx context.Context, id string) (store.Backup, error) {
	if _, err := strconv.ParseInt(id, 10, 64); err != nil {
		return store.Backup{}, httpErr(http.StatusBadRequest, "malformed backup id %q", id)
	}
	b, err := s.Store.BackupByID(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return b, httpErr(http.StatusNotFound, "no backup %s", id)
	}
	return b, err
}

func (s *Server) handleBackupDownload(c *gin.Context) error {
	b, err := s.backup(c.Request.Context(), c.Param("id"))
	if err != nil {
		return err
	}
	f, err := os.Open(filepath.Join(s.backupDir(), b.File))
	if err != nil {
		return &HTTPError{Code: http.StatusGone, Msg: "backup " + b.ID + " is recorded but its file is missing", Err: err}
	}
	defer f.Close()
	h := c.Writer.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Content-Disposition", `attachment; filename="`+b.File+`"`)
	h.Set("ETag", `"`+b.StoredSHA256+`"`)
	h.Set("X-Cm4bench-Sha256", b.SHA256)
	h.Set("X-Cm4bench-Stored-Sha256", b.StoredSHA256)
	http.ServeContent(c.Writer, c.Request, "", b.Created, f)
	return nil
}

func (s *Server) handleDeleteBackup(c *gin.Context) error {
	b, err := s.backup(c.Request.Context(), c.Param("id"))
	if err != nil {
		return err
	}
	if err := os.Remove(filepath.Join(s.backupDir(), b.File)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return &HTTPError{Code: http.StatusInternalServerError, Msg: "could not delete the backup file: " + publicErr(err), Err: err}
	}
	if err := s.Store.DeleteBackup(c.Request.Context(), b.ID); err != nil {
		return err
	}
	s.emit(c.Request.Context(), contract.Event{Kind: contract.EventBackupRemoved, MAC: b.MAC, Message: "backup " + b.ID + " deleted", Fields: map[string]any{"backup_id": b.ID}})
	writeJSON(c.Writer, http.StatusOK, map[string]string{"status": "deleted", "id": b.ID})
	return nil
}

func queryInt(c *gin.Context, name string, def int64) (int64, error) {
	v := c.Query(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return 0, httpErr(http.StatusBadRequest, "malformed %s=%q: want an integer", name, v)
	}
	return n, nil
}

func (s *Server) handleActions(c *gin.Context) error {
	mac := ""
	if m := c.Query("mac"); m != "" {
		var err error
		if mac, err = normMAC(m); err != nil {
			return err
		}
	}
	limit, err := queryInt(c, "limit", 100)
	if err != nil {
		return err
	}
	acts, err := s.Store.Actions(c.Request.Context(), mac, int(limit))
	if err != nil {
		return err
	}
	out := make([]contract.Action, len(acts))
	for i, a := range acts {
		out[i] = a.Action
	}
	writeJSON(c.Writer, http.StatusOK, out)
	return nil
}

func (s *Server) handleEvents(c *gin.Context) error {
	since, err := queryInt(c, "since", -1)
	if err != nil {
		return err
	}
	limit, err := queryInt(c, "limit", 500)
	if err != nil {
		return err
	}
	evs, err := s.Store.Events(c.Request.Context(), since, int(limit))
	if err != nil {
		return err
	}
	writeJSON(c.Writer, http.StatusOK, evs)
	return nil
}

// sseHeartbeat keeps idle SSE connections (and proxies) alive.
const sseHeartbeat = 15 * time.Second

// handleSSE streams events as text/event-stream. With Last-Event-ID (or
// ?since=) it first replays the log after that ID, so a reconnecting
// dashboard misses nothing.
func (s *Server) handleSSE(c *gin.Context) error {
	since := int64(-1)
	if v := c.GetHeader("Last-Event-ID"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return httpErr(http.StatusBadRequest, "malformed Last-Event-ID %q", v)
		}
		since = n
	} else if v := c.Query("since"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return httpErr(http.StatusBadRequest, "malformed since=%q", v)
		}
		since = n
	}
	ch, cancel := s.Store.Subscribe(1024)
	defer cancel()
	w := c.Writer
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	fmt.Fprint(w, "retry: 2000\n\n")
	last := since
	if since >= 0 {
		for {
			evs, err := s.Store.Events(c.Request.Context(), last, 1000)
			if err != nil {
				return nil // headers are out; the client reconnects
			}
			for _, ev := range evs {
				writeSSE(w, ev)
				last = ev.ID
			}
			if len(evs) < 1000 {
				break
			}
		}
	}
	w.Flush()
	tick := time.NewTicker(sseHeartbeat)
	defer tick.Stop()
	for {
		select {
		case <-c.Request.Context().Done():
			return nil
		case <-tick.C:
			fmt.Fprint(w, ": keepalive\n\n")
			w.Flush()
		case ev, ok := <-ch:
			if !ok {
				return nil // fell behind or server closing: client reconnects with Last-Event-ID
			}
			if ev.ID <= last {
				continue
			}
			writeSSE(w, ev)
			last = ev.ID
			w.Flush()
		}
	}
}

func writeSSE(w gin.ResponseWriter, ev contract.Event) {
	b, _ := json.Marshal(ev)
	fmt.Fprintf(w, "id: %d\nevent: %s\ndata: %s\n\n", ev.ID, ev.Kind, b)
}
