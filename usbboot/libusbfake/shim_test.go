package libusbfake_test

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cm4bench/cm4bench/usbboot/libusbfake"
)

// testDevice is a small vendor device for exercising the shim through an
// ordinary libusb program (probe.c): two interfaces like a 2837 board
// (mass storage first, vendor second on EP 0x03/0x84), scripted vendor
// requests for every error class, and a bulk OUT sink.
type testDevice struct {
	mu       sync.Mutex
	attached bool
	address  int
	received int
}

func (d *testDevice) Attached() (libusbfake.Attachment, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return libusbfake.Attachment{Bus: 1, Ports: []int{2, 4}, Address: d.address, Speed: libusbfake.SpeedHigh}, d.attached
}

var testConfig = []byte{
	9, 2, 55, 0, 2, 1, 0, 0x80, 250,
	9, 4, 0, 0, 2, 8, 6, 80, 0,
	7, 5, 0x81, 2, 0, 2, 0,
	7, 5, 0x02, 2, 0, 2, 0,
	9, 4, 1, 0, 2, 0xff, 0, 0, 0,
	7, 5, 0x03, 2, 0, 2, 0,
	7, 5, 0x84, 2, 0, 2, 0,
}

func (d *testDevice) Control(ctx context.Context, s libusbfake.Setup, data []byte, timeout time.Duration) (int, error) {
	switch {
	case s.RequestType == 0x80 && s.Request == 6:
		var desc []byte
		switch s.Value >> 8 {
		case 1:
			desc = []byte{18, 1, 0, 2, 0, 0, 0, 64, 0x34, 0x12, 0x78, 0x56, 0, 1, 1, 2, 3, 1}
		case 2:
			desc = testConfig
		case 3:
			switch uint8(s.Value) {
			case 0:
				desc = []byte{4, 3, 0x09, 0x04}
			case 3:
				desc = []byte{14, 3, 'S', 0, 'N', 0, '0', 0, '0', 0, '4', 0, '2', 0}
			default:
				return 0, libusbfake.ErrStall
			}
		}
		return copy(data, desc), nil
	case s.RequestType == 0x40 && s.Request == 1:
		return len(data), nil
	case s.RequestType == 0xc0 && s.Request == 2:
		return copy(data, "hello"), nil
	case s.RequestType == 0xc0 && s.Request == 3:
		return 0, libusbfake.ErrNAK // silent: the host's timeout decides
	case s.RequestType == 0xc0 && s.Request == 4:
		return 0, fmt.Errorf("scripted: %w", libusbfake.ErrStall)
	case s.RequestType == 0x40 && s.Request == 6:
		// acknowledged, then the device re-enumerates on the same port
		d.mu.Lock()
		d.address++
		d.mu.Unlock()
		return 0, nil
	case s.RequestType == 0xc0 && s.Request == 5:
		d.mu.Lock()
		d.attached = false
		d.mu.Unlock()
		return 0, libusbfake.ErrNoDevice
	}
	return 0, libusbfake.ErrStall
}

func (d *testDevice) BulkOut(ctx context.Context, ep uint8, p []byte) (int, error) {
	if len(p) == 13 { // a length the device never takes: it NAKs
		return 0, libusbfake.ErrNAK
	}
	d.mu.Lock()
	d.received += len(p)
	d.mu.Unlock()
	return len(p), nil
}

