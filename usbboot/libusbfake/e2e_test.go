package libusbfake_test

// End-to-end: the real cm4bench binary (normal cgo build, real gousb) runs
// with LD_LIBRARY_PATH pointing at the libusb stand-in, against cm4usbsim
// serving usbboottest boards on the real clock. The transcript the
// simulator writes is checked against usbboot.md §2-§3 request by request.

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cm4bench/cm4bench/usbboot"
	"github.com/cm4bench/cm4bench/usbboot/libusbfake"
	"github.com/cm4bench/cm4bench/usbboot/usbboottest"
)

var (
	benchOnce sync.Once
	benchPath string
	benchErr  error
)

// benchBinary builds cmd/cm4bench exactly as shipped (cgo, dynamically
// linked against libusb-1.0.so.0), once per test binary.
func benchBinary(t *testing.T) string {
	t.Helper()
	dir := artifacts(t)
	benchOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		benchPath = filepath.Join(dir, "cm4bench")
		benchErr = run(ctx, repoRoot(t), []string{"CGO_ENABLED=1"}, "go", "build", "-o", benchPath, "./cmd/cm4bench")
		if benchErr != nil {
			return
		}
		// The binary must resolve libusb to the stand-in, not the system library.
		cmd := exec.CommandContext(ctx, "ldd", benchPath)
		cmd.Env = append(os.Environ(), "LD_LIBRARY_PATH="+dir)
		out, err := cmd.CombinedOutput()
		if err != nil {
			benchErr = fmt.Errorf("ldd %s: %w\n%s", benchPath, err, out)
			return
		}
		want := "libusb-1.0.so.0 => " + filepath.Join(dir, "libusb-1.0.so.0")
		if !strings.Contains(string(out), want) {
			benchErr = fmt.Errorf("cm4bench does not load the libusb stand-in (want %q):\n%s", want, out)
		}
	})
	if benchErr != nil {
		t.Fatalf("build cm4bench: %v", benchErr)
	}
	return benchPath
}

// simProc is a running cm4usbsim.
type simProc struct {
	socket, transcript, report string
	cmd                        *exec.Cmd
	done                       chan error
	stopped                    bool
	reports                    []boardReport
}

// boardReport mirrors cmd/cm4usbsim's --report.
type boardReport struct {
	Port       string                   `json:"port"`
	State      string                   `json:"state"`
	ROMLoads   int                      `json:"rom_loads"`
	Files      []usbboottest.FileRecord `json:"files"`
	Metadata   []string                 `json:"metadata"`
	Violations []string                 `json:"violations"`
}

func startSim(t *testing.T, args ...string) *simProc {
	t.Helper()
	dir := artifacts(t)
	tmp := t.TempDir()
	s := &simProc{
		socket:     filepath.Join(tmp, "usb.sock"),
		transcript: filepath.Join(tmp, "transcript.jsonl"),
		report:     filepath.Join(tmp, "report.json"),
		done:       make(chan error, 1),
	}
	args = append([]string{"--socket", s.socket, "--transcript", s.transcript, "--report", s.report}, args...)
	s.cmd = exec.Command(filepath.Join(dir, "cm4usbsim"), args...)
	stdout, err := s.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	s.cmd.Stderr = &stderr
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		ready <- line
		_, _ = io.Copy(io.Discard, stdout)
	}()
	go func() { s.done <- s.cmd.Wait() }()
	t.Cleanup(func() { s.stop(t) })
	select {
	case line := <-ready:
		if !strings.HasPrefix(line, "cm4usbsim: serving") {
			t.Fatalf("cm4usbsim %s: %q\n%s", strings.Join(args, " "), line, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("cm4usbsim did not start in 30 s")
	}
	return s
}

// stop ends the simulator and returns what each board saw.
func (s *simProc) stop(t *testing.T) []boardReport {
	t.Helper()
	if s.stopped {
		return s.reports
	}
	s.stopped = true
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-s.done:
		if err != nil {
			t.Errorf("cm4usbsim exited: %v", err)
		}
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		t.Fatal("cm4usbsim did not stop on SIGTERM")
	}
	data, err := os.ReadFile(s.report)
	if err != nil {
		t.Fatalf("simulator report: %v", err)
	}
	if err := json.Unmarshal(data, &s.reports); err != nil {
		t.Fatalf("simulator report: %v", err)
	}
	return s.reports
}

