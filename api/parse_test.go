package api

import (
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/cm4bench/cm4bench/internal/contract"
)

func TestParseRange(t *testing.T) {
	for _, tt := range []struct {
		h        string
		size     int64
		start, n int64
		ok       bool
	}{
		{"bytes=0-", 100, 0, 100, true},
		{"bytes=10-19", 100, 10, 10, true},
		{"bytes=90-200", 100, 90, 10, true},
		{"bytes=-30", 100, 70, 30, true},
		{"bytes=-300", 100, 0, 100, true},
		{"bytes=5-9,20-29", 100, 5, 5, true},
		{"bytes=100-", 100, 0, 0, false},
		{"bytes=9-5", 100, 0, 0, false},
		{"bytes=-0", 100, 0, 0, false},
		{"items=0-5", 100, 0, 0, false},
		{"bytes=x-5", 100, 0, 0, false},
		{"bytes=0-0", 0, 0, 0, false},
	} {
		s, n, ok := parseRange(tt.h, tt.size)
		if ok != tt.ok || (ok && (s != tt.start || n != tt.n)) {
			t.Errorf("parseRange(%q, %d) = %d, %d, %v; want %d, %d, %v", tt.h, tt.size, s, n, ok, tt.start, tt.n, tt.ok)
		}
	}
}

func FuzzParseRange(f *testing.F) {
	for _, s := range []string{"bytes=0-", "bytes=-5", "bytes=3-9", "bytes=9-3", "bytes=1-2,5-6", "bytes=--1", "bytes=99999999999999999999-"} {
		f.Add(s, int64(100))
	}
	f.Fuzz(func(t *testing.T, h string, size int64) {
		if size < 0 {
			return
		}
		s, n, ok := parseRange(h, size)
		if ok && (s < 0 || n <= 0 || s+n > size) {
			t.Fatalf("parseRange(%q, %d) = %d, %d outside the stream", h, size, s, n)
		}
	})
}

func FuzzDecodeFlexible(f *testing.F) {
	f.Add("application/json", `{"mac":"dc:a6:32:01:02:03","ip":"10.0.0.2"}`)
	f.Add("application/x-www-form-urlencoded", "mac=dc%3Aa6%3A32%3A01%3A02%3A03&ip=10.0.0.2")
	f.Add("multipart/form-data; boundary=xx", "--xx\r\nContent-Disposition: form-data; name=\"mac\"\r\n\r\nm\r\n--xx--\r\n")
	f.Add("text/plain", "{")
	f.Fuzz(func(t *testing.T, ct, body string) {
		r, _ := http.NewRequest("POST", "/api/register-device?mac=q", strings.NewReader(body))
		r.Header.Set("Content-Type", ct)
		var dst struct {
			MAC string `json:"mac"`
			IP  string `json:"ip"`
		}
		err := decodeFlexible(r, 4096, &dst, map[string]*string{"mac": &dst.MAC, "ip": &dst.IP})
		if err == nil && dst.MAC == "" {
			t.Fatalf("no error and no mac for %q %q (the query has one)", ct, body)
		}
		if err != nil {
			if code, _ := statusOf(err); code < 400 || code >= 500 {
				t.Fatalf("bad input gave status %d: %v", code, err)
			}
		}
	})
}

// One fuzz target per device route's request parsing (security item 12's
// "done means"). Each checks that bad input gives a 4xx error and that what
// parses is within the limits the handlers rely on.

func fuzzReq(method, target, ct, body string) *http.Request {
	r, err := http.NewRequest(method, "http://127.0.0.1:5000/", strings.NewReader(body))
	if err != nil {
		return nil
	}
	if u, err := url.Parse(target); err == nil {
		r.URL = u
	}
	if ct != "" {
		r.Header.Set("Content-Type", ct)
	}
	r.RemoteAddr = "10.42.0.100:40000"
	return r
}

func want4xx(t *testing.T, err error) {
	t.Helper()
	if err == nil {
		return
	}
	if code, _ := statusOf(err); code < 400 || code >= 500 {
		t.Fatalf("bad input gave status %d: %v", code, err)
	}
}

func FuzzParseRegister(f *testing.F) {
	f.Add("application/json", `{"mac":"dc:a6:32:01:02:03","ip":"10.42.0.9","facts":{"serial":"abcd1234","emmc_bytes":8388608}}`)
	f.Add("application/x-www-form-urlencoded", "mac=dc-a6-32-01-02-03&ip=10.0.0.2")
	f.Add("", `{"mac":"x"}`)
	f.Fuzz(func(t *testing.T, ct, body string) {
		r := fuzzReq("POST", "/api/register-device", ct, body)
		if r == nil {
			return
		}
		req, mac, ip, err := parseRegister(r, 64<<10)
		want4xx(t, err)
		if err != nil {
			return
		}
		if _, err := contract.NormalizeMAC(mac); err != nil || net.ParseIP(ip) == nil {
			t.Fatalf("accepted mac %q ip %q", mac, ip)
		}
		if req.Facts != nil {
			if b, _ := json.Marshal(req.Facts); len(b) > maxFactsBytes {
				t.Fatalf("accepted %d bytes of facts", len(b))
			}
		}
	})
}

