// Package ui is the technician dashboard of cm4bench: plain HTML, CSS and
// JavaScript embedded into the binary (no CDN, no build step, no external
// fonts). The dashboard talks only to the technician API on the same origin
// (/api/v1/...) and follows the live event stream (/api/events, SSE).
//
// The page logs in with the admin token (POST /api/v1/login sets the
// HttpOnly session cookie) and then shows one card per device (MAC, serial,
// IP, model, eMMC size, state, step, progress bar with %, MB/s, average and
// ETA, the last error in plain words with the agent's log tail, and Deploy,
// Backup, Cancel and netboot buttons, Deploy behind a confirmation), the
// global netboot switch, the image for Deploy and a per-device image
// picker, "Deploy all ready", the images (upload with progress, delete),
// the backups (download, delete), a live event log and a banner when a
// rival DHCP server answers. Cards change in place from SSE events; after a
// lost stream the browser reconnects with Last-Event-ID and the server
// replays what was missed. Every control has an accessible name and a
// stable data-testid; the browser tests drive it by those.
//
// The API server mounts it at the root:
//
//	h := ui.Handler()
//	r.NoRoute(gin.WrapH(h)) // or mux.Handle("/", h)
//
// Handler serves "/" as the page and the files under static/ below /ui/
// ("/ui/app.js", "/ui/app.css", "/ui/favicon.svg"), so a server can route
// exactly "/" and "/ui/*" to it and keep every other path for itself. Every
// answer carries a strict Content-Security-Policy that allows only this
// origin, so the page cannot load anything from off the bench.
package ui

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"strings"
	"time"
)

//go:embed static
var static embed.FS

// FS returns the dashboard's files, rooted at the directory holding
// index.html.
func FS() fs.FS {
	sub, err := fs.Sub(static, "static")
	if err != nil { // cannot happen: "static" is embedded above
		panic(fmt.Sprintf("ui: embedded static dir: %v", err))
	}
	return sub
}

// CSP is the Content-Security-Policy sent with every asset: scripts, styles,
// images, fonts and connections (fetch and EventSource) only from the same
// origin; no inline script, no framing, forms post only to the same origin.
const CSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; font-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'self'; " +
	"frame-ancestors 'none'"

type asset struct {
	body  []byte
	ctype string
	etag  string
}

// handler serves the embedded files from memory.
type handler struct {
	files map[string]asset // keyed by URL path, e.g. "/ui/app.js"
}

// Prefix is the URL path under which Handler serves the dashboard's files.
const Prefix = "/ui/"

// Handler returns an http.Handler serving the dashboard. It answers GET and
// HEAD only; "/" is the page, Prefix+name the files in static/ (including
// Prefix+"index.html"). Unknown paths get 404 (JSON for paths under /api/, which are
// the API's and must never fall back to the page). Assets are revalidated
// on every load (Cache-Control: no-cache with a content ETag), so a new
// binary's dashboard is picked up without a hard reload.
func Handler() http.Handler {
	h := &handler{files: map[string]asset{}}
	root := FS()
	err := fs.WalkDir(root, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(root, p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(b)
		h.files[Prefix+p] = asset{
			body:  b,
			ctype: contentType(p),
			etag:  `"` + hex.EncodeToString(sum[:8]) + `"`,
		}
		return nil
	})
	if err != nil { // cannot happen: the files are embedded
		panic(fmt.Sprintf("ui: read embedded assets: %v", err))
	}
	h.files["/"] = h.files[Prefix+"index.html"]
	return h
}

// contentType maps a file name to its media type, with explicit UTF-8 for
// text so that no browser sniffs.
func contentType(name string) string {
	switch path.Ext(name) {
	case ".html":
		return "text/html; charset=utf-8"
	case ".css":
		return "text/css; charset=utf-8"
	case ".js":
		return "text/javascript; charset=utf-8"
	case ".svg":
		return "image/svg+xml"
	case ".json", ".webmanifest":
		return "application/json"
	}
	if t := mime.TypeByExtension(path.Ext(name)); t != "" {
		return t
	}
	return "application/octet-stream"
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hdr := w.Header()
	hdr.Set("X-Content-Type-Options", "nosniff")
	hdr.Set("Referrer-Policy", "no-referrer")
	hdr.Set("X-Frame-Options", "DENY")
	p := r.URL.Path
	if strings.HasPrefix(p, "/api/") || p == "/api" {
		hdr.Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		_ = json.NewEncoder(w).Encode(map[string]string{"error": "ui: no API route " + r.Method + " " + p})
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		hdr.Set("Allow", "GET, HEAD")
		http.Error(w, "ui: method "+r.Method+" not allowed on "+p, http.StatusMethodNotAllowed)
		return
	}
	a, ok := h.files[p]
	if !ok {
		http.Error(w, "ui: not found: "+p, http.StatusNotFound)
		return
	}
	hdr.Set("Content-Type", a.ctype)
	hdr.Set("Content-Security-Policy", CSP)
	hdr.Set("Cache-Control", "no-cache")
	hdr.Set("ETag", a.etag)
	// ServeContent answers If-None-Match (304), Range and HEAD.
	http.ServeContent(w, r, path.Base(p), time.Time{}, bytes.NewReader(a.body))
}
