package api

import (
	"net/http"
	"strings"
	"testing"
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
