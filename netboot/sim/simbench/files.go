package simbench

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"

	"github.com/cm4bench/cm4bench/internal/atomicfile"
)

// Golden-image layout (512-byte sectors).
const (
	bootStart = 8192 // partition 1 (FAT32 LBA, "bootfs") at 4 MiB, like Raspberry Pi OS
)

// GoldenImage writes a recognisable raw disk image of size bytes (at least
// 16 MiB, a multiple of 1 MiB) to w: an MBR with a FAT32-LBA boot partition
// (type 0x0c, with a FAT boot sector the simulated bootloader accepts as
// bootable) and a Linux root partition (0x83); pseudo-random data from seed
// in the first MiBs of each partition and near the end; zeros everywhere
// else (so sparse writes have something to skip). The same seed and size
// give the same bytes. It returns the image's sha256.
func GoldenImage(w io.Writer, size int64, seed uint64) (string, error) {
	const mib = 1 << 20
	if size < 16*mib || size%mib != 0 {
		return "", fmt.Errorf("simbench: golden image of %d bytes: want a multiple of 1 MiB, at least 16 MiB", size)
	}
	sectors := size / 512
	bootSectors := int64(16 * mib / 512)
	if size >= 128*mib {
		bootSectors = 64 * mib / 512
	}
	rootStart := int64(bootStart) + bootSectors
	rootSectors := sectors - rootStart
	mbr := make([]byte, 512)
	binary.LittleEndian.PutUint32(mbr[440:], uint32(seed)) // disk signature
	entry := func(i int, typ byte, start, n int64) {
		p := mbr[446+16*i : 462+16*i]
		p[4] = typ
		binary.LittleEndian.PutUint32(p[8:], uint32(start))
		binary.LittleEndian.PutUint32(p[12:], uint32(n))
	}
	entry(0, 0x0c, bootStart, bootSectors)
	entry(1, 0x83, rootStart, rootSectors)
	mbr[510], mbr[511] = 0x55, 0xaa

	// FAT32 boot sector of the boot partition (enough for a reader to say
	// "FAT32 volume bootfs"; the simulated bootloader checks the signature).
	bs := make([]byte, 512)
	copy(bs[0:], []byte{0xeb, 0x58, 0x90})
	copy(bs[3:], "mkfs.fat")
	binary.LittleEndian.PutUint16(bs[11:], 512) // bytes per sector
	bs[13] = 8                                  // sectors per cluster
	binary.LittleEndian.PutUint16(bs[14:], 32)  // reserved sectors
	bs[16] = 2                                  // FATs
	bs[21] = 0xf8                               // media
	binary.LittleEndian.PutUint32(bs[32:], uint32(bootSectors))
	bs[66] = 0x29
	binary.LittleEndian.PutUint32(bs[67:], uint32(seed>>32))
	copy(bs[71:], "BOOTFS     ")
	copy(bs[82:], "FAT32   ")
	bs[510], bs[511] = 0x55, 0xaa

	rng := rand.New(rand.NewChaCha8(seedBytes(seed)))
	random := func(start, n int64) [2]int64 { return [2]int64{start * 512, (start + n) * 512} }
	dataRanges := [][2]int64{
		random(bootStart+1, 3*mib/512),   // firmware, kernel: 3 MiB
		random(rootStart, 6*mib/512),     // root filesystem metadata and files
		random(sectors-2*mib/512, 1*mib), // something near the end
	}
	h := sha256.New()
	bw := bufio.NewWriterSize(io.MultiWriter(w, h), mib)
	chunk := make([]byte, 64<<10)
	for off := int64(0); off < size; off += int64(len(chunk)) {
		clear(chunk)
		for _, r := range dataRanges {
			lo, hi := max(r[0], off), min(r[1], off+int64(len(chunk)))
			for i := lo; i < hi; i += 8 {
				binary.LittleEndian.PutUint64(chunk[i-off:], rng.Uint64())
			}
		}
		if off == 0 {
			copy(chunk, mbr)
		}
		if bso := int64(bootStart * 512); bso >= off && bso < off+int64(len(chunk)) {
			copy(chunk[bso-off:], bs)
		}
		if _, err := bw.Write(chunk); err != nil {
			return "", fmt.Errorf("simbench: write golden image: %w", err)
		}
	}
	if err := bw.Flush(); err != nil {
		return "", fmt.Errorf("simbench: write golden image: %w", err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func seedBytes(seed uint64) [32]byte {
	var s [32]byte
	binary.LittleEndian.PutUint64(s[:], seed)
	copy(s[8:], "cm4bench golden image")
	return s
}

// WriteGoldenImage writes GoldenImage to path atomically (temp, fsync,
// rename) and returns its sha256.
func WriteGoldenImage(path string, size int64, seed uint64) (string, error) {
	f, err := atomicfile.Create(path, 0o644)
	if err != nil {
		return "", fmt.Errorf("simbench: golden image %s: %w", path, err)
	}
	sum, err := GoldenImage(f, size, seed)
	if err != nil {
		f.Abort()
		return "", fmt.Errorf("simbench: golden image %s: %w", path, err)
	}
	if err := f.Commit(); err != nil {
		return "", fmt.Errorf("simbench: golden image %s: %w", path, err)
	}
	return sum, nil
}

// PlaceholderNote heads every placeholder boot file of the simulated bench.
const PlaceholderNote = "cm4bench simulated bench: placeholder, NOT Raspberry Pi firmware"

// WriteTFTPRoot fills dir with the files the simulated bootloader fetches:
// placeholders for start4.elf, fixup4.dat, the CM4 device tree, kernel8.img
// and initrd.img (the simulated board does not execute them), a config.txt
// that loads the initramfs, and a cmdline.txt that points the agent at
// serverURL (cm4bench.server=). A real bench serves the real firmware
// catalogue and the initramfs `cm4bench netboot initramfs` builds instead.
func WriteTFTPRoot(dir, serverURL string) error {
	pad := func(name string, n int) string {
		s := PlaceholderNote + ": " + name + "\n"
		return s + strings.Repeat("\x00", max(0, n-len(s)))
	}
	files := map[string]string{
		"start4.elf":          pad("start4.elf", 2300<<10),
		"fixup4.dat":          pad("fixup4.dat", 5<<10),
		"bcm2711-rpi-cm4.dtb": pad("bcm2711-rpi-cm4.dtb", 52<<10),
		"kernel8.img":         pad("kernel8.img", 1<<20),
		"initrd.img":          pad("initrd.img", 2<<20),
		"config.txt":          "# " + PlaceholderNote + "\n[all]\narm_64bit=1\nenable_uart=1\ninitramfs initrd.img followkernel\n",
		"cmdline.txt":         "console=serial0,115200 " + "cm4bench.server=" + serverURL + "\n",
	}
	for name, body := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return fmt.Errorf("simbench: tftp root: %w", err)
		}
		if err := atomicfile.WriteFile(p, []byte(body), 0o644); err != nil {
			return fmt.Errorf("simbench: tftp root %s: %w", name, err)
		}
	}
	return nil
}
