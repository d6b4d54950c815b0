package firmware

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
)

// TestBootFilesFixture reads the real bootfiles.bin and checks every member
// against Go's archive/tar, an independent reader, and the sizes in
// firmware-fixtures/README.md.
func TestBootFilesFixture(t *testing.T) {
	data := readShared(t, "firmware-fixtures/bootfiles.bin")
	bf, err := ParseBootFiles(data)
	if err != nil {
		t.Fatal(err)
	}
	// archive/tar as the oracle
	want := map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			b, _ := io.ReadAll(tr)
			want[strings.TrimSuffix(h.Name, "/")] = b
		}
	}
	members := bf.Members()
	if len(members) != len(want) || len(members) != 26 {
		t.Fatalf("%d members, archive/tar sees %d, want 26", len(members), len(want))
	}
	for _, m := range members {
		prefix, name, _ := strings.Cut(m.Name, "/")
		got, err := bf.Member(prefix, name)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want[m.Name]) {
			t.Errorf("member %s differs from archive/tar's", m.Name)
		}
		if !bytes.Equal(got, data[m.Offset:m.Offset+m.Size]) {
			t.Errorf("member %s is not the tar slice at %d", m.Name, m.Offset)
		}
	}
	for _, tt := range []struct {
		soc  int
		name string
		size int64
	}{
		{2711, "bootcode4.bin", 73120},
		{2712, "bootcode5.bin", 78332},
		{2711, "BOOTCODE4.BIN", 73120}, // rpiboot matches case-insensitively
		{2711, "memsys08.bin", 20492},
		{2712, "rp1c0fw1.bin", 16384},
	} {
		r, err := bf.Open(tt.soc, tt.name)
		if err != nil {
			t.Errorf("Open(%d, %s): %v", tt.soc, tt.name, err)
			continue
		}
		b, _ := io.ReadAll(r)
		if int64(len(b)) != tt.size || r.Size() != tt.size {
			t.Errorf("Open(%d, %s) = %d bytes, want %d", tt.soc, tt.name, len(b), tt.size)
		}
	}
	for _, n := range []struct{ prefix, name string }{{"2711", "bootcode5.bin"}, {"2712", "memsys08.bin"}, {"2711", "start4.elf"}, {"", "bootcode4.bin"}} {
		if _, err := bf.Member(n.prefix, n.name); !errors.Is(err, ErrNoMember) {
			t.Errorf("Member(%q, %q) = %v, want ErrNoMember", n.prefix, n.name, err)
		}
	}
	// the io.ReaderAt path reads the same bytes without loading the file
	f, err := os.Open(sharedPath(t, "firmware-fixtures/bootfiles.bin"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	bf2, err := OpenBootFiles(f, int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := bf2.Member("2711", "bootcode4.bin"); !bytes.Equal(got, want["2711/bootcode4.bin"]) {
		t.Error("OpenBootFiles member differs")
	}
}

func TestBootFilesCorrupt(t *testing.T) {
	data := readShared(t, "firmware-fixtures/bootfiles.bin")
	mod := func(f func([]byte) []byte) []byte { return f(bytes.Clone(data)) }
	for _, tt := range []struct {
		name string
		data []byte
		want string
	}{
		{"empty", nil, "header at 0 runs past the end"},
		{"checksum", mod(func(b []byte) []byte { b[1] = 'X'; return b }), "header at 0: checksum"},
		{"magic", mod(func(b []byte) []byte { copy(b[257:], "xxxxx"); return b }), "no ustar magic"},
		{"size field", mod(func(b []byte) []byte { return patch(b, 512, 124, "99999999999\x00") }), "size field"},
		{"truncated data", data[:4096], "run past the end of the archive"},
		{"no end marker", data[:endOfMembers(t, data)], "without the end-of-archive marker"},
		{"symlink member", mod(func(b []byte) []byte { return patch(b, 512, 156, "2") }), "unsupported type '2'"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseBootFiles(tt.data)
			if !errors.Is(err, ErrArchive) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want ErrArchive containing %q", err, tt.want)
			}
		})
	}
}

