package eeprom

import (
	"bytes"
	"strconv"
)

// BuildInfo holds the version markers the bootloader build embeds as ASCII
// (what rpi-eeprom-update and `vcgencmd bootloader_version` report).
type BuildInfo struct {
	Timestamp int64  `json:"build_timestamp,omitempty"` // BUILD_TIMESTAMP=<unix>
	Version   string `json:"version,omitempty"`         // VERSION:<git hash>
	Date      string `json:"date,omitempty"`            // DATE: YYYY/MM/DD
}

// BuildInfo scans the image for its build markers. Missing markers stay
// zero.
func (im *Image) BuildInfo() BuildInfo {
	var bi BuildInfo
	if v := after(im.data, "BUILD_TIMESTAMP=", isDigit, 1, 19); v != "" {
		bi.Timestamp, _ = strconv.ParseInt(v, 10, 64)
	}
	bi.Version = after(im.data, "VERSION:", isHex, 8, 40)
	if d := after(im.data, "DATE: ", func(c byte) bool { return isDigit(c) || c == '/' }, 10, 10); d != "" {
		bi.Date = d
	}
	return bi
}

// after returns the run of bytes matching ok right after the first
// occurrence of marker whose run is between minLen and maxLen long.
func after(data []byte, marker string, ok func(byte) bool, minLen, maxLen int) string {
	m := []byte(marker)
	for off := 0; ; {
		i := bytes.Index(data[off:], m)
		if i < 0 {
			return ""
		}
		start := off + i + len(m)
		end := start
		for end < len(data) && end-start < maxLen && ok(data[end]) {
			end++
		}
		if end-start >= minLen && (end == len(data) || !ok(data[end])) {
			return string(data[start:end])
		}
		off = start
	}
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }
func isHex(c byte) bool   { return isDigit(c) || c >= 'a' && c <= 'f' }
