package eeprom

import (
	"bytes"
	"reflect"
	"testing"
)

// fuzzImage turns fuzz input into a full-size image so the fuzzer can reach
// deep into the chain walk with small inputs: a valid-size input is used as
// is; otherwise byte 0 picks a layout (odd: behind a bootcode section that
// ends at 64 KiB, so the input's sections land in the bootconf window; even:
// at offset 0) and the rest is laid over erased flash.
func fuzzImage(data []byte) []byte {
	if len(data) == Size2711 || len(data) == Size2712 {
		return data
	}
	img := bytes.Repeat([]byte{0xFF}, Size2711)
	if len(data) == 0 {
		return img
	}
	at := 0
	if data[0]&1 == 1 {
		copy(img, []byte{0x55, 0xAA, 0xF0, 0x0F, 0x00, 0x00, 0xFF, 0xF8}) // bootcode up to 0x10000
		at = 0x10000
	}
	copy(img[at:len(img)-ReservedSize], data[1:])
	return img
}

func seedChain(tb testing.TB) [][]byte {
	fileSec := func(name, content string) []byte {
		b := buildImage(tb, Size2711, synthSection{magic: MagicFile, name: name, content: []byte(content)})
		return b[:align8(24+len(content))]
	}
	return [][]byte{
		append([]byte{1}, fileSec(BootConfName, "[all]\nBOOT_ORDER=0xf21\n")...),
		append(append([]byte{1}, fileSec("pubkey.bin", "\x00\x00\x00\x00")...), fileSec(BootConfName, "[all]\n")...),
		append([]byte{1, 0x55, 0xAA, 0xFE, 0xEF, 0, 0, 0, 8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF}, fileSec(BootConfName, "x")...),
		{0, 0x55, 0xAA, 0xF0, 0x0F, 0, 0, 0, 4, 1, 2, 3, 4},
		{0, 0x55, 0xAA, 0xF3, 0x3F, 0xFF, 0xFF, 0xFF, 0xFF},
		{1, 0x12, 0x34, 0x56, 0x78},
		{},
	}
}

// FuzzParse: nothing panics; Parse -> Bytes -> Parse round-trips; replacing
// bootconf.txt with its own content or a new one reads back exactly and is
// idempotent.
func FuzzParse(f *testing.F) {
	for _, s := range seedChain(f) {
		f.Add(s, []byte("[all]\nBOOT_ORDER=0xf21\n"))
	}
	f.Add(readVector(f, "pieeprom-2026-05-17.bin"), []byte("BOOT_UART=1\n"))
	f.Add(readVector(f, "pieeprom-2023-01-11.bin"), []byte(""))
	f.Fuzz(func(t *testing.T, data, conf []byte) {
		in := fuzzImage(data)
		im, err := Parse(in)
		if err != nil {
			return
		}
		out := im.Bytes()
		if !bytes.Equal(out, in) {
			t.Fatal("Bytes differs from the parsed input")
		}
		again, err := Parse(out)
		if err != nil {
			t.Fatalf("reparse: %v", err)
		}
		if !reflect.DeepEqual(again.Sections(), im.Sections()) {
			t.Fatal("sections differ after round trip")
		}
		im.BootConf()
		slot, err := im.BootConfSlot()
		if err != nil {
			return
		}
		if slot.Max > MaxBootConf || slot.Offset+24+slot.Max > slot.Limit {
			t.Fatalf("slot %+v allows writing past its limit", slot)
		}
		for _, c := range [][]byte{conf} {
			before := im.Bytes()
			err := im.SetBootConf(c)
			if err != nil {
				if !bytes.Equal(im.Bytes(), before) {
					t.Fatal("failed SetBootConf changed the image")
				}
				continue
			}
			first := im.Bytes()
			if !bytes.Equal(first[len(first)-ReservedSize:], before[len(before)-ReservedSize:]) {
				t.Fatal("SetBootConf wrote into the reserved sector")
			}
			re, err := Parse(first)
			if err != nil {
				t.Fatalf("edited image does not parse: %v", err)
			}
			s2, err := re.BootConfSlot()
			if err != nil {
				t.Fatalf("edited image lost its slot: %v", err)
			}
			got := first[s2.Offset+24 : s2.Offset+24+s2.Size]
			if !bytes.Equal(got, c) {
				t.Fatalf("read back %q, want %q", got, c)
			}
			if err := re.SetBootConf(c); err != nil || !bytes.Equal(re.Bytes(), first) {
				t.Fatalf("second identical SetBootConf not idempotent: %v", err)
			}
		}
	})
}

// FuzzConfig: any text round-trips through the model, and Set makes the key
// apply to every board without touching anything else it need not.
func FuzzConfig(f *testing.F) {
	for _, s := range []string{
		"[all]\nBOOT_UART=0\nWAKE_ON_GPIO=1\nPOWER_OFF_ON_HALT=0\n\n",
		"[all]\r\nBOOT_ORDER=0xf41\r\n[cm4]\r\nBOOT_ORDER=0xf2",
		"# c\n[pi4]\nA=1\n[config.txt]\n[all]\nBOOT_ORDER=1\n",
		"",
		"\r",
		"[",
		"=\n=",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		c := ParseConfig(b)
		if !bytes.Equal(c.Bytes(), b) {
			t.Fatalf("round trip %q -> %q", b, c.Bytes())
		}
		if _, err := c.Set("BOOT_ORDER", "0xf21"); err != nil {
			t.Fatal(err)
		}
		out := c.Bytes()
		if v, ok := ParseConfig(out).Get("BOOT_ORDER"); !ok || v != "0xf21" {
			t.Fatalf("after Set on %q: Get = %q, %v (config %q)", b, v, ok, out)
		}
		if !bytes.Equal(ParseConfig(out).Bytes(), out) {
			t.Fatal("edited config does not round-trip")
		}
	})
}