// patch overwrites a header field and fixes the header checksum.
func patch(b []byte, off, field int, val string) []byte {
	h := b[off : off+512]
	copy(h[field:], val)
	copy(h[148:156], "        ")
	sum := 0
	for _, c := range h {
		sum += int(c)
	}
	copy(h[148:156], fmt.Sprintf("%06o\x00 ", sum))
	return b
}

// endOfMembers is the offset just past the last member's padded data.
func endOfMembers(t *testing.T, data []byte) int {
	bf, err := ParseBootFiles(data)
	if err != nil {
		t.Fatal(err)
	}
	end := int64(0)
	for _, m := range bf.Members() {
		end = max(end, (m.Offset+m.Size+511)/512*512)
	}
	return int(end)
}

// FuzzBootFiles: nothing panics; a parsed archive's members are in bounds,
// and rebuilding it with archive/tar and parsing again gives the same
// members and bytes (round trip).
func FuzzBootFiles(f *testing.F) {
	var small bytes.Buffer
	tw := tar.NewWriter(&small)
	tw.WriteHeader(&tar.Header{Name: "2711/", Typeflag: tar.TypeDir, Format: tar.FormatGNU})
	for _, m := range []struct{ name, body string }{{"2711/bootcode4.bin", "boot"}, {"2712/mcb.bin", strings.Repeat("m", 600)}} {
		tw.WriteHeader(&tar.Header{Name: m.name, Size: int64(len(m.body)), Mode: 0o644, Format: tar.FormatGNU})
		tw.Write([]byte(m.body))
	}
	tw.Close()
	f.Add(small.Bytes())
	var posix bytes.Buffer
	tw = tar.NewWriter(&posix)
	long := strings.Repeat("d", 120) + "/f.bin"
	tw.WriteHeader(&tar.Header{Name: long, Size: 3, Mode: 0o644, Format: tar.FormatUSTAR})
	tw.Write([]byte("abc"))
	tw.Close()
	f.Add(posix.Bytes())
	// the real archive's first header (GNU "ustar  " magic, a 2711/ directory)
	// followed by the end-of-archive marker
	f.Add(append(bytes.Clone(readShared(f, "firmware-fixtures/bootfiles.bin")[:512]), make([]byte, 1024)...))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		bf, err := ParseBootFiles(data)
		if err != nil {
			return
		}
		var rebuilt bytes.Buffer
		tw := tar.NewWriter(&rebuilt)
		for _, m := range bf.Members() {
			if m.Offset < 0 || m.Size < 0 || m.Offset+m.Size > int64(len(data)) {
				t.Fatalf("member %+v out of bounds (%d bytes)", m, len(data))
			}
			b, err := bf.Member("", m.Name)
			if err != nil {
				t.Fatalf("listed member %q unreadable: %v", m.Name, err)
			}
			if err := tw.WriteHeader(&tar.Header{Name: m.Name, Size: m.Size, Mode: 0o644, Format: tar.FormatUSTAR}); err != nil {
				return // a name plain ustar cannot hold; nothing to compare
			}
			tw.Write(b)
		}
		tw.Close()
		again, err := ParseBootFiles(rebuilt.Bytes())
		if err != nil {
			t.Fatalf("rebuilt archive does not parse: %v", err)
		}
		if len(again.Members()) != len(bf.Members()) {
			t.Fatalf("round trip: %d members, want %d", len(again.Members()), len(bf.Members()))
		}
		for _, m := range bf.Members() {
			a, _ := bf.Member("", m.Name)
			b, err := again.Member("", m.Name)
			if err != nil || !bytes.Equal(a, b) {
				t.Fatalf("round trip of %q: %v", m.Name, err)
			}
		}
	})
}
