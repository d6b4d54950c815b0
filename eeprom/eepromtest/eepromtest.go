// Package eepromtest builds synthetic bootloader images for tests outside
// package eeprom. There is no real 2 MiB (BCM2712) vector in the shared
// fixtures, so CM5 paths are tested on an image laid out as the 2712
// release images are (section chain, updatetime files, bootconf.txt in
// partition A).
package eepromtest

import (
	"bytes"
	"encoding/binary"

	"github.com/cm4bench/cm4bench/eeprom"
)

// Section is one section of a synthetic image.
type Section struct {
	At      int // offset; 0 means right after the previous section
	Magic   eeprom.Magic
	Name    string // file sections
	Content []byte // file content or opaque body
}

// Build lays out sections as release images do: 8-byte headers, 8-byte
// alignment, file sections with a 16-byte name field, padding sections over
// gaps, erased (0xFF) flash everywhere else. It panics on a layout that
// does not fit: test input only.
func Build(size int, secs ...Section) []byte {
	img := bytes.Repeat([]byte{0xFF}, size)
	off := 0
	for _, s := range secs {
		if s.At != 0 {
			if s.At < off || (s.At > off && s.At-off < 8) {
				panic("eepromtest: section does not fit")
			}
			if s.At > off {
				binary.BigEndian.PutUint32(img[off:], uint32(eeprom.MagicPadding))
				binary.BigEndian.PutUint32(img[off+4:], uint32(s.At-off-8))
			}
			off = s.At
		}
		binary.BigEndian.PutUint32(img[off:], uint32(s.Magic))
		body := s.Content
		if s.Magic == eeprom.MagicFile {
			hdr := make([]byte, 16)
			copy(hdr, s.Name)
			body = append(hdr, s.Content...)
		}
		binary.BigEndian.PutUint32(img[off+4:], uint32(len(body)))
		copy(img[off+8:], body)
		off = (off + 8 + len(body) + 7) &^ 7
	}
	return img
}

// PartB is where partition B starts in a 2712 A/B image.
const PartB = 0x107000

// Image2712 is a 2 MiB A/B-style CM5 image: bootcode with a stock
// updatetime file (0, 0xffffffff) below 64 KiB, partition A with bootsys,
// an updatetime file, a module and bootconf.txt, then padding up to
// partition B.
func Image2712(conf string) []byte {
	stock := []byte{0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff}
	return Build(eeprom.Size2712,
		Section{Magic: eeprom.MagicBootcode, Content: bytes.Repeat([]byte{0xBC}, 0x8000)},
		Section{Magic: eeprom.MagicFile, Name: "updatetime", Content: stock},
		Section{At: 0x10000, Magic: eeprom.MagicFile, Name: "bootsys", Content: bytes.Repeat([]byte{0x5A}, 0x20000)},
		Section{Magic: eeprom.MagicFile, Name: "updatetime", Content: stock},
		Section{Magic: eeprom.MagicModule4, Content: bytes.Repeat([]byte{0x44}, 0x1000)},
		Section{At: 0x40000, Magic: eeprom.MagicFile, Name: eeprom.BootConfName, Content: []byte(conf)},
		Section{Magic: eeprom.MagicPadding, Content: bytes.Repeat([]byte{0xFF}, 0x100)},
		Section{At: 0x41000, Magic: eeprom.MagicPadding, Content: bytes.Repeat([]byte{0xFF}, PartB-0x41000-8)},
		Section{At: PartB, Magic: eeprom.MagicModule4, Content: []byte("journal")},
	)
}
