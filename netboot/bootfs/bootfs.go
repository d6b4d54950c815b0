// Package bootfs finds the FAT boot partition of a disk image and writes
// per-device files into it (a recipe's customisation: cloud-init user-data,
// firstrun.sh, a serial number, a certificate). The agent uses it on the
// freshly written eMMC; the server uses Find to refuse, before any board is
// touched, a recipe whose image has no FAT partition.
//
// The partition table (MBR or GPT) is read with go-diskfs, and the FAT
// filesystems (FAT12, FAT16, FAT32) are edited with go-diskfs too. The
// partition is recognised by its boot sector, not only its type code.
package bootfs

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"time"

	"github.com/diskfs/go-diskfs/backend"
	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem"
	"github.com/diskfs/go-diskfs/filesystem/fat12"
	"github.com/diskfs/go-diskfs/filesystem/fat16"
	"github.com/diskfs/go-diskfs/filesystem/fat32"
	"github.com/diskfs/go-diskfs/partition"

	"github.com/cm4bench/cm4bench/internal/contract"
)

const sector = 512

// Limits on what a recipe may write.
const (
	MaxFiles     = 64
	MaxFileBytes = 1 << 20 // per file
)

// ErrNoFAT is returned for a disk whose partition table holds no FAT
// partition (or no partition table at all).
var ErrNoFAT = errors.New("no FAT partition in the partition table")

// Partition is a FAT partition found on a disk.
type Partition struct {
	Index int    // 1-based, as in the partition table
	Start int64  // bytes from the start of the disk
	Size  int64  // bytes
	FAT   string // "FAT12", "FAT16" or "FAT32"
}

// Find returns the first FAT partition of the disk r of size bytes.
func Find(r io.ReaderAt, size int64) (Partition, error) {
	tbl, err := partition.Read(&readerFile{r: r, size: size}, sector, sector)
	if err != nil {
		return Partition{}, fmt.Errorf("bootfs: read the partition table: %w (%w)", err, ErrNoFAT)
	}
	var odd error
	for _, p := range tbl.GetPartitions() {
		start, n := p.GetStart(), p.GetSize()
		if n <= 0 || start < 0 || start+n > size {
			continue
		}
		var bs [sector]byte
		if _, err := r.ReadAt(bs[:], start); err != nil {
			continue
		}
		typ, ok := fatType(bs[:], n)
		if !ok {
			continue
		}
		if strings.HasPrefix(typ, "FAT32 below") {
			odd = fmt.Errorf("bootfs: partition %d is a FAT32 with fewer than 65525 clusters, which FAT tools do not read reliably: format it with smaller clusters (mkfs.fat -F 32 -s 4, as Raspberry Pi OS does)", p.GetIndex())
			continue
		}
		return Partition{Index: p.GetIndex(), Start: start, Size: n, FAT: typ}, nil
	}
	if odd != nil {
		return Partition{}, odd
	}
	return Partition{}, fmt.Errorf("bootfs: %w", ErrNoFAT)
}

// fatType tells FAT12/16/32 from a boot sector: FAT32 by its layout,
// FAT12 and FAT16 by their cluster count; ok is false when the sector is
// not a plausible FAT boot sector.
func fatType(bs []byte, partBytes int64) (string, bool) {
	le16 := func(o int) int64 { return int64(binary.LittleEndian.Uint16(bs[o:])) }
	le32 := func(o int) int64 { return int64(binary.LittleEndian.Uint32(bs[o:])) }
	if bs[510] != 0x55 || bs[511] != 0xaa || (bs[0] != 0xeb && bs[0] != 0xe9) {
		return "", false
	}
	bps, spc, rsvd, nfats := le16(11), int64(bs[13]), le16(14), int64(bs[16])
	if bps != sector || spc == 0 || spc&(spc-1) != 0 || rsvd == 0 || nfats == 0 {
		return "", false
	}
	rootSecs := (le16(17)*32 + bps - 1) / bps
	fatSz := le16(22)
	if fatSz == 0 {
		fatSz = le32(36)
	}
	tot := le16(19)
	if tot == 0 {
		tot = le32(32)
	}
	if fatSz == 0 || tot == 0 || tot*bps > partBytes {
		return "", false
	}
	data := tot - (rsvd + nfats*fatSz + rootSecs)
	if data <= 0 {
		return "", false
	}
	// The FAT32 layout (no 16-bit FAT size, no fixed root folder) is what
	// the filesystem code must read, whatever the cluster count; Linux
	// decides the same way. FAT12 and FAT16 differ by cluster count only.
	if le16(22) == 0 && le16(17) == 0 {
		if data/spc < 65525 {
			// mkfs.fat makes these when asked for FAT32 on a small partition
			// with large clusters; mtools refuses them and go-diskfs
			// corrupts them. Not a boot partition we write into.
			return "FAT32 below 65525 clusters", true
		}
		return "FAT32", true
	}
	switch n := data / spc; {
	case n < 4085:
		return "FAT12", true
	case n < 65525:
		return "FAT16", true
	default:
		return "FAT32", true
	}
}

