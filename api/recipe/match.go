package recipe

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/cm4bench/cm4bench/internal/contract"
)

type compiled struct {
	serialFrom, serialTo uint64
	hasFrom, hasTo       bool
	serialRE             *regexp.Regexp
	emmcMin, emmcMax     int64
	minBoot              time.Time
}

func (m Match) compile() (compiled, error) {
	var c compiled
	var err error
	hex := func(s string) (uint64, error) {
		v, err := strconv.ParseUint(s, 16, 64)
		if err != nil {
			return 0, fmt.Errorf("serial %q is not hex", s)
		}
		return v, nil
	}
	if m.SerialFrom != "" {
		if c.serialFrom, err = hex(m.SerialFrom); err != nil {
			return c, err
		}
		c.hasFrom = true
	}
	if m.SerialTo != "" {
		if c.serialTo, err = hex(m.SerialTo); err != nil {
			return c, err
		}
		c.hasTo = true
	}
	if c.hasFrom && c.hasTo && c.serialTo < c.serialFrom {
		return c, fmt.Errorf("serial_to %s is below serial_from %s", m.SerialTo, m.SerialFrom)
	}
	if m.SerialPattern != "" {
		if c.serialRE, err = regexp.Compile("^(?:" + m.SerialPattern + ")$"); err != nil {
			return c, fmt.Errorf("serial_pattern: %w", err)
		}
	}
	if m.MACPrefix != "" && !regexp.MustCompile(`^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){0,5}:?$`).MatchString(m.MACPrefix) {
		return c, fmt.Errorf("mac_prefix %q: want colon-separated hex bytes like dc:a6:32", m.MACPrefix)
	}
	if m.EMMCMin != "" {
		if c.emmcMin, err = ParseSize(m.EMMCMin); err != nil {
			return c, fmt.Errorf("emmc_min: %w", err)
		}
	}
	if m.EMMCMax != "" {
		if c.emmcMax, err = ParseSize(m.EMMCMax); err != nil {
			return c, fmt.Errorf("emmc_max: %w", err)
		}
	}
	if m.MinBootloader != "" {
		if c.minBoot, err = parseDate(m.MinBootloader); err != nil {
			return c, fmt.Errorf("min_bootloader: %w", err)
		}
	}
	return c, nil
}

// Why explains, in words, whether the rule's conditions hold for a board:
// ok with the reasons that matched, or the first condition that failed.
func (m Match) Why(mac string, f *contract.Facts) (ok bool, why string) {
	c, err := m.compile()
	if err != nil {
		return false, err.Error()
	}
	if f == nil {
		f = &contract.Facts{}
	}
	var yes []string
	if m.Model != "" {
		if !strings.Contains(strings.ToLower(f.Model), strings.ToLower(m.Model)) {
			return false, fmt.Sprintf("model %q is not %q", or(f.Model, "unknown"), m.Model)
		}
		yes = append(yes, "model "+m.Model)
	}
	if m.Revision != "" {
		if !strings.EqualFold(f.Revision, m.Revision) {
			return false, fmt.Sprintf("revision %s is not %s", or(f.Revision, "unknown"), m.Revision)
		}
		yes = append(yes, "revision "+m.Revision)
	}
	if c.hasFrom || c.hasTo || c.serialRE != nil {
		if f.Serial == "" {
			return false, "the board reported no serial"
		}
		s, err := strconv.ParseUint(f.Serial, 16, 64)
		if (c.hasFrom || c.hasTo) && err != nil {
			return false, "serial " + f.Serial + " is not hex"
		}
		if c.hasFrom && s < c.serialFrom || c.hasTo && s > c.serialTo {
			return false, fmt.Sprintf("serial %s is outside %s..%s", f.Serial, or(m.SerialFrom, "0"), or(m.SerialTo, "ffffffff"))
		}
		if c.hasFrom || c.hasTo {
			yes = append(yes, fmt.Sprintf("serial %s in %s..%s", f.Serial, or(m.SerialFrom, "0"), or(m.SerialTo, "ffffffff")))
		}
		if c.serialRE != nil {
			if !c.serialRE.MatchString(f.Serial) {
				return false, fmt.Sprintf("serial %s does not match %s", f.Serial, m.SerialPattern)
			}
			yes = append(yes, "serial matches "+m.SerialPattern)
		}
	}
	if m.MACPrefix != "" {
		if !strings.HasPrefix(strings.ToLower(mac), strings.ToLower(m.MACPrefix)) {
			return false, fmt.Sprintf("MAC %s does not start with %s", mac, m.MACPrefix)
		}
		yes = append(yes, "MAC "+m.MACPrefix+"…")
	}
	if m.EMMCMin != "" || m.EMMCMax != "" {
		if f.EMMCBytes <= 0 {
			return false, "the board reported no eMMC size"
		}
		if c.emmcMin > 0 && f.EMMCBytes < c.emmcMin || c.emmcMax > 0 && f.EMMCBytes > c.emmcMax {
			return false, fmt.Sprintf("eMMC %s is outside %s..%s", FormatSize(f.EMMCBytes), or(m.EMMCMin, "0"), or(m.EMMCMax, "any"))
		}
		yes = append(yes, "eMMC "+FormatSize(f.EMMCBytes))
	}
	if !c.minBoot.IsZero() {
		d, ok := BootloaderDate(f.Bootloader)
		if !ok {
			return false, "the board reported no bootloader build date"
		}
		if d.Before(c.minBoot) {
			return false, fmt.Sprintf("bootloader %s is older than %s", d.Format(time.DateOnly), m.MinBootloader)
		}
		yes = append(yes, "bootloader "+d.Format(time.DateOnly))
	}
	if len(yes) == 0 {
		return true, "matches every board"
	}
	return true, strings.Join(yes, ", ")
}

