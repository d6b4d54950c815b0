package eeprom

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// LineKind classifies one line of a bootconf.txt.
type LineKind int

// Line kinds.
const (
	LineBlank   LineKind = iota // empty or whitespace only
	LineComment                 // starts with '#'
	LineSection                 // a [filter] line
	LineSetting                 // KEY=value
	LineOther                   // anything else, and everything after [config.txt]
)

// Line is one line of a bootconf.txt. Raw holds its exact bytes, line ending
// included, so an unedited Config writes back the same bytes.
type Line struct {
	Raw  string
	Kind LineKind
	// Key and Value of a setting (surrounding spaces trimmed); for a section
	// line (and the [config.txt] line, which is LineOther), Key is the text
	// between the brackets.
	Key, Value string
	// Conditional is true when a filter other than [all] is in effect for
	// this line, so it does not apply to every board.
	Conditional bool
}

// Config is an editable bootconf.txt. It keeps every line, comment and line
// ending as written; Set changes only the lines it must.
type Config struct {
	lines    []Line
	passFrom int // index of the [config.txt] line, or len(lines)
}

// ErrInvalid is wrapped by Set for a bad key or value.
var ErrInvalid = errors.New("invalid setting")

// ParseConfig splits a bootconf.txt into lines. It accepts any bytes (the
// bootloader and rpi-eeprom-config validate nothing either); Bytes returns
// them unchanged.
func ParseConfig(b []byte) *Config {
	c := &Config{passFrom: -1}
	conditional, passthrough := false, false
	for len(b) > 0 {
		n := bytes.IndexByte(b, '\n') + 1
		if n == 0 {
			n = len(b)
		}
		raw := string(b[:n])
		b = b[n:]
		l := Line{Raw: raw, Kind: LineOther}
		t := strings.TrimSpace(raw)
		switch {
		case passthrough:
		case t == "":
			l.Kind = LineBlank
		case t[0] == '#':
			l.Kind = LineComment
		case t[0] == '[' && t[len(t)-1] == ']':
			l.Kind, l.Key = LineSection, strings.TrimSpace(t[1:len(t)-1])
			switch strings.ToLower(l.Key) {
			case "all":
				conditional = false
			case "config.txt":
				// From here on the text is appended to the OS config.txt.
				passthrough = true
				l.Kind = LineOther
				c.passFrom = len(c.lines)
			default:
				conditional = true
			}
		case strings.Contains(t, "="):
			k, v, _ := strings.Cut(t, "=")
			l.Kind, l.Key, l.Value = LineSetting, strings.TrimSpace(k), strings.TrimSpace(v)
		}
		l.Conditional = conditional
		c.lines = append(c.lines, l)
	}
	if c.passFrom < 0 {
		c.passFrom = len(c.lines)
	}
	return c
}

// Bytes renders the config.
func (c *Config) Bytes() []byte {
	var buf bytes.Buffer
	for _, l := range c.lines {
		buf.WriteString(l.Raw)
	}
	return buf.Bytes()
}

// Lines returns a copy of the parsed lines.
func (c *Config) Lines() []Line { return slices.Clone(c.lines) }

// Get returns the value that applies to every board: the last unconditional
// setting of key.
func (c *Config) Get(key string) (string, bool) {
	v, ok := "", false
	for _, l := range c.lines {
		if l.Kind == LineSetting && !l.Conditional && l.Key == key {
			v, ok = l.Value, true
		}
	}
	return v, ok
}

// Set sets key to value for every board. Existing unconditional settings of
// key get the new value where they stand; otherwise a KEY=value line is
// appended to the end of the last unconditional ([all]) block, before any
// [config.txt] part. All other lines are kept as written.
//
// BOOT_ORDER is validated (ValidateBootOrder). An unknown key is accepted
// with a warning, as is a key that a conditional section also sets.
func (c *Config) Set(key, value string) (warnings []string, err error) {
	if err := validKey(key); err != nil {
		return nil, err
	}
	if strings.ContainsAny(value, "\r\n") {
		return nil, fmt.Errorf("eeprom: %s: value contains a line break: %w", key, ErrInvalid)
	}
	if key == "BOOT_ORDER" {
		w, err := ValidateBootOrder(value)
		if err != nil {
			return nil, err
		}
		warnings = append(warnings, w...)
	}
	if !KnownKey(key) {
		warnings = append(warnings, fmt.Sprintf("%s is not a known bootloader key (kept as given)", key))
	}
	for _, l := range c.lines {
		if l.Kind == LineSetting && l.Conditional && l.Key == key {
			warnings = append(warnings, fmt.Sprintf("%s is also set under a conditional section (%q); there it overrides this value", key, strings.TrimSpace(l.Raw)))
			break
		}
	}
	found := false
	for i, l := range c.lines {
		if l.Kind == LineSetting && !l.Conditional && l.Key == key {
			c.lines[i] = Line{Raw: key + "=" + value + lineEnding(l.Raw), Kind: LineSetting, Key: key, Value: value}
			found = true
		}
	}
	if found {
		return warnings, nil
	}
	at := c.insertPoint()
	eol := "\n"
	if at > 0 {
		prev := &c.lines[at-1]
		if e := lineEnding(prev.Raw); e != "" {
			eol = e
		} else {
			prev.Raw += eol // the last line had no newline
		}
	}
	nl := Line{Raw: key + "=" + value + eol, Kind: LineSetting, Key: key, Value: value}
	c.lines = slices.Insert(c.lines, at, nl)
	if at <= c.passFrom {
		c.passFrom++
	}
	return warnings, nil
}

