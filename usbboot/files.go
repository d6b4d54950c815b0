package usbboot

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Target is the board a file is looked up for.
type Target struct {
	SoC  SoC
	Port string // USB port path, for per-port overlay directories
}

// FileSource provides the files a board asks for. Open returns an error
// wrapping fs.ErrNotExist for a missing file (the device is told size 0);
// any other error fails the board's session.
type FileSource interface {
	Open(ctx context.Context, t Target, name string) (io.ReadCloser, int64, error)
}

// ErrBadName marks a requested name that is refused (it contains "..", is
// absolute or holds a backslash). It wraps fs.ErrNotExist: the device is
// told the file does not exist.
var ErrBadName = fmt.Errorf("file name refused: %w", fs.ErrNotExist)

// CheckName refuses names that could leave the served directory.
func CheckName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("empty name: %w", ErrBadName)
	case strings.Contains(name, ".."):
		return fmt.Errorf("%q contains \"..\": %w", name, ErrBadName)
	case strings.HasPrefix(name, "/") || strings.ContainsAny(name, "\\\x00") || filepath.IsAbs(name):
		return fmt.Errorf("%q is not a plain relative name: %w", name, ErrBadName)
	}
	return nil
}

func isBootcode(name string) bool {
	return strings.HasPrefix(strings.ToLower(name), "bootcode")
}

// Dir serves a boot directory with rpiboot's lookup rules (as upstream rpiboot, main.c):
//
//  1. with per-port overlays, <dir>/<port>/<name> (never for bootcode*.bin);
//  2. <dir>/<soc>/<name> on disk (soc = 2711, 2712 or 2710);
//  3. when <dir>/bootfiles.bin exists, its ustar member <soc>/<name>
//     (case-insensitive);
//  4. <dir>/<name>.
//
// Symlinks are followed (upstream directories are made of them).
type Dir struct {
	root    string
	perPort bool
	tarPath string
	members map[string]member // lower-cased "2711/name"
}

type member struct {
	name   string
	offset int64
	size   int64
}

var _ FileSource = (*Dir)(nil)

// NewDir opens a boot directory. Like rpiboot it must hold bootfiles.bin or
// a bootcode*.bin (directly or under 2710/, 2711/, 2712/).
func NewDir(root string, perPort bool) (*Dir, error) {
	st, err := os.Stat(root)
	if err != nil {
		return nil, fmt.Errorf("usbboot: boot directory: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("usbboot: boot directory %s: not a directory", root)
	}
	d := &Dir{root: root, perPort: perPort}
	tp := filepath.Join(root, "bootfiles.bin")
	if _, err := os.Stat(tp); err == nil {
		if d.members, err = indexTar(tp); err != nil {
			return nil, fmt.Errorf("usbboot: boot directory %s: %w", root, err)
		}
		d.tarPath = tp
		return d, nil
	}
	for _, sub := range []string{"", "2710", "2711", "2712"} {
		for _, n := range []string{"bootcode.bin", "bootcode4.bin", "bootcode5.bin"} {
			if regular(filepath.Join(root, sub, n)) {
				return d, nil
			}
		}
	}
	return nil, fmt.Errorf("usbboot: boot directory %s holds no bootfiles.bin and no bootcode*.bin", root)
}

// Root is the directory served.
func (d *Dir) Root() string { return d.root }

func regular(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}

// countingReader tracks the offset archive/tar has consumed.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// indexTar records where each regular member's data starts.
func indexTar(path string) (map[string]member, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	cr := &countingReader{r: f}
	tr := tar.NewReader(cr)
	m := map[string]member{}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", filepath.Base(path), err)
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		name := strings.TrimPrefix(h.Name, "./")
		m[strings.ToLower(name)] = member{name: name, offset: cr.n, size: h.Size}
	}
	if len(m) == 0 {
		return nil, fmt.Errorf("%s has no files", filepath.Base(path))
	}
	return m, nil
}

// Members lists the bootfiles.bin member names (nil without one).
func (d *Dir) Members() []string {
	var out []string
	for _, m := range d.members {
		out = append(out, m.name)
	}
	return out
}

// Open finds name for t with the rules above.
func (d *Dir) Open(ctx context.Context, t Target, name string) (io.ReadCloser, int64, error) {
	if err := CheckName(name); err != nil {
		return nil, 0, err
	}
	var paths []string
	if d.perPort && t.Port != "" && !isBootcode(name) {
		paths = append(paths, filepath.Join(d.root, t.Port, name))
	}
	paths = append(paths, filepath.Join(d.root, string(t.SoC), name))
	for _, p := range paths {
		if rc, n, err := openRegular(p); err == nil || !errors.Is(err, fs.ErrNotExist) {
			return rc, n, err
		}
	}
	if m, ok := d.members[strings.ToLower(string(t.SoC)+"/"+name)]; ok {
		f, err := os.Open(d.tarPath)
		if err != nil {
			return nil, 0, err
		}
		return readCloser{io.NewSectionReader(f, m.offset, m.size), f}, m.size, nil
	}
	return openRegular(filepath.Join(d.root, name))
}

func openRegular(p string) (io.ReadCloser, int64, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, 0, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, 0, fmt.Errorf("%s is not a regular file: %w", p, fs.ErrNotExist)
	}
	return f, st.Size(), nil
}

type readCloser struct {
	io.Reader
	io.Closer
}
