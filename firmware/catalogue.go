// Package firmware is cm4bench's catalogue of the real Raspberry Pi boot
// files it serves, and a verified, content-addressed cache for them.
//
// The catalogue (catalogue.json, embedded) pins each file by URL, size and
// SHA-256, and groups files into named sets, each the contents of a
// directory usbboot can serve:
//
//	msd        legacy mass-storage mode (bootcode4.bin, bootcode.bin, start4.elf, start.elf)
//	recovery   EEPROM recovery (recovery.bin as bootcode4.bin, config.txt, boot.conf, pieeprom.original.bin)
//	bootfiles  bootfiles.bin (the 2711/ and 2712/ boot stages; read it with BootFiles)
//	eeprom     bootloader images and recovery.bin
//	netboot    start4.elf, fixup4.dat, the CM4 dtb and kernel8.img for network boot
//
// Netboot files are not pinned in the catalogue: the first fetch records
// their size and SHA-256 in the cache's lock file (lock.json) and every
// later fetch must match it.
//
// The Cache stores blobs under Dir/sha256/<hex>. A blob only gets its hash
// name after it was downloaded (or imported) to a temporary file, hashed
// and size-checked; every Path re-verifies it, so nothing unverified is ever
// handed out. Typical use, as `cm4bench usbboot --mode msd` does:
//
//	cat, err := firmware.Default()
//	c := &firmware.Cache{Catalogue: cat}           // Dir "" = DefaultDir()
//	dir, err := c.SetDir(ctx, "msd")               // fetches what is missing, verifies
//	// dir holds bootcode4.bin, start4.elf, ... under their real names
//
//	f, _ := cat.File("usbboot/firmware/bootfiles.bin")
//	p, err := c.Path(ctx, f)                       // one verified blob
//	bf, err := firmware.OpenBootFiles(...)         // members 2711/bootcode4.bin, ...
//
// Tests point the cache at a local server with BaseURL (and Client); they
// never touch the internet. Offline imports (`--from DIR`) go through Import,
// which accepts any file whose SHA-256 is in the catalogue, whatever its name.
package firmware

import (
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"path"
	"slices"
	"sort"
	"strings"
)

//go:embed catalogue.json
var catalogueJSON string

// File is one catalogued file.
type File struct {
	ID     string `json:"id"`               // catalogue key, e.g. "usbboot/msd/start.elf"
	URL    string `json:"url"`              // where it is downloaded from
	Size   int64  `json:"size,omitempty"`   // 0 when not pinned
	SHA256 string `json:"sha256,omitempty"` // lowercase hex; "" = pinned by the lock file
	Role   string `json:"role,omitempty"`
}

// Pinned reports whether the catalogue fixes the file's content.
func (f File) Pinned() bool { return f.SHA256 != "" }

// Set is a named group of files, each under the name it is served as.
type Set struct {
	Name        string            `json:"name"`
	Description string            `json:"description"`
	Files       map[string]string `json:"files"` // served name -> file ID
}

