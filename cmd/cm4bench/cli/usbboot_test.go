package cli

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cm4bench/cm4bench/firmware"
	"github.com/cm4bench/cm4bench/internal/syncbuf"
	"github.com/cm4bench/cm4bench/usbboot"
	"github.com/cm4bench/cm4bench/usbboot/gousbdev"
	"github.com/cm4bench/cm4bench/usbboot/usbboottest"
)

// simBench is a simulated USB bus with boards, injected into the CLI.
type simBench struct {
	clk    *usbboottest.Clock
	bus    *usbboottest.Bus
	boards []*usbboottest.Board
}

func newSimBench(t *testing.T, cfgs ...usbboottest.BoardConfig) *simBench {
	t.Helper()
	s := &simBench{clk: usbboottest.NewClock()}
	s.bus = usbboottest.NewBus(s.clk)
	for _, c := range cfgs {
		c.Clock = s.clk
		b, err := usbboottest.NewBoard(c)
		if err != nil {
			t.Fatal(err)
		}
		s.bus.Add(b)
		s.boards = append(s.boards, b)
	}
	return s
}

func (s *simBench) run(t *testing.T, ctx context.Context, args ...string) (string, string, error) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	err := Context{Stdout: &stdout, Stderr: &stderr, Args: args, USB: &USBEnv{Bus: s.bus, Clock: s.clk}}.Execute(ctx)
	return stdout.String(), stderr.String(), err
}

// checkBoard verifies every byte the board received against dir.
func checkBoard(t *testing.T, b *usbboottest.Board, dir string) []string {
	t.Helper()
	if v := b.Violations(); len(v) > 0 {
		t.Errorf("%s: protocol violations %q", b.Config().Port, v)
	}
	var got []string
	for _, f := range b.Files() {
		if !f.Received {
			continue
		}
		got = append(got, f.Name)
		want, ok := usbboottest.ExpectedSHA256(t, dir, b.Config().SoC, f.Name)
		if !ok || want != f.SHA256 {
			t.Errorf("%s: %s sha256 %s, want %s", b.Config().Port, f.Name, f.SHA256, want)
		}
	}
	return got
}

func TestUSBBootServesDirectories(t *testing.T) {
	for _, tt := range []struct {
		name string
		soc  usbboot.SoC
		mode usbboottest.Mode
		want string
	}{
		{"msd", usbboot.SoC2711, usbboottest.ModeMSD, "bootcode4.bin start4.elf"},
		{"2835 msd", usbboot.SoC2835, usbboottest.ModeMSD, "bootcode.bin start.elf"},
		{"gadget64", usbboot.SoC2711, usbboottest.ModeGadget, "bootcode4.bin mcb.bin memsys00.bin memsys01.bin memsys02.bin memsys03.bin memsys04.bin memsys05.bin memsys06.bin memsys07.bin memsys08.bin bootmain config.txt boot.img"},
		{"recovery", usbboot.SoC2711, usbboottest.ModeRecovery, "bootcode4.bin config.txt pieeprom.sig pieeprom.bin"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := newSimBench(t, usbboottest.BoardConfig{Port: "1-1.3", SoC: tt.soc, Mode: tt.mode})
			dir := usbboottest.BootDir(t, filepath.Join(t.TempDir(), "boot"), tt.soc, tt.mode)
			stdout, stderr, err := s.run(t, t.Context(), "usbboot", dir)
			if err != nil {
				t.Fatalf("usbboot: %v\nstdout:\n%s\nstderr:\n%s", err, stdout, stderr)
			}
			if got := strings.Join(checkBoard(t, s.boards[0], dir), " "); got != tt.want {
				t.Errorf("served %q, want %q", got, tt.want)
			}
			if !strings.Contains(stdout, "1-1.3") || !strings.Contains(stdout, " ok ") {
				t.Errorf("summary does not report the board ok:\n%s", stdout)
			}
		})
	}
}

