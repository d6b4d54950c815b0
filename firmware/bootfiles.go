package firmware

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// BootFiles reads usbboot's bootfiles.bin: a ustar archive whose members
// are the boot stages per SoC, "2711/bootcode4.bin", "2712/bootmain", ...
// Members are looked up case-insensitively, as rpiboot does.
//
//	bf, err := firmware.ParseBootFiles(data)
//	b, err := bf.Member("2711", "bootcode4.bin")
type BootFiles struct {
	r       io.ReaderAt
	size    int64
	members []Member
	index   map[string]int // lower-cased name -> members index
}

// Member is one regular file of the archive.
type Member struct {
	Name   string `json:"name"`   // e.g. "2711/bootcode4.bin"
	Offset int64  `json:"offset"` // of the data in the archive
	Size   int64  `json:"size"`
}

// ErrArchive is wrapped by errors about a malformed archive.
var ErrArchive = errors.New("bad bootfiles.bin archive")

// ErrNoMember is wrapped when a member is not in the archive.
var ErrNoMember = errors.New("no such member")

const tarBlock = 512

// ParseBootFiles indexes an archive held in memory.
func ParseBootFiles(b []byte) (*BootFiles, error) {
	return OpenBootFiles(bytes.NewReader(b), int64(len(b)))
}

// OpenBootFiles indexes the archive in r (size bytes long). Member data is
// read from r on demand.
func OpenBootFiles(r io.ReaderAt, size int64) (*BootFiles, error) {
	bf := &BootFiles{r: r, size: size, index: map[string]int{}}
	hdr := make([]byte, tarBlock)
	for off := int64(0); ; {
		if off+tarBlock > size {
			return nil, fmt.Errorf("firmware: bootfiles.bin: header at %d runs past the end (%d bytes) without the end-of-archive marker: %w", off, size, ErrArchive)
		}
		if _, err := r.ReadAt(hdr, off); err != nil {
			return nil, fmt.Errorf("firmware: bootfiles.bin: read header at %d: %w", off, err)
		}
		if allZero(hdr) {
			break // end of archive (a second zero block follows)
		}
		m, typ, err := parseHeader(hdr, off)
		if err != nil {
			return nil, err
		}
		dataOff := off + tarBlock
		if m.Size > size-dataOff {
			return nil, fmt.Errorf("firmware: bootfiles.bin: member %q at %d: %d bytes run past the end of the archive (%d bytes): %w",
				m.Name, off, m.Size, size, ErrArchive)
		}
		switch typ {
		case '0', 0:
			m.Offset = dataOff
			key := strings.ToLower(m.Name)
			if _, dup := bf.index[key]; dup {
				return nil, fmt.Errorf("firmware: bootfiles.bin: member %q at %d appears twice: %w", m.Name, off, ErrArchive)
			}
			bf.index[key] = len(bf.members)
			bf.members = append(bf.members, m)
		case '5': // directory
		default:
			return nil, fmt.Errorf("firmware: bootfiles.bin: member %q at %d has unsupported type %q: %w", m.Name, off, typ, ErrArchive)
		}
		off = dataOff + (m.Size+tarBlock-1)/tarBlock*tarBlock
	}
	return bf, nil
}

// parseHeader decodes a ustar (POSIX or GNU) header block and checks its
// checksum.
func parseHeader(h []byte, off int64) (Member, byte, error) {
	magic := string(h[257:265])
	posix := magic[:6] == "ustar\x00"
	if !posix && magic != "ustar  \x00" {
		return Member{}, 0, fmt.Errorf("firmware: bootfiles.bin: header at %d: no ustar magic: %w", off, ErrArchive)
	}
	want, err := octal(h[148:156])
	if err != nil {
		return Member{}, 0, fmt.Errorf("firmware: bootfiles.bin: header at %d: checksum field: %w", off, err)
	}
	var sum int64
	for i, c := range h {
		if i >= 148 && i < 156 {
			c = ' '
		}
		sum += int64(c)
	}
	if sum != want {
		return Member{}, 0, fmt.Errorf("firmware: bootfiles.bin: header at %d: checksum %d, header says %d: %w", off, sum, want, ErrArchive)
	}
	name := cstring(h[0:100])
	if posix {
		if p := cstring(h[345:500]); p != "" {
			name = p + "/" + name
		}
	}
	size, err := octal(h[124:136])
	if err != nil {
		return Member{}, 0, fmt.Errorf("firmware: bootfiles.bin: member %q at %d: size field: %w", name, off, err)
	}
	if name == "" {
		return Member{}, 0, fmt.Errorf("firmware: bootfiles.bin: header at %d: empty name: %w", off, ErrArchive)
	}
	return Member{Name: strings.TrimSuffix(name, "/"), Size: size}, h[156], nil
}

func octal(b []byte) (int64, error) {
	s := strings.Trim(string(b), " \x00")
	if s == "" {
		return 0, nil
	}
	v, err := strconv.ParseInt(s, 8, 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("%q is not an octal number: %w", s, ErrArchive)
	}
	return v, nil
}

func cstring(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// Members lists the regular files in archive order.
func (bf *BootFiles) Members() []Member { return append([]Member(nil), bf.members...) }

// Lookup finds the member prefix/name (case-insensitive).
func (bf *BootFiles) Lookup(prefix, name string) (Member, error) {
	full := name
	if prefix != "" {
		full = prefix + "/" + name
	}
	i, ok := bf.index[strings.ToLower(full)]
	if !ok {
		return Member{}, fmt.Errorf("firmware: bootfiles.bin: %s: %w", full, ErrNoMember)
	}
	return bf.members[i], nil
}

// Open returns a reader of the member name for soc (2711, 2712, or 2710
// for the BCM2835/7 family).
func (bf *BootFiles) Open(soc int, name string) (*io.SectionReader, error) {
	m, err := bf.Lookup(strconv.Itoa(soc), name)
	if err != nil {
		return nil, err
	}
	return io.NewSectionReader(bf.r, m.Offset, m.Size), nil
}

// Member reads the member prefix/name into memory.
func (bf *BootFiles) Member(prefix, name string) ([]byte, error) {
	m, err := bf.Lookup(prefix, name)
	if err != nil {
		return nil, err
	}
	b := make([]byte, m.Size)
	if _, err := bf.r.ReadAt(b, m.Offset); err != nil {
		return nil, fmt.Errorf("firmware: bootfiles.bin: read %s: %w", m.Name, err)
	}
	return b, nil
}
