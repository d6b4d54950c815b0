package bootfs_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/cm4bench/cm4bench/internal/contract"
	"github.com/cm4bench/cm4bench/netboot/bootfs"
	"github.com/cm4bench/cm4bench/netboot/bootfs/bootfstest"
)

func file(p, data string) contract.CustomFile {
	s := sha256.Sum256([]byte(data))
	return contract.CustomFile{Path: p, Data: []byte(data), SHA256: hex.EncodeToString(s[:])}
}

func sha(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

// The files land in the boot partition: fsck.fat finds it clean, mtools
// read back exactly the rendered files, the hashes reported are theirs,
// and every byte outside the boot partition is untouched.
func TestWriteReadByMtools(t *testing.T) {
	for _, tc := range []struct {
		name string
		disk bootfstest.Disk
		want string
	}{
		{"FAT32, 512-byte clusters", bootfstest.Disk{BootMiB: 40, FAT: 32, Seed: 1}, "FAT32"},
		// Raspberry Pi OS formats its bootfs with mkfs.fat -F 32 -s 4; files
		// then span partial clusters (go-diskfs read past their end there).
		{"FAT32, 2 KiB clusters like Raspberry Pi OS", bootfstest.Disk{BootMiB: 160, FAT: 32, Cluster: 4, Seed: 4}, "FAT32"},
		{"FAT16", bootfstest.Disk{BootMiB: 16, FAT: 16, Seed: 2}, "FAT16"},
		{"FAT12", bootfstest.Disk{BootMiB: 2, FAT: 12, Seed: 3}, "FAT12"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			img := filepath.Join(dir, "disk.img")
			size, err := bootfstest.Make(img, tc.disk)
			if err != nil {
				t.Fatal(err)
			}
			before, _ := os.ReadFile(img)
			files := []contract.CustomFile{
				file("user-data", "#cloud-config\nhostname: line-a-0007\n"),
				file("meta-data", "instance-id: 10000abc\n"),
				file("serial.txt", "SN-000123\n"),
				file("network-config", strings.Repeat("x", 70000)), // several clusters
			}
			f, err := os.OpenFile(img, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			got, err := bootfs.Write(f, size, files)
			f.Close()
			if err != nil {
				t.Fatalf("Write: %v", err)
			}
			for i, h := range got {
				if h.Path != files[i].Path || h.SHA256 != files[i].SHA256 {
					t.Errorf("reported %+v, want %s %s", h, files[i].Path, files[i].SHA256)
				}
			}
			part, err := bootfs.Find(bytes.NewReader(before), size)
			if err != nil || part.FAT != tc.want || part.Index != 1 || part.Start != 4<<20 {
				t.Fatalf("Find = %+v, %v; want %s partition 1 at 4 MiB", part, err, tc.want)
			}
			for _, cf := range files {
				out, err := exec.Command("mtype", "-i", img+"@@"+strconv.FormatInt(part.Start, 10), "::"+cf.Path).Output()
				if err != nil || sha(out) != cf.SHA256 {
					t.Errorf("mtype %s: %d bytes, sha %s, %v; want %s", cf.Path, len(out), sha(out), err, cf.SHA256)
				}
			}
			pf := filepath.Join(dir, "part.img")
			if err := bootfstest.Extract(img, pf, part.Start, part.Size); err != nil {
				t.Fatal(err)
			}
			if out, err := exec.Command("fsck.fat", "-n", pf).CombinedOutput(); err != nil || strings.Contains(string(out), "orrect") || strings.Contains(string(out), "wrong") {
				t.Errorf("fsck.fat -n: %v\n%s", err, out)
			}
			after, _ := os.ReadFile(img)
			end := part.Start + part.Size
			if !bytes.Equal(before[:part.Start], after[:part.Start]) || !bytes.Equal(before[end:], after[end:]) {
				t.Error("bytes outside the boot partition changed")
			}
		})
	}
}

func TestFindRefuses(t *testing.T) {
	dir := t.TempDir()
	noTable := filepath.Join(dir, "raw.img")
	n, err := bootfstest.Make(noTable, bootfstest.Disk{BootMiB: 2, FAT: 12, NoTable: true})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(noTable)
	if _, err := bootfs.Find(bytes.NewReader(b), n); !errors.Is(err, bootfs.ErrNoFAT) {
		t.Errorf("an image without a partition table: %v, want ErrNoFAT", err)
	}
	// A table whose only partition is not FAT (the random "root").
	copy(b[446:462], make([]byte, 16))
	if _, err := bootfs.Find(bytes.NewReader(b), n); !errors.Is(err, bootfs.ErrNoFAT) {
		t.Errorf("random bytes: %v, want ErrNoFAT", err)
	}
	if _, err := bootfs.Find(bytes.NewReader(make([]byte, 4096)), 4096); !errors.Is(err, bootfs.ErrNoFAT) {
		t.Errorf("zeroes: %v, want ErrNoFAT", err)
	}
	// A FAT32 below the cluster minimum (mkfs.fat's default on 256 MiB):
	// refused with what to do, before anything is written.
	odd := filepath.Join(dir, "odd.img")
	n, err = bootfstest.Make(odd, bootfstest.Disk{BootMiB: 256, FAT: 32, RootMiB: 1})
	if err != nil {
		t.Fatal(err)
	}
	f, _ := os.Open(odd)
	defer f.Close()
	if _, err := bootfs.Find(f, n); err == nil || !strings.Contains(err.Error(), "mkfs.fat -F 32 -s 4") {
		t.Errorf("FAT32 below 65525 clusters: %v", err)
	}
}

func TestCheckPath(t *testing.T) {
	for _, tc := range []struct {
		p  string
		ok bool
	}{
		{"user-data", true}, {"network-config", true}, {"firstrun.sh", true}, {"Serial Number.txt", true},
		{"", false}, {"/etc/passwd", false}, {"../x", false}, {"..", false}, {"overlays/x.txt", false},
		{`a\b`, false}, {"a*b", false}, {strings.Repeat("n", 256), false},
	} {
		if err := bootfs.CheckPath(tc.p); (err == nil) != tc.ok {
			t.Errorf("CheckPath(%q) = %v, want ok=%v", tc.p, err, tc.ok)
		}
	}
}

func FuzzFind(f *testing.F) {
	dir := f.TempDir()
	img := filepath.Join(dir, "d.img")
	if _, err := bootfstest.Make(img, bootfstest.Disk{StartMiB: 1, BootMiB: 2, FAT: 12, RootMiB: 1}); err != nil {
		f.Fatal(err)
	}
	b, _ := os.ReadFile(img)
	f.Add(b[:(1<<20)+4096])
	f.Add(make([]byte, 1024))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := bootfs.Find(bytes.NewReader(data), int64(len(data)))
		if err == nil && (p.Start < 0 || p.Start+p.Size > int64(len(data))) {
			t.Fatalf("partition %+v outside %d bytes", p, len(data))
		}
	})
}