func TestUSBBootExitStatus(t *testing.T) {
	for _, tt := range []struct {
		name   string
		mode   usbboottest.Mode
		faults []usbboottest.Fault
		args   []string
		code   int
		want   string
	}{
		{"vanished mid-file", usbboottest.ModeMSD, []usbboottest.Fault{{Kind: usbboottest.FaultDisconnect, At: "start4.elf"}}, nil, exitUSBFailed, "vanished mid-file"},
		{"access denied", usbboottest.ModeMSD, []usbboottest.Fault{{Kind: usbboottest.FaultAccessDenied}}, nil, exitUSBAccess, "udev-rules"},
		{"bootcode rejected", usbboottest.ModeMSD, []usbboottest.Fault{{Kind: usbboottest.FaultRejectBootcode}}, nil, exitUSBFailed, "rejected the second stage"},
		{"full speed", usbboottest.ModeMSD, []usbboottest.Fault{{Kind: usbboottest.FaultFullSpeed}}, nil, exitUSBFailed, "full speed"},
		{"stall", usbboottest.ModeMSD, []usbboottest.Fault{{Kind: usbboottest.FaultStall, At: "config.txt"}}, nil, exitUSBFailed, "endpoint stalled"},
		{"SIZE timeout every time", usbboottest.ModeMSD, []usbboottest.Fault{{Kind: usbboottest.FaultSizeTimeout, At: "bootmsg", Times: -1}}, nil, exitUSBFailed, "timed out"},
		// U2: a ROM transfer that fails once is retried after 1 s, as rpiboot does.
		{"survives one ROM SIZE timeout", usbboottest.ModeMSD, []usbboottest.Fault{{Kind: usbboottest.FaultSizeTimeout, At: "bootmsg"}}, nil, 0, ""},
		{"survives two ROM stalls", usbboottest.ModeMSD, []usbboottest.Fault{{Kind: usbboottest.FaultStall, At: "bootcode4.bin", Times: 2}}, nil, 0, ""},
		{"three ROM stalls fail", usbboottest.ModeMSD, []usbboottest.Fault{{Kind: usbboottest.FaultStall, At: "bootcode4.bin", Times: 3}}, nil, exitUSBFailed, "endpoint stalled"},
		// U3: the status read is lost after a complete bootcode.
		{"survives a lost status read", usbboottest.ModeMSD, []usbboottest.Fault{{Kind: usbboottest.FaultStatusLost}}, nil, 0, ""},
		// U1: access denied and an unconfigured device right after enumeration.
		{"survives access denied for 500 ms", usbboottest.ModeMSD, []usbboottest.Fault{{Kind: usbboottest.FaultAccessDeniedBriefly}}, nil, 0, ""},
		{"access denied past the grace", usbboottest.ModeMSD, []usbboottest.Fault{{Kind: usbboottest.FaultAccessDeniedBriefly, Duration: 3 * time.Second}}, nil, exitUSBAccess, "udev-rules"},
		{"survives an unconfigured device", usbboottest.ModeMSD, []usbboottest.Fault{{Kind: usbboottest.FaultUnconfigured}}, nil, 0, ""},
		{"short bulk", usbboottest.ModeMSD, []usbboottest.Fault{{Kind: usbboottest.FaultShortBulk, At: "start4.elf"}}, nil, exitUSBFailed, "fewer bytes"},
		{"deadline", usbboottest.ModeRecovery, []usbboottest.Fault{{Kind: usbboottest.FaultSilentFlash, Duration: 10 * time.Minute}}, []string{"--timeout", "1m"}, exitUSBTimeout, "deadline passed"},
		{"flash failed", usbboottest.ModeRecovery, []usbboottest.Fault{{Kind: usbboottest.FaultFlashFails}}, nil, exitUSBFailed, "EEPROM_UPDATE=fail"},
		{"survives the 20 s silence", usbboottest.ModeRecovery, []usbboottest.Fault{{Kind: usbboottest.FaultSilentFlash, Duration: 25 * time.Second}}, nil, 0, ""},
		{"survives open failing once", usbboottest.ModeMSD, []usbboottest.Fault{{Kind: usbboottest.FaultOpenFailsOnce}}, nil, 0, ""},
		{"survives the ROM twice", usbboottest.ModeMSD, []usbboottest.Fault{{Kind: usbboottest.FaultROMTwice}}, nil, 0, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := newSimBench(t, usbboottest.BoardConfig{Port: "1-2", Mode: tt.mode, Faults: tt.faults})
			dir := usbboottest.BootDir(t, filepath.Join(t.TempDir(), "boot"), usbboot.SoC2711, tt.mode)
			stdout, _, err := s.run(t, t.Context(), append([]string{"usbboot", dir}, tt.args...)...)
			if tt.code == 0 {
				if err != nil {
					t.Fatalf("usbboot: %v", err)
				}
				checkBoard(t, s.boards[0], dir)
				return
			}
			if err == nil {
				t.Fatalf("usbboot succeeded; stdout:\n%s", stdout)
			}
			if got := ExitCode(err); got != tt.code {
				t.Errorf("exit status %d, want %d (%v)", got, tt.code, err)
			}
			if !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "1-2") {
				t.Errorf("error %q does not say %q and the port", err, tt.want)
			}
			if !strings.Contains(stdout, "FAILED") {
				t.Errorf("summary does not show the failure:\n%s", stdout)
			}
		})
	}
}