// CheckPath refuses a file name that is not a plain name in the boot
// partition's root folder, where the Raspberry Pi firmware and its
// first-boot hooks (user-data, meta-data, network-config, firstrun.sh) look.
// Folders are refused: go-diskfs writes a FAT32 sub-folder's ".." entry in
// a form fsck.fat repairs.
func CheckPath(p string) error {
	if p == "" || p == "." || p == ".." || len(p) > 255 || strings.ContainsAny(p, "/\\*?:\"<>|\x00") {
		return fmt.Errorf("bootfs: file name %q: want a plain name in the boot partition's root folder, like user-data or serial.txt", p)
	}
	return nil
}

// Write writes files into the first FAT partition of the disk f, syncs,
// then opens the filesystem afresh, reads every file back and returns its
// sha256. A file whose read-back differs from what was written is an error.
func Write(f *os.File, size int64, files []contract.CustomFile) ([]contract.FileHash, error) {
	if len(files) > MaxFiles {
		return nil, fmt.Errorf("bootfs: %d files, at most %d", len(files), MaxFiles)
	}
	for _, cf := range files {
		if err := CheckPath(cf.Path); err != nil {
			return nil, err
		}
		if len(cf.Data) > MaxFileBytes {
			return nil, fmt.Errorf("bootfs: %s is %d bytes, at most %d", cf.Path, len(cf.Data), MaxFileBytes)
		}
	}
	part, err := Find(f, size)
	if err != nil {
		return nil, err
	}
	st := file.New(f, false)
	fsys, err := open(st, part)
	if err != nil {
		return nil, err
	}
	for _, cf := range files {
		if err := writeFile(fsys, cf); err != nil {
			return nil, fmt.Errorf("bootfs: write %s: %w", cf.Path, err)
		}
	}
	if part.FAT == "FAT32" {
		if err := fixFSInfo(f, part); err != nil {
			return nil, err
		}
	}
	if err := f.Sync(); err != nil {
		return nil, fmt.Errorf("bootfs: sync: %w", err)
	}
	// Read back through a fresh view of the filesystem.
	fsys, err = open(st, part)
	if err != nil {
		return nil, fmt.Errorf("bootfs: reopen to read back: %w", err)
	}
	out := make([]contract.FileHash, 0, len(files))
	for _, cf := range files {
		b, err := readFile(fsys, "/"+cf.Path, MaxFileBytes)
		if err != nil {
			return nil, fmt.Errorf("bootfs: read back %s: %w", cf.Path, err)
		}
		if !bytes.Equal(b, cf.Data) {
			return nil, fmt.Errorf("bootfs: read back %s: %d bytes differ from the %d written", cf.Path, len(b), len(cf.Data))
		}
		sum := sha256.Sum256(b)
		out = append(out, contract.FileHash{Path: cf.Path, SHA256: hex.EncodeToString(sum[:])})
	}
	return out, nil
}

// readFile reads a whole file, of the size its directory entry gives, in
// one Read from offset 0. (go-diskfs v1.9.4 returns bytes past the end of
// the file when a read starts inside a cluster, so the file is never read
// in pieces.)
func readFile(fsys filesystem.FileSystem, p string, maxBytes int64) ([]byte, error) {
	ents, err := fsys.ReadDir(".")
	if err != nil {
		return nil, fmt.Errorf("read the root folder: %w", err)
	}
	var size int64 = -1
	for _, e := range ents {
		if strings.EqualFold(e.Name(), strings.TrimPrefix(p, "/")) {
			fi, err := e.Info()
			if err != nil {
				return nil, err
			}
			size = fi.Size()
		}
	}
	switch {
	case size < 0:
		return nil, fmt.Errorf("not in the root folder")
	case size > maxBytes:
		return nil, fmt.Errorf("%d bytes, more than the %d allowed", size, maxBytes)
	case size == 0:
		return []byte{}, nil
	}
	f, err := fsys.OpenFile(p, os.O_RDONLY)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b := make([]byte, size)
	n, err := f.Read(b)
	if err != nil && !(errors.Is(err, io.EOF) && n == len(b)) {
		return nil, err
	}
	return b[:n], nil
}