// insertPoint is the index where a new unconditional setting goes: the end
// of the last unconditional block (before any [config.txt] part), backing up
// over blank lines and comments that introduce a following section.
func (c *Config) insertPoint() int {
	end := c.passFrom
	last := -1 // the last unconditional line before end, preferring content
	for i := end - 1; i >= 0; i-- {
		l := c.lines[i]
		if l.Conditional {
			continue
		}
		if last < 0 {
			last = i
		}
		if l.Kind != LineBlank && l.Kind != LineComment {
			last = i
			break
		}
	}
	if last < 0 {
		return 0 // only conditional blocks: before the first filter
	}
	blockEnd := end
	for i := last + 1; i < end; i++ {
		if c.lines[i].Kind == LineSection {
			blockEnd = i
			break
		}
	}
	if blockEnd == end {
		return end
	}
	for blockEnd > last+1 && (c.lines[blockEnd-1].Kind == LineBlank || c.lines[blockEnd-1].Kind == LineComment) {
		blockEnd--
	}
	return blockEnd
}

func lineEnding(raw string) string {
	switch {
	case strings.HasSuffix(raw, "\r\n"):
		return "\r\n"
	case strings.HasSuffix(raw, "\n"):
		return "\n"
	}
	return ""
}

func validKey(key string) error {
	if key == "" {
		return fmt.Errorf("eeprom: empty key: %w", ErrInvalid)
	}
	for _, r := range key {
		if !(r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_') {
			return fmt.Errorf("eeprom: key %q: only letters, digits and '_' are allowed: %w", key, ErrInvalid)
		}
	}
	return nil
}

// modeName names a BOOT_ORDER nibble; "" for a value that is not a mode.
func modeName(n uint64) string {
	switch n {
	case 0x0:
		return "SD CARD DETECT"
	case 0x1:
		return "SD CARD/eMMC"
	case 0x2:
		return "NETWORK"
	case 0x3:
		return "RPIBOOT"
	case 0x4:
		return "USB-MSD"
	case 0x5:
		return "BCM-USB-MSD"
	case 0x6:
		return "NVME"
	case 0x7:
		return "HTTP"
	case 0xe:
		return "STOP"
	case 0xf:
		return "RESTART"
	}
	return ""
}

// BootModes decodes a BOOT_ORDER value into its modes in the order the
// bootloader tries them (least significant nibble first).
func BootModes(order string) ([]string, error) {
	v, err := parseBootOrder(order)
	if err != nil {
		return nil, err
	}
	var modes []string
	for ; v != 0; v >>= 4 {
		n := v & 0xf
		if modeName(n) == "" {
			return nil, fmt.Errorf("eeprom: BOOT_ORDER %s: unknown mode 0x%x: %w", order, n, ErrInvalid)
		}
		modes = append(modes, modeName(n))
	}
	return modes, nil
}

func parseBootOrder(order string) (uint64, error) {
	hexs, ok := strings.CutPrefix(order, "0x")
	if !ok {
		hexs, ok = strings.CutPrefix(order, "0X")
	}
	if !ok || hexs == "" {
		return 0, fmt.Errorf("eeprom: BOOT_ORDER %q: want hex such as 0xf21: %w", order, ErrInvalid)
	}
	if len(hexs) > 8 {
		return 0, fmt.Errorf("eeprom: BOOT_ORDER %q: more than 8 hex digits: %w", order, ErrInvalid)
	}
	v, err := strconv.ParseUint(hexs, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("eeprom: BOOT_ORDER %q: not hex: %w", order, ErrInvalid)
	}
	if v == 0 {
		return 0, fmt.Errorf("eeprom: BOOT_ORDER %q: no boot mode: %w", order, ErrInvalid)
	}
	return v, nil
}

