// Package eeprom reads and edits Raspberry Pi 4 / CM4 (BCM2711) and Pi 5
// (BCM2712) SPI bootloader images byte for byte as the upstream
// rpi-eeprom-config and rpi-eeprom-digest scripts do. It is pure: bytes in,
// bytes out, no file or device I/O.
//
// An image is a chain of sections, each an 8-byte big-endian header (magic,
// length) followed by its body, aligned to 8 bytes. File sections (magic
// 0x55AAF11F) carry a 12-byte name such as "bootconf.txt"; the bootloader
// config lives in one of them. The last 4 KiB are reserved for the
// bootloader (on 2711 images the update timestamp lives there).
//
//	img, err := eeprom.Parse(data)           // checks size and every magic
//	conf, err := img.BootConf()              // the raw bootconf.txt bytes
//	c := eeprom.ParseConfig(conf)            // KEY=value model, comments kept
//	warnings, err := c.Set("BOOT_ORDER", "0xf21")
//	err = img.SetBootConf(c.Bytes())         // exact upstream replace algorithm
//	out := img.Bytes()                       // the new image
//	sig := eeprom.Digest(out, 1700000000, 0) // the pieeprom.sig text
//
// Errors say what is wrong and where (offset, limit, size) and wrap the
// sentinels ErrImageSize, ErrCorrupt, ErrNoBootConf and ErrTooLarge for
// errors.Is.
package eeprom

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
)

// Supported image sizes.
const (
	Size2711 = 512 * 1024      // BCM2711: Pi 4, Pi 400, CM4, CM4S
	Size2712 = 2 * 1024 * 1024 // BCM2712: Pi 5, Pi 500, CM5
)

// ReservedSize is the size of the last sector of every image. It belongs to
// the bootloader: a config edit never writes into it, and a flash read-back
// does not match the image there.
const ReservedSize = 4096

// MaxBootConf is the hard cap on bootconf.txt content, as upstream tests it
// (4076 bytes accepted, 4077 refused). The real cap of an image can be
// lower; see BootConfSlot.Max.
const MaxBootConf = 4076

// BootConfName is the file section that holds the bootloader config.
const BootConfName = "bootconf.txt"

// The window in which rpi-eeprom-config looks for the bootconf.txt it
// replaces: partition A of a 2712 A/B image, everything above 64 KiB of a
// 2711 image.
const (
	windowStart = 0x10000
	windowEnd   = windowStart + 988*1024
)

// Section layout constants.
const (
	headerLen     = 8  // magic + length
	fileNameLen   = 12 // NUL-padded name after the header
	fileHeaderLen = 24 // header + name + 4 reserved bytes
	fileLenExtra  = 16 // length field = content length + 16
	magicMask     = 0xFFFFF00F
	magicValid    = 0x55AAF00F
)

// Magic is a section's type. Only the low-nibble-masked form 0x55AAFxxF is
// valid.
type Magic uint32

// Known section magics.
const (
	MagicBootcode Magic = 0x55AAF00F // second-stage loader, always first
	MagicFile     Magic = 0x55AAF11F // named, modifiable file
	MagicModule2  Magic = 0x55AAF22F // opaque module (2019-07 to 2020-01)
	MagicModule3  Magic = 0x55AAF33F // opaque module (2020-03 to 2026)
	MagicModule4  Magic = 0x55AAF44F // opaque module (2025-09 on, 2712)
	MagicPadding  Magic = 0x55AAFEEF // free space, body filled with 0xFF
)

// String names the magic's kind.
func (m Magic) String() string {
	switch m {
	case MagicBootcode:
		return "bootcode"
	case MagicFile:
		return "file"
	case MagicModule2, MagicModule3, MagicModule4:
		return "module"
	case MagicPadding:
		return "padding"
	}
	return "unknown"
}

// Valid reports whether m has the 0x55AAFxxF form of a section magic.
func (m Magic) Valid() bool { return uint32(m)&magicMask == magicValid }

// Sentinel errors, wrapped by the detailed errors this package returns.
var (
	ErrImageSize  = errors.New("unsupported image size")
	ErrCorrupt    = errors.New("corrupt image")
	ErrNoBootConf = errors.New("bootconf.txt not found")
	ErrTooLarge   = errors.New("config too large")
)

