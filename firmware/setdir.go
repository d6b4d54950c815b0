package firmware

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// SetDir materialises a set as a directory of verified files under their
// served names (hard links to the cached blobs, or copies where links are
// not possible; never symlinks) and returns its path:
// Dir/sets/<set>-<content hash>. Missing files are fetched first (unless
// Offline). The directory's name depends on its content, so it never
// changes once built; an existing one is re-verified before it is returned.
func (c *Cache) SetDir(ctx context.Context, set string) (string, error) {
	cat, err := c.catalogue()
	if err != nil {
		return "", err
	}
	files, err := cat.SetFiles(set)
	if err != nil {
		return "", err
	}
	type entry struct {
		name, blob, sum string
		size            int64
	}
	var entries []entry
	h := sha256.New()
	for _, sf := range files {
		p, err := c.Path(ctx, sf.File)
		if err != nil {
			return "", fmt.Errorf("firmware: set %s: %w", set, err)
		}
		size, sum, _, err := c.expect(sf.File)
		if err != nil {
			return "", err
		}
		entries = append(entries, entry{name: sf.Name, blob: p, sum: sum, size: size})
		fmt.Fprintf(h, "%s\x00%s\n", sf.Name, sum)
	}
	root, err := c.root()
	if err != nil {
		return "", err
	}
	setsDir := filepath.Join(root, "sets")
	final := filepath.Join(setsDir, set+"-"+hex.EncodeToString(h.Sum(nil))[:16])

	if _, err := os.Stat(final); err == nil {
		ok := true
		for _, e := range entries {
			if err := verifyFile(filepath.Join(final, e.name), e.size, e.sum); err != nil {
				ok = false
				break
			}
		}
		// nothing else may have appeared in it: usbboot would serve it
		if n, err := countFiles(final); err != nil || n != len(entries) {
			ok = false
		}
		if ok {
			return final, nil
		}
		if err := os.RemoveAll(final); err != nil {
			return "", fmt.Errorf("firmware: remove damaged set dir: %w", err)
		}
	}

	if err := os.MkdirAll(setsDir, 0o755); err != nil {
		return "", fmt.Errorf("firmware: create sets dir: %w", err)
	}
	tmp, err := os.MkdirTemp(setsDir, ".tmp-"+set+"-")
	if err != nil {
		return "", fmt.Errorf("firmware: create set dir: %w", err)
	}
	defer os.RemoveAll(tmp) // no-op once renamed
	for _, e := range entries {
		dst := filepath.Join(tmp, filepath.FromSlash(e.name))
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return "", fmt.Errorf("firmware: set %s: %w", set, err)
		}
		if err := linkOrCopy(e.blob, dst); err != nil {
			return "", fmt.Errorf("firmware: set %s: place %s: %w", set, e.name, err)
		}
		if err := verifyFile(dst, e.size, e.sum); err != nil {
			return "", fmt.Errorf("firmware: set %s: %w", set, err)
		}
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return "", fmt.Errorf("firmware: set %s: %w", set, err)
	}
	if err := os.Rename(tmp, final); err != nil {
		if _, serr := os.Stat(final); serr == nil {
			return final, nil // built concurrently by another process
		}
		return "", fmt.Errorf("firmware: set %s: %w", set, err)
	}
	return final, nil
}

func linkOrCopy(src, dst string) error {
	if err := os.Link(src, dst); err == nil {
		return nil
	} else if errors.Is(err, fs.ErrExist) {
		return err
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// countFiles counts the non-directory entries under dir.
func countFiles(dir string) (int, error) {
	n := 0
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			n++
		}
		return nil
	})
	return n, err
}
