package agent

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/cm4bench/cm4bench/netboot/device/blockdev"
)

func TestParseContentRange(t *testing.T) {
	for _, tc := range []struct {
		in           string
		start, total int64
		ok           bool
	}{
		{"bytes 100-199/1000", 100, 1000, true},
		{"bytes 0-0/*", 0, -1, true},
		{"bytes 5-9", 0, 0, false},
		{"items 0-1/2", 0, 0, false},
		{"bytes -1-2/3", 0, 0, false},
		{"bytes x-2/3", 0, 0, false},
		{"bytes 1-2/-3", 0, 0, false},
	} {
		s, tot, ok := parseContentRange(tc.in)
		if ok != tc.ok || (ok && (s != tc.start || tot != tc.total)) {
			t.Errorf("%q: %d %d %v", tc.in, s, tot, ok)
		}
	}
}

func FuzzParseContentRange(f *testing.F) {
	f.Add("bytes 100-199/1000")
	f.Add("bytes 0-0/*")
	f.Fuzz(func(t *testing.T, s string) {
		start, total, ok := parseContentRange(s)
		if ok && (start < 0 || total < -1) {
			t.Fatalf("%q -> %d, %d", s, start, total)
		}
	})
}

// FuzzDeployStream feeds arbitrary bytes as a deploy stream: Deploy must
// never panic, and must either fail or write exactly what it hashed.
func FuzzDeployStream(f *testing.F) {
	f.Add([]byte("plain raw image bytes"))
	f.Add([]byte{0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff})
	f.Add([]byte{0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0})
	f.Add([]byte{0xfd, '7', 'z', 'X', 'Z', 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		fuzzDeploy(t, b)
	})
}

// TestDeployAbortsDownloadOnBadStream: a stream that is broken early fails
// the deploy at once, without waiting for the rest of the download (here a
// server that never finishes) or the stall timer.
func TestDeployAbortsDownloadOnBadStream(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "100000000")
		w.WriteHeader(http.StatusOK)
		w.Write([]byte{0x28, 0xb5, 0x2f, 0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}) // zstd magic, garbage frame
		w.Write(make([]byte, 300<<10))
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)
	disk := newDisk(t, 4<<20, false)
	dev, err := blockdev.Open(disk, true, true)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	src := &Source{URL: srv.URL, Stall: time.Minute}
	start := time.Now()
	_, err = Deploy(context.Background(), dev, src, DeployOptions{})
	if err == nil {
		t.Fatal("a garbage zstd stream deployed")
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("deploy took %s to fail: the download was not aborted", d)
	}
	t.Logf("failed after %s: %v", time.Since(start).Round(time.Millisecond), err)
}
