package libusbfake_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cm4bench/cm4bench/internal/repotest"
	"github.com/cm4bench/cm4bench/internal/syncbuf"
	"github.com/cm4bench/cm4bench/usbboot/libusbfake"
)

// repoRoot is the repository root (the directory with go.mod).
func repoRoot(t testing.TB) string {
	t.Helper()
	return repotest.Root(t)
}

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

// run runs a build command and returns its combined output in the error.
func run(ctx context.Context, dir string, env []string, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, out)
	}
	return nil
}

// artifacts builds (once per test binary) the fake libusb, the probe and the
// simulator. make test passes the fake it built in LIBUSBFAKE_SO; otherwise
// it is compiled here with the Makefile's flags.
func artifacts(t testing.TB) string {
	t.Helper()
	root := repoRoot(t)
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "libusbfake-test-")
		if buildErr != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		src := filepath.Join(root, "usbboot/libusbfake/c")
		lib := filepath.Join(buildDir, "libusb-1.0.so.0")
		if so := os.Getenv("LIBUSBFAKE_SO"); so != "" {
			if buildErr = os.Symlink(so, lib); buildErr != nil {
				return
			}
		} else {
			cflags, err := exec.Command("pkg-config", "--cflags", "libusb-1.0").Output()
			if err != nil {
				buildErr = fmt.Errorf("pkg-config --cflags libusb-1.0 (install libusb-1.0-0-dev): %w", err)
				return
			}
			args := append([]string{"-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror", "-fvisibility=hidden"},
				strings.Fields(string(cflags))...)
			args = append(args, "-Wl,-soname,libusb-1.0.so.0", "-o", lib, filepath.Join(src, "libusbfake.c"), "-lpthread")
			if buildErr = run(ctx, root, nil, "gcc", args...); buildErr != nil {
				return
			}
		}
		cflags, _ := exec.Command("pkg-config", "--cflags", "libusb-1.0").Output()
		args := append([]string{"-O2", "-Wall", "-Wextra", "-Werror"}, strings.Fields(string(cflags))...)
		args = append(args, "-o", filepath.Join(buildDir, "probe"), filepath.Join(src, "probe.c"),
			"-L"+buildDir, "-l:libusb-1.0.so.0")
		if buildErr = run(ctx, root, nil, "gcc", args...); buildErr != nil {
			return
		}
		buildErr = run(ctx, root, []string{"CGO_ENABLED=0"}, "go", "build", "-o", filepath.Join(buildDir, "cm4usbsim"), "./cmd/cm4usbsim")
	})
	if buildErr != nil {
		t.Fatalf("build test artifacts: %v", buildErr)
	}
	return buildDir
}

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// syncBuffer is a goroutine-safe transcript sink.
type syncBuffer struct{ syncbuf.Buffer }

func (s *syncBuffer) records(t testing.TB) []libusbfake.Record {
	recs, err := libusbfake.ReadTranscript(bytes.NewReader(s.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

// startServer serves devs in-process on a fresh socket.
func startServer(t testing.TB, devs ...libusbfake.Device) (socket string, transcript *syncBuffer) {
	t.Helper()
	socket = filepath.Join(t.TempDir(), "usb.sock")
	transcript = &syncBuffer{}
	ready := make(chan struct{})
	srv := &libusbfake.Server{Path: socket, Devices: devs, Transcript: transcript, Ready: ready}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("Serve: %v", err)
	}
	return socket, transcript
}