// Section is one entry of the section chain.
type Section struct {
	Offset int    `json:"offset"` // of the 8-byte header
	Magic  Magic  `json:"magic"`
	Length int    `json:"length"`         // body bytes after the header
	Name   string `json:"name,omitempty"` // file sections only
}

// End is the offset just past the section's body (not aligned).
func (s Section) End() int { return s.Offset + headerLen + s.Length }

// Next is the offset of the following section header.
func (s Section) Next() int { return align8(s.End()) }

// ContentSize is the content length of a file section.
func (s Section) ContentSize() int {
	if s.Magic != MagicFile {
		return 0
	}
	return s.Length - fileLenExtra
}

// Image is a parsed bootloader image. Its methods edit a private copy of the
// bytes given to Parse.
type Image struct {
	data     []byte
	sections []Section
}

// Parse checks the size and walks the section chain of an image, checking
// every magic. It copies data.
func Parse(data []byte) (*Image, error) {
	if len(data) != Size2711 && len(data) != Size2712 {
		return nil, fmt.Errorf("eeprom: image is %d bytes, want %d (BCM2711) or %d (BCM2712): %w",
			len(data), Size2711, Size2712, ErrImageSize)
	}
	im := &Image{data: bytes.Clone(data)}
	secs, err := walk(im.data)
	if err != nil {
		return nil, err
	}
	im.sections = secs
	return im, nil
}

func walk(data []byte) ([]Section, error) {
	var secs []Section
	size := len(data)
	for off := 0; off < size; {
		if off+headerLen > size {
			return nil, fmt.Errorf("eeprom: section header at 0x%x: needs %d bytes, image ends at 0x%x: %w",
				off, headerLen, size, ErrCorrupt)
		}
		m := binary.BigEndian.Uint32(data[off:])
		if m == 0 || m == 0xFFFFFFFF {
			break // erased flash: end of the chain
		}
		magic := Magic(m)
		if !magic.Valid() {
			return nil, fmt.Errorf("eeprom: section at 0x%x: bad magic 0x%08x (want 0x55AAFxxF): %w",
				off, m, ErrCorrupt)
		}
		length := int(binary.BigEndian.Uint32(data[off+4:]))
		if length > size-off-headerLen {
			return nil, fmt.Errorf("eeprom: %s section at 0x%x: length %d runs past the end of the image (0x%x): %w",
				magic, off, length, size, ErrCorrupt)
		}
		s := Section{Offset: off, Magic: magic, Length: length}
		if magic == MagicFile {
			if length < fileLenExtra {
				return nil, fmt.Errorf("eeprom: file section at 0x%x: length %d is shorter than its %d-byte name header: %w",
					off, length, fileLenExtra, ErrCorrupt)
			}
			name := data[off+headerLen : off+headerLen+fileNameLen]
			if i := bytes.IndexByte(name, 0); i >= 0 {
				name = name[:i]
			}
			s.Name = string(name)
		}
		secs = append(secs, s)
		off = s.Next()
	}
	if len(secs) == 0 {
		return nil, fmt.Errorf("eeprom: no section at offset 0 (image is erased): %w", ErrCorrupt)
	}
	return secs, nil
}

func align8(n int) int { return (n + 7) &^ 7 }

// Bytes returns a copy of the image.
func (im *Image) Bytes() []byte { return bytes.Clone(im.data) }

// Size is the image size in bytes.
func (im *Image) Size() int { return len(im.data) }

// SoC is 2711 for a 512 KiB image and 2712 for a 2 MiB one.
func (im *Image) SoC() int {
	if len(im.data) == Size2712 {
		return 2712
	}
	return 2711
}

// Sections lists the section chain in order.
func (im *Image) Sections() []Section { return append([]Section(nil), im.sections...) }

// File returns the content of the first file section called name.
func (im *Image) File(name string) ([]byte, error) {
	for _, s := range im.sections {
		if s.Magic == MagicFile && s.Name == name {
			start := s.Offset + fileHeaderLen
			return bytes.Clone(im.data[start : start+s.ContentSize()]), nil
		}
	}
	return nil, fmt.Errorf("eeprom: no file section named %q in %d sections: %w", name, len(im.sections), ErrNotFound)
}

