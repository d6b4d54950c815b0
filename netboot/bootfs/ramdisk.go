package bootfs

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem/fat16"
)

// RamdiskFile is one file of a boot ramdisk; Path is "/"-separated and
// relative (overlays/x.dtbo).
type RamdiskFile struct {
	Path string
	Data []byte
}

// BuildRamdisk writes a FAT16 filesystem image with no partition table
// holding files: the boot.img that a bootloader in secure-boot mode loads
// whole into memory, checks against boot.sig, and boots from. The image is
// reproducible (fixed volume id and times): the same files give the same
// bytes, so the same signature. It returns the image size.
func BuildRamdisk(out string, files []RamdiskFile) (int64, error) {
	var total int64
	seen := map[string]bool{}
	for _, f := range files {
		if err := checkRamdiskPath(f.Path); err != nil {
			return 0, err
		}
		key := strings.ToLower(f.Path)
		if seen[key] {
			return 0, fmt.Errorf("bootfs: %s given twice (FAT names ignore case)", f.Path)
		}
		seen[key] = true
		total += int64(len(f.Data)) + 4096
	}
	// Room for the files, their clusters' slack and the FATs; FAT16 needs
	// at least 4085 clusters and allows at most 2 GiB.
	size := max(16<<20, (total*5/4+(2<<20)+(1<<20)-1)&^((1<<20)-1))
	if size > 2<<30 {
		return 0, fmt.Errorf("bootfs: %d bytes of files do not fit a FAT16 boot image (2 GiB at most)", total)
	}
	os.Remove(out)
	f, err := os.OpenFile(out, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return 0, fmt.Errorf("bootfs: create %s: %w", out, err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		return 0, err
	}
	fsys, err := fat16.Create(file.New(f, false), size, 0, sector, "BOOT", true)
	if err != nil {
		return 0, fmt.Errorf("bootfs: make the FAT16 filesystem: %w", err)
	}
	// Folders first, in order, then the files.
	dirs := map[string]bool{}
	for _, rf := range files {
		for d := path.Dir(rf.Path); d != "."; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	ds := make([]string, 0, len(dirs))
	for d := range dirs {
		ds = append(ds, d)
	}
	sort.Strings(ds)
	for _, d := range ds {
		if err := fsys.Mkdir("/" + d); err != nil {
			return 0, fmt.Errorf("bootfs: make folder %s: %w", d, err)
		}
	}
	for _, rf := range files {
		w, err := fsys.OpenFile("/"+rf.Path, os.O_CREATE|os.O_RDWR|os.O_TRUNC)
		if err != nil {
			return 0, fmt.Errorf("bootfs: write %s: %w", rf.Path, err)
		}
		if _, err := w.Write(rf.Data); err != nil {
			w.Close()
			return 0, fmt.Errorf("bootfs: write %s: %w", rf.Path, err)
		}
		if err := w.Close(); err != nil {
			return 0, fmt.Errorf("bootfs: write %s: %w", rf.Path, err)
		}
	}
	l, err := readFAT16Layout(f)
	if err != nil {
		return 0, fmt.Errorf("bootfs: %w", err)
	}
	if err := freeOrphanCluster2(f, l); err != nil {
		return 0, err
	}
	if err := fixTimes(f, l); err != nil {
		return 0, fmt.Errorf("bootfs: fix the timestamps: %w", err)
	}
	if err := f.Sync(); err != nil {
		return 0, err
	}
	return size, f.Close()
}

// fixedDate is the date every entry of a boot ramdisk carries
// (2020-01-01, 00:00:00): the same files always give the same image, so
// the same boot.sig, whenever it is built.
const fixedDate = (2020-1980)<<9 | 1<<5 | 1

// fat16Layout is where a FAT16 image keeps its tables and folders, read
// from its boot sector.
type fat16Layout struct {
	fatOff, fatBytes, nfats int64 // the first FAT, each FAT's size, their number
	rootOff, rootBytes      int64 // the root folder area
	dataOff, clusterBytes   int64 // cluster 2, and a cluster's size
}

func readFAT16Layout(f *os.File) (fat16Layout, error) {
	var bs [sector]byte
	if _, err := f.ReadAt(bs[:], 0); err != nil {
		return fat16Layout{}, fmt.Errorf("read the boot sector: %w", err)
	}
	le16 := func(o int) int64 { return int64(binary.LittleEndian.Uint16(bs[o:])) }
	bps, spc, rsvd, nfats, rootEnts, fatSz := le16(11), int64(bs[13]), le16(14), int64(bs[16]), le16(17), le16(22)
	if bps != sector || spc == 0 || nfats == 0 || rootEnts == 0 {
		return fat16Layout{}, fmt.Errorf("not a FAT16 boot sector")
	}
	l := fat16Layout{fatOff: rsvd * bps, fatBytes: fatSz * bps, nfats: nfats, rootBytes: rootEnts * 32, clusterBytes: spc * bps}
	l.rootOff = l.fatOff + nfats*l.fatBytes
	l.dataOff = l.rootOff + l.rootBytes
	return l, nil
}

// fixTimes sets the creation, access and write times of every directory
// entry of the FAT16 image to fixedDate (go-diskfs stamps the current
// time). It walks the root folder area and every sub-folder's clusters.
func fixTimes(f *os.File, l fat16Layout) error {
	next := func(c uint16) (uint16, error) {
		var e [2]byte
		if _, err := f.ReadAt(e[:], l.fatOff+int64(c)*2); err != nil {
			return 0, err
		}
		return binary.LittleEndian.Uint16(e[:]), nil
	}
	var walk func(off, n int64, depth int) error
	walk = func(off, n int64, depth int) error {
		buf := make([]byte, n)
		if _, err := f.ReadAt(buf, off); err != nil {
			return err
		}
		var sub []uint16
		for i := int64(0); i+32 <= n; i += 32 {
			e := buf[i : i+32]
			if e[0] == 0 {
				break
			}
			if e[0] == 0xE5 || e[11] == 0x0F {
				continue // deleted, or a long-name part (no times)
			}
			e[13] = 0
			binary.LittleEndian.PutUint16(e[14:], 0)
			binary.LittleEndian.PutUint16(e[16:], fixedDate)
			binary.LittleEndian.PutUint16(e[18:], fixedDate)
			binary.LittleEndian.PutUint16(e[22:], 0)
			binary.LittleEndian.PutUint16(e[24:], fixedDate)
			if e[11]&0x10 != 0 && e[0] != '.' {
				sub = append(sub, binary.LittleEndian.Uint16(e[26:]))
			}
		}
		if _, err := f.WriteAt(buf, off); err != nil {
			return err
		}
		if depth > 16 {
			return fmt.Errorf("folders nested too deep")
		}
		for _, c := range sub {
			for seen := 0; c >= 2 && c < 0xFFF8; seen++ {
				if seen > 1<<16 {
					return fmt.Errorf("a folder's cluster chain loops")
				}
				if err := walk(l.dataOff+int64(c-2)*l.clusterBytes, l.clusterBytes, depth+1); err != nil {
					return err
				}
				var err error
				if c, err = next(c); err != nil {
					return err
				}
			}
		}
		return nil
	}
	return walk(l.rootOff, l.rootBytes, 0)
}

// freeOrphanCluster2 undoes a go-diskfs v1.9.4 quirk: fat16.Create marks
// cluster 2 as used (as for a FAT32 root folder), but FAT16's root folder
// has its own area, so nothing refers to it and fsck.fat reclaims it. It
// is never handed to a file (the library thinks it is taken), so it is
// simply freed in every FAT copy once the files are written.
func freeOrphanCluster2(f *os.File, l fat16Layout) error {
	var e [2]byte
	for i := range l.nfats {
		off := l.fatOff + i*l.fatBytes + 2*2
		if _, err := f.ReadAt(e[:], off); err != nil {
			return err
		}
		if v := binary.LittleEndian.Uint16(e[:]); v < 0xfff8 {
			return nil // not the quirk (a file's chain): leave the FAT alone
		}
		if _, err := f.WriteAt([]byte{0, 0}, off); err != nil {
			return err
		}
	}
	return nil
}

func checkRamdiskPath(p string) error {
	if p == "" || strings.HasPrefix(p, "/") || strings.Contains(p, "\\") {
		return fmt.Errorf("bootfs: %q: want a relative path like kernel8.img or overlays/x.dtbo", p)
	}
	parts := strings.Split(p, "/")
	if len(parts) > 4 {
		return fmt.Errorf("bootfs: %q is deeper than 4 levels", p)
	}
	for _, s := range parts {
		if s == "" || s == "." || s == ".." || len(s) > 255 || strings.ContainsAny(s, `*?:"<>|`+"\x00") {
			return fmt.Errorf("bootfs: %q: %q is not a usable FAT name", p, s)
		}
	}
	return nil
}

// MaxRamdiskBytes bounds a boot.img: the bootloader loads it whole into
// memory before it checks boot.sig.
const MaxRamdiskBytes = 256 << 20

// ReadRamdisk reads name from the root folder of a boot.img (a FAT
// ramdisk with no partition table, as BuildRamdisk writes it), as the
// bootloader does once boot.sig verified.
func ReadRamdisk(img []byte, name string) ([]byte, error) {
	if len(img) > MaxRamdiskBytes {
		return nil, fmt.Errorf("bootfs: boot.img is %d bytes, more than %d", len(img), MaxRamdiskBytes)
	}
	if len(img) < sector {
		return nil, fmt.Errorf("bootfs: boot.img is %d bytes: not a FAT image", len(img))
	}
	typ, ok := fatType(img[:sector], int64(len(img)))
	if !ok {
		return nil, fmt.Errorf("bootfs: boot.img does not start with a FAT boot sector")
	}
	st := file.New(&readerFile{r: bytes.NewReader(img), size: int64(len(img))}, true)
	fsys, err := open(st, Partition{Index: 0, Start: 0, Size: int64(len(img)), FAT: typ})
	if err != nil {
		return nil, err
	}
	b, err := readFile(fsys, "/"+name, MaxRamdiskBytes)
	if err != nil {
		return nil, fmt.Errorf("bootfs: boot.img: %s: %w", name, err)
	}
	return b, nil
}

// CollectDir reads the regular files under dir for BuildRamdisk, paths
// relative and "/"-separated. keep chooses files and folders by relative
// path (nil keeps everything; a folder it refuses is skipped whole). A
// file that is not regular (a device, a socket, a symlink) is an error.
func CollectDir(dir string, keep func(rel string, isDir bool) bool) ([]RamdiskFile, error) {
	var files []RamdiskFile
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		rel = filepath.ToSlash(rel)
		if rel == "." {
			return nil
		}
		if keep != nil && !keep(rel, d.IsDir()) {
			if d.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		if d.IsDir() {
			return nil
		}
		if !d.Type().IsRegular() {
			return fmt.Errorf("bootfs: %s is not a regular file", p)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		files = append(files, RamdiskFile{Path: rel, Data: b})
		return nil
	})
	if err != nil {
		return nil, err
	}
	return files, nil
}