// Names lists the served names of a set in sorted order.
func (s Set) Names() []string {
	names := make([]string, 0, len(s.Files))
	for n := range s.Files {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Catalogue is a parsed manifest.
type Catalogue struct {
	files map[string]File
	sets  map[string]Set
}

// ErrUnknown is wrapped when a set or file is not in the catalogue.
var ErrUnknown = errors.New("not in the catalogue")

// isSHA256 reports whether s is 64 lowercase hex digits.
func isSHA256(s string) bool {
	if len(s) != 64 {
		return false
	}
	for _, c := range []byte(s) {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// isSetName reports whether s is lowercase letters, digits and '-', not
// starting with '-'.
func isSetName(s string) bool {
	if s == "" || s[0] == '-' {
		return false
	}
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// Default parses the embedded catalogue.
func Default() (*Catalogue, error) { return Parse([]byte(catalogueJSON)) }

// Parse reads and checks a catalogue manifest: https URLs, 64-hex sha256
// with a size, served names that stay inside their directory, and sets that
// refer only to catalogued files.
func Parse(b []byte) (*Catalogue, error) {
	var m struct {
		Version int             `json:"version"`
		Files   map[string]File `json:"files"`
		Sets    map[string]Set  `json:"sets"`
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("firmware: parse catalogue: %w", err)
	}
	if m.Version != 1 {
		return nil, fmt.Errorf("firmware: catalogue version %d, want 1", m.Version)
	}
	c := &Catalogue{files: map[string]File{}, sets: map[string]Set{}}
	for id, f := range m.Files {
		f.ID = id
		u, err := url.Parse(f.URL)
		if err != nil || u.Scheme != "https" || u.Host == "" {
			return nil, fmt.Errorf("firmware: catalogue file %s: url %q is not an https URL", id, f.URL)
		}
		switch {
		case f.SHA256 != "" && !isSHA256(f.SHA256):
			return nil, fmt.Errorf("firmware: catalogue file %s: sha256 %q is not 64 lowercase hex digits", id, f.SHA256)
		case f.SHA256 != "" && f.Size <= 0:
			return nil, fmt.Errorf("firmware: catalogue file %s: a pinned file needs its size", id)
		case f.SHA256 == "" && f.Size != 0:
			return nil, fmt.Errorf("firmware: catalogue file %s: size without sha256", id)
		}
		c.files[id] = f
	}
	for name, s := range m.Sets {
		if !isSetName(name) {
			return nil, fmt.Errorf("firmware: catalogue set %q: names are lowercase letters, digits and '-'", name)
		}
		s.Name = name
		if len(s.Files) == 0 {
			return nil, fmt.Errorf("firmware: catalogue set %s is empty", name)
		}
		for served, id := range s.Files {
			if err := checkServedName(served); err != nil {
				return nil, fmt.Errorf("firmware: catalogue set %s: %w", name, err)
			}
			if _, ok := c.files[id]; !ok {
				return nil, fmt.Errorf("firmware: catalogue set %s: %s refers to unknown file %s", name, served, id)
			}
		}
		c.sets[name] = s
	}
	return c, nil
}

func checkServedName(n string) error {
	if n == "" || path.IsAbs(n) || path.Clean(n) != n || strings.Contains(n, "..") || strings.ContainsAny(n, "\\\x00") {
		return fmt.Errorf("served name %q must be a clean relative path", n)
	}
	return nil
}

// File returns the file with catalogue ID id.
func (c *Catalogue) File(id string) (File, error) {
	f, ok := c.files[id]
	if !ok {
		return File{}, fmt.Errorf("firmware: file %s: %w", id, ErrUnknown)
	}
	return f, nil
}

// Files lists every file, sorted by ID.
func (c *Catalogue) Files() []File {
	out := make([]File, 0, len(c.files))
	for _, f := range c.files {
		out = append(out, f)
	}
	slices.SortFunc(out, func(a, b File) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// Set returns the named set.
func (c *Catalogue) Set(name string) (Set, error) {
	s, ok := c.sets[name]
	if !ok {
		return Set{}, fmt.Errorf("firmware: set %q (have %s): %w", name, strings.Join(c.SetNames(), ", "), ErrUnknown)
	}
	return s, nil
}

// SetNames lists the set names, sorted.
func (c *Catalogue) SetNames() []string {
	names := make([]string, 0, len(c.sets))
	for n := range c.sets {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// SetFiles returns the files of a set, sorted by served name.
func (c *Catalogue) SetFiles(name string) ([]SetFile, error) {
	s, err := c.Set(name)
	if err != nil {
		return nil, err
	}
	var out []SetFile
	for _, n := range s.Names() {
		out = append(out, SetFile{Name: n, File: c.files[s.Files[n]]})
	}
	return out, nil
}

// SetFile is a file of a set under its served name.
type SetFile struct {
	Name string `json:"name"`
	File File   `json:"file"`
}