func (s *simProc) records(t *testing.T) []libusbfake.Record {
	t.Helper()
	f, err := os.Open(s.transcript)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	recs, err := libusbfake.ReadTranscript(f)
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

type benchResult struct {
	stdout, stderr string
	code           int
	took           time.Duration
}

// runBench runs the built cm4bench against the simulator.
func runBench(t *testing.T, s *simProc, timeout time.Duration, args ...string) benchResult {
	t.Helper()
	bin := benchBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), "CM4USBSIM_SOCKET="+s.socket, "LD_LIBRARY_PATH="+artifacts(t))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	r := benchResult{stdout: stdout.String(), stderr: stderr.String(), took: time.Since(start)}
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		t.Fatalf("cm4bench %s hung for %v (killed)\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), timeout, r.stdout, r.stderr)
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("cm4bench %s: %v", strings.Join(args, " "), err)
	}
	return r
}

// bootDir builds a boot directory from the real fixtures (linked in place)
// with usbboottest.BootDir and returns it with the size of every file the
// board may ask for.
func bootDir(t *testing.T, mode usbboottest.Mode) string {
	t.Helper()
	return socBootDir(t, usbboot.SoC2711, mode)
}

func socBootDir(t *testing.T, soc usbboot.SoC, mode usbboottest.Mode) string {
	t.Helper()
	return usbboottest.BootDir(t, filepath.Join(t.TempDir(), "boot"), soc, mode)
}

// fileSize returns the size the host should announce for name from dir
// (same lookup order as usbboottest.ExpectedSHA256), or 0 when missing.
func fileSize(t *testing.T, dir string, soc usbboot.SoC, name string) int {
	t.Helper()
	if name == "" || strings.HasPrefix(name, "*") {
		return 0
	}
	if fi, err := os.Stat(filepath.Join(dir, string(soc), name)); err == nil {
		return int(fi.Size())
	}
	if f, err := os.Open(filepath.Join(dir, "bootfiles.bin")); err == nil {
		defer f.Close()
		tr := tar.NewReader(f)
		for {
			h, err := tr.Next()
			if err != nil {
				break
			}
			if strings.EqualFold(h.Name, string(soc)+"/"+name) {
				return int(h.Size)
			}
		}
	}
	if fi, err := os.Stat(filepath.Join(dir, name)); err == nil {
		return int(fi.Size())
	}
	return 0
}

