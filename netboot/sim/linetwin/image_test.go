package linetwin

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/cm4bench/cm4bench/internal/sparseimg"
)

// buildRealisticImage writes a disk image of size bytes to path, laid out
// as Raspberry Pi OS is: an MBR, a FAT boot partition (real files from
// this machine's /usr/lib and /usr/share), and an ext4 root filled to
// about 60% by mkfs.ext4 -d from this machine's Debian package tree, so
// compressibility and the share of empty blocks are those of real files.
func buildRealisticImage(tb testing.TB, path string, size int64) {
	tb.Helper()
	for _, tool := range []string{"mkfs.ext4", "mkfs.fat", "mcopy"} {
		if _, err := exec.LookPath(tool); err != nil {
			tb.Fatalf("%s not installed (scripts/deps.sh installs e2fsprogs, dosfstools, mtools)", tool)
		}
	}
	const align = 4 << 20
	bootSize := int64(256 << 20)
	if size < 1<<30 {
		bootSize = 16 << 20
	}
	rootStart := align + bootSize
	rootSize := (size - rootStart) &^ (align - 1)
	if rootSize < 16<<20 {
		tb.Fatalf("image of %d bytes is too small", size)
	}
	f, err := os.Create(path)
	if err != nil {
		tb.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		tb.Fatal(err)
	}
	mbr := make([]byte, 512)
	entry := func(i int, typ byte, start, n int64) {
		e := mbr[446+16*i:]
		e[4] = typ
		binary.LittleEndian.PutUint32(e[8:], uint32(start/512))
		binary.LittleEndian.PutUint32(e[12:], uint32(n/512))
	}
	entry(0, 0x0c, align, bootSize)
	entry(1, 0x83, rootStart, rootSize)
	mbr[510], mbr[511] = 0x55, 0xaa
	f.WriteAt(mbr, 0)
	f.Close()

	run := func(name string, args ...string) {
		tb.Helper()
		if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
			tb.Fatalf("%s: %v\n%.2000s", name, err, out)
		}
	}
	fat := "16"
	if bootSize >= 256<<20 {
		fat = "32"
	}
	// FAT32 needs at least 65525 clusters: 512-byte clusters on 256 MiB
	run("mkfs.fat", "-F", fat, "-s", "1", "--offset", strconv.FormatInt(align/512, 10), "-n", "BOOTFS", path, strconv.FormatInt(bootSize/1024, 10))
	boot := filepath.Join(tb.TempDir(), "firmware")
	os.Mkdir(boot, 0o755)
	copyTree(tb, boot, []string{"/usr/lib/firmware", "/usr/lib/modules", "/usr/share/doc"}, bootSize*6/10, true)
	run("mcopy", "-i", path+"@@"+strconv.FormatInt(align, 10), "-s", "-Q", boot, "::")
	root := tb.TempDir()
	copyTree(tb, root, []string{"/usr/bin", "/usr/lib", "/usr/share", "/usr/sbin", "/usr/libexec", "/etc"}, rootSize*6/10, false)
	run("mkfs.ext4", "-F", "-q", "-E", "offset="+strconv.FormatInt(rootStart, 10), "-d", root, "-L", "rootfs", path, strconv.FormatInt(rootSize/1024, 10)+"k")
}

// copyTree copies regular files (and symlinks, unless flat) from srcs
// into dst until budget bytes; flat keeps only file names (for FAT).
func copyTree(tb testing.TB, dst string, srcs []string, budget int64, flat bool) {
	tb.Helper()
	var used, count int64
	errFull := fmt.Errorf("full")
	for _, src := range srcs {
		err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return nil // unreadable: skip
			}
			if used >= budget {
				return errFull
			}
			rel, _ := filepath.Rel("/", p)
			target := filepath.Join(dst, rel)
			if flat {
				count++
				target = filepath.Join(dst, fmt.Sprintf("f%06d.bin", count))
			}
			switch {
			case d.IsDir():
				if !flat {
					os.MkdirAll(target, 0o755)
				}
			case d.Type()&fs.ModeSymlink != 0 && !flat:
				if l, err := os.Readlink(p); err == nil {
					os.Symlink(l, target)
				}
			case d.Type().IsRegular():
				fi, err := d.Info()
				if err != nil || fi.Size() > budget-used || (flat && fi.Size() > 8<<20) {
					return nil
				}
				in, err := os.Open(p)
				if err != nil {
					return nil
				}
				defer in.Close()
				out, err := os.Create(target)
				if err != nil {
					return nil
				}
				n, _ := io.Copy(out, in)
				out.Close()
				used += n
			}
			return nil
		})
		if err == errFull {
			return
		}
	}
}

