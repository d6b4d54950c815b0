package eeprom_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/cm4bench/cm4bench/eeprom"
	"github.com/cm4bench/cm4bench/eeprom/eepromtest"
)

func TestSetBootcodeAndBootsys(t *testing.T) {
	orig := eepromtest.Image2712("[all]\nBOOT_ORDER=0xf21\n")
	tests := []struct {
		name    string
		edit    func(im *eeprom.Image) error
		wantErr error
		check   func(t *testing.T, im *eeprom.Image)
	}{
		{"smaller bootcode", func(im *eeprom.Image) error { return im.SetBootcode(bytes.Repeat([]byte{0xC5}, 0x1001)) }, nil,
			func(t *testing.T, im *eeprom.Image) {
				s := im.Sections()
				if s[0].Length != 0x1001 || s[1].Magic != eeprom.MagicPadding || s[2].Name != "updatetime" {
					t.Fatalf("sections after bootcode replace: %+v", s[:3])
				}
				b := im.Bytes()
				if b[8] != 0xC5 || b[8+0x1000] != 0xC5 || b[8+0x1001] != 0xFF {
					t.Fatal("bootcode content or 0xFF fill wrong")
				}
			}},
		{"bootcode too large", func(im *eeprom.Image) error { return im.SetBootcode(make([]byte, 0x9000)) }, eeprom.ErrTooLarge, nil},
		{"empty bootcode", func(im *eeprom.Image) error { return im.SetBootcode(nil) }, nil, nil},
		{"bootsys larger than other files may be", func(im *eeprom.Image) error {
			return im.SetFile(eeprom.BootsysName, bytes.Repeat([]byte{0x77}, 0x1ff00))
		}, nil,
			func(t *testing.T, im *eeprom.Image) {
				got, err := im.File(eeprom.BootsysName)
				if err != nil || len(got) != 0x1ff00 || got[0x1feff] != 0x77 {
					t.Fatalf("bootsys after replace: %d bytes, %v", len(got), err)
				}
				if c, _ := im.BootConf(); string(c) != "[all]\nBOOT_ORDER=0xf21\n" {
					t.Fatalf("bootconf.txt changed: %q", c)
				}
			}},
		{"bootsys into the next section", func(im *eeprom.Image) error { return im.SetFile(eeprom.BootsysName, make([]byte, 0x20100)) }, eeprom.ErrTooLarge, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			im, err := eeprom.Parse(orig)
			if err != nil {
				t.Fatal(err)
			}
			err = tc.edit(im)
			switch {
			case tc.check == nil && err == nil:
				t.Fatal("edit accepted, want an error")
			case tc.wantErr != nil && !errors.Is(err, tc.wantErr):
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			case tc.check != nil && err != nil:
				t.Fatal(err)
			}
			if tc.check != nil {
				tc.check(t, im)
				if _, err := eeprom.Parse(im.Bytes()); err != nil {
					t.Fatalf("edited image does not parse: %v", err)
				}
			} else if !bytes.Equal(im.Bytes(), orig) {
				t.Fatal("a refused edit changed the image")
			}
		})
	}
}