// protocol turns the host's side of one port's transcript into tokens:
//
//	SIZE n +c1xk+c2     a SIZE control and the bulk chunks that followed
//	READ 4              the ROM status read
//	READ 260 Cmd name   a file-server request as the device returned it
//	TIMEOUT READ 260    a READ the host gave up on (the device was silent)
//
// and checks the rules that hold for every RPIBOOT host (usbboot.md §1.2,
// §2.1): vendor requests with bRequest 0 and wLength as usbboot.md gives
// it, SIZE timeout 1 s and READ timeout 20 s, bulk only on the claimed
// interface's OUT endpoint in chunks of min(rest, 16384) after a SIZE, no
// SET_CONFIGURATION / SET_INTERFACE / reset, and descriptors read only with
// GET_DESCRIPTOR.
func protocol(t reporter, recs []libusbfake.Record, port string, outEP uint8) []string {
	t.Helper()
	var (
		toks  []string
		armed int // bytes a SIZE announced and the bulk has not delivered yet
		sizeN int
		chunk []int
	)
	flush := func() {
		if sizeN < 0 {
			return
		}
		s := fmt.Sprintf("SIZE %d", sizeN)
		if len(chunk) > 0 {
			s += " " + compress(chunk)
		}
		toks = append(toks, s)
		sizeN, chunk = -1, nil
	}
	sizeN = -1
	for _, r := range recs {
		if r.Port != port || r.By == "kernel" {
			continue
		}
		switch r.Kind {
		case "set_config", "set_alt", "reset", "clear_halt":
			t.Errorf("%s: the host sent %s (rpiboot never does): %+v", port, r.Kind, r)
		case "open":
			flush()
			armed = 0
		case "claim":
			if want := int(outEP-1) / 2; r.Arg == nil || *r.Arg != want {
				t.Errorf("%s: claimed interface %v, want %d (usbboot.md §1.2)", port, deref(r.Arg), want)
			}
		case "bulk":
			if r.Endpoint == nil || *r.Endpoint != outEP {
				t.Errorf("%s: bulk on endpoint 0x%02x, want 0x%02x", port, deref(r.Endpoint), outEP)
			}
			n := deref(r.Len)
			if armed <= 0 {
				t.Errorf("%s: bulk of %d bytes without a SIZE", port, n)
			} else if want := min(armed, refChunk); n != want {
				t.Errorf("%s: bulk chunk of %d bytes, want min(rest %d, 16384) = %d", port, n, armed, want)
			}
			armed -= r.Actual
			chunk = append(chunk, n)
			if r.Result != "ok" {
				flush()
				toks = append(toks, fmt.Sprintf("BULK %s", r.Result))
				armed = 0 // the host abandons the file (usbboot.md §2.1: stop at the first bulk error)
			}
		case "control":
			st := libusbfake.Setup{RequestType: deref(r.RequestType), Request: deref(r.Request),
				Value: deref(r.Value), Index: deref(r.Index), Length: deref(r.Length)}
			if st.RequestType&0x60 == 0 {
				if st.RequestType != 0x80 || st.Request != 6 {
					t.Errorf("%s: standard request %+v; the host should only read descriptors", port, st)
				}
				continue
			}
			if st.Request != 0 {
				t.Errorf("%s: vendor request with bRequest %d, want 0", port, st.Request)
			}
			n := int(st.Index)<<16 | int(st.Value) // usbboot.md §2.1: wValue low 16 bits, wIndex high
			switch st.RequestType {
			case 0x40: // SIZE
				if armed > 0 && len(chunk) > 0 {
					t.Errorf("%s: SIZE(%d) while %d bulk bytes of the last file were still due", port, n, armed)
				}
				flush()
				armed = 0
				if st.Length != 0 || r.TimeoutMS != refSizeTimeoutMS {
					t.Errorf("%s: SIZE(%d) with wLength %d timeout %d ms, want 0 and 1000 ms", port, n, st.Length, r.TimeoutMS)
				}
				if r.Result != "ok" {
					toks = append(toks, fmt.Sprintf("SIZE %d %s", n, r.Result))
					continue
				}
				sizeN, armed = n, n
			case 0xc0: // READ
				if armed > 0 && len(chunk) > 0 {
					t.Errorf("%s: READ(%d) while %d bulk bytes of the last file were still due", port, n, armed)
				}
				flush()
				armed = 0
				if int(st.Length) != n || r.TimeoutMS != refReadTimeoutMS {
					t.Errorf("%s: READ(%d) with wLength %d timeout %d ms, want %d and 20000 ms", port, n, st.Length, r.TimeoutMS, n)
				}
				switch {
				case r.Result == "LIBUSB_ERROR_TIMEOUT":
					toks = append(toks, fmt.Sprintf("TIMEOUT READ %d", n))
				case r.Result != "ok":
					toks = append(toks, fmt.Sprintf("READ %d %s", n, r.Result))
				case n == 260:
					cmd, name, err := parseRequest(r.In)
					if err != nil {
						t.Errorf("%s: READ(260) returned a bad request: %v", port, err)
					}
					toks = append(toks, fmt.Sprintf("READ 260 %s %s", cmd, name))
				default:
					toks = append(toks, fmt.Sprintf("READ %d", n))
				}
			default:
				t.Errorf("%s: control with bmRequestType 0x%02x", port, st.RequestType)
			}
		}
	}
	flush()
	return toks
}

// The protocol constants as usbboot.md §2 states them, written out here
// rather than taken from package usbboot, so that a change there cannot
// move the test's yardstick with it.
const (
	refChunk          = 16384 // bulk chunk: min(rest, 16384)
	refSizeTimeoutMS  = 1000  // SIZE control transfer
	refReadTimeoutMS  = 20000 // READ control transfer
	refRequestCommand = 4     // bytes of the command word of a 260-byte request
)

// parseRequest decodes a 260-byte file-server request (usbboot.md §2.3):
// int32 LE command (0 GetFileSize, 1 ReadFile, 2 Done), then a
// NUL-terminated name.
func parseRequest(b []byte) (cmd usbboot.Command, name string, err error) {
	if len(b) != 260 {
		return 0, "", fmt.Errorf("%d bytes, want 260", len(b))
	}
	c := uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
	if c > 2 {
		return 0, "", fmt.Errorf("command %d", c)
	}
	raw := b[refRequestCommand:]
	end := bytes.IndexByte(raw, 0)
	if end < 0 {
		return 0, "", fmt.Errorf("name not NUL-terminated")
	}
	return usbboot.Command(c), string(raw[:end]), nil
}

// reporter is the part of testing.T the transcript checker uses.
type reporter interface {
	Helper()
	Errorf(format string, args ...any)
}

func deref[T any](p *T) T {
	var z T
	if p == nil {
		return z
	}
	return *p
}

// compress renders chunk lengths as "+16384x4+7584".
func compress(c []int) string {
	var sb strings.Builder
	for i := 0; i < len(c); {
		j := i
		for j < len(c) && c[j] == c[i] {
			j++
		}
		fmt.Fprintf(&sb, "+%d", c[i])
		if j-i > 1 {
			fmt.Fprintf(&sb, "x%d", j-i)
		}
		i = j
	}
	return sb.String()
}