// BootOrder is a validated BOOT_ORDER value: boot modes as nibbles, the
// first tried in the least significant one.
type BootOrder uint32

// ParseBootOrder is the one BOOT_ORDER parser (the config editor, the
// recovery directory and the simulated bench use it): ValidateBootOrder's
// rules, and the value.
func ParseBootOrder(order string) (BootOrder, []string, error) {
	w, err := ValidateBootOrder(order)
	if err != nil {
		return 0, nil, err
	}
	v, err := parseBootOrder(order)
	if err != nil {
		return 0, nil, err
	}
	return BootOrder(v), w, nil
}

// String is the config-file form, 0x plus lowercase hex.
func (b BootOrder) String() string { return fmt.Sprintf("0x%x", uint32(b)) }

// ValidateBootOrder checks a BOOT_ORDER value: 0x followed by 1 to 8 hex
// digits, every nibble a known mode (0-7, e, f), RESTART (f) and STOP (e)
// only as the last mode tried (the most significant nibble). It warns about
// RPIBOOT (3) not last, the deprecated SD CARD DETECT (0) and repeated modes.
func ValidateBootOrder(order string) (warnings []string, err error) {
	v, err := parseBootOrder(order)
	if err != nil {
		return nil, err
	}
	seen := map[uint64]bool{}
	for pos := 0; v != 0; v, pos = v>>4, pos+1 {
		n := v & 0xf
		lastMode := v>>4 == 0
		switch {
		case modeName(n) == "":
			return nil, fmt.Errorf("eeprom: BOOT_ORDER %s: nibble %d is 0x%x, not a boot mode (0-7, e, f): %w", order, pos, n, ErrInvalid)
		case (n == 0xf || n == 0xe) && !lastMode:
			return nil, fmt.Errorf("eeprom: BOOT_ORDER %s: %s (0x%x) must be the last mode (the leftmost digit), found at nibble %d: %w",
				order, modeName(n), n, pos, ErrInvalid)
		case n == 0x3 && !lastMode && v>>4 != 0xf:
			warnings = append(warnings, fmt.Sprintf("BOOT_ORDER %s: RPIBOOT (3) waits forever; put it last", order))
		case n == 0x0:
			warnings = append(warnings, fmt.Sprintf("BOOT_ORDER %s: SD CARD DETECT (0) is deprecated", order))
		}
		if seen[n] && n != 0xf {
			warnings = append(warnings, fmt.Sprintf("BOOT_ORDER %s: mode %s (0x%x) appears twice", order, modeName(n), n))
		}
		seen[n] = true
	}
	return warnings, nil
}

// KnownKey reports whether key is a documented bootloader config key.
// The list is the documented bootloader config keys (raspberrypi documentation, "Raspberry Pi bootloader configuration").
func KnownKey(key string) bool {
	switch key {
	case
		"BOOT_ORDER", "BOOT_UART", "WAKE_ON_GPIO", "POWER_OFF_ON_HALT", "ENABLE_SELF_UPDATE", "FREEZE_VERSION",
		"DISABLE_HDMI", "HDMI_DELAY", "PARTITION", "PARTITION_WALK", "BOOT_WATCHDOG_TIMEOUT", "REBOOT_ON_FATAL_ERROR",
		"MAX_RESTARTS", "NET_BOOT_MAX_RETRIES", "SD_BOOT_MAX_RETRIES", "DHCP_TIMEOUT", "DHCP_REQ_TIMEOUT",
		"TFTP_FILE_TIMEOUT", "TFTP_IP", "TFTP_PREFIX", "TFTP_PREFIX_STR", "CLIENT_IP", "SUBNET", "GATEWAY",
		"PXE_OPTION43", "DHCP_OPTION97", "MAC_ADDRESS", "MAC_ADDRESS_OTP", "NET_INSTALL_ENABLED",
		"NET_INSTALL_AT_POWER_ON", "NET_INSTALL_KEYBOARD_WAIT", "HTTP_HOST", "HTTP_PORT", "HTTP_PATH",
		"HTTP_CACERT_HASH", "NETCONSOLE", "USB_MSD_EXCLUDE_VID_PID", "USB_MSD_DISCOVER_TIMEOUT",
		"USB_MSD_LUN_TIMEOUT", "USB_MSD_PWR_OFF_TIME", "USB_MSD_STARTUP_DELAY", "VL805", "XHCI_DEBUG",
		"SDRAM_BANKLOW", "SIGNED_BOOT", "BOOTVAR0", "PSU_MAX_CURRENT", "USB_MSD_BOOT_MAX_RETRIES":
		return true
	}
	return false
}