// ErrNotFound is returned by File for a missing file section.
var ErrNotFound = errors.New("file not found")

// BootConf returns the raw bootconf.txt bytes, exactly as rpi-eeprom-config
// prints them: the first bootconf.txt file section anywhere in the image.
func (im *Image) BootConf() ([]byte, error) {
	b, err := im.File(BootConfName)
	if errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("eeprom: no %s file section in %d sections: %w", BootConfName, len(im.sections), ErrNoBootConf)
	}
	return b, err
}

// BootConfSlot describes where bootconf.txt can be replaced and how much it
// may grow.
type BootConfSlot struct {
	Offset int  `json:"offset"` // of the file section header
	Size   int  `json:"size"`   // current content length
	Limit  int  `json:"limit"`  // the section may extend up to (not including) this offset
	Max    int  `json:"max"`    // largest content that fits: min(MaxBootConf, Limit-Offset-24)
	Free   int  `json:"free"`   // Max - Size (negative if the current config is already too big)
	Last   bool `json:"last"`   // the last section of the chain (no padding header is written after it)
}

// BootConfSlot finds the bootconf.txt that SetBootConf replaces: the first
// one whose header lies in [64 KiB, 1052 KiB), with its growth limit.
func (im *Image) BootConfSlot() (BootConfSlot, error) {
	return im.fileSlot(BootConfName, MaxBootConf)
}

// fileSlot finds the first file section called name in the update window,
// with its growth limit, capped at max bytes of content.
func (im *Image) fileSlot(name string, maxContent int) (BootConfSlot, error) {
	idx := -1
	for i, s := range im.sections {
		if s.Magic == MagicFile && s.Name == name && s.Offset >= windowStart && s.Offset < windowEnd {
			idx = i
			break
		}
	}
	if idx < 0 {
		err := ErrNotFound
		if name == BootConfName {
			err = ErrNoBootConf
		}
		return BootConfSlot{}, fmt.Errorf("eeprom: no %s file section in the update window [0x%x, 0x%x): %w",
			name, windowStart, windowEnd, err)
	}
	s := im.sections[idx]
	// As upstream: "last" is literally the last section of the chain; the
	// limit is the next section that is not padding (padding after the
	// file is free space), else the reserved sector or the window end.
	// Unlike upstream, the limit never reaches into the reserved sector.
	limit := min(len(im.data)-ReservedSize, windowEnd)
	last := idx == len(im.sections)-1
	for _, n := range im.sections[idx+1:] {
		if n.Magic != MagicPadding {
			limit = min(limit, n.Offset)
			break
		}
	}
	max := min(maxContent, limit-s.Offset-fileHeaderLen)
	return BootConfSlot{
		Offset: s.Offset,
		Size:   s.ContentSize(),
		Limit:  limit,
		Max:    max,
		Free:   max - s.ContentSize(),
		Last:   last,
	}, nil
}

// SetBootConf replaces bootconf.txt with conf using the upstream algorithm:
// new length field, new content, 0xFF fill up to the limit (with a padding
// section header when other sections follow). Writing back the original
// config gives an identical image. On error the image is unchanged.
func (im *Image) SetBootConf(conf []byte) error {
	if len(conf) > MaxBootConf {
		return fmt.Errorf("eeprom: %s is %d bytes, the maximum is %d bytes: %w", BootConfName, len(conf), MaxBootConf, ErrTooLarge)
	}
	return im.SetFile(BootConfName, conf)
}