// chunks is what usbboot.md §2.1 sends for n bytes: min(rest, 16384) each.
func chunks(n int) []int {
	var c []int
	for n > 0 {
		k := min(n, refChunk)
		c = append(c, k)
		n -= k
	}
	return c
}

// romTokens is the ROM phase for a bootcode of n bytes (usbboot.md §2.2).
func romTokens(n int) []string {
	return []string{"SIZE 24 +24", fmt.Sprintf("SIZE %d %s", n, compress(chunks(n))), "READ 4"}
}

// serve is the host's answer to one request (usbboot.md §2.3) for a file
// of size n (0 = missing).
func serve(cmd usbboot.Command, name string, n int) []string {
	toks := []string{fmt.Sprintf("READ 260 %s %s", cmd, name)}
	switch {
	case cmd == usbboot.ReadFile && n > 0:
		toks = append(toks, fmt.Sprintf("SIZE %d %s", n, compress(chunks(n))))
	case cmd == usbboot.Done && name != "":
		// no reply
	default:
		toks = append(toks, fmt.Sprintf("SIZE %d", n))
	}
	return toks
}

// secondStage is the whole file-server session for a script of names: for
// each, GetFileSize, then ReadFile when present and wanted.
func secondStage(t *testing.T, dir string, script []scriptStep) []string {
	return socSecondStage(t, dir, usbboot.SoC2711, script)
}

func socSecondStage(t *testing.T, dir string, soc usbboot.SoC, script []scriptStep) []string {
	var toks []string
	for _, s := range script {
		n := fileSize(t, dir, soc, s.name)
		toks = append(toks, serve(usbboot.GetFileSize, s.name, n)...)
		if n > 0 && s.read {
			toks = append(toks, serve(usbboot.ReadFile, s.name, n)...)
		}
	}
	return toks
}

type scriptStep struct {
	name string
	read bool
}

// The request scripts of the simulated second stages (usbboot.md §3.2, §3.4).
var (
	msdScript    = []scriptStep{{"config.txt", true}, {"pieeprom.sig", false}, {"start4.elf", true}, {"fixup4.dat", true}, {"", false}}
	gadgetScript = []scriptStep{{"mcb.bin", true}, {"memsys00.bin", true}, {"memsys01.bin", true}, {"memsys02.bin", true},
		{"memsys03.bin", true}, {"memsys04.bin", true}, {"memsys05.bin", true}, {"memsys06.bin", true}, {"memsys07.bin", true},
		{"memsys08.bin", true}, {"bootmain", true}, {"config.txt", true}, {"boot.img", true}, {"", false}}
	gadget2712Script = []scriptStep{{"mcb.bin", true}, {"memsys00.bin", true}, {"memsys01.bin", true}, {"memsys02.bin", true},
		{"memsys03.bin", true}, {"bootmain", true}, {"config.txt", true}, {"boot.img", true}, {"", false}}
	script2835 = []scriptStep{{"autoboot.txt", true}, {"config.txt", true}, {"recovery.elf", true}, {"start.elf", true}, {"fixup.dat", true}, {"", false}}
)

func recoveryScript(metadata []string) []scriptStep {
	s := []scriptStep{{"config.txt", true}, {"pieeprom.sig", true}, {"pieeprom.bin", true}}
	for _, m := range metadata {
		s = append(s, scriptStep{m, false})
	}
	return append(s, scriptStep{"", false})
}

func diffTokens(t *testing.T, port string, got, want []string) {
	t.Helper()
	if strings.Join(got, "\n") == strings.Join(want, "\n") {
		return
	}
	t.Errorf("%s: transcript does not follow usbboot.md:\n got:\n  %s\nwant:\n  %s", port,
		strings.Join(got, "\n  "), strings.Join(want, "\n  "))
}

// checkFiles checks every file the board received against the boot dir.
func checkFiles(t *testing.T, rep boardReport, dir string) {
	t.Helper()
	socCheckFiles(t, rep, dir, usbboot.SoC2711)
}

func socCheckFiles(t *testing.T, rep boardReport, dir string, soc usbboot.SoC) {
	t.Helper()
	if len(rep.Violations) > 0 {
		t.Errorf("%s: the board saw protocol violations:\n  %s", rep.Port, strings.Join(rep.Violations, "\n  "))
	}
	for _, f := range rep.Files {
		want, ok := usbboottest.ExpectedSHA256(t, dir, soc, f.Name)
		switch {
		case !ok && f.Size != 0:
			t.Errorf("%s: %s does not exist but the host announced %d bytes", rep.Port, f.Name, f.Size)
		case ok && f.Received && f.SHA256 != want:
			t.Errorf("%s: %s: board got sha256 %s, want %s", rep.Port, f.Name, f.SHA256, want)
		}
	}
}