// measureImage reads the image's size, its data blocks (64 KiB blocks that
// are not all zero, cm4agent's grain) and its zstd size (klauspost/compress, the level the
// server's images use), and how fast this host decodes it.
func measureImage(tb testing.TB, path string) (Image, float64) {
	tb.Helper()
	f, err := os.Open(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	var im Image
	var zbuf bytes.Buffer
	enc, _ := zstd.NewWriter(&zbuf, zstd.WithEncoderLevel(zstd.SpeedDefault))
	block := make([]byte, 64<<10)
	zero := make([]byte, 64<<10)
	for {
		n, err := io.ReadFull(f, block)
		if n > 0 {
			im.RawBytes += float64(n)
			if !bytes.Equal(block[:n], zero[:n]) {
				im.DataBytes += float64(n)
			}
			enc.Write(block[:n])
		}
		if err != nil {
			break
		}
	}
	enc.Close()
	im.ZstdBytes = float64(zbuf.Len())
	// The sparse stream the server would send: its map must find the same
	// data blocks as the scan above.
	ext, err := sparseimg.Map(context.Background(), f, int64(im.RawBytes))
	if err != nil {
		tb.Fatal(err)
	}
	st, err := sparseimg.NewStream(f, int64(im.RawBytes), ext)
	if err != nil {
		tb.Fatal(err)
	}
	if got := float64(sparseimg.DataBytes(ext)); got != im.DataBytes {
		tb.Fatalf("sparse map finds %.0f data bytes, the block scan %.0f", got, im.DataBytes)
	}
	im.SparseBytes = float64(st.Size())
	dec, _ := zstd.NewReader(bytes.NewReader(zbuf.Bytes()))
	defer dec.Close()
	start := time.Now()
	n, err := io.Copy(io.Discard, dec)
	if err != nil || float64(n) != im.RawBytes {
		tb.Fatalf("zstd round trip: %d bytes, %v", n, err)
	}
	return im, float64(n) / MB / time.Since(start).Seconds()
}

// The twin on a real, small image: the image tools make it, the
// measurements are consistent, and the report runs on them. (make
// bench-line does the same at 2.6 GB.)
func TestTwinOnARealImage(t *testing.T) {
	p := filepath.Join(t.TempDir(), "disk.img")
	buildRealisticImage(t, p, 96<<20)
	if out, err := exec.Command("mdir", "-i", p+"@@4194304", "::firmware").CombinedOutput(); err != nil || bytes.Count(out, []byte(" bin ")) < 10 {
		t.Fatalf("boot partition unreadable by mtools: %v\n%s", err, out)
	}
	im, hostMBps := measureImage(t, p)
	if im.RawBytes != 96<<20 || im.DataBytes <= 0 || im.DataBytes >= im.RawBytes || im.ZstdBytes >= im.DataBytes || hostMBps <= 0 {
		t.Fatalf("measured %+v, host decode %.0f MB/s", im, hostMBps)
	}
	t.Log(im.Describe())
	rep, err := Report(Constraints{}, im)
	if err != nil {
		t.Fatal(err)
	}
	for _, sc := range Scenarios {
		if len(rep[sc]) != len(BoardCounts) || rep[sc][0].Cycle <= 0 {
			t.Errorf("%s: %+v", sc, rep[sc])
		}
	}
}
