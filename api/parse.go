package api

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"

	"github.com/cm4bench/cm4bench/internal/contract"
)

// The device routes' request parsing, apart from what the requests do, so
// each is fuzzed on its own (api/parse_test.go). Each returns a plain
// 4xx error for bad input and never panics.

// parseRegister reads a register request (JSON or form, as the shell
// client sends it): the normalised MAC and the address to record.
func parseRegister(r *http.Request, max int64) (req contract.RegisterRequest, mac, ip string, err error) {
	if err = decodeFlexible(r, max, &req, map[string]*string{"mac": &req.MAC, "ip": &req.IP}); err != nil {
		return
	}
	if mac, err = normMAC(req.MAC); err != nil {
		return
	}
	ip = strings.TrimSpace(req.IP)
	if ip == "" {
		ip = remoteIP(r)
	} else if net.ParseIP(ip) == nil {
		err = httpErr(http.StatusBadRequest, "malformed ip %q", req.IP)
		return
	}
	if f := req.Facts; f != nil && f.Serial != "" && !isHex(f.Serial) {
		err = httpErr(http.StatusBadRequest, "malformed serial %q: want hex digits", f.Serial)
		return
	}
	if req.Facts != nil {
		if b, _ := json.Marshal(req.Facts); len(b) > maxFactsBytes {
			err = httpErr(http.StatusRequestEntityTooLarge, "facts of %d bytes: at most %d are stored per device", len(b), maxFactsBytes)
		}
	}
	return
}

// parsePoll reads the MAC of a poll.
func parsePoll(r *http.Request) (string, error) {
	return normMAC(r.URL.Query().Get("mac"))
}

// parseActionDone reads an action-done report (JSON or form).
func parseActionDone(r *http.Request, max int64) (req contract.ActionDone, mac string, err error) {
	var bytesStr, cbytesStr, secsStr string
	fields := map[string]*string{"mac": &req.MAC, "action": &req.Action, "status": &req.Status, "sha256": &req.SHA256,
		"action_id": &req.ActionID, "token": &req.Token, "error": &req.Error, "compressed_sha256": &req.CompressedSHA256,
		"bytes": &bytesStr, "compressed_bytes": &cbytesStr, "seconds": &secsStr}
	if err = decodeFlexible(r, max, &req, fields); err != nil {
		return
	}
	if bytesStr != "" {
		fmt.Sscan(bytesStr, &req.Bytes)
	}
	if cbytesStr != "" {
		fmt.Sscan(cbytesStr, &req.CompressedBytes)
	}
	if req.Bytes < 0 || req.CompressedBytes < 0 {
		err = httpErr(http.StatusBadRequest, "negative byte counts")
		return
	}
	if p := req.Phases; p != nil {
		for _, v := range []float64{p.Netboot, p.Register, p.Write, p.Verify, p.Customise, p.Total} {
			if v < 0 || v > 1e7 || v != v {
				err = httpErr(http.StatusBadRequest, "phase seconds out of range")
				return
			}
		}
	}
	if len(req.Files) > 64 {
		err = httpErr(http.StatusBadRequest, "%d files reported, at most 64", len(req.Files))
		return
	}
	mac, err = normMAC(req.MAC)
	return
}

// decodeStrictJSON decodes one JSON object of at most max bytes.
func decodeStrictJSON(r *http.Request, max int64, dst any) error {
	body, err := readBody(r, max)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		return httpErr(http.StatusBadRequest, "malformed JSON body: %v", err)
	}
	return nil
}

// parseProgress reads a progress report.
func parseProgress(r *http.Request, max int64) (p contract.Progress, mac string, err error) {
	if err = decodeStrictJSON(r, max, &p); err != nil {
		return
	}
	if mac, err = normMAC(p.MAC); err != nil {
		return
	}
	if p.Token == "" || p.ActionID == "" {
		err = httpErr(http.StatusBadRequest, "progress needs action_id and token")
		return
	}
	if p.Done < 0 || p.Total < 0 || p.Rate < 0 || len(p.Phase) > 64 {
		err = httpErr(http.StatusBadRequest, "progress values out of range")
	}
	return
}

// parseLog reads posted log lines, capped (long lines are cut).
func parseLog(r *http.Request, max int64) (l contract.LogLines, mac string, err error) {
	if err = decodeStrictJSON(r, max, &l); err != nil {
		return
	}
	if mac, err = normMAC(l.MAC); err != nil {
		return
	}
	switch {
	case len(l.Lines) == 0:
		err = httpErr(http.StatusBadRequest, "no log lines")
		return
	case len(l.Lines) > maxLogPostLines:
		err = httpErr(http.StatusRequestEntityTooLarge, "%d log lines in one post: at most %d", len(l.Lines), maxLogPostLines)
		return
	}
	for i, line := range l.Lines {
		if len(line) > maxLogLineBytes {
			l.Lines[i] = line[:maxLogLineBytes] + "…"
		}
	}
	return
}

// parseStream reads an image or backup stream request: the action id from
// the path and its token (a Range is parsed once the image size is known).
func parseStream(r *http.Request) (id, token string, err error) {
	id, token = r.PathValue("id"), r.URL.Query().Get("token")
	if id == "" || strings.Trim(id, "0123456789") != "" || len(id) > 19 {
		err = httpErr(http.StatusNotFound, "no action %q", id)
		return
	}
	if token == "" || len(token) > 128 {
		err = httpErr(http.StatusForbidden, "wrong or missing token for action %s", id)
	}
	return
}
