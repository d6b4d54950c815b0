package sdnotify

import (
	"net"
	"path/filepath"
	"testing"
)

func TestSend(t *testing.T) {
	for _, tt := range []struct {
		name     string
		abstract bool
	}{{"path socket", false}, {"abstract socket", true}} {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "notify")
			env := path
			addr := &net.UnixAddr{Name: path, Net: "unixgram"}
			if tt.abstract {
				env = "@cm4bench-test-" + filepath.Base(t.TempDir())
				addr.Name = "\x00" + env[1:]
			}
			l, err := net.ListenUnixgram("unixgram", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			t.Setenv("NOTIFY_SOCKET", env)
			sent, err := Ready()
			if err != nil || !sent {
				t.Fatalf("Ready = %v, %v", sent, err)
			}
			buf := make([]byte, 64)
			n, _, err := l.ReadFromUnix(buf)
			if err != nil || string(buf[:n]) != "READY=1" {
				t.Fatalf("got %q, %v", buf[:n], err)
			}
		})
	}
	t.Setenv("NOTIFY_SOCKET", "")
	if sent, err := Ready(); sent || err != nil {
		t.Errorf("without NOTIFY_SOCKET: %v, %v", sent, err)
	}
	t.Setenv("NOTIFY_SOCKET", filepath.Join(t.TempDir(), "nobody-listens"))
	if _, err := Ready(); err == nil {
		t.Error("no error for a socket nobody listens on")
	}
}