// probe runs probe.c against socket; it fails the test if the program
// errors, unless wantHang, where it must still run when ctx ends.
func probe(t testing.TB, ctx context.Context, socket string, args ...string) string {
	t.Helper()
	dir := artifacts(t)
	cmd := exec.CommandContext(ctx, filepath.Join(dir, "probe"), args...)
	cmd.Env = []string{"CM4USBSIM_SOCKET=" + socket, "LD_LIBRARY_PATH=" + dir}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("probe %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

var elapsedRE = regexp.MustCompile(` (\d+)ms$`)

func elapsed(t *testing.T, line string) time.Duration {
	t.Helper()
	m := elapsedRE.FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("no elapsed time in %q", line)
	}
	n, _ := strconv.Atoi(m[1])
	return time.Duration(n) * time.Millisecond
}

func TestProbeList(t *testing.T) {
	dev := &testDevice{attached: true, address: 7}
	socket, _ := startServer(t, dev)
	got := probe(t, context.Background(), socket, "list")
	want := "1-2.4 addr=7 port=4 id=1234:5678 speed=3 iSerial=3 config=1 total=55 ifaces=2 " +
		"if0.ep81/512 if0.ep02/512 if1.ep03/512 if1.ep84/512\n"
	if got != want {
		t.Fatalf("probe list:\n got %q\nwant %q", got, want)
	}
	dev.mu.Lock()
	dev.attached = false
	dev.mu.Unlock()
	if got := probe(t, context.Background(), socket, "list"); got != "" {
		t.Fatalf("detached device still listed: %q", got)
	}
}

// TestProbeOps runs one libusb program per case and checks each op's line.
func TestProbeOps(t *testing.T) {
	for _, tc := range []struct {
		name string
		ops  []string
		want []string // regexps, one per output line after "open"
	}{
		{"serial and config", []string{"serial", "config"},
			[]string{`^serial ok SN0042 `, `^config LIBUSB_SUCCESS.* 1 `}},
		{"vendor in", []string{"in:c0:2:0:0:10:3e8"}, []string{`^in:c0:2:0:0:10:3e8 ok 5:68656c6c6f `}},
		{"vendor out", []string{"out:40:1:1234:1:8:3e8"}, []string{`^out:40:1:1234:1:8:3e8 ok 8:a5a5a5a5a5a5a5a5 `}},
		{"stall", []string{"in:c0:4:0:0:4:3e8"}, []string{`LIBUSB_ERROR_PIPE`}},
		{"gone", []string{"in:c0:5:0:0:4:3e8", "in:c0:2:0:0:4:3e8"},
			[]string{`LIBUSB_ERROR_NO_DEVICE`, `LIBUSB_ERROR_NO_DEVICE`}},
		{"bulk needs a claimed interface", []string{"bulk:3:4000:3e8"}, []string{`^bulk:3:4000:3e8 LIBUSB_ERROR_IO 0 `}},
		{"endpoint of another interface", []string{"claim:0", "bulk:3:10:3e8"},
			[]string{`^claim:0 LIBUSB_SUCCESS`, `^bulk:3:10:3e8 LIBUSB_ERROR_IO 0 `}},
		{"claimed bulk", []string{"claim:1", "bulk:3:4000:3e8"},
			[]string{`^claim:1 LIBUSB_SUCCESS`, `^bulk:3:4000:3e8 LIBUSB_SUCCESS.* 16384 `}},
		{"no such interface", []string{"claim:2"}, []string{`^claim:2 LIBUSB_ERROR_NOT_FOUND`}},
		{"async bulk", []string{"claim:1", "async:3:4000:0"},
			[]string{`^claim:1 `, `^async:3:4000:0 status=0 16384 `}},
		{"async timeout", []string{"claim:1", "async:3:d:12c"},
			[]string{`^claim:1 `, `^async:3:d:12c status=2 0 `}},
		{"async cancel", []string{"claim:1", "async:3:d:0:64"},
			[]string{`^claim:1 `, `^\(cancel LIBUSB_SUCCESS[^)]*\) async:3:d:0:64 status=3 0 `}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			socket, _ := startServer(t, &testDevice{attached: true, address: 9})
			out := probe(t, context.Background(), socket, append([]string{"1-2.4"}, tc.ops...)...)
			lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
			if len(lines) != len(tc.want)+1 || !strings.HasPrefix(lines[0], "open LIBUSB_SUCCESS") {
				t.Fatalf("output:\n%s", out)
			}
			for i, re := range tc.want {
				if !regexp.MustCompile(re).MatchString(lines[i+1]) {
					t.Errorf("line %d = %q, want match %q", i+1, lines[i+1], re)
				}
			}
		})
	}
}

