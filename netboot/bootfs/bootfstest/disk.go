// Package bootfstest builds disk images like a Raspberry Pi OS image for
// tests and the simulated bench: an MBR, a FAT boot partition made by the
// real mkfs.fat (dosfstools), and a second partition of seeded random
// bytes standing in for the root filesystem.
package bootfstest

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
)

// Disk describes an image.
type Disk struct {
	StartMiB int    // boot partition offset (default 4, as Raspberry Pi OS)
	BootMiB  int    // boot partition size (default 40)
	FAT      int    // 12, 16 or 32 (default 32; FAT32 needs BootMiB >= 33)
	RootMiB  int    // random "root" partition after it (default 8)
	Seed     uint64 // of the root bytes
	Label    string // volume label (default "bootfs")
	NoTable  bool   // leave the MBR empty (an image with no partition table)
	Cluster  int    // sectors per cluster (0: mkfs.fat decides; Raspberry Pi OS uses 4)
}

// Make writes the image to path and returns its size.
func Make(path string, d Disk) (int64, error) {
	if d.StartMiB == 0 {
		d.StartMiB = 4
	}
	if d.BootMiB == 0 {
		d.BootMiB = 40
	}
	if d.FAT == 0 {
		d.FAT = 32
	}
	if d.RootMiB == 0 {
		d.RootMiB = 8
	}
	if d.Label == "" {
		d.Label = "bootfs"
	}
	size := int64(d.StartMiB+d.BootMiB+d.RootMiB) << 20
	f, err := os.Create(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		return 0, err
	}
	var mbr [512]byte
	entry := func(i int, typ byte, startMiB, sizeMiB int) {
		e := mbr[446+16*i:]
		e[4] = typ
		binary.LittleEndian.PutUint32(e[8:], uint32(startMiB<<11))
		binary.LittleEndian.PutUint32(e[12:], uint32(sizeMiB<<11))
	}
	if !d.NoTable {
		entry(0, 0x0c, d.StartMiB, d.BootMiB)
		entry(1, 0x83, d.StartMiB+d.BootMiB, d.RootMiB)
		binary.LittleEndian.PutUint32(mbr[440:], uint32(d.Seed)|1) // disk identifier
		mbr[510], mbr[511] = 0x55, 0xaa
	}
	if _, err := f.WriteAt(mbr[:], 0); err != nil {
		return 0, err
	}
	rng := rand.New(rand.NewPCG(d.Seed, 0x6d62))
	buf := make([]byte, 1<<20)
	for i := range d.RootMiB {
		for j := 0; j < len(buf); j += 8 {
			binary.LittleEndian.PutUint64(buf[j:], rng.Uint64())
		}
		if _, err := f.WriteAt(buf, int64(d.StartMiB+d.BootMiB+i)<<20); err != nil {
			return 0, err
		}
	}
	if err := f.Close(); err != nil {
		return 0, err
	}
	args := []string{"-F", strconv.Itoa(d.FAT), "-n", d.Label, "-i", "0c4b3c4b", "--offset", strconv.Itoa(d.StartMiB << 11)}
	if d.Cluster > 0 {
		args = append(args, "-s", strconv.Itoa(d.Cluster))
	}
	out, err := exec.Command("mkfs.fat", append(args, path, strconv.Itoa(d.BootMiB<<10))...).CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("bootfstest: mkfs.fat: %v: %s", err, out)
	}
	return size, nil
}

// Extract copies the bytes [start, start+n) of the image to a new file, so
// fsck.fat (which has no offset option) can check one partition.
func Extract(image, out string, start, n int64) error {
	in, err := os.Open(image)
	if err != nil {
		return err
	}
	defer in.Close()
	buf := make([]byte, n)
	if _, err := in.ReadAt(buf, start); err != nil {
		return err
	}
	return os.WriteFile(out, buf, 0o600)
}
