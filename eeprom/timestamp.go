package eeprom

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strconv"
)

// updateTimeName is the 8-byte file that holds the update timestamp inside
// the read-only first 64 KiB of 2712 images.
const updateTimeName = "updatetime"

// timestampSlot is where the 8-byte (~T, T) update-timestamp pair lives: an
// "updatetime" file section below 64 KiB when the image has one (2712), the
// last 8 bytes of the image otherwise (every 2711 image, whose updatetime
// file sits above 64 KiB and is not used for this).
func (im *Image) timestampSlot() int {
	for _, s := range im.sections {
		if s.Magic == MagicFile && s.Name == updateTimeName && s.Offset < windowStart && s.ContentSize() >= 8 {
			return s.Offset + fileHeaderLen
		}
	}
	return len(im.data) - 8
}

// SetTimestamp writes the update timestamp t as rpi-eeprom-config
// --timestamp does: ^t then t, both u32 little-endian.
func (im *Image) SetTimestamp(t uint32) {
	off := im.timestampSlot()
	binary.LittleEndian.PutUint32(im.data[off:], ^t)
	binary.LittleEndian.PutUint32(im.data[off+4:], t)
}

// ClearTimestamp sets the timestamp slot back to erased flash (0xFF), as in
// release images.
func (im *Image) ClearTimestamp() {
	off := im.timestampSlot()
	fill(im.data[off : off+8])
}

// Timestamp returns the update timestamp and whether a valid one (a ^t, t
// pair) is set.
func (im *Image) Timestamp() (uint32, bool) {
	off := im.timestampSlot()
	inv := binary.LittleEndian.Uint32(im.data[off:])
	t := binary.LittleEndian.Uint32(im.data[off+4:])
	return t, inv == ^t
}

// Digest returns the text of a .sig file for image, as rpi-eeprom-digest
// writes it: the lowercase hex SHA-256 of the whole image, "ts: N", and a
// "target-soc: S" line when targetSoC is not 0.
func Digest(image []byte, ts int64, targetSoC int) []byte {
	sum := sha256.Sum256(image)
	return FormatDigest(sum, ts, targetSoC)
}

// FormatDigest is Digest for a SHA-256 computed elsewhere (while streaming
// a file, say).
func FormatDigest(sum [sha256.Size]byte, ts int64, targetSoC int) []byte {
	out := make([]byte, 0, 100)
	out = append(out, hex.EncodeToString(sum[:])...)
	out = append(out, "\nts: "...)
	out = strconv.AppendInt(out, ts, 10)
	out = append(out, '\n')
	if targetSoC != 0 {
		out = fmt.Appendf(out, "target-soc: %d\n", targetSoC)
	}
	return out
}