// SetFile replaces the content of the file section called name (in the
// update window) as SetBootConf does: bootconf.sig, pubkey.bin and
// cacert.der are written this way by rpi-eeprom-config --digest, --pubkey
// and --cacertder. On error the image is unchanged.
func (im *Image) SetFile(name string, content []byte) error {
	maxContent := MaxBootConf
	if name == BootsysName {
		// upstream caps every file but bootcode.bin and bootsys (the
		// customer-signed 2712 firmware) at MAX_FILE_SIZE.
		maxContent = windowEnd - windowStart
	}
	slot, err := im.fileSlot(name, maxContent)
	if err != nil {
		return err
	}
	n := len(content)
	if n > slot.Max {
		return fmt.Errorf("eeprom: %s of %d bytes does not fit: section at 0x%x would end at 0x%x, limit 0x%x (at most %d bytes here): %w",
			name, n, slot.Offset, slot.Offset+fileHeaderLen+n, slot.Limit, slot.Max, ErrTooLarge)
	}
	data := bytes.Clone(im.data)
	h := slot.Offset
	binary.BigEndian.PutUint32(data[h+4:], uint32(n+fileLenExtra))
	copy(data[h+fileHeaderLen:], content)
	p := h + fileHeaderLen + n
	fill(data[p:align8(p)])
	p = align8(p)
	if gap := slot.Limit - p; !slot.Last && gap >= headerLen {
		binary.BigEndian.PutUint32(data[p:], uint32(MagicPadding))
		binary.BigEndian.PutUint32(data[p+4:], uint32(gap-headerLen))
		fill(data[p+headerLen : slot.Limit])
	} else if gap > 0 {
		fill(data[p:slot.Limit])
	}
	secs, err := walk(data)
	if err != nil {
		// Not expected for an image that parsed: the edit only rewrites
		// [H, limit), which the checks above keep consistent.
		return fmt.Errorf("eeprom: re-walk after replace: %w", err)
	}
	im.data, im.sections = data, secs
	return nil
}

// BootsysName is the 2712 partition-A firmware file that secure boot
// replaces with a customer-countersigned one (rpi-eeprom-config --bootsys).
const BootsysName = "bootsys"

// SetBootcode replaces the first section, the second-stage bootcode, as
// rpi-eeprom-config --bootcode does for a customer-countersigned 2712
// bootcode.bin: new length, new content, then 0xFF fill (with a padding
// section when 8 bytes or more are left) up to the next section that is
// not padding. Upstream requires that next section at 128 KiB or above
// unless the image is A/B (has a bootsys file); unlike upstream, a
// bootcode that would run into that section is refused. On error the
// image is unchanged.
func (im *Image) SetBootcode(code []byte) error {
	if len(im.sections) == 0 || im.sections[0].Magic != MagicBootcode || im.sections[0].Offset != 0 {
		return fmt.Errorf("eeprom: the image does not start with a bootcode section: %w", ErrCorrupt)
	}
	if len(code) == 0 {
		return errors.New("eeprom: the new bootcode is empty")
	}
	limit := -1
	for _, s := range im.sections[1:] {
		if s.Magic != MagicPadding {
			limit = s.Offset
			break
		}
	}
	ab := false
	for _, s := range im.sections {
		ab = ab || (s.Magic == MagicFile && s.Name == BootsysName)
	}
	switch {
	case limit < 0:
		return fmt.Errorf("eeprom: no section after the bootcode: %w", ErrCorrupt)
	case !ab && limit < 128*1024:
		return fmt.Errorf("eeprom: the next section is at 0x%x, but 128 KiB must be reserved for bootcode (as upstream): %w", limit, ErrTooLarge)
	case headerLen+len(code) > limit:
		return fmt.Errorf("eeprom: bootcode of %d bytes does not fit: the next section starts at 0x%x (at most %d bytes): %w",
			len(code), limit, limit-headerLen, ErrTooLarge)
	}
	data := bytes.Clone(im.data)
	binary.BigEndian.PutUint32(data[4:], uint32(len(code)))
	copy(data[headerLen:], code)
	p := headerLen + len(code)
	fill(data[p:align8(p)])
	p = align8(p)
	if gap := limit - p; gap >= headerLen {
		binary.BigEndian.PutUint32(data[p:], uint32(MagicPadding))
		binary.BigEndian.PutUint32(data[p+4:], uint32(gap-headerLen))
		fill(data[p+headerLen : limit])
	} else {
		fill(data[p:limit])
	}
	secs, err := walk(data)
	if err != nil {
		return fmt.Errorf("eeprom: re-walk after bootcode replace: %w", err)
	}
	im.data, im.sections = data, secs
	return nil
}

func fill(b []byte) {
	for i := range b {
		b[i] = 0xFF
	}
}