// TestProbeTimeouts checks that a silent device holds a transfer exactly as
// long as the caller's timeout, and forever when the timeout is 0.
func TestProbeTimeouts(t *testing.T) {
	dev := &testDevice{attached: true, address: 9}
	socket, transcript := startServer(t, dev)
	out := probe(t, context.Background(), socket, "1-2.4", "in:c0:3:0:0:4:190", "claim:1", "bulk:3:d:12c")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 4 {
		t.Fatalf("output:\n%s", out)
	}
	for _, c := range []struct {
		line string
		want string
		min  time.Duration
	}{
		{lines[1], "in:c0:3:0:0:4:190 LIBUSB_ERROR_TIMEOUT", 400 * time.Millisecond},
		{lines[3], "bulk:3:d:12c LIBUSB_ERROR_TIMEOUT 0", 300 * time.Millisecond},
	} {
		if !strings.HasPrefix(c.line, c.want) {
			t.Errorf("got %q, want prefix %q", c.line, c.want)
		}
		if d := elapsed(t, c.line); d < c.min || d > c.min+3*time.Second {
			t.Errorf("%q took %v, want about %v", c.line, d, c.min)
		}
	}
	// The server saw the host give up (it records that once it notices the
	// connection closed, which may trail the program a little on a busy machine).
	sawGiveUp := func() bool {
		for _, r := range transcript.records(t) {
			if r.Kind == "control" && r.Request != nil && *r.Request == 3 &&
				r.Result == "LIBUSB_ERROR_TIMEOUT" && r.TimeoutMS == 400 {
				return true
			}
		}
		return false
	}
	for deadline := time.Now().Add(10 * time.Second); !sawGiveUp() && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	if !sawGiveUp() {
		t.Errorf("transcript has no timed-out READ with timeout_ms 400:\n%+v", transcript.records(t))
	}

	// Timeout 0 means forever: the program must still be waiting after 2 s.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	dir := artifacts(t)
	cmd := exec.CommandContext(ctx, filepath.Join(dir, "probe"), "1-2.4", "in:c0:3:0:0:4:0")
	cmd.Env = []string{"CM4USBSIM_SOCKET=" + socket, "LD_LIBRARY_PATH=" + dir}
	start := time.Now()
	outb, err := cmd.CombinedOutput()
	if ctx.Err() == nil {
		t.Fatalf("a control transfer with timeout 0 to a silent device returned after %v: %v\n%s", time.Since(start), err, outb)
	}
}

// TestProbeReenumeration: a handle opened before the device re-enumerated
// (new address on the same port) sees LIBUSB_ERROR_NO_DEVICE, as on Linux.
func TestProbeReenumeration(t *testing.T) {
	dev := &testDevice{attached: true, address: 9}
	socket, _ := startServer(t, dev)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out := probe(t, ctx, socket, "1-2.4", "in:c0:2:0:0:4:3e8", "out:40:6:0:0:0:3e8", "in:c0:2:0:0:4:3e8")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 4 || !strings.Contains(lines[1], " ok ") || !strings.Contains(lines[2], " ok ") ||
		!strings.Contains(lines[3], "LIBUSB_ERROR_NO_DEVICE") {
		t.Fatalf("output:\n%s", out)
	}
	if got := probe(t, ctx, socket, "list"); !strings.Contains(got, "addr=10 ") {
		t.Fatalf("list after re-enumeration: %q", got)
	}
}

func TestInitWithoutSocket(t *testing.T) {
	dir := artifacts(t)
	cmd := exec.Command(filepath.Join(dir, "probe"), "list")
	cmd.Env = []string{"LD_LIBRARY_PATH=" + dir}
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || !strings.Contains(string(out), "CM4USBSIM_SOCKET is not set") ||
		!strings.Contains(string(out), "init LIBUSB_ERROR_OTHER") {
		t.Fatalf("probe without a socket: %v\n%s", err, out)
	}
}
