package cli

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cm4bench/cm4bench/eeprom"
	"github.com/cm4bench/cm4bench/eeprom/eepromtest"
	"github.com/cm4bench/cm4bench/usbboot"
	"github.com/cm4bench/cm4bench/usbboot/usbboottest"
)

// --timestamp is base 10 as upstream parses it: never octal, never hex,
// never negative; "was it given" is not a -1 sentinel.
func TestTimestampFlagIsBase10(t *testing.T) {
	img := eepromVector(t, "pieeprom-2026-05-17.bin")
	stored := func(t *testing.T, p string) (uint32, bool) {
		t.Helper()
		im, err := eeprom.Parse(readFile(t, p))
		if err != nil {
			t.Fatal(err)
		}
		return im.Timestamp()
	}
	for _, tt := range []struct {
		arg     string
		want    uint32
		wantErr string
	}{
		{"012", 12, ""},
		{"0", 0, ""},
		{"1700000000", 1700000000, ""},
		{"4294967294", 4294967294, ""},
		{"+7", 7, ""},
		{"1_000", 1000, ""},
		{"-1", 0, "negative"},
		{"-5", 0, "negative"},
		{"0x10", 0, "base-10"},
		{"0o17", 0, "base-10"},
		{"0b11", 0, "base-10"},
		{"4294967296", 0, "32 bits"},
		{"", 0, "base-10"},
	} {
		t.Run(tt.arg, func(t *testing.T) {
			for _, cmd := range [][]string{
				{"eeprom", "set", img, "BOOT_UART=1", "--timestamp", tt.arg},
				{"eeprom", "config", img, "--apply", eepromVector(t, "pieeprom-2026-05-17.config.txt"), "--timestamp", tt.arg},
			} {
				out := filepath.Join(t.TempDir(), "out.bin")
				_, _, err := runCLI(t, append(cmd, "--out", out)...)
				if tt.wantErr != "" {
					if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
						t.Fatalf("%s: %v, want %q", cmd[1], err, tt.wantErr)
					}
					if _, serr := os.Stat(out); serr == nil {
						t.Errorf("%s: refused timestamp left %s", cmd[1], out)
					}
					continue
				}
				if err != nil {
					t.Fatalf("%s: %v", cmd[1], err)
				}
				if got, ok := stored(t, out); !ok || got != tt.want {
					t.Errorf("%s: stored %d (set %v), want %d", cmd[1], got, ok, tt.want)
				}
			}
			sig, _, err := runCLI(t, "eeprom", "digest", img, "--timestamp", tt.arg)
			if tt.wantErr != "" {
				if err == nil {
					t.Errorf("digest accepted --timestamp %q", tt.arg)
				}
				return
			}
			if err != nil || !strings.Contains(sig, fmt.Sprintf("\nts: %d\n", tt.want)) {
				t.Errorf("digest: %q, %v", sig, err)
			}
		})
	}
	// Not given: the slot is left alone (release images have none).
	out := filepath.Join(t.TempDir(), "out.bin")
	if _, _, err := runCLI(t, "eeprom", "set", img, "BOOT_UART=1", "--out", out); err != nil {
		t.Fatal(err)
	}
	if _, ok := stored(t, out); ok {
		t.Error("a timestamp was set without --timestamp")
	}
}

// The stock 2712 updatetime (0, 0xffffffff) is "not set", not a date.
func TestEEPROMInfo2712StockTimestamp(t *testing.T) {
	p := filepath.Join(t.TempDir(), "cm5.bin")
	if err := os.WriteFile(p, eepromtest.Image2712("[all]\nBOOT_ORDER=0xf461\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, _, err := runCLI(t, "eeprom", "info", p)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "update timestamp:") || !strings.Contains(out, "not set") || strings.Contains(out, "4294967295") {
		t.Errorf("info:\n%s", out)
	}
	// and a real one still shows
	set := filepath.Join(t.TempDir(), "cm5-ts.bin")
	if _, _, err := runCLI(t, "eeprom", "set", p, "BOOT_UART=1", "--timestamp", "1700000000", "--out", set); err != nil {
		t.Fatal(err)
	}
	if out, _, _ := runCLI(t, "eeprom", "info", set); !strings.Contains(out, "1700000000") {
		t.Errorf("info after --timestamp:\n%s", out)
	}
	b := readFile(t, set)
	if binary.LittleEndian.Uint32(b[len(b)-4:]) == 1700000000 {
		t.Error("2712 timestamp written to the last 8 bytes instead of the updatetime files")
	}
}

// U5 through the CLI: recovery.bin that leaves the bus after a matching
// hash is a flashed board with a warning; --strict fails it. --trace
// records the session.
func TestSetBootOrderFlashEnds(t *testing.T) {
	img, recovery := eepromVector(t, "pieeprom-2026-05-17.bin"), eepromVector(t, "recovery.bin")
	for _, tt := range []struct {
		name   string
		cfg    usbboottest.BoardConfig
		strict bool
		code   int
		want   string
	}{
		{"left the bus", usbboottest.BoardConfig{DetachAfterUpdate: true}, false, 0, "without Done"},
		{"left the bus, strict", usbboottest.BoardConfig{DetachAfterUpdate: true}, true, exitUSBFailed, "--strict"},
		{"stamped hash", usbboottest.BoardConfig{HashStamped: true}, false, 0, "stamped in"},
		{"newer recovery.bin wants SDRAM files", usbboottest.BoardConfig{RecoveryDDR: true}, false, 0, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.Port, tt.cfg.Mode = "1-1.4", usbboottest.ModeRecovery
			s := newSimBench(t, tt.cfg)
			trace := filepath.Join(t.TempDir(), "flash.trace")
			args := []string{"eeprom", "set-boot-order", "--image", img, "--recovery", recovery, "--timestamp", "1700000000",
				"--bootfiles", usbboottest.SharedFile(t, "firmware-fixtures/bootfiles.bin"), "--trace", trace}
			if tt.strict {
				args = append(args, "--strict")
			}
			stdout, stderr, err := s.run(t, t.Context(), args...)
			if got := ExitCode(err); got != tt.code {
				t.Fatalf("exit %d (%v), want %d\n%s%s", got, err, tt.code, stdout, stderr)
			}
			all := stdout + stderr
			if err != nil {
				all += err.Error()
			}
			if !strings.Contains(all, tt.want) {
				t.Errorf("output does not say %q:\n%s", tt.want, all)
			}
			f, err := os.Open(trace)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			recs, err := usbboot.ParseTrace(f)
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, r := range recs {
				if q, ok := usbboot.TraceRequest(r); ok && q.Command == usbboot.GetFileSize {
					names = append(names, q.Name)
				}
			}
			if !strings.Contains(strings.Join(names, " "), "pieeprom.bin") || !strings.Contains(strings.Join(names, " "), "*EEPROM_UPDATE*success") {
				t.Errorf("trace requests %q", names)
			}
		})
	}
}