func open(st backend.Storage, p Partition) (filesystem.FileSystem, error) {
	var (
		fsys filesystem.FileSystem
		err  error
	)
	switch p.FAT {
	case "FAT32":
		fsys, err = fat32.Read(st, p.Size, p.Start, sector)
	case "FAT16":
		fsys, err = fat16.Read(st, p.Size, p.Start, sector)
	default:
		fsys, err = fat12.Read(st, p.Size, p.Start, sector)
	}
	if err != nil {
		return nil, fmt.Errorf("bootfs: open the %s partition %d: %w", p.FAT, p.Index, err)
	}
	return fsys, nil
}

func writeFile(fsys filesystem.FileSystem, cf contract.CustomFile) error {
	w, err := fsys.OpenFile("/"+cf.Path, os.O_CREATE|os.O_RDWR|os.O_TRUNC)
	if err != nil {
		return err
	}
	if _, err := w.Write(cf.Data); err != nil {
		w.Close()
		return err
	}
	return w.Close()
}

// fixFSInfo sets the FAT32 FSInfo free-cluster count and next-free hint
// to what the FAT says: the library leaves the counts from before the
// write, which fsck.fat reports as wrong.
func fixFSInfo(f *os.File, p Partition) error {
	var bs [sector]byte
	if _, err := f.ReadAt(bs[:], p.Start); err != nil {
		return fmt.Errorf("bootfs: read the boot sector: %w", err)
	}
	le16 := func(o int) int64 { return int64(binary.LittleEndian.Uint16(bs[o:])) }
	le32 := func(o int) int64 { return int64(binary.LittleEndian.Uint32(bs[o:])) }
	spc, rsvd, nfats, fatSz, tot := int64(bs[13]), le16(14), int64(bs[16]), le32(36), le32(32)
	info := le16(48)
	clusters := (tot - rsvd - nfats*fatSz) / spc
	fat := make([]byte, fatSz*sector)
	if _, err := f.ReadAt(fat, p.Start+rsvd*sector); err != nil {
		return fmt.Errorf("bootfs: read the FAT: %w", err)
	}
	var free, next uint32 = 0, 0xffffffff
	for c := int64(2); c < clusters+2 && (c+1)*4 <= int64(len(fat)); c++ {
		if binary.LittleEndian.Uint32(fat[c*4:])&0x0fffffff == 0 {
			free++
			if next == 0xffffffff {
				next = uint32(c)
			}
		}
	}
	if info == 0 || info == 0xffff || info >= rsvd {
		return nil // no FSInfo sector
	}
	var fi [sector]byte
	if _, err := f.ReadAt(fi[:], p.Start+info*sector); err != nil {
		return fmt.Errorf("bootfs: read FSInfo: %w", err)
	}
	if binary.LittleEndian.Uint32(fi[0:]) != 0x41615252 || binary.LittleEndian.Uint32(fi[484:]) != 0x61417272 {
		return nil // not an FSInfo sector: leave it
	}
	binary.LittleEndian.PutUint32(fi[488:], free)
	binary.LittleEndian.PutUint32(fi[492:], next)
	if _, err := f.WriteAt(fi[:], p.Start+info*sector); err != nil {
		return fmt.Errorf("bootfs: write FSInfo: %w", err)
	}
	return nil
}

// readerFile makes an io.ReaderAt look like the file go-diskfs reads a
// partition table from.
type readerFile struct {
	r    io.ReaderAt
	size int64
	off  int64
}

func (f *readerFile) ReadAt(p []byte, off int64) (int, error) { return f.r.ReadAt(p, off) }
func (f *readerFile) Read(p []byte) (int, error) {
	n, err := f.r.ReadAt(p, f.off)
	f.off += int64(n)
	return n, err
}
func (f *readerFile) Seek(off int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
		f.off = off
	case io.SeekCurrent:
		f.off += off
	case io.SeekEnd:
		f.off = f.size + off
	}
	return f.off, nil
}
func (f *readerFile) Close() error               { return nil }
func (f *readerFile) Stat() (fs.FileInfo, error) { return fileInfo{f.size}, nil }

type fileInfo struct{ size int64 }

func (i fileInfo) Name() string       { return "disk" }
func (i fileInfo) Size() int64        { return i.size }
func (i fileInfo) Mode() fs.FileMode  { return 0o444 }
func (i fileInfo) ModTime() time.Time { return time.Time{} }
func (i fileInfo) IsDir() bool        { return false }
func (i fileInfo) Sys() any           { return nil }