func FuzzParsePoll(f *testing.F) {
	f.Add("/api/poll?mac=dc:a6:32:01:02:03")
	f.Add("/api/poll?mac=%zz")
	f.Fuzz(func(t *testing.T, target string) {
		r := fuzzReq("GET", target, "", "")
		if r == nil {
			return
		}
		mac, err := parsePoll(r)
		want4xx(t, err)
		if err == nil {
			if _, err := contract.NormalizeMAC(mac); err != nil {
				t.Fatalf("accepted mac %q", mac)
			}
		}
	})
}

func FuzzParseActionDone(f *testing.F) {
	f.Add("application/json", `{"mac":"dc:a6:32:01:02:03","status":"success","sha256":"ab","bytes":12,"action_id":"1","token":"t"}`)
	f.Add("application/x-www-form-urlencoded", "mac=dc:a6:32:01:02:03&status=ok&bytes=-5")
	f.Fuzz(func(t *testing.T, ct, body string) {
		r := fuzzReq("POST", "/api/action-done", ct, body)
		if r == nil {
			return
		}
		req, mac, err := parseActionDone(r, 64<<10)
		want4xx(t, err)
		if err == nil && (mac == "" || req.Bytes < 0 || req.CompressedBytes < 0) {
			t.Fatalf("accepted %+v", req)
		}
	})
}

func FuzzParseProgress(f *testing.F) {
	f.Add(`{"mac":"dc:a6:32:01:02:03","action_id":"1","token":"t","phase":"download","done":5,"total":10,"rate":1.5}`)
	f.Add(`{"mac":"dc:a6:32:01:02:03","action_id":"1","token":"t","done":-1}`)
	f.Fuzz(func(t *testing.T, body string) {
		r := fuzzReq("POST", "/api/progress", "application/json", body)
		if r == nil {
			return
		}
		p, _, err := parseProgress(r, 64<<10)
		want4xx(t, err)
		if err == nil && (p.Done < 0 || p.Total < 0 || p.Rate < 0 || len(p.Phase) > 64 || p.Token == "") {
			t.Fatalf("accepted %+v", p)
		}
	})
}

func FuzzParseLog(f *testing.F) {
	f.Add(`{"mac":"dc:a6:32:01:02:03","lines":["a","b"],"action_id":"1","token":"t"}`)
	f.Add(`{"mac":"dc:a6:32:01:02:03","lines":[]}`)
	f.Fuzz(func(t *testing.T, body string) {
		r := fuzzReq("POST", "/api/log", "application/json", body)
		if r == nil {
			return
		}
		l, _, err := parseLog(r, 64<<10)
		want4xx(t, err)
		if err != nil {
			return
		}
		if len(l.Lines) == 0 || len(l.Lines) > maxLogPostLines {
			t.Fatalf("accepted %d lines", len(l.Lines))
		}
		for _, line := range l.Lines {
			if len(line) > maxLogLineBytes+len("…") {
				t.Fatalf("kept a %d-byte line", len(line))
			}
		}
	})
}

// FuzzParseStream covers the image (GET/HEAD) and backup (PUT/POST)
// stream routes: the action id and token, through the real mux pattern.
func FuzzParseStream(f *testing.F) {
	f.Add(contract.PathImage + "/12?token=abc")
	f.Add(contract.PathImage + "/x?token=")
	f.Add(contract.PathBackup + "/99999999999999999999?token=t")
	f.Fuzz(func(t *testing.T, target string) {
		r := fuzzReq("GET", target, "", "")
		if r == nil {
			return
		}
		mux := http.NewServeMux()
		var id, token string
		var err error
		done := false
		h := func(w http.ResponseWriter, r *http.Request) { id, token, err = parseStream(r); done = true }
		mux.HandleFunc("GET "+contract.PathImage+"/{id}", h)
		mux.HandleFunc("GET "+contract.PathBackup+"/{id}", h)
		mux.ServeHTTP(httptest.NewRecorder(), r)
		if !done {
			return
		}
		want4xx(t, err)
		if err == nil && (id == "" || strings.Trim(id, "0123456789") != "" || token == "") {
			t.Fatalf("accepted id %q token %q", id, token)
		}
	})
}