// doctor through the CLI: one line per check, a fix under each failure,
// --json, and exit status 1 when a check fails.
func TestDoctorCommand(t *testing.T) {
	data, root := t.TempDir(), t.TempDir()
	stdout, _, err := runCLI(t, "doctor", "--no-usb", "--iface", "nosuch0", "--data", data, "--tftp-root", root, "--cache", t.TempDir())
	if ExitCode(err) != 1 {
		t.Fatalf("exit %d (%v), want 1\n%s", ExitCode(err), err, stdout)
	}
	for _, want := range []string{"fail  interface        no interface nosuch0", "fix: pick the NIC", "fail  tftp-root", "ok    data-dir", "skip  rpiboot-devices"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("doctor output lacks %q:\n%s", want, stdout)
		}
	}
	stdout, _, err = runCLI(t, "doctor", "--no-usb", "--data", data, "--cache", t.TempDir(), "--json")
	if ExitCode(err) != 1 {
		t.Fatalf("doctor with an empty firmware cache: exit %d (%v)", ExitCode(err), err)
	}
	var rs []struct{ Check, Status, Detail, Fix string }
	if jerr := json.Unmarshal([]byte(stdout), &rs); jerr != nil || len(rs) < 6 {
		t.Fatalf("--json: %v\n%s", jerr, stdout)
	}
	if _, _, err := runCLI(t, "doctor", "--http", "nonsense"); ExitCode(err) != 2 {
		t.Errorf("bad --http: exit %d", ExitCode(err))
	}
}

// U8 through the CLI: set-boot-order flashes a CM5 (2 MiB image): the
// ROM gets recovery.bin as bootcode5.bin, the .sig names the SoC, and a
// recovery.bin for the CM4 is refused before anything is written.
func TestSetBootOrderFlashesCM5(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "pieeprom-cm5.bin")
	if err := os.WriteFile(img, eepromtest.Image2712("[all]\nBOOT_ORDER=0xf461\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	bootfiles := usbboottest.SharedFile(t, "firmware-fixtures/bootfiles.bin")
	src, err := usbboot.NewDir(filepath.Dir(bootfiles), false)
	if err != nil {
		t.Fatal(err)
	}
	rc, _, err := src.Open(t.Context(), usbboot.Target{SoC: usbboot.SoC2712}, "bootcode5.bin")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(rc)
	rc.Close()
	recovery := filepath.Join(dir, "recovery5.bin") // stand-in: the 2712 second stage carries the same RP1 markers
	os.WriteFile(recovery, b, 0o644)

	s := newSimBench(t, usbboottest.BoardConfig{Port: "1-1.4", SoC: usbboot.SoC2712, Mode: usbboottest.ModeRecovery, RecoveryDDR: true})
	out := filepath.Join(dir, "rec")
	stdout, stderr, err := s.run(t, t.Context(), "eeprom", "set-boot-order", "--image", img, "--recovery", recovery,
		"--bootfiles", bootfiles, "--timestamp", "1700000000", "--out-dir", out, "--strict")
	if err != nil {
		t.Fatalf("flash CM5: %v\n%s%s", err, stdout, stderr)
	}
	if f := s.boards[0].Files(); len(f) == 0 || f[0].Name != "bootcode5.bin" || f[0].SHA256 != sha256Hex(b) {
		t.Errorf("the CM5 ROM received %+v, want recovery as bootcode5.bin", f)
	}
	if sig := string(readFile(t, filepath.Join(out, "pieeprom.sig"))); !strings.HasSuffix(sig, "target-soc: 2712\n") {
		t.Errorf("pieeprom.sig %q", sig)
	}
	_, _, err = s.run(t, t.Context(), "eeprom", "set-boot-order", "--image", img, "--recovery", eepromVector(t, "recovery.bin"),
		"--out-dir", filepath.Join(dir, "rec2"), "--no-flash")
	if err == nil || !strings.Contains(err.Error(), "built for BCM2711 but the image is a BCM2712") {
		t.Errorf("CM4 recovery.bin for a CM5 image: %v", err)
	}
}