func TestUSBBootNoDevice(t *testing.T) {
	s := newSimBench(t)
	dir := usbboottest.BootDir(t, t.TempDir(), usbboot.SoC2711, usbboottest.ModeMSD)
	_, _, err := s.run(t, t.Context(), "usbboot", dir, "--timeout", "20s")
	if ExitCode(err) != exitUSBNoDevice || !strings.Contains(err.Error(), "no RPIBOOT device") {
		t.Fatalf("err %v (exit %d), want no device, exit %d", err, ExitCode(err), exitUSBNoDevice)
	}
}

func TestUSBBootUsageErrors(t *testing.T) {
	s := newSimBench(t)
	dir := usbboottest.BootDir(t, t.TempDir(), usbboot.SoC2711, usbboottest.ModeMSD)
	empty := t.TempDir()
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"nothing to serve", []string{"usbboot"}, "what to serve"},
		{"not a boot dir", []string{"usbboot", empty}, "no bootfiles.bin and no bootcode"},
		{"missing dir", []string{"usbboot", filepath.Join(empty, "nope")}, "no such file"},
		{"both DIR and --mode", []string{"usbboot", dir, "--mode", "msd"}, "either as DIR or as --mode"},
		{"bad port", []string{"usbboot", dir, "--port", "usb3"}, "--port \"usb3\""},
		{"msd not cached", []string{"usbboot", "--mode", "msd", "--cache", empty}, "cm4bench firmware fetch msd"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := s.run(t, t.Context(), tt.args...)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestUSBBootJSONAndMetadata(t *testing.T) {
	s := newSimBench(t,
		usbboottest.BoardConfig{Port: "1-1.1", Mode: usbboottest.ModeRecovery, Serial: "af04b2da"},
		usbboottest.BoardConfig{Port: "1-1.2", Mode: usbboottest.ModeRecovery, Serial: "10000002"},
	)
	dir := usbboottest.BootDir(t, filepath.Join(t.TempDir(), "boot"), usbboot.SoC2711, usbboottest.ModeRecovery)
	md := filepath.Join(t.TempDir(), "boards")
	stdout, _, err := s.run(t, t.Context(), "usbboot", "--mode", dir, "--metadata-dir", md, "--json")
	if err != nil {
		t.Fatalf("usbboot: %v", err)
	}
	results := map[string]boardReport{}
	kinds := map[string]int{}
	sc := bufio.NewScanner(strings.NewReader(stdout))
	for sc.Scan() {
		var ev map[string]any
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			t.Fatalf("stdout line %q is not JSON: %v", sc.Text(), err)
		}
		kinds[ev["event"].(string)]++
		if ev["event"] == "result" {
			var r boardReport
			if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
				t.Fatal(err)
			}
			results[r.Port] = r
		}
	}
	for _, k := range []string{"attached", "bootcode", "second-stage", "file-done", "metadata", "done", "result"} {
		if kinds[k] == 0 {
			t.Errorf("no %q event in the JSON stream (got %v)", k, kinds)
		}
	}
	if kinds["progress"] != 0 {
		t.Errorf("progress events leaked into --json output")
	}
	sig := sha256File(t, filepath.Join(dir, "pieeprom.bin"))
	for _, b := range s.boards {
		cfg := b.Config()
		r, ok := results[cfg.Port]
		if !ok || !r.OK || r.Serial != cfg.Serial || r.Metadata["EEPROM_UPDATE"] != "success" || r.Metadata["EEPROM_HASH"] != sig {
			t.Errorf("%s: result %+v", cfg.Port, r)
		}
		checkBoard(t, b, dir)
		raw, err := os.ReadFile(filepath.Join(md, cfg.Serial+".json"))
		if err != nil {
			t.Fatalf("metadata file: %v", err)
		}
		var m map[string]string
		if err := json.Unmarshal(raw, &m); err != nil {
			t.Fatalf("metadata %s is not JSON: %v\n%s", cfg.Serial, err, raw)
		}
		if m["EEPROM_HASH"] != sig || m["USER_SERIAL_NUM"] != cfg.Serial || !strings.HasPrefix(string(raw), "{\n\t\"MAC_ADDR\": ") {
			t.Errorf("metadata file %s:\n%s", cfg.Serial, raw)
		}
	}
	if names := dirNames(t, md); len(names) != 2 {
		t.Errorf("metadata dir holds %q, want two files and no leftovers", names)
	}
}

