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
	for _, name := range vectorNames {
		src := filepath.Join(sharedDir(t), "eeprom-vectors", name+".bin")
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
				im, err := Parse(readVector(t, name+".bin"))
				if err != nil {
					t.Fatal(err)
				}
				if err := im.SetBootConf(tt.conf); err != nil {
					t.Fatal(err)
				}
				if got := im.Bytes(); !bytes.Equal(got, up) {
					t.Errorf("differs from rpi-eeprom-config in %d bytes (first at 0x%x)", diffCount(got, up), firstDiff(got, up))
				}
				if digTool, err := exec.LookPath("rpi-eeprom-digest"); err == nil {
					sig := filepath.Join(dir, "up.sig")
					cmd := exec.Command(digTool, "-i", out, "-o", sig)
					cmd.Env = append(os.Environ(), "SOURCE_DATE_EPOCH=1234567890")
					if o, err := cmd.CombinedOutput(); err != nil {
						t.Fatalf("rpi-eeprom-digest: %v: %s", err, o)
					}
					want, _ := os.ReadFile(sig)
					if got := Digest(up, 1234567890, 0); !bytes.Equal(got, want) {
						t.Errorf("Digest = %q, rpi-eeprom-digest wrote %q", got, want)
					}
				}
			})
		}
	}
}
