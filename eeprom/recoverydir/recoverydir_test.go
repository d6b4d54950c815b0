package recoverydir_test

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cm4bench/cm4bench/eeprom"
	"github.com/cm4bench/cm4bench/eeprom/eepromtest"
	"github.com/cm4bench/cm4bench/eeprom/recoverydir"
	"github.com/cm4bench/cm4bench/internal/repotest"
	"github.com/cm4bench/cm4bench/usbboot"
	"github.com/cm4bench/cm4bench/usbboot/usbboottest"
)

const ts = 1700000000

func read(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// member reads one member of the real bootfiles.bin.
func member(t *testing.T, name string) []byte {
	t.Helper()
	f, err := os.Open(repotest.Shared(t, "firmware-fixtures/bootfiles.bin"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err != nil {
			t.Fatalf("bootfiles.bin has no %s: %v", name, err)
		}
		if h.Name == name {
			b, _ := io.ReadAll(tr)
			return b
		}
	}
}

func spec2711(t *testing.T) recoverydir.Spec {
	return recoverydir.Spec{
		Image:       read(t, repotest.Shared(t, "eeprom-vectors/pieeprom-2026-05-17.bin")),
		RecoveryBin: read(t, repotest.Shared(t, "eeprom-vectors/recovery.bin")),
		Order:       "0xf21", Timestamp: ts,
	}
}

// spec2712 uses the 2712 bootcode5.bin of bootfiles.bin as the stand-in
// recovery.bin (no real 2712 recovery.bin is in the fixtures; it carries
// the same RP1 markers). The simulated board does not run it.
func spec2712(t *testing.T) recoverydir.Spec {
	return recoverydir.Spec{
		Image:       eepromtest.Image2712("[all]\nBOOT_ORDER=0xf461\n"),
		RecoveryBin: member(t, "2712/bootcode5.bin"),
		Order:       "0xf21", Timestamp: ts,
	}
}

// flash serves dir to one simulated board and returns its result.
func flash(t *testing.T, rd recoverydir.Dir, cfg usbboottest.BoardConfig, timeout time.Duration) usbboot.Result {
	t.Helper()
	clk := usbboottest.NewClock()
	cfg.Port, cfg.Mode, cfg.Clock = "1-1.4", usbboottest.ModeRecovery, clk
	b, err := usbboottest.NewBoard(cfg)
	if err != nil {
		t.Fatal(err)
	}
	src, err := usbboot.NewDir(rd.Dir, false)
	if err != nil {
		t.Fatal(err)
	}
	srv := &usbboot.Server{Bus: usbboottest.NewBus(clk, b), Files: src, Clock: clk, Timeout: timeout}
	res, err := srv.Serve(t.Context())
	if err != nil || len(res) != 1 {
		t.Fatalf("Serve: %v, %d results", err, len(res))
	}
	if v := b.Violations(); len(v) > 0 {
		t.Errorf("protocol violations: %q", v)
	}
	return res[0]
}

// U6: recovery_metadata=1 is always written (builds before 2025-11 have
// metadata off by default).
func TestConfigAlwaysAsksForMetadata(t *testing.T) {
	for _, uart := range []bool{false, true} {
		c := string(recoverydir.Config(uart))
		if !strings.Contains(c, "\nrecovery_metadata=1\n") {
			t.Errorf("uart=%v: config.txt lacks recovery_metadata=1:\n%s", uart, c)
		}
		if strings.Contains(c, "\nuart_2ndstage=1\n") != uart {
			t.Errorf("uart=%v: uart_2ndstage wrong:\n%s", uart, c)
		}
	}
}

// U7: the SDRAM files a newer recovery.bin asks for come from
// bootfiles.bin for the image's SoC, and bootfiles.bin's own bootcode never
// shadows recovery.bin.
func TestSDRAMFilesFromBootfiles(t *testing.T) {
	spec := spec2711(t)
	spec.BootFiles = repotest.Shared(t, "firmware-fixtures/bootfiles.bin")
	rd, err := recoverydir.Build(spec, filepath.Join(t.TempDir(), "rec"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range rd.Files {
		names = append(names, f.Name)
	}
	want := "config.txt bootmain mcb.bin memsys00.bin memsys01.bin memsys02.bin memsys03.bin memsys04.bin memsys05.bin memsys06.bin memsys07.bin memsys08.bin bootcode4.bin pieeprom.bin pieeprom.sig"
	if got := strings.Join(names, " "); got != want {
		t.Errorf("files %s\nwant  %s", got, want)
	}
	if !bytes.Equal(read(t, filepath.Join(rd.Dir, "mcb.bin")), member(t, "2711/mcb.bin")) {
		t.Error("mcb.bin is not bootfiles.bin's 2711/mcb.bin")
	}
	if _, err := os.Stat(filepath.Join(rd.Dir, "bootfiles.bin")); err == nil {
		t.Error("bootfiles.bin was copied into the recovery directory")
	}
	r := flash(t, rd, usbboottest.BoardConfig{RecoveryDDR: true}, 0)
	if r.Err != nil {
		t.Fatalf("board: %v", r.Err)
	}
	if w, err := rd.Verify(r, true); err != nil || w != "" {
		t.Fatalf("Verify: %q, %v", w, err)
	}
	got, _ := r.Served("bootcode4.bin")
	if got.SHA256 != rd.Files[12].SHA256 || rd.Files[12].Name != "bootcode4.bin" {
		t.Errorf("the ROM got %s, not recovery.bin", got.SHA256)
	}
	if f, ok := r.Served("memsys08.bin"); !ok || f.Size != int64(len(member(t, "2711/memsys08.bin"))) {
		t.Errorf("memsys08.bin not served: %+v", f)
	}

	// Without bootfiles.bin such a recovery.bin hangs at mcb.bin: the
	// board fails at its deadline, safely, and the build warned.
	spec.BootFiles = ""
	rd, err = recoverydir.Build(spec, filepath.Join(t.TempDir(), "rec"))
	if err != nil {
		t.Fatal(err)
	}
	if len(rd.Warnings) == 0 || !strings.Contains(strings.Join(rd.Warnings, " "), "bootfiles") {
		t.Errorf("no warning about the missing bootfiles.bin: %q", rd.Warnings)
	}
	r = flash(t, rd, usbboottest.BoardConfig{RecoveryDDR: true}, time.Minute)
	if !errors.Is(r.Err, usbboot.ErrDeadline) {
		t.Errorf("board without mcb.bin: %v, want the deadline", r.Err)
	}

	// A rebuild into the same directory drops the SDRAM files it no longer
	// writes.
	if names := dirNames(t, rd.Dir); strings.Join(names, " ") != "bootcode4.bin config.txt pieeprom.bin pieeprom.sig" {
		t.Errorf("rebuilt directory holds %q", names)
	}
}

func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range es {
		out = append(out, e.Name())
	}
	return out
}

// U8: a 2 MiB image is a CM5 image: recovery.bin is served as
// bootcode5.bin, the .sig names the target SoC, and a recovery.bin for the
// other SoC is refused.
func TestCM5RecoveryDirectory(t *testing.T) {
	spec := spec2712(t)
	spec.BootFiles = repotest.Shared(t, "firmware-fixtures/bootfiles.bin")
	rd, err := recoverydir.Build(spec, filepath.Join(t.TempDir(), "rec"))
	if err != nil {
		t.Fatal(err)
	}
	if rd.SoC != 2712 || rd.Bootcode != "bootcode5.bin" {
		t.Errorf("soc %d bootcode %s", rd.SoC, rd.Bootcode)
	}
	sig := string(read(t, filepath.Join(rd.Dir, "pieeprom.sig")))
	if want := "\nts: 1700000000\ntarget-soc: 2712\n"; !strings.HasSuffix(sig, want) {
		t.Errorf("pieeprom.sig = %q, want it to end %q", sig, want)
	}
	if _, err := os.Stat(filepath.Join(rd.Dir, "bootcode4.bin")); err == nil {
		t.Error("a CM5 directory holds bootcode4.bin")
	}
	if !bytes.Equal(read(t, filepath.Join(rd.Dir, "memsys03.bin")), member(t, "2712/memsys03.bin")) {
		t.Error("memsys03.bin is not the 2712 member")
	}
	im, err := eeprom.Parse(read(t, filepath.Join(rd.Dir, "pieeprom.bin")))
	if err != nil {
		t.Fatal(err)
	}
	if conf, _ := im.BootConf(); !strings.Contains(string(conf), "BOOT_ORDER=0xf21") {
		t.Errorf("config %q", conf)
	}
	for _, ddr := range []bool{false, true} {
		r := flash(t, rd, usbboottest.BoardConfig{SoC: usbboot.SoC2712, RecoveryDDR: ddr}, 0)
		if r.Err != nil {
			t.Fatalf("CM5 board (SDRAM files asked: %v): %v", ddr, r.Err)
		}
		if w, err := rd.Verify(r, true); err != nil || w != "" {
			t.Fatalf("Verify: %q, %v", w, err)
		}
		if f, ok := r.Served("bootcode5.bin"); !ok || f.SHA256 != rd.Files[len(rd.Files)-3].SHA256 {
			t.Errorf("the CM5 ROM did not get recovery.bin as bootcode5.bin: %+v", r.Files)
		}
	}

	for _, tt := range []struct {
		name string
		spec recoverydir.Spec
		want string
	}{
		{"2711 recovery.bin for a CM5 image", recoverydir.Spec{Image: spec.Image, RecoveryBin: spec2711(t).RecoveryBin, Order: "0xf21"}, "built for BCM2711 but the image is a BCM2712"},
		{"2712 recovery.bin for a CM4 image", recoverydir.Spec{Image: spec2711(t).Image, RecoveryBin: spec.RecoveryBin, Order: "0xf21"}, "built for BCM2712 but the image is a BCM2711"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "rec")
			if _, err := recoverydir.Build(tt.spec, dir); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Build: %v, want %q", err, tt.want)
			}
			if _, err := os.Stat(dir); err == nil && len(dirNames(t, dir)) > 0 {
				t.Errorf("refused build left files: %q", dirNames(t, dir))
			}
		})
	}
	if w, err := recoverydir.CheckRecoveryBin([]byte("an unknown updater"), 2711); err != nil || !strings.Contains(w, "cannot tell") {
		t.Errorf("unknown recovery.bin: %q, %v; want a warning", w, err)
	}
}

