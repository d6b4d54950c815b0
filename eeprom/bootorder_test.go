package eeprom

import (
	"errors"
	"testing"
)

// One parser for BOOT_ORDER everywhere (the config editor, the recovery
// directory, the simulated bench).
func TestParseBootOrder(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want BootOrder
		ok   bool
	}{
		{"0xf21", 0xf21, true},
		{"0XF12", 0xf12, true},
		{"0xf41", 0xf41, true},
		{"f21", 0, false}, // the bootloader needs the 0x
		{"0x", 0, false},
		{"0x1f", 0, false}, // RESTART not last
		{"0x8", 0, false},  // not a boot mode
		{"0x123456789", 0, false},
		{"zz", 0, false},
	} {
		got, _, err := ParseBootOrder(tt.in)
		if tt.ok != (err == nil) || got != tt.want {
			t.Errorf("ParseBootOrder(%q) = %v, %v; want %v ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseBootOrder(%q): %v does not wrap ErrInvalid", tt.in, err)
		}
	}
	if s := BootOrder(0xf21).String(); s != "0xf21" {
		t.Errorf("String = %s", s)
	}
}