// First is the first rule whose conditions hold for the board, with the
// reasons; ok is false (and why says so) when none does.
func (rs RuleSet) First(mac string, f *contract.Facts) (r Rule, why string, ok bool) {
	for _, r := range rs.Rules {
		if yes, why := r.Match.Why(mac, f); yes {
			return r, why, true
		}
	}
	if len(rs.Rules) == 0 {
		return Rule{}, "no rules: the board waits for a technician", false
	}
	return Rule{}, fmt.Sprintf("no rule matches (%d tried): the board waits for a technician", len(rs.Rules)), false
}

// CheckBoard applies a recipe's requirements, and the image size, to a
// board before anything is written. imageBytes is the raw image size.
func (r *Recipe) CheckBoard(f *contract.Facts, imageBytes int64) error {
	if f == nil {
		f = &contract.Facts{}
	}
	if f.EMMCBytes > 0 && imageBytes > f.EMMCBytes {
		return fmt.Errorf("the image is %s and the eMMC holds %s", FormatSize(imageBytes), FormatSize(f.EMMCBytes))
	}
	if r.Requires.MinEMMC != "" {
		min, _ := ParseSize(r.Requires.MinEMMC)
		if f.EMMCBytes < min {
			return fmt.Errorf("recipe %s needs an eMMC of at least %s, the board has %s", r.Name, r.Requires.MinEMMC, or(FormatSize(f.EMMCBytes), "none reported"))
		}
	}
	if r.Requires.Model != "" && !strings.Contains(strings.ToLower(f.Model), strings.ToLower(r.Requires.Model)) {
		return fmt.Errorf("recipe %s needs a %q, the board is %q", r.Name, r.Requires.Model, f.Model)
	}
	if r.Requires.Locked && !f.Locked() {
		state := "does not report its secure-boot state (bootloader too old, or no chosen/bootloader/signed)"
		if f.SignedBoot != nil {
			state = fmt.Sprintf("reports signed=0x%x: no customer key in OTP", *f.SignedBoot)
		}
		return fmt.Errorf("recipe %s needs a board locked to the customer key (secure boot), and this one %s: lock it first with cm4bench secure-boot provision --program-pubkey", r.Name, state)
	}
	if r.Requires.MinBootloader != "" {
		min, _ := parseDate(r.Requires.MinBootloader)
		d, ok := BootloaderDate(f.Bootloader)
		if !ok {
			return fmt.Errorf("recipe %s needs a bootloader from %s or later, and the board reported no build date", r.Name, r.Requires.MinBootloader)
		}
		if d.Before(min) {
			return fmt.Errorf("recipe %s needs a bootloader from %s or later, the board's is from %s: update its EEPROM (cm4bench eeprom set-boot-order)", r.Name, r.Requires.MinBootloader, d.Format(time.DateOnly))
		}
	}
	return nil
}

var bootDateRE = regexp.MustCompile(`(\d{4}-\d{2}-\d{2})`)

// BootloaderDate is the build date in the agent's bootloader fact
// ("<hash> (2024-04-15T13:25:49Z)").
func BootloaderDate(s string) (time.Time, bool) {
	m := bootDateRE.FindString(s)
	if m == "" {
		return time.Time{}, false
	}
	t, err := time.Parse(time.DateOnly, m)
	return t, err == nil
}

func parseDate(s string) (time.Time, error) {
	t, err := time.Parse(time.DateOnly, s)
	if err != nil {
		return t, fmt.Errorf("%q: want a date like 2024-04-15", s)
	}
	return t, nil
}

var sizeRE = regexp.MustCompile(`^(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?$`)

// ParseSize reads "16GB" (10^9), "8GiB" (2^30), "512MB", "1048576".
func ParseSize(s string) (int64, error) {
	m := sizeRE.FindStringSubmatch(strings.TrimSpace(s))
	if m == nil {
		return 0, fmt.Errorf("size %q: want a number with B, KB, MB, GB, TB or KiB, MiB, GiB, TiB", s)
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	mult := map[string]float64{"": 1, "B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12,
		"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}[m[2]]
	return int64(v * mult), nil
}

// FormatSize is a size for people: "31.3 GB".
func FormatSize(n int64) string {
	switch {
	case n <= 0:
		return ""
	case n >= 1e9:
		return fmt.Sprintf("%.1f GB", float64(n)/1e9)
	case n >= 1e6:
		return fmt.Sprintf("%.1f MB", float64(n)/1e6)
	}
	return fmt.Sprintf("%d bytes", n)
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
