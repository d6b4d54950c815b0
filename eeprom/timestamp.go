package eeprom

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
)

// updateTimeName is the 8-byte file that holds the update timestamp of
// 2712 images, once in the read-only first 64 KiB and once in partition A.
const updateTimeName = "updatetime"

// timestampSlots are the offsets of the 8-byte (^T, T) update-timestamp
// pairs, found as rpi-eeprom-config --timestamp finds them: when an
// "updatetime" file section lies in the read-only first 64 KiB (2712
// images), its content and that of the "updatetime" file in the update
// window (partition A) must both be written; otherwise (every 2711 image,
// whose updatetime file sits above 64 KiB) the last 8 bytes of the image.
func (im *Image) timestampSlots() ([]int, error) {
	find := func(from, to int) int {
		for _, s := range im.sections {
			if s.Magic == MagicFile && s.Name == updateTimeName && s.Offset >= from && s.Offset < to && s.ContentSize() >= 8 {
				return s.Offset + fileHeaderLen
			}
		}
		return -1
	}
	ro := find(0, windowStart)
	if ro < 0 {
		return []int{len(im.data) - 8}, nil
	}
	part := find(windowStart, windowEnd)
	if part < 0 {
		return nil, fmt.Errorf("eeprom: timestamp: %s file at 0x%x in the read-only area but none in the partition [0x%x, 0x%x): %w",
			updateTimeName, ro-fileHeaderLen, windowStart, windowEnd, ErrCorrupt)
	}
	return []int{ro, part}, nil
}

// SetTimestamp writes the update timestamp t as rpi-eeprom-config
// --timestamp does: ^t then t, both u32 little-endian, into every
// timestamp slot. On error the image is unchanged.
func (im *Image) SetTimestamp(t uint32) error {
	slots, err := im.timestampSlots()
	if err != nil {
		return err
	}
	for _, off := range slots {
		binary.LittleEndian.PutUint32(im.data[off:], ^t)
		binary.LittleEndian.PutUint32(im.data[off+4:], t)
	}
	return nil
}

// ClearTimestamp sets the timestamp slots back to erased flash (0xFF), as
// in release 2711 images.
func (im *Image) ClearTimestamp() error {
	slots, err := im.timestampSlots()
	if err != nil {
		return err
	}
	for _, off := range slots {
		fill(im.data[off : off+8])
	}
	return nil
}

// Timestamp returns the update timestamp and whether a valid one (a ^t, t
// pair) is set (in the first slot).
func (im *Image) Timestamp() (uint32, bool) {
	slots, err := im.timestampSlots()
	if err != nil {
		return 0, false
	}
	off := slots[0]
	inv := binary.LittleEndian.Uint32(im.data[off:])
	t := binary.LittleEndian.Uint32(im.data[off+4:])
	// Stock 2712 A/B images carry (0, 0xffffffff) in their updatetime
	// files: erased, not a time.
	return t, inv == ^t && t != 0xffffffff
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

// ParseTimestamp parses an update timestamp as rpi-eeprom-config's
// --timestamp does (Python's int(), base 10): surrounding blanks, an
// optional '+', decimal digits with single '_' between them. Leading zeros
// are decimal ("012" is 12), never octal; "0x10", "0o17" and "0b11" are
// refused, as Python refuses them. A negative value or one above 2^32-1
// (it is stored as a u32) is refused too.
func ParseTimestamp(s string) (uint32, error) {
	t := strings.TrimSpace(s)
	if strings.HasPrefix(t, "-") {
		return 0, fmt.Errorf("timestamp %q: negative", s)
	}
	t = strings.TrimPrefix(t, "+")
	if t == "" || t[0] == '_' || t[len(t)-1] == '_' || strings.Contains(t, "__") {
		return 0, fmt.Errorf("timestamp %q: not a base-10 integer", s)
	}
	var v uint64
	for _, c := range t {
		switch {
		case c == '_':
			continue
		case c < '0' || c > '9':
			return 0, fmt.Errorf("timestamp %q: not a base-10 integer", s)
		}
		v = v*10 + uint64(c-'0')
		if v > 1<<32-1 {
			return 0, fmt.Errorf("timestamp %q: does not fit in 32 bits", s)
		}
	}
	return uint32(v), nil
}
