// Package atomicfile writes files so that a reader never sees a partial one:
// data goes to a temporary file in the target's directory, is fsynced, and is
// renamed over the target only when complete. A failed or aborted write
// leaves no file behind.
//
//	f, err := atomicfile.Create("/data/backups/x.img.zst", 0o644)
//	if err != nil { return err }
//	defer f.Abort() // no-op after Commit
//	if _, err := io.Copy(f, body); err != nil { return err }
//	return f.Commit()
package atomicfile

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// File is a pending file. Writes go to a hidden temporary file; Commit makes
// it appear under its final name, Abort removes it.
type File struct {
	*os.File
	path string
	done bool
}

// Create starts a new pending file for path.
func Create(path string, perm os.FileMode) (*File, error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	tmp, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return nil, fmt.Errorf("atomicfile: create temp for %s: %w", path, err)
	}
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return nil, fmt.Errorf("atomicfile: chmod %s: %w", tmp.Name(), err)
	}
	return &File{File: tmp, path: path}, nil
}

// Commit fsyncs the data, renames it to the final name and fsyncs the
// directory. On error the temporary file is removed.
func (f *File) Commit() error {
	if f.done {
		return errors.New("atomicfile: commit after commit or abort")
	}
	f.done = true
	name := f.File.Name()
	if err := f.File.Sync(); err != nil {
		f.File.Close()
		os.Remove(name)
		return fmt.Errorf("atomicfile: sync %s: %w", f.path, err)
	}
	if err := f.File.Close(); err != nil {
		os.Remove(name)
		return fmt.Errorf("atomicfile: close %s: %w", f.path, err)
	}
	if err := os.Rename(name, f.path); err != nil {
		os.Remove(name)
		return fmt.Errorf("atomicfile: rename to %s: %w", f.path, err)
	}
	if d, err := os.Open(filepath.Dir(f.path)); err == nil {
		d.Sync() // best effort: some filesystems refuse fsync on directories
		d.Close()
	}
	return nil
}

// CommitNew is Commit for a path that must not exist yet: the file is
// linked into place only if nothing holds the name (link(2) fails with
// EEXIST), so of two writers racing for one name exactly one wins; the
// other gets an error wrapping fs.ErrExist and its data is discarded.
func (f *File) CommitNew() error {
	if f.done {
		return errors.New("atomicfile: commit after commit or abort")
	}
	f.done = true
	name := f.File.Name()
	defer os.Remove(name)
	if err := f.File.Sync(); err != nil {
		f.File.Close()
		return fmt.Errorf("atomicfile: sync %s: %w", f.path, err)
	}
	if err := f.File.Close(); err != nil {
		return fmt.Errorf("atomicfile: close %s: %w", f.path, err)
	}
	if err := os.Link(name, f.path); err != nil {
		return fmt.Errorf("atomicfile: create %s: %w", f.path, err)
	}
	if d, err := os.Open(filepath.Dir(f.path)); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// Abort discards the pending file. It is safe to call after Commit, where it
// does nothing, so it can be deferred.
func (f *File) Abort() error {
	if f.done {
		return nil
	}
	f.done = true
	f.File.Close()
	if err := os.Remove(f.File.Name()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("atomicfile: remove temp of %s: %w", f.path, err)
	}
	return nil
}

// WriteFile writes data to path atomically.
func WriteFile(path string, data []byte, perm os.FileMode) error {
	f, err := Create(path, perm)
	if err != nil {
		return err
	}
	defer f.Abort()
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("atomicfile: write %s: %w", path, err)
	}
	return f.Commit()
}
