package usbboot_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cm4bench/cm4bench/usbboot"
	"github.com/cm4bench/cm4bench/usbboot/usbboottest"
)

func record(cmd uint32, name string) []byte {
	b := make([]byte, usbboot.RequestSize)
	binary.LittleEndian.PutUint32(b, cmd)
	copy(b[4:], name)
	return b
}

func TestParseRequest(t *testing.T) {
	long := record(0, strings.Repeat("a", 256)) // no room for the NUL
	for _, tt := range []struct {
		name    string
		in      []byte
		want    usbboot.Request
		wantErr string
	}{
		{"GetFileSize", record(0, "config.txt"), usbboot.Request{Command: usbboot.GetFileSize, Name: "config.txt"}, ""},
		{"ReadFile", record(1, "start4.elf"), usbboot.Request{Command: usbboot.ReadFile, Name: "start4.elf"}, ""},
		{"Done", record(2, ""), usbboot.Request{Command: usbboot.Done}, ""},
		{"metadata", record(0, "*EEPROM_UPDATE*success"), usbboot.Request{Name: "*EEPROM_UPDATE*success"}, ""},
		{"max name", record(1, strings.Repeat("b", 255)), usbboot.Request{Command: usbboot.ReadFile, Name: strings.Repeat("b", 255)}, ""},
		{"short", record(0, "x")[:259], usbboot.Request{}, "got 259 bytes"},
		{"unknown command", record(7, "x"), usbboot.Request{}, "unknown command 7"},
		{"no NUL", long, usbboot.Request{}, "not NUL-terminated"},
		{"control byte", record(0, "a\x01b"), usbboot.Request{}, "not printable ASCII"},
		{"high byte", record(0, "caf\xe9"), usbboot.Request{}, "byte 0xe9 at name offset 3"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := usbboot.ParseRequest(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, usbboot.ErrProtocol) {
					t.Fatalf("ParseRequest = %+v, %v; want error %q wrapping ErrProtocol", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseRequest = %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

func TestRequestMetadataAndDone(t *testing.T) {
	for _, tt := range []struct {
		req      usbboot.Request
		key, val string
		isMeta   bool
		isDone   bool
	}{
		{usbboot.Request{Name: "*EEPROM_HASH*abc"}, "EEPROM_HASH", "abc", true, false},
		{usbboot.Request{Name: "*FLAG"}, "FLAG", "", true, false},
		{usbboot.Request{Name: "*K*a*b"}, "K", "a*b", true, false},
		{usbboot.Request{Command: usbboot.Done, Name: "*K*v"}, "", "", false, true},
		{usbboot.Request{Command: usbboot.ReadFile, Name: ""}, "", "", false, true},
		{usbboot.Request{Name: "config.txt"}, "", "", false, false},
	} {
		k, v, ok := tt.req.Metadata()
		if k != tt.key || v != tt.val || ok != tt.isMeta || tt.req.IsDone() != tt.isDone {
			t.Errorf("%+v: Metadata() = %q, %q, %v; IsDone %v", tt.req, k, v, ok, tt.req.IsDone())
		}
	}
}

func TestSizeFieldsAndBootMessage(t *testing.T) {
	// bootcode4.bin from bootfiles.bin: 73120 = 0x11DA0 -> wValue 0x1DA0, wIndex 1 (usbboot.md §2.2)
	if v, i := usbboot.SizeFields(73120); v != 0x1DA0 || i != 1 {
		t.Errorf("SizeFields(73120) = %#x, %#x", v, i)
	}
	if n := usbboot.SizeFromFields(0x1DA0, 1); n != 73120 {
		t.Errorf("SizeFromFields = %d", n)
	}
	m := usbboot.BootMessage(73120, [20]byte{})
	if len(m) != 24 || !bytes.Equal(m[:4], []byte{0xA0, 0x1D, 0x01, 0x00}) || !bytes.Equal(m[4:], make([]byte, 20)) {
		t.Errorf("BootMessage = % x", m)
	}
}

func FuzzParseRequest(f *testing.F) {
	f.Add(record(0, "config.txt"))
	f.Add(record(1, "pieeprom.bin"))
	f.Add(record(2, ""))
	f.Add(record(0, "*EEPROM_UPDATE*success"))
	f.Add(record(0, strings.Repeat("z", 256)))
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := usbboot.ParseRequest(b)
		if err != nil {
			if !errors.Is(err, usbboot.ErrProtocol) {
				t.Fatalf("error %v does not wrap ErrProtocol", err)
			}
			return
		}
		// round trip: what parsed re-encodes and parses to the same request
		enc, err := r.MarshalBinary()
		if err != nil {
			t.Fatalf("MarshalBinary(%+v): %v", r, err)
		}
		r2, err := usbboot.ParseRequest(enc)
		if err != nil || r2 != r {
			t.Fatalf("round trip %+v -> %+v, %v", r, r2, err)
		}
		if !bytes.Equal(enc[:4+len(r.Name)+1], b[:4+len(r.Name)+1]) {
			t.Fatalf("re-encoding changed the significant bytes")
		}
		if err := usbboot.CheckName(r.Name); err == nil && strings.Contains(r.Name, "..") {
			t.Fatalf("CheckName accepted %q", r.Name)
		}
	})
}

func FuzzParseBootMessage(f *testing.F) {
	f.Add(usbboot.BootMessage(73120, [20]byte{}))
	f.Add([]byte("short"))
	f.Fuzz(func(t *testing.T, b []byte) {
		n, sig, err := usbboot.ParseBootMessage(b)
		if err != nil {
			return
		}
		if got := usbboot.BootMessage(n, sig); !bytes.Equal(got, b) {
			t.Fatalf("round trip % x -> % x", b, got)
		}
	})
}

func TestDirLookup(t *testing.T) {
	shared := usbboottest.SharedDir(t)
	root := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	write := func(rel, body string) {
		t.Helper()
		must(os.MkdirAll(filepath.Dir(filepath.Join(root, rel)), 0o755))
		must(os.WriteFile(filepath.Join(root, rel), []byte(body), 0o644))
	}
	must(os.Symlink(filepath.Join(shared, "firmware-fixtures", "bootfiles.bin"), filepath.Join(root, "bootfiles.bin")))
	write("config.txt", "top")
	write("2711/config.txt", "soc")
	write("1-1.3/config.txt", "port")
	write("1-1.3/bootcode4.bin", "never served per port")
	write("2711/mcb.bin", "local override")
	write("plain.txt", "plain")
	must(os.Symlink(filepath.Join(root, "plain.txt"), filepath.Join(root, "link.txt")))
	must(os.Mkdir(filepath.Join(root, "adir"), 0o755))
	outside := filepath.Join(t.TempDir(), "secret")
	must(os.WriteFile(outside, []byte("secret"), 0o644))

	d, err := usbboot.NewDir(root, true)
	if err != nil {
		t.Fatal(err)
	}
	cm4 := usbboot.Target{SoC: usbboot.SoC2711, Port: "1-1.3"}
	other := usbboot.Target{SoC: usbboot.SoC2711, Port: "1-1.4"}
	cm5 := usbboot.Target{SoC: usbboot.SoC2712, Port: "1-1.3"}
	read := func(tg usbboot.Target, name string) (string, int64, error) {
		rc, n, err := d.Open(context.Background(), tg, name)
		if err != nil {
			return "", 0, err
		}
		defer rc.Close()
		b, err := io.ReadAll(rc)
		return string(b), n, err
	}
	for _, tt := range []struct {
		name string
		tg   usbboot.Target
		file string
		want string // "" = check size only
		size int64
		err  error
	}{
		{"per-port overlay first", cm4, "config.txt", "port", 4, nil},
		{"then <soc>/", other, "config.txt", "soc", 3, nil},
		{"2712 falls to the top dir", usbboot.Target{SoC: usbboot.SoC2712, Port: "9-9"}, "config.txt", "top", 3, nil},
		{"bootcode never per port", cm4, "bootcode4.bin", "", 73120, nil},
		{"tar member", cm5, "bootcode5.bin", "", 78332, nil},
		{"tar member, any case", other, "BOOTCODE4.BIN", "", 73120, nil},
		{"disk overrides the tar", other, "mcb.bin", "local override", 14, nil},
		{"symlink followed", other, "link.txt", "plain", 5, nil},
		{"missing", other, "start4.elf", "", 0, fs.ErrNotExist},
		{"directory is not a file", other, "adir", "", 0, fs.ErrNotExist},
		{"dot-dot refused", other, "../" + filepath.Base(filepath.Dir(outside)) + "/secret", "", 0, usbboot.ErrBadName},
		{"dot-dot inside refused", other, "a/../config.txt", "", 0, usbboot.ErrBadName},
		{"absolute refused", other, outside, "", 0, usbboot.ErrBadName},
		{"backslash refused", other, `..\secret`, "", 0, usbboot.ErrBadName},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, n, err := read(tt.tg, tt.file)
			if tt.err != nil {
				if !errors.Is(err, tt.err) || !errors.Is(err, fs.ErrNotExist) {
					t.Fatalf("Open(%q) = %q, %v; want %v (and fs.ErrNotExist)", tt.file, got, err, tt.err)
				}
				return
			}
			if err != nil || n != tt.size || int64(len(got)) != n || (tt.want != "" && got != tt.want) {
				t.Fatalf("Open(%q) = %d bytes %q, size %d, %v; want %q size %d", tt.file, len(got), trunc(got), n, err, tt.want, tt.size)
			}
		})
	}
}

func trunc(s string) string {
	if len(s) > 20 {
		return s[:20] + "..."
	}
	return s
}

func TestNewDirRefusals(t *testing.T) {
	empty := t.TempDir()
	file := filepath.Join(empty, "f")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	bad := t.TempDir()
	if err := os.WriteFile(filepath.Join(bad, "bootfiles.bin"), []byte("not a tar archive at all, far too short"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ dir, want string }{
		{empty, "no bootfiles.bin and no bootcode"},
		{file, "not a directory"},
		{filepath.Join(empty, "missing"), "no such file"},
		{bad, "bootfiles.bin"},
	} {
		if _, err := usbboot.NewDir(tt.dir, false); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("NewDir(%s) = %v, want %q", tt.dir, err, tt.want)
		}
	}
}

func TestMetadataRPIBootJSON(t *testing.T) {
	m := usbboot.Metadata{{"MAC_ADDR", "d8:3a:dd:05:ee:78"}, {"EEPROM_UPDATE", "fail"}, {"QUOTE", `a"b`}, {"EEPROM_UPDATE", "success"}}
	want := "{\n\t\"MAC_ADDR\": \"d8:3a:dd:05:ee:78\",\n\t\"EEPROM_UPDATE\": \"success\",\n\t\"QUOTE\": \"a\\\"b\"\n}\n"
	if got := string(m.RPIBootJSON()); got != want {
		t.Errorf("RPIBootJSON =\n%s\nwant\n%s", got, want)
	}
	if v, _ := m.Get("EEPROM_UPDATE"); v != "success" {
		t.Errorf("Get = %q, want the last value", v)
	}
	if got := string(usbboot.Metadata(nil).RPIBootJSON()); got != "{\n}\n" {
		t.Errorf("empty = %q", got)
	}
}

// FuzzDirBootfiles feeds NewDir arbitrary bootfiles.bin archives: it must
// refuse or index them without panicking, and every member it indexes must
// read back exactly its announced size.
func FuzzDirBootfiles(f *testing.F) {
	shared := usbboottest.SharedFile(f, "firmware-fixtures/bootfiles.bin")
	real, err := os.ReadFile(shared)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(real[:4096]) // first member header and the start of its data, truncated
	f.Add(real[:1536])
	f.Add([]byte{})
	f.Add(bytes.Repeat([]byte{0}, 1024))
	f.Fuzz(func(t *testing.T, archive []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "bootfiles.bin"), archive, 0o644); err != nil {
			t.Fatal(err)
		}
		d, err := usbboot.NewDir(dir, false)
		if err != nil {
			return
		}
		for _, m := range d.Members() {
			soc, name, ok := strings.Cut(m, "/")
			if !ok || usbboot.CheckName(name) != nil {
				continue
			}
			rc, n, err := d.Open(context.Background(), usbboot.Target{SoC: usbboot.SoC(soc)}, name)
			if err != nil {
				continue // e.g. a same-named file on disk shadows it
			}
			got, err := io.Copy(io.Discard, rc)
			rc.Close()
			if err == nil && got != n {
				t.Fatalf("member %s: read %d bytes, announced %d", m, got, n)
			}
		}
	})
}