func sha256File(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func TestUSBBootPortFilter(t *testing.T) {
	s := newSimBench(t,
		usbboottest.BoardConfig{Port: "1-1.1", Mode: usbboottest.ModeMSD},
		usbboottest.BoardConfig{Port: "1-1.2", Mode: usbboottest.ModeMSD, Serial: "0badc0de"},
		usbboottest.BoardConfig{Port: "1-1.3", Mode: usbboottest.ModeMSD},
	)
	dir := usbboottest.BootDir(t, filepath.Join(t.TempDir(), "boot"), usbboot.SoC2711, usbboottest.ModeMSD)
	if _, _, err := s.run(t, t.Context(), "usbboot", dir, "--port", "1-1.3"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.run(t, t.Context(), "usbboot", dir, "--serial", "0BADC0DE"); err != nil {
		t.Fatal(err)
	}
	if n := s.bus.Opens("1-1.1"); n != 0 {
		t.Errorf("filters opened the unselected board on 1-1.1 %d times", n)
	}
	for _, i := range []int{1, 2} {
		if st := s.boards[i].State(); st != "done" && st != "mass-storage" {
			s.clk.Advance(3 * time.Second)
			if st = s.boards[i].State(); st != "mass-storage" {
				t.Errorf("board %d state %q", i, st)
			}
		}
	}
	if st := s.boards[0].State(); st != "rom" {
		t.Errorf("unselected board state %q, want rom", st)
	}
}

func TestUSBBootList(t *testing.T) {
	s := newSimBench(t,
		usbboottest.BoardConfig{Port: "1-1.1", Serial: "af04b2da"},
		usbboottest.BoardConfig{Port: "1-1.2", Faults: []usbboottest.Fault{{Kind: usbboottest.FaultFullSpeed}}},
		usbboottest.BoardConfig{Port: "2-1", SoC: usbboot.SoC2835},
	)
	s.bus.AddOther(usbboot.Desc{Bus: 1, Port: "1-4", Address: 3, VID: 0x046d, PID: 0xc52b, Speed: usbboot.SpeedFull})
	stdout, _, err := s.run(t, t.Context(), "usbboot", "list")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"1-1.1", "0a5c:2711", "rom", "high", "af04b2da", "ROM at full speed", "0a5c:2763"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("list output lacks %q:\n%s", want, stdout)
		}
	}
	if strings.Contains(stdout, "1-4") {
		t.Errorf("list shows a non-RPIBOOT device without --all:\n%s", stdout)
	}
	stdout, _, err = s.run(t, t.Context(), "usbboot", "list", "--all", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var rows []usbDevice
	if err := json.Unmarshal([]byte(stdout), &rows); err != nil {
		t.Fatal(err)
	}
	if len(rows) != 4 || rows[3].Port != "2-1" || rows[3].Speed != "full" || rows[3].Warning != "" || rows[0].Stage != "rom" {
		t.Errorf("rows %+v", rows)
	}
	for _, b := range s.boards {
		if n := s.bus.Opens(b.Config().Port); n != 0 {
			t.Errorf("list opened %s", b.Config().Port)
		}
	}
}

// On this machine (no USB subsystem) the real libusb path must say so
// plainly and exit non-zero, never panic.
func TestUSBBootListWithoutUSB(t *testing.T) {
	if gousbdev.SubsystemPresent() {
		t.Skip("this machine has a USB subsystem")
	}
	stdout, _, err := runCLI(t, "usbboot", "list")
	if err == nil || ExitCode(err) != exitUSBNoDevice || !strings.Contains(err.Error(), "no USB subsystem") {
		t.Fatalf("usbboot list: %v (exit %d), stdout %q", err, ExitCode(err), stdout)
	}
	dir := usbboottest.BootDir(t, t.TempDir(), usbboot.SoC2711, usbboottest.ModeMSD)
	_, _, err = runCLI(t, "usbboot", dir)
	if err == nil || ExitCode(err) != exitUSBNoDevice || !strings.Contains(err.Error(), "no USB subsystem") {
		t.Fatalf("usbboot DIR: %v (exit %d)", err, ExitCode(err))
	}
}

func TestUSBBootUdevRules(t *testing.T) {
	stdout, _, err := runCLI(t, "usbboot", "udev-rules", "--group", "bench")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`ATTR{idVendor}=="0a5c"`, `ATTR{idProduct}=="2763|2764|2711|2712"`, `GROUP="bench"`, `TAG+="uaccess"`} {
		if !strings.Contains(stdout, want) {
			t.Errorf("rules lack %s:\n%s", want, stdout)
		}
	}
	if _, _, err := runCLI(t, "usbboot", "udev-rules", "--group", `x" RUN+="/bin/sh`); err == nil {
		t.Error("a --group that injects udev syntax was accepted")
	}
}