// sessions splits the expected token stream of one board: ROM, then the
// second stage.
func msdSession(t *testing.T, dir string) []string {
	want := romTokens(fileSize(t, dir, usbboot.SoC2711, "bootcode4.bin"))
	return append(want, secondStage(t, dir, msdScript)...)
}

func TestE2EUSBBootList(t *testing.T) {
	sim := startSim(t, "--scenario", "msd", "--boards", "2")
	r := runBench(t, sim, time.Minute, "usbboot", "list")
	if r.code != 0 {
		t.Fatalf("usbboot list: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	for _, port := range []string{"1-1.1", "1-1.2"} {
		if !strings.Contains(r.stdout, port) {
			t.Errorf("usbboot list does not show %s:\n%s", port, r.stdout)
		}
	}
	for _, want := range []string{"2711", "rom", "high"} {
		if !strings.Contains(strings.ToLower(r.stdout), want) {
			t.Errorf("usbboot list output lacks %q:\n%s", want, r.stdout)
		}
	}
	rj := runBench(t, sim, time.Minute, "usbboot", "list", "--json")
	if rj.code != 0 {
		t.Fatalf("usbboot list --json: exit %d\n%s%s", rj.code, rj.stdout, rj.stderr)
	}
	if !json.Valid([]byte(rj.stdout)) {
		t.Fatalf("usbboot list --json is not JSON:\n%s", rj.stdout)
	}
	reports := sim.stop(t)
	for _, rep := range reports {
		if rep.ROMLoads != 0 || len(rep.Files) != 0 || len(rep.Violations) != 0 {
			t.Errorf("%s: listing touched the board: %+v", rep.Port, rep)
		}
	}
	for _, rec := range sim.records(t) {
		if rec.By == "kernel" || rec.Kind == "open" || rec.Kind == "close" {
			continue
		}
		if rec.Kind != "control" || deref(rec.RequestType) != 0x80 || deref(rec.Request) != 6 {
			t.Errorf("usbboot list did more than read descriptors: %+v", rec)
		}
	}
}

// TestE2EUSBBootNoUSB: with the library but no simulator (libusb_init fails
// exactly as on a machine without usbfs) list says so and exits non-zero.
func TestE2EUSBBootNoUSB(t *testing.T) {
	bin := benchBinary(t)
	cmd := exec.Command(bin, "usbboot", "list")
	cmd.Env = append(os.Environ(), "LD_LIBRARY_PATH="+artifacts(t), "CM4USBSIM_SOCKET=")
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() == 0 {
		t.Fatalf("usbboot list without USB: %v\n%s", err, out)
	}
	if strings.Contains(string(out), "panic") || strings.Contains(string(out), "goroutine ") {
		t.Fatalf("usbboot list without USB panicked:\n%s", out)
	}
	if !strings.Contains(strings.ToLower(string(out)), "usb") {
		t.Fatalf("usbboot list without USB does not say what is wrong:\n%s", out)
	}
}

// TestE2EUSBBootModes boots one board in legacy mass-storage mode, once
// with the usual single vendor interface (EP 0x01) and once with the
// 2837-style layout where the vendor interface is the second one (EP 0x03):
// the glue must claim the right interface and write the right endpoint. A
// gadget64 board then takes its DDR files from bootfiles.bin members and a
// 3 MiB boot.img.
func TestE2EUSBBootModes(t *testing.T) {
	for _, tc := range []struct {
		name     string
		soc      usbboot.SoC
		mode     usbboottest.Mode
		args     []string
		outEP    uint8
		bootcode string
		script   []scriptStep
	}{
		{"msd", usbboot.SoC2711, usbboottest.ModeMSD, nil, 0x01, "bootcode4.bin", msdScript},
		{"msd two interfaces", usbboot.SoC2711, usbboottest.ModeMSD, []string{"--two-interfaces"}, 0x03, "bootcode4.bin", msdScript},
		{"gadget", usbboot.SoC2711, usbboottest.ModeGadget, nil, 0x01, "bootcode4.bin", gadgetScript},
		// CM5: bootcode5.bin and the DDR files from the 2712/ members.
		{"2712 gadget", usbboot.SoC2712, usbboottest.ModeGadget, []string{"--soc", string(usbboot.SoC2712)}, 0x01, "bootcode5.bin", gadget2712Script},
		// BCM2835/7: full-speed ROM 0a5c:2763 with iSerialNumber index 0,
		// second stage 0a5c:2764 with index 1.
		{"2835 msd", usbboot.SoC2835, usbboottest.ModeMSD, []string{"--soc", string(usbboot.SoC2835)}, 0x01, "bootcode.bin", script2835},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := socBootDir(t, tc.soc, tc.mode)
			sim := startSim(t, append([]string{"--scenario", string(tc.mode)}, tc.args...)...)
			r := runBench(t, sim, 2*time.Minute, "usbboot", dir, "--timeout", "60s")
			if r.code != 0 {
				t.Fatalf("usbboot %s: exit %d\nstdout:\n%s\nstderr:\n%s", tc.mode, r.code, r.stdout, r.stderr)
			}
			reports := sim.stop(t)
			rep := reports[0]
			socCheckFiles(t, rep, dir, tc.soc)
			if rep.ROMLoads != 1 || !strings.Contains(rep.State, "mass-storage") && rep.State != "done" {
				t.Errorf("board ended in state %q after %d ROM loads, want done/mass-storage after 1", rep.State, rep.ROMLoads)
			}
			want := romTokens(fileSize(t, dir, tc.soc, tc.bootcode))
			want = append(want, socSecondStage(t, dir, tc.soc, tc.script)...)
			diffTokens(t, "1-1.1", protocol(t, sim.records(t), "1-1.1", tc.outEP), want)
		})
	}
}