// U5 and U9: how a session ends and what EEPROM_HASH covers.
func TestVerifyFlash(t *testing.T) {
	rd, err := recoverydir.Build(spec2711(t), filepath.Join(t.TempDir(), "rec"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name     string
		cfg      usbboottest.BoardConfig
		strict   bool
		wantErr  []string
		wantWarn string
	}{
		{"Done and the served hash", usbboottest.BoardConfig{}, true, nil, ""},
		{"left the bus after success", usbboottest.BoardConfig{DetachAfterUpdate: true}, false, nil, "without Done"},
		{"left the bus, --strict", usbboottest.BoardConfig{DetachAfterUpdate: true}, true, []string{"no Done (--strict)"}, ""},
		{"hash of the stamped image", usbboottest.BoardConfig{HashStamped: true}, true, nil, "update timestamp 1700000000 stamped in"},
		{"stamped hash, no Done", usbboottest.BoardConfig{HashStamped: true, DetachAfterUpdate: true}, false, nil, "stamped in"},
		{"wrong hash names all three", usbboottest.BoardConfig{Faults: []usbboottest.Fault{{Kind: usbboottest.FaultWrongHash}}}, false,
			[]string{rd.ImageSHA256, rd.StampedSHA256, "matches neither"}, ""},
		{"wrong hash, no Done", usbboottest.BoardConfig{DetachAfterUpdate: true, Faults: []usbboottest.Fault{{Kind: usbboottest.FaultWrongHash}}}, false,
			[]string{"matches neither"}, ""},
		{"flash failed", usbboottest.BoardConfig{Faults: []usbboottest.Fault{{Kind: usbboottest.FaultFlashFails}}}, false,
			[]string{"EEPROM_UPDATE=fail"}, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := flash(t, rd, tt.cfg, 0)
			w, err := rd.Verify(r, tt.strict)
			if r.Err != nil && err == nil {
				err = r.Err
			}
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("not counted as flashed: %v", err)
				}
				if (tt.wantWarn == "") != (w == "") || !strings.Contains(w, tt.wantWarn) {
					t.Errorf("warning %q, want %q", w, tt.wantWarn)
				}
				return
			}
			if err == nil {
				t.Fatalf("counted as flashed (warning %q)", w)
			}
			for _, s := range tt.wantErr {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not say %q", err, s)
				}
			}
		})
	}
}

func TestBuildRefusesStrayFilesAndBadTimestamps(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "pieeprom.upd"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := recoverydir.Build(spec2711(t), dir); err == nil || !strings.Contains(err.Error(), "pieeprom.upd") {
		t.Errorf("stray file: %v", err)
	}
	spec := spec2711(t)
	spec.Timestamp = 1 << 32
	if _, err := recoverydir.Build(spec, filepath.Join(t.TempDir(), "r")); err == nil {
		t.Error("a timestamp over 32 bits was accepted")
	}
}