func TestEEPROMSetBootOrderFlashes(t *testing.T) {
	img := eepromVector(t, "pieeprom-2026-05-17.bin")
	recovery := eepromVector(t, "recovery.bin")
	for _, tt := range []struct {
		name   string
		faults []usbboottest.Fault
		code   int
		want   string
	}{
		{"success", nil, 0, ""},
		{"EEPROM_UPDATE=fail", []usbboottest.Fault{{Kind: usbboottest.FaultFlashFails}}, exitUSBFailed, "EEPROM_UPDATE=fail"},
		{"wrong EEPROM_HASH", []usbboottest.Fault{{Kind: usbboottest.FaultWrongHash}}, exitUSBFailed, "EEPROM_HASH"},
		{"vanished while sending the image", []usbboottest.Fault{{Kind: usbboottest.FaultDisconnect, At: "pieeprom.bin"}}, exitUSBFailed, "vanished"},
		{"silent 25 s while flashing", []usbboottest.Fault{{Kind: usbboottest.FaultSilentFlash, Duration: 25 * time.Second}}, 0, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := newSimBench(t, usbboottest.BoardConfig{Port: "1-1.4", Mode: usbboottest.ModeRecovery, Faults: tt.faults})
			out := filepath.Join(t.TempDir(), "rec")
			stdout, stderr, err := s.run(t, t.Context(), "eeprom", "set-boot-order", "0xf21", "--image", img, "--recovery", recovery,
				"--out-dir", out, "--timestamp", "1700000000")
			if tt.code != 0 {
				if ExitCode(err) != tt.code || !strings.Contains(err.Error(), tt.want) {
					t.Fatalf("err %v (exit %d), want exit %d and %q", err, ExitCode(err), tt.code, tt.want)
				}
				return
			}
			if err != nil {
				t.Fatalf("set-boot-order: %v\n%s\n%s", err, stdout, stderr)
			}
			b := s.boards[0]
			checkBoard(t, b, out)
			if got := sha256File(t, filepath.Join(out, "bootcode4.bin")); got != sha256File(t, recovery) {
				t.Error("bootcode4.bin is not recovery.bin")
			}
			var hash string
			for _, m := range b.Metadata() {
				if v, ok := strings.CutPrefix(m, "*EEPROM_HASH*"); ok {
					hash = v
				}
			}
			if want := sha256File(t, filepath.Join(out, "pieeprom.bin")); hash != want {
				t.Errorf("board flashed %s, built %s", hash, want)
			}
			if !strings.Contains(stdout, "EEPROM_UPDATE=success") {
				t.Errorf("report lacks EEPROM_UPDATE=success:\n%s", stdout)
			}
		})
	}
}

