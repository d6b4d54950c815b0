package eeprom

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestConfigSet(t *testing.T) {
	for _, tt := range []struct {
		name, in, key, value, want string
		warn                       []string // substrings, in order
	}{
		{"replace in place", "[all]\nBOOT_UART=0\nBOOT_ORDER=0xf41\nWAKE_ON_GPIO=1\n", "BOOT_ORDER", "0xf21",
			"[all]\nBOOT_UART=0\nBOOT_ORDER=0xf21\nWAKE_ON_GPIO=1\n", nil},
		{"append at end of [all]", "[all]\nBOOT_UART=0\n", "BOOT_ORDER", "0xf21",
			"[all]\nBOOT_UART=0\nBOOT_ORDER=0xf21\n", nil},
		{"append after trailing blank line", "[all]\nBOOT_UART=0\n\n", "BOOT_ORDER", "0xf21",
			"[all]\nBOOT_UART=0\n\nBOOT_ORDER=0xf21\n", nil},
		{"no final newline", "[all]\nBOOT_UART=0", "BOOT_ORDER", "0xf21",
			"[all]\nBOOT_UART=0\nBOOT_ORDER=0xf21\n", nil},
		{"CRLF kept", "[all]\r\nBOOT_UART=0\r\n", "BOOT_ORDER", "0xf21",
			"[all]\r\nBOOT_UART=0\r\nBOOT_ORDER=0xf21\r\n", nil},
		{"replace keeps CRLF", "BOOT_ORDER=0x1\r\n", "BOOT_ORDER", "0xf21", "BOOT_ORDER=0xf21\r\n", nil},
		{"empty config", "", "BOOT_ORDER", "0xf21", "BOOT_ORDER=0xf21\n", nil},
		{"comments kept", "# header\n[all]\n# uart\nBOOT_UART=0 \n", "BOOT_UART", "1",
			"# header\n[all]\n# uart\nBOOT_UART=1\n", nil},
		{"before a filter section and its comment", "[all]\nBOOT_UART=0\n\n# CM4 only\n[cm4]\nWAKE_ON_GPIO=0\n",
			"BOOT_ORDER", "0xf21", "[all]\nBOOT_UART=0\nBOOT_ORDER=0xf21\n\n# CM4 only\n[cm4]\nWAKE_ON_GPIO=0\n", nil},
		{"into a later [all] block", "[pi4]\nBOOT_UART=1\n[all]\nWAKE_ON_GPIO=1\n", "BOOT_ORDER", "0xf21",
			"[pi4]\nBOOT_UART=1\n[all]\nWAKE_ON_GPIO=1\nBOOT_ORDER=0xf21\n", nil},
		{"only conditional blocks", "[cm4]\nBOOT_UART=1\n", "BOOT_ORDER", "0xf21",
			"BOOT_ORDER=0xf21\n[cm4]\nBOOT_UART=1\n", nil},
		{"conditional setting is not replaced", "[all]\nBOOT_ORDER=0xf1\n[cm4]\nBOOT_ORDER=0xf2\n", "BOOT_ORDER", "0xf21",
			"[all]\nBOOT_ORDER=0xf21\n[cm4]\nBOOT_ORDER=0xf2\n", []string{"also set under a conditional section"}},
		{"every unconditional copy replaced", "BOOT_UART=0\n[all]\nBOOT_UART=0\n", "BOOT_UART", "1",
			"BOOT_UART=1\n[all]\nBOOT_UART=1\n", nil},
		{"[config.txt] part untouched", "[all]\nBOOT_UART=0\n[config.txt]\nBOOT_ORDER=0x1\n", "BOOT_ORDER", "0xf21",
			"[all]\nBOOT_UART=0\nBOOT_ORDER=0xf21\n[config.txt]\nBOOT_ORDER=0x1\n", nil},
		{"unknown key warns but is kept", "[all]\n", "MY_KEY", "42", "[all]\nMY_KEY=42\n", []string{"MY_KEY is not a known bootloader key"}},
		{"RPIBOOT not last warns", "", "BOOT_ORDER", "0xf231", "BOOT_ORDER=0xf231\n", []string{"RPIBOOT (3)"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := ParseConfig([]byte(tt.in))
			if got := string(c.Bytes()); got != tt.in {
				t.Fatalf("ParseConfig(%q).Bytes() = %q", tt.in, got)
			}
			warn, err := c.Set(tt.key, tt.value)
			if err != nil {
				t.Fatalf("Set: %v", err)
			}
			if got := string(c.Bytes()); got != tt.want {
				t.Errorf("Set(%s=%s) on %q =\n%q, want\n%q", tt.key, tt.value, tt.in, got, tt.want)
			}
			if len(warn) != len(tt.warn) {
				t.Fatalf("warnings = %q, want %d matching %q", warn, len(tt.warn), tt.warn)
			}
			for i := range warn {
				if !strings.Contains(warn[i], tt.warn[i]) {
					t.Errorf("warning %q does not contain %q", warn[i], tt.warn[i])
				}
			}
			// the edited text parses to the value for every board
			if v, ok := ParseConfig(c.Bytes()).Get(tt.key); !ok || v != tt.value {
				t.Errorf("Get(%s) after Set = %q, %v", tt.key, v, ok)
			}
		})
	}
}

