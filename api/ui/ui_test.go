package ui_test

import (
	"encoding/json"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/cm4bench/cm4bench/api/ui"
	"github.com/cm4bench/cm4bench/internal/contract"
)

func TestHandlerServesAssets(t *testing.T) {
	srv := httptest.NewServer(ui.Handler())
	t.Cleanup(srv.Close)

	for _, tt := range []struct {
		path      string
		wantCode  int
		wantType  string
		wantInBod string
	}{
		{"/", 200, "text/html; charset=utf-8", `<script src="ui/app.js" defer></script>`},
		{"/ui/index.html", 200, "text/html; charset=utf-8", `data-testid="login-token"`},
		{"/ui/app.js", 200, "text/javascript; charset=utf-8", `new EventSource("/api/events"`},
		{"/ui/app.css", 200, "text/css; charset=utf-8", `.device[data-state="failed"]`},
		{"/ui/favicon.svg", 200, "image/svg+xml", `<svg`},
		{"/ui/nope.js", 404, "text/plain; charset=utf-8", "ui: not found: /ui/nope.js"},
		{"/app.js", 404, "text/plain; charset=utf-8", "not found"},
		{"/ui/", 404, "text/plain; charset=utf-8", "not found"},
		{"/static/app.js", 404, "text/plain; charset=utf-8", "not found"},
		{"/ui/../ui.go", 404, "text/plain; charset=utf-8", "not found"},
		{"/api/v1/whatever", 404, "application/json", `{"error":"ui: no API route GET /api/v1/whatever"}`},
	} {
		t.Run(tt.path, func(t *testing.T) {
			res, err := http.Get(srv.URL + tt.path)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if res.StatusCode != tt.wantCode {
				t.Errorf("GET %s: status %d, want %d", tt.path, res.StatusCode, tt.wantCode)
			}
			if got := res.Header.Get("Content-Type"); got != tt.wantType {
				t.Errorf("GET %s: Content-Type %q, want %q", tt.path, got, tt.wantType)
			}
			if !strings.Contains(string(body), tt.wantInBod) {
				t.Errorf("GET %s: body lacks %q:\n%.300s", tt.path, tt.wantInBod, body)
			}
			if got := res.Header.Get("X-Content-Type-Options"); got != "nosniff" {
				t.Errorf("GET %s: X-Content-Type-Options %q, want nosniff", tt.path, got)
			}
			if tt.wantCode == 200 {
				if got := res.Header.Get("Content-Security-Policy"); got != ui.CSP {
					t.Errorf("GET %s: Content-Security-Policy %q, want %q", tt.path, got, ui.CSP)
				}
				if res.Header.Get("ETag") == "" {
					t.Errorf("GET %s: no ETag", tt.path)
				}
			}
		})
	}
}

func TestHandlerConditionalAndMethods(t *testing.T) {
	srv := httptest.NewServer(ui.Handler())
	t.Cleanup(srv.Close)

	res, err := http.Get(srv.URL + "/ui/app.js")
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	etag := res.Header.Get("ETag")

	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/ui/app.js", nil)
	req.Header.Set("If-None-Match", etag)
	res, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusNotModified {
		t.Errorf("GET /ui/app.js If-None-Match %s: status %d, want 304", etag, res.StatusCode)
	}

	res, err = http.Head(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 200 || res.ContentLength <= 0 {
		t.Errorf("HEAD /: status %d length %d, want 200 and the page length", res.StatusCode, res.ContentLength)
	}

	res, err = http.Post(srv.URL+"/", "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusMethodNotAllowed || res.Header.Get("Allow") != "GET, HEAD" {
		t.Errorf("POST /: status %d Allow %q, want 405 and GET, HEAD", res.StatusCode, res.Header.Get("Allow"))
	}
}

// TestNoExternalURLs fails if any embedded asset refers to anything off the
// bench: absolute http(s) URLs, protocol-relative URLs, or @import/url() of
// another origin. The only absolute URL allowed is an XML namespace name,
// which browsers never fetch.
func TestNoExternalURLs(t *testing.T) {
	absURL := regexp.MustCompile(`(?i)(https?:)?//[a-z0-9.-]+\.[a-z]{2,}[^\s"')]*`)
	nsAttr := regexp.MustCompile(`xmlns(:[a-z]+)?="http://www\.w3\.org/(2000/svg|1999/xlink|1999/xhtml)"`)
	relRef := regexp.MustCompile(`(?i)(src|href|action)\s*=\s*["']\s*(https?:|//|data:text|javascript:)`)
	n := 0
	err := fs.WalkDir(ui.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		n++
		b, err := fs.ReadFile(ui.FS(), p)
		if err != nil {
			return err
		}
		text := nsAttr.ReplaceAllString(string(b), `xmlns="ns"`)
		for _, m := range absURL.FindAllString(text, -1) {
			t.Errorf("%s: refers to an off-box URL %q", p, m)
		}
		for _, m := range relRef.FindAllString(text, -1) {
			t.Errorf("%s: loads from outside the origin: %q", p, m)
		}
		if strings.Contains(text, "@import") {
			t.Errorf("%s: uses @import", p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 4 {
		t.Fatalf("walked %d embedded files, want at least index.html, app.js, app.css, favicon.svg", n)
	}
}

// TestNoExternalURLsDetector proves the detector above is not blind: each
// of these lines must be caught.
func TestNoExternalURLsDetector(t *testing.T) {
	absURL := regexp.MustCompile(`(?i)(https?:)?//[a-z0-9.-]+\.[a-z]{2,}[^\s"')]*`)
	for _, bad := range []string{
		`<script src="https://cdn.example.com/x.js">`,
		`@font-face { src: url(//fonts.gstatic.com/a.woff2) }`,
		`fetch("http://10.0.0.1.nip.io/api")`,
	} {
		if !absURL.MatchString(bad) {
			t.Errorf("external URL in %q not detected", bad)
		}
	}
	for _, ok := range []string{`fetch("/api/v1/devices")`, `// a comment`, `x = a // b.c`} {
		if m := absURL.FindString(ok); m != "" {
			t.Errorf("false positive %q in %q", m, ok)
		}
	}
}

// TestKindsScript: the page's list of event kinds comes from the server,
// and it is every declared kind.
func TestKindsScript(t *testing.T) {
	srv := httptest.NewServer(ui.Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/ui/kinds.js")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/javascript") {
		t.Fatalf("GET /ui/kinds.js: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	m := regexp.MustCompile(`window\.CM4BENCH_KINDS = Object\.freeze\((\[.*\])\);`).FindSubmatch(body)
	if m == nil {
		t.Fatalf("kinds.js does not set window.CM4BENCH_KINDS:\n%s", body)
	}
	var got []string
	if err := json.Unmarshal(m[1], &got); err != nil {
		t.Fatal(err)
	}
	if want := contract.Kinds(); !slices.Equal(got, want) {
		t.Errorf("kinds.js lists %q, contract declares %q", got, want)
	}
	page, _ := fs.ReadFile(ui.FS(), "index.html")
	if i, j := strings.Index(string(page), "ui/kinds.js"), strings.Index(string(page), "ui/app.js"); i < 0 || i > j {
		t.Errorf("index.html must load ui/kinds.js before ui/app.js")
	}
}