func TestEEPROMSetBootOrderFlashLoop(t *testing.T) {
	img := eepromVector(t, "pieeprom-2026-05-17.bin")
	recovery := eepromVector(t, "recovery.bin")
	s := newSimBench(t,
		usbboottest.BoardConfig{Port: "1-1.1", Mode: usbboottest.ModeRecovery},
		usbboottest.BoardConfig{Port: "1-1.2", Mode: usbboottest.ModeRecovery},
	)
	// The loop is interrupted once both boards' results are printed (or
	// after a minute, which fails the count below).
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	var out syncbuf.Buffer // read here while the command writes it
	go func() {
		for strings.Count(out.String(), `"event":"result"`) < 2 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
		cancel()
	}()
	var stderr bytes.Buffer
	err := Context{Stdout: &out, Stderr: &stderr, Args: []string{"eeprom", "set-boot-order", "--image", img, "--recovery", recovery, "--loop", "--json"},
		USB: &USBEnv{Bus: s.bus, Clock: s.clk}}.Execute(ctx)
	stdout := out.String()
	if err != nil {
		t.Fatalf("--loop ends cleanly on interrupt, got %v\n%s", err, stderr.String())
	}
	if n := strings.Count(stdout, `"event":"result"`); n != 2 {
		t.Errorf("%d results, want 2:\n%s", n, stdout)
	}
	if strings.Contains(stdout, `"ok":false`) {
		t.Errorf("a board failed:\n%s", stdout)
	}
}

// --mode recovery serves the verified recovery set of the firmware cache
// (imported offline here from the real files in ../shared): recovery.bin
// reports the board's metadata; with no pieeprom.bin nothing is flashed
// (EEPROM_UPDATE=none), which is not a failure for usbboot.
func TestUSBBootModeRecoveryFromCache(t *testing.T) {
	cacheDir := t.TempDir()
	cat, err := firmware.Default()
	if err != nil {
		t.Fatal(err)
	}
	c := &firmware.Cache{Dir: cacheDir, Catalogue: cat, Offline: true}
	if _, err := c.Import(usbboottest.SharedDir(t)); err != nil {
		t.Fatal(err)
	}
	s := newSimBench(t, usbboottest.BoardConfig{Port: "1-1.1", Mode: usbboottest.ModeRecovery, Serial: "af04b2da"})
	md := t.TempDir()
	stdout, stderr, err := s.run(t, t.Context(), "usbboot", "--mode", "recovery", "--cache", cacheDir, "--metadata-dir", md)
	if err != nil {
		t.Fatalf("usbboot --mode recovery: %v\n%s\n%s", err, stdout, stderr)
	}
	for _, want := range []string{"EEPROM_UPDATE=none", "MAC_ADDR=d8:3a:dd:", "USER_SERIAL_NUM=af04b2da"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("report lacks %s:\n%s", want, stdout)
		}
	}
	if raw, err := os.ReadFile(filepath.Join(md, "af04b2da.json")); err != nil || !strings.Contains(string(raw), `"EEPROM_UPDATE": "none"`) {
		t.Errorf("metadata file: %v\n%s", err, raw)
	}
	files := s.boards[0].Files()
	if len(files) < 3 || files[0].Name != "bootcode4.bin" || files[1].Name != "config.txt" || !files[1].Received || files[2].Name != "pieeprom.sig" || files[2].Size != 0 {
		t.Fatalf("files %+v", files)
	}
	if got, want := files[0].SHA256, sha256File(t, eepromVector(t, "recovery.bin")); got != want {
		t.Errorf("bootcode4.bin sha256 %s, want recovery.bin's %s", got, want)
	}
}

// The progress bar (drawn only on a terminal) covers every board in flight.
func TestUSBBootProgressBar(t *testing.T) {
	var bar bytes.Buffer
	u := &usbReporter{bars: true, stdout: io.Discard, stderr: &bar}
	for _, e := range []usbboot.Event{
		{Kind: usbboot.EventFileStart, Port: "1-1.1", File: "start4.elf", Total: 536536},
		{Kind: usbboot.EventFileStart, Port: "1-1.2", File: "boot.img", Total: 3 << 20},
		{Kind: usbboot.EventProgress, Port: "1-1.2", File: "boot.img", Bytes: 1 << 20, Total: 3 << 20},
	} {
		u.event(e)
	}
	if out := bar.String(); !strings.Contains(out, "1-1.1 #1 start4.elf | 1-1.2 #1 boot.img") {
		t.Errorf("bar does not show both boards:\n%q", out)
	}
	u.event(usbboot.Event{Kind: usbboot.EventFileDone, Port: "1-1.1", File: "start4.elf", Bytes: 536536, Total: 536536})
	u.event(usbboot.Event{Kind: usbboot.EventDone, Port: "1-1.1"})
	u.event(usbboot.Event{Kind: usbboot.EventFailed, Port: "1-1.2"})
	if u.bar != nil || len(u.boards) != 0 {
		t.Errorf("bar still up after every board finished")
	}
}