func TestConfigSetInvalid(t *testing.T) {
	for _, tt := range []struct{ key, value, want string }{
		{"", "1", "empty key"},
		{"BOOT ORDER", "1", "only letters"},
		{"BOOT_ORDER=", "1", "only letters"},
		{"BOOT_UART", "1\nBOOT_ORDER=0x1", "line break"},
		{"BOOT_ORDER", "f21", "want hex"},
		{"BOOT_ORDER", "0x", "want hex"},
		{"BOOT_ORDER", "0xg21", "not hex"},
		{"BOOT_ORDER", "0x123456789", "more than 8"},
		{"BOOT_ORDER", "0x0", "no boot mode"},
		{"BOOT_ORDER", "0xf81", "nibble 1 is 0x8"},
		{"BOOT_ORDER", "0x2f1", "RESTART (0xf) must be the last mode"},
		{"BOOT_ORDER", "0xfe1", "STOP (0xe) must be the last mode"},
	} {
		t.Run(tt.key+"="+tt.value, func(t *testing.T) {
			c := ParseConfig([]byte("[all]\nBOOT_UART=0\n"))
			_, err := c.Set(tt.key, tt.value)
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Set(%q, %q) = %v, want ErrInvalid containing %q", tt.key, tt.value, err, tt.want)
			}
			if got := string(c.Bytes()); got != "[all]\nBOOT_UART=0\n" {
				t.Errorf("refused Set changed the config to %q", got)
			}
		})
	}
}

func TestBootModes(t *testing.T) {
	for _, tt := range []struct {
		order string
		want  []string
		warn  int
	}{
		{"0xf21", []string{"SD CARD/eMMC", "NETWORK", "RESTART"}, 0},
		{"0xf25641", []string{"SD CARD/eMMC", "USB-MSD", "NVME", "BCM-USB-MSD", "NETWORK", "RESTART"}, 0},
		{"0xF2", []string{"NETWORK", "RESTART"}, 0},
		{"0x0000f21", []string{"SD CARD/eMMC", "NETWORK", "RESTART"}, 0},
		{"0xe1", []string{"SD CARD/eMMC", "STOP"}, 0},
		{"0xf31", []string{"SD CARD/eMMC", "RPIBOOT", "RESTART"}, 0},
		{"0x7", []string{"HTTP"}, 0},
		{"0xf01", []string{"SD CARD/eMMC", "SD CARD DETECT", "RESTART"}, 1},
		{"0xf121", []string{"SD CARD/eMMC", "NETWORK", "SD CARD/eMMC", "RESTART"}, 1},
	} {
		t.Run(tt.order, func(t *testing.T) {
			got, err := BootModes(tt.order)
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Errorf("BootModes(%s) = %q, %v; want %q", tt.order, got, err, tt.want)
			}
			w, err := ValidateBootOrder(tt.order)
			if err != nil || len(w) != tt.warn {
				t.Errorf("ValidateBootOrder(%s) = %q, %v; want %d warnings", tt.order, w, err, tt.warn)
			}
		})
	}
}

func TestConfigLines(t *testing.T) {
	c := ParseConfig([]byte("# c\n[all]\nA=1\n[cm4]\nB = 2\n\nodd line\n[config.txt]\ndtoverlay=x\n"))
	var got []string
	for _, l := range c.Lines() {
		got = append(got, map[LineKind]string{LineBlank: "blank", LineComment: "comment", LineSection: "section",
			LineSetting: "setting", LineOther: "other"}[l.Kind]+":"+l.Key+"="+l.Value+map[bool]string{true: "?", false: ""}[l.Conditional])
	}
	want := []string{"comment:=", "section:all=", "setting:A=1", "section:cm4=?", "setting:B=2?", "blank:=?", "other:=?", "other:config.txt=?", "other:=?"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("lines = %q, want %q", got, want)
	}
	if v, ok := c.Get("B"); ok {
		t.Errorf("Get(B) = %q: a [cm4] setting does not apply to every board", v)
	}
	if v, _ := c.Get("A"); v != "1" {
		t.Errorf("Get(A) = %q", v)
	}
}
