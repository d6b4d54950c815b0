package eeprom

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestUpstreamInterop runs the upstream rpi-eeprom-config and
// rpi-eeprom-digest, when installed, on edits the fixed vectors do not
// cover (empty, CRLF, no final newline, 4076 bytes, a shrink) and compares
// the bytes. The vectors (TestVectors) are the oracle CI always has.
func TestUpstreamInterop(t *testing.T) {
	cfgTool, err := exec.LookPath("rpi-eeprom-config")
	if err != nil {
		t.Skip("rpi-eeprom-config not installed; TestVectors covers the upstream outputs")
	}
	dir := t.TempDir()
	// A synthetic 2712 A/B layout (bootconf.txt followed by padding) takes
	// the padding-header branch of the replace algorithm.
	synth := filepath.Join(dir, "synth-2712.bin")
	if err := os.WriteFile(synth, synth2712(t), 0o644); err != nil {
		t.Fatal(err)
	}
	pad := filepath.Join(dir, "synth-trailing-pad.bin")
	if err := os.WriteFile(pad, synthTrailingPad(t), 0o644); err != nil {
		t.Fatal(err)
	}
	srcs := map[string]string{"synth-2712": synth, "synth-trailing-pad": pad}
	for _, name := range vectorNames {
		srcs[name] = filepath.Join(sharedDir(t), "eeprom-vectors", name+".bin")
	}
	for name, src := range srcs {
		for _, tt := range []struct {
			label string
			conf  []byte
		}{
			{"empty", nil},
			{"crlf", []byte("[all]\r\nBOOT_UART=1\r\nBOOT_ORDER=0xf21\r\n")},
			{"no final newline", []byte("[all]\nBOOT_ORDER=0xf2")},
			{"4076", configOfSize(4076)},
			{"short", []byte("[all]\n")},
		} {
			t.Run(name+"/"+tt.label, func(t *testing.T) {
				confPath := filepath.Join(dir, "c.txt")
				out := filepath.Join(dir, "up.bin")
				os.WriteFile(confPath, tt.conf, 0o644)
				if o, err := exec.Command(cfgTool, "--config", confPath, "--out", out, src).CombinedOutput(); err != nil {
					t.Fatalf("rpi-eeprom-config: %v: %s", err, o)
				}
				up, _ := os.ReadFile(out)
				orig, err := os.ReadFile(src)
				if err != nil {
					t.Fatal(err)
				}
				im, err := Parse(orig)
				if err != nil {
					t.Fatal(err)
				}
				if err := im.SetBootConf(tt.conf); err != nil {
					t.Fatal(err)
				}
				if got := im.Bytes(); !bytes.Equal(got, up) {
					t.Errorf("differs from rpi-eeprom-config in %d bytes (first at 0x%x)", diffCount(got, up), firstDiff(got, up))
				}
				// --timestamp too
				if o, err := exec.Command(cfgTool, "--config", confPath, "--timestamp", "1700000000", "--out", out, src).CombinedOutput(); err != nil {
					t.Fatalf("rpi-eeprom-config --timestamp: %v: %s", err, o)
				}
				upTS, _ := os.ReadFile(out)
				if err := im.SetTimestamp(1700000000); err != nil {
					t.Fatal(err)
				}
				if got := im.Bytes(); !bytes.Equal(got, upTS) {
					t.Errorf("with --timestamp differs from rpi-eeprom-config in %d bytes (first at 0x%x)", diffCount(got, upTS), firstDiff(got, upTS))
				}
				if digTool, err := exec.LookPath("rpi-eeprom-digest"); err == nil {
					sig := filepath.Join(dir, "up.sig")
					cmd := exec.Command(digTool, "-i", out, "-o", sig)
					cmd.Env = append(os.Environ(), "SOURCE_DATE_EPOCH=1234567890")
					if o, err := cmd.CombinedOutput(); err != nil {
						t.Fatalf("rpi-eeprom-digest: %v: %s", err, o)
					}
					want, _ := os.ReadFile(sig)
					if got := Digest(upTS, 1234567890, 0); !bytes.Equal(got, want) {
						t.Errorf("Digest = %q, rpi-eeprom-digest wrote %q", got, want)
					}
				}
			})
		}
	}
}