func TestE2EUSBBootParallel(t *testing.T) {
	dir := bootDir(t, usbboottest.ModeMSD)
	sim := startSim(t, "--scenario", "msd", "--boards", "2")
	r := runBench(t, sim, 2*time.Minute, "usbboot", dir, "--timeout", "60s")
	if r.code != 0 {
		t.Fatalf("usbboot, two boards: exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	reports := sim.stop(t)
	if len(reports) != 2 {
		t.Fatalf("reports: %+v", reports)
	}
	recs := sim.records(t)
	want := msdSession(t, dir)
	for _, rep := range reports {
		checkFiles(t, rep, dir)
		diffTokens(t, rep.Port, protocol(t, recs, rep.Port, 0x01), want)
	}
	// Both boards were served at the same time, not one after the other.
	first := map[string][2]int64{}
	for _, rec := range recs {
		if rec.Kind != "bulk" {
			continue
		}
		w := first[rec.Port]
		if w[0] == 0 {
			w[0] = rec.MS
		}
		w[1] = rec.MS
		first[rec.Port] = w
	}
	a, b := first["1-1.1"], first["1-1.2"]
	if a[0] > b[1] || b[0] > a[1] {
		t.Errorf("the two boards were served one after the other: 1-1.1 %v ms, 1-1.2 %v ms", a, b)
	}
}

// recoverySession is the expected token stream of a recovery board: the
// ROM loads recovery.bin, the second stage reads config.txt, pieeprom.sig
// and pieeprom.bin, is silent while it flashes (silent: the number of READs
// that time out meanwhile), then sends metadata and Done.
func recoverySession(t *testing.T, dir string, metadata []string, silentREADs int) []string {
	want := romTokens(fileSize(t, dir, usbboot.SoC2711, "bootcode4.bin"))
	script := recoveryScript(metadata)
	want = append(want, secondStage(t, dir, script[:3])...)
	for range silentREADs {
		want = append(want, "TIMEOUT READ 260")
	}
	return append(want, secondStage(t, dir, script[3:])...)
}

func TestE2EUSBBootRecovery(t *testing.T) {
	dir := bootDir(t, usbboottest.ModeRecovery)
	meta := t.TempDir()
	sim := startSim(t, "--scenario", "recovery")
	r := runBench(t, sim, 2*time.Minute, "usbboot", dir, "--timeout", "60s", "--metadata-dir", meta)
	if r.code != 0 {
		t.Fatalf("usbboot recovery: exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	reports := sim.stop(t)
	rep := reports[0]
	checkFiles(t, rep, dir)
	if !containsPrefix(rep.Metadata, "*EEPROM_UPDATE*success") {
		t.Errorf("board metadata %q lacks EEPROM_UPDATE=success", rep.Metadata)
	}
	recs := sim.records(t)
	diffTokens(t, "1-1.1", protocol(t, recs, "1-1.1", 0x01), recoverySession(t, dir, rep.Metadata, 0))
	saveTranscript(t, "recovery", recs)
}

// failed returns the host transfers of a kind that did not succeed.
func failed(recs []libusbfake.Record, kind string) []libusbfake.Record {
	var out []libusbfake.Record
	for _, r := range recs {
		if r.Kind == kind && r.By == "" && r.Result != "ok" {
			out = append(out, r)
		}
	}
	return out
}

func containsPrefix(list []string, p string) bool {
	for _, s := range list {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// saveTranscript copies a transcript to $CM4_E2E_TRANSCRIPTS/NAME.jsonl
// when that is set (for the record of a real session).
func saveTranscript(t *testing.T, name string, recs []libusbfake.Record) {
	dir := os.Getenv("CM4_E2E_TRANSCRIPTS")
	if dir == "" {
		return
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	for _, r := range recs {
		if err := enc.Encode(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, name+".jsonl"), buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestE2EUSBBootFaults runs the real binary against each scripted fault:
// the failures end with the named error and a non-zero exit status, the
// recoverable ones still boot the board.
func TestE2EUSBBootFaults(t *testing.T) {
	for _, tc := range []struct {
		scenario string
		mode     usbboottest.Mode
		ok       bool     // the board must still boot
		code     int      // exit status of a failure (usbboot --help: 4 access denied, 5 board failed)
		msgs     []string // substrings of stderr (failures)
		check    func(t *testing.T, rep boardReport, recs []libusbfake.Record)
	}{
		{scenario: "disconnect", mode: usbboottest.ModeMSD, code: 5, msgs: []string{"1-1.1: send start4.elf", usbboot.ErrVanished.Error()}},
		{scenario: "stall", mode: usbboottest.ModeMSD, code: 5, msgs: []string{"1-1.1: answer GetFileSize config.txt", usbboot.ErrStall.Error()}},
		{scenario: "sizetimeout", mode: usbboottest.ModeMSD, code: 5, msgs: []string{"1-1.1: answer GetFileSize config.txt", usbboot.ErrTimeout.Error()},
			check: func(t *testing.T, rep boardReport, recs []libusbfake.Record) {
				// The SIZE timeout is 1 s (usbboot.md §2.1), enforced by libusb.
				r := failed(recs, "control")
				if len(r) != 1 || r[0].DurMS < 800 || r[0].DurMS > 3000 || r[0].Result != "LIBUSB_ERROR_TIMEOUT" {
					t.Errorf("want one SIZE given up after 1 s, got %+v", r)
				}
			}},
		{scenario: "shortbulk", mode: usbboottest.ModeMSD, code: 5, msgs: []string{"1-1.1: send start4.elf", usbboot.ErrShortWrite.Error()}},
		{scenario: "fullspeed", mode: usbboottest.ModeMSD, code: 5, msgs: []string{"1-1.1: send boot message", usbboot.ErrFullSpeed.Error()},
			check: func(t *testing.T, rep boardReport, recs []libusbfake.Record) {
				// The boot message's bulk never completes; the host cancels it after 5 s.
				r := failed(recs, "bulk")
				if len(r) != 1 || r[0].DurMS < 4000 || r[0].DurMS > 9000 {
					t.Errorf("want one bulk given up after 5 s, got %+v", r)
				}
			}},
		{scenario: "reject", mode: usbboottest.ModeMSD, code: 5, msgs: []string{"1-1.1: send bootcode4.bin", usbboot.ErrBootcodeRejected.Error()}},
		{scenario: "access", mode: usbboottest.ModeMSD, code: 4, msgs: []string{"1-1.1: open", usbboot.ErrAccess.Error(), "udev-rules"}},
		{scenario: "openfail", mode: usbboottest.ModeMSD, ok: true},
		{scenario: "romtwice", mode: usbboottest.ModeMSD, ok: true, check: func(t *testing.T, rep boardReport, _ []libusbfake.Record) {
			if rep.ROMLoads != 2 {
				t.Errorf("ROM loads = %d, want 2 (the ROM came back once)", rep.ROMLoads)
			}
		}},
		{scenario: "silent", mode: usbboottest.ModeRecovery, ok: true, check: func(t *testing.T, rep boardReport, recs []libusbfake.Record) {
			// The silent flash outlasts one READ: the host must wait the
			// full 20 s, then ask again (usbboot.md §2.3).
			silent := failed(recs, "control")
			if len(silent) != 1 || silent[0].Result != "LIBUSB_ERROR_TIMEOUT" || silent[0].DurMS < 18000 || silent[0].DurMS > 23000 {
				t.Errorf("want exactly one READ given up after 20 s, got %+v", silent)
			}
			diffTokens(t, rep.Port, protocol(t, recs, rep.Port, 0x01),
				recoverySession(t, bootDir(t, usbboottest.ModeRecovery), rep.Metadata, 1))
		}},
	} {
		t.Run(tc.scenario, func(t *testing.T) {
			t.Parallel()
			dir := bootDir(t, tc.mode)
			sim := startSim(t, "--scenario", tc.scenario)
			r := runBench(t, sim, 2*time.Minute, "usbboot", dir, "--timeout", "40s")
			reports := sim.stop(t)
			recs := sim.records(t)
			rep := reports[0]
			t.Logf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
			if tc.ok {
				if r.code != 0 {
					t.Fatalf("exit %d, want 0\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
				}
				checkFiles(t, rep, dir)
			} else {
				if r.code != tc.code {
					t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", r.code, tc.code, r.stdout, r.stderr)
				}
				for _, m := range tc.msgs {
					if !strings.Contains(r.stderr+r.stdout, m) {
						t.Errorf("output lacks %q\nstdout:\n%s\nstderr:\n%s", m, r.stdout, r.stderr)
					}
				}
				if strings.Contains(r.stderr, "panic") {
					t.Errorf("panic:\n%s", r.stderr)
				}
			}
			// Whatever happened, the host kept to the protocol's rules.
			_ = protocol(t, recs, rep.Port, 0x01)
			if tc.check != nil {
				tc.check(t, rep, recs)
			}
		})
	}
}

// TestE2EEEPROMSetBootOrder flashes BOOT_ORDER=0xf21 through recovery.bin on
// a simulated board with "cm4bench eeprom set-boot-order": the image the
// board received must be byte-identical to the one upstream's
// rpi-eeprom-config produced from the same release (the shared vector),
// and the board's EEPROM_UPDATE=success must be what makes it pass.
func TestE2EEEPROMSetBootOrder(t *testing.T) {
	vec := func(name string) string { return usbboottest.SharedFile(t, "eeprom-vectors/"+name) }
	for _, tc := range []struct {
		scenario string
		code     int
		msg      string
	}{
		{"recovery", 0, ""},
		{"flashfail", 5, usbboot.ErrEEPROMUpdate.Error()},
		{"wronghash", 5, "EEPROM_HASH"},
	} {
		t.Run(tc.scenario, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "recovery")
			meta := t.TempDir()
			sim := startSim(t, "--scenario", tc.scenario)
			r := runBench(t, sim, 2*time.Minute, "eeprom", "set-boot-order", "0xf21",
				"--image", vec("pieeprom-2026-05-17.bin"), "--recovery", vec("recovery.bin"),
				"--out-dir", out, "--timestamp", "1700000000", "--timeout", "60s", "--metadata-dir", meta)
			t.Logf("exit %d\n%s%s", r.code, r.stdout, r.stderr)
			if r.code != tc.code {
				t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", r.code, tc.code, r.stdout, r.stderr)
			}
			if tc.msg != "" && !strings.Contains(r.stdout+r.stderr, tc.msg) {
				t.Errorf("output lacks %q", tc.msg)
			}
			reports := sim.stop(t)
			rep := reports[0]
			recs := sim.records(t)
			checkFiles(t, rep, out)
			// What the board received is what upstream's tools make.
			for name, vector := range map[string]string{
				"pieeprom.bin":  "pieeprom-2026-05-17.bootorder-f21.bin",
				"pieeprom.sig":  "pieeprom-2026-05-17.bootorder-f21.sig",
				"bootcode4.bin": "recovery.bin",
			} {
				want, _ := usbboottest.ExpectedSHA256(t, filepath.Dir(vec(vector)), usbboot.SoC2711, vector)
				var got string
				for _, f := range rep.Files {
					if f.Name == name && f.Received {
						got = f.SHA256
					}
				}
				if got != want {
					t.Errorf("board received %s with sha256 %q, want %s (%s)", name, got, want, vector)
				}
			}
			diffTokens(t, rep.Port, protocol(t, recs, rep.Port, 0x01), recoverySession(t, out, rep.Metadata, 0))
			if tc.code != 0 {
				return
			}
			// rpiboot -j style metadata file, named after the serial.
			entries, err := os.ReadDir(meta)
			if err != nil || len(entries) != 1 {
				t.Fatalf("metadata dir: %v %v", entries, err)
			}
			data, err := os.ReadFile(filepath.Join(meta, entries[0].Name()))
			if err != nil {
				t.Fatal(err)
			}
			var m map[string]string
			if err := json.Unmarshal(data, &m); err != nil || m["EEPROM_UPDATE"] != "success" {
				t.Errorf("metadata %s = %s (%v), want EEPROM_UPDATE success", entries[0].Name(), data, err)
			}
			saveTranscript(t, "set-boot-order", recs)
		})
	}
}
