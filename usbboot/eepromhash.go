package usbboot

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"strconv"
	"strings"

	"github.com/cm4bench/cm4bench/eeprom"
)

// keepForHash reports whether a served file is kept in memory to judge
// EEPROM_HASH: a bootloader image (at most 2 MiB) or its .sig.
func keepForHash(name string, size int64) bool {
	switch name {
	case "pieeprom.bin", "pieeprom.upd":
		return size <= eeprom.Size2712
	case "pieeprom.sig":
		return size <= 4096
	}
	return false
}

// keep holds a served file's bytes (b is the session's own buffer).
func (ss *session) keep(name string, b []byte) {
	if name == "pieeprom.sig" {
		ss.sigText = b
		return
	}
	ss.eepromName, ss.eepromImg = name, b
}

// finishEEPROM fills Result.EEPROM from the image and .sig served: the
// image's sha256 and, when the .sig carries a timestamp and the image
// parses, the sha256 of the image with that timestamp stamped in.
func (ss *session) finishEEPROM() {
	if ss.eepromImg == nil {
		return
	}
	sum := sha256.Sum256(ss.eepromImg)
	e := &EEPROMServed{Name: ss.eepromName, SHA256: hex.EncodeToString(sum[:])}
	if ts, ok := SigTimestamp(ss.sigText); ok {
		e.Timestamp = ts
		if stamped, err := StampedSHA256(ss.eepromImg, ts); err == nil {
			e.StampedSHA256 = stamped
		}
	}
	ss.res.EEPROM = e
	ss.eepromImg = nil
}

// SigTimestamp reads the "ts: N" line of a .sig file.
func SigTimestamp(sig []byte) (int64, bool) {
	sc := bufio.NewScanner(bytes.NewReader(sig))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "ts: "); ok {
			ts, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			return ts, err == nil && ts >= 0 && ts <= 1<<32-1
		}
	}
	return 0, false
}

// StampedSHA256 is the sha256 of image with the update timestamp ts
// written into its timestamp slot(s), as the bootloader does when it
// applies an update (rpi-eeprom-config --timestamp mimics it).
func StampedSHA256(image []byte, ts int64) (string, error) {
	im, err := eeprom.Parse(bytes.Clone(image))
	if err != nil {
		return "", err
	}
	if err := im.SetTimestamp(uint32(ts)); err != nil {
		return "", err
	}
	sum := sha256.Sum256(im.Bytes())
	return hex.EncodeToString(sum[:]), nil
}
