package eeprom

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
)

var vectorNames = []string{"pieeprom-2026-05-17", "pieeprom-2023-01-11"}

// TestVectorChecksums guards the oracle itself: the vectors must be the files
// sha256sums.txt describes.
func TestVectorChecksums(t *testing.T) {
	for _, line := range strings.Split(strings.TrimSpace(string(readVector(t, "sha256sums.txt"))), "\n") {
		want, name, ok := strings.Cut(line, "  ")
		if !ok {
			t.Fatalf("bad sha256sums line %q", line)
		}
		sum := sha256.Sum256(readVector(t, name))
		if got := hex.EncodeToString(sum[:]); got != want {
			t.Errorf("sha256(%s) = %s, want %s", name, got, want)
		}
	}
}

// TestVectors checks show, config and digest against the upstream outputs.
func TestVectors(t *testing.T) {
	for _, name := range vectorNames {
		t.Run(name, func(t *testing.T) {
			orig := readVector(t, name+".bin")
			im, err := Parse(orig)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			// show: rpi-eeprom-config IMAGE
			conf, err := im.BootConf()
			if err != nil {
				t.Fatal(err)
			}
			if want := readVector(t, name+".config.txt"); !bytes.Equal(conf, want) {
				t.Errorf("BootConf = %q, want %q", conf, want)
			}
			// the model edit gives the same config upstream applied
			c := ParseConfig(conf)
			if _, err := c.Set("BOOT_ORDER", "0xf21"); err != nil {
				t.Fatal(err)
			}
			f21conf := readVector(t, name+".bootorder-f21.conf.txt")
			if got := c.Bytes(); !bytes.Equal(got, f21conf) {
				t.Errorf("Set(BOOT_ORDER) config = %q, want %q", got, f21conf)
			}
			// config: rpi-eeprom-config --config CONF --out OUT IMAGE
			if err := im.SetBootConf(f21conf); err != nil {
				t.Fatalf("SetBootConf: %v", err)
			}
			out := im.Bytes()
			want := readVector(t, name+".bootorder-f21.bin")
			if !bytes.Equal(out, want) {
				t.Fatalf("SetBootConf image differs from upstream at %d bytes (first at 0x%x)", diffCount(out, want), firstDiff(out, want))
			}
			// reading it back gives the applied config
			back, err := Parse(out)
			if err != nil {
				t.Fatal(err)
			}
			if got, _ := back.BootConf(); !bytes.Equal(got, f21conf) {
				t.Errorf("read back %q, want %q", got, f21conf)
			}
			// digest: SOURCE_DATE_EPOCH=1700000000 rpi-eeprom-digest
			if got, want := Digest(out, 1700000000, 0), readVector(t, name+".bootorder-f21.sig"); !bytes.Equal(got, want) {
				t.Errorf("Digest = %q, want %q", got, want)
			}
			// round trip: writing the original config back restores the image
			if err := back.SetBootConf(conf); err != nil {
				t.Fatal(err)
			}
			if got := back.Bytes(); !bytes.Equal(got, orig) {
				t.Errorf("applying the extracted config changed %d bytes (first at 0x%x)", diffCount(got, orig), firstDiff(got, orig))
			}
		})
	}
}

func diffCount(a, b []byte) int {
	n := 0
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			n++
		}
	}
	return n + max(len(a), len(b)) - min(len(a), len(b))
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

func TestSectionsAndSlot(t *testing.T) {
	for _, tt := range []struct {
		name        string
		bootconfAt  int
		size        int
		nSections   int
		firstModule Magic
	}{
		{"pieeprom-2026-05-17", 0x72E00, 79, 26, MagicModule4},
		{"pieeprom-2023-01-11", 0x7A000, 54, 24, MagicModule3},
	} {
		t.Run(tt.name, func(t *testing.T) {
			im, err := Parse(readVector(t, tt.name+".bin"))
			if err != nil {
				t.Fatal(err)
			}
			secs := im.Sections()
			if len(secs) != tt.nSections {
				t.Errorf("%d sections, want %d", len(secs), tt.nSections)
			}
			if secs[0].Offset != 0 || secs[0].Magic != MagicBootcode {
				t.Errorf("first section = %+v, want bootcode at 0", secs[0])
			}
			if secs[1].Magic != tt.firstModule && secs[2].Magic != tt.firstModule {
				t.Errorf("no %s module near the start: %+v %+v", tt.firstModule, secs[1], secs[2])
			}
			last := secs[len(secs)-1]
			if last.Name != BootConfName || last.Offset != tt.bootconfAt {
				t.Errorf("last section = %+v, want bootconf.txt at 0x%x", last, tt.bootconfAt)
			}
			slot, err := im.BootConfSlot()
			if err != nil {
				t.Fatal(err)
			}
			want := BootConfSlot{Offset: tt.bootconfAt, Size: tt.size, Limit: Size2711 - ReservedSize, Max: MaxBootConf, Free: MaxBootConf - tt.size, Last: true}
			if slot != want {
				t.Errorf("BootConfSlot = %+v, want %+v", slot, want)
			}
			if im.SoC() != 2711 {
				t.Errorf("SoC = %d", im.SoC())
			}
		})
	}
}

// TestConfigSizes mirrors upstream's check_conf_size_large/too_large and
// check_reduce_size, plus the exact per-image limit.
func TestConfigSizes(t *testing.T) {
	near := buildImage(t, Size2711,
		synthSection{magic: MagicBootcode, content: bytes.Repeat([]byte{0xAA}, 0x1000)},
		synthSection{at: 0x7E000, magic: MagicFile, name: "bootconf.sig", content: make([]byte, 1024)},
		synthSection{at: 0x7EA00, magic: MagicFile, name: BootConfName, content: []byte("[all]\nBOOT_UART=0\n")},
	)
	for _, tt := range []struct {
		name    string
		image   []byte
		n       int
		wantErr bool
	}{
		{"2026 4076 bytes", readVector(t, "pieeprom-2026-05-17.bin"), 4076, false},
		{"2026 4077 bytes", readVector(t, "pieeprom-2026-05-17.bin"), 4077, true},
		{"2023 4076 bytes", readVector(t, "pieeprom-2023-01-11.bin"), 4076, false},
		{"2023 4077 bytes", readVector(t, "pieeprom-2023-01-11.bin"), 4077, true},
		{"2023 empty config", readVector(t, "pieeprom-2023-01-11.bin"), 0, false},
		// bootconf.txt at 0x7EA00 as in the 2025-07 releases: 0x7F000-0x7EA00-24 = 1512
		{"near end exact limit 1512", near, 1512, false},
		{"near end limit+1", near, 1513, true},
		{"near end upstream off-by-4 1516", near, 1516, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			im, err := Parse(tt.image)
			if err != nil {
				t.Fatal(err)
			}
			before := im.Bytes()
			conf := configOfSize(tt.n)
			err = im.SetBootConf(conf)
			if tt.wantErr {
				if !errors.Is(err, ErrTooLarge) {
					t.Fatalf("SetBootConf(%d bytes) = %v, want ErrTooLarge", tt.n, err)
				}
				if !strings.Contains(err.Error(), "bytes") {
					t.Errorf("error %q does not give the sizes", err)
				}
				if !bytes.Equal(im.Bytes(), before) {
					t.Error("a refused config changed the image")
				}
				return
			}
			if err != nil {
				t.Fatalf("SetBootConf(%d bytes): %v", tt.n, err)
			}
			out := im.Bytes()
			back, err := Parse(out)
			if err != nil {
				t.Fatal(err)
			}
			if got, _ := back.BootConf(); !bytes.Equal(got, conf) {
				t.Errorf("read back %d bytes, want %d", len(got), len(conf))
			}
			slot, _ := back.BootConfSlot()
			// everything after the config up to the reserved sector is erased,
			// and the reserved sector is untouched
			for i := slot.Offset + 24 + tt.n; i < slot.Limit; i++ {
				if out[i] != 0xFF {
					t.Fatalf("stale byte 0x%02x at 0x%x after a %d-byte config", out[i], i, tt.n)
				}
			}
			if !bytes.Equal(out[Size2711-ReservedSize:], before[Size2711-ReservedSize:]) {
				t.Error("reserved last 4 KiB changed")
			}
		})
	}
}

// TestReduceSize: grow then shrink back gives the original image (no stale
// bytes from the longer config).
func TestReduceSize(t *testing.T) {
	orig := readVector(t, "pieeprom-2026-05-17.bin")
	im, err := Parse(orig)
	if err != nil {
		t.Fatal(err)
	}
	conf, _ := im.BootConf()
	longer := append(bytes.Clone(conf), "# a much longer config than before, with extra text\nBOOT_UART=1\n"...)
	if err := im.SetBootConf(longer); err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(im.Bytes(), orig) {
		t.Fatal("a longer config did not change the image")
	}
	if err := im.SetBootConf(conf); err != nil {
		t.Fatal(err)
	}
	if got := im.Bytes(); !bytes.Equal(got, orig) {
		t.Fatalf("shrinking back left %d differing bytes (first at 0x%x)", diffCount(got, orig), firstDiff(got, orig))
	}
}

// Test2712 checks a 2 MiB A/B layout where bootconf.txt is followed by
// padding: the replace writes a padding header over the freed space.
const partB = 0x107000

// synth2712 is a 2 MiB A/B-style image: bootcode with an updatetime file
// below 64 KiB, partition A with bootsys, a module and bootconf.txt followed
// by padding up to partition B.
func synth2712(t testing.TB) []byte {
	return buildImage(t, Size2712,
		synthSection{magic: MagicBootcode, content: bytes.Repeat([]byte{0xBC}, 0x8000)},
		synthSection{magic: MagicFile, name: "updatetime", content: bytes.Repeat([]byte{0xFF}, 8)},
		synthSection{at: 0x10000, magic: MagicFile, name: "bootsys", content: bytes.Repeat([]byte{0x5A}, 0x20000)},
		synthSection{magic: MagicFile, name: "updatetime", content: bytes.Repeat([]byte{0xFF}, 8)},
		synthSection{magic: MagicModule4, content: bytes.Repeat([]byte{0x44}, 0x1000)},
		synthSection{at: 0x40000, magic: MagicFile, name: BootConfName, content: []byte("[all]\nBOOT_ORDER=0xf461\n")},
		synthSection{magic: MagicPadding, content: bytes.Repeat([]byte{0xFF}, 0x100)},
		synthSection{at: 0x41000, magic: MagicPadding, content: bytes.Repeat([]byte{0xFF}, partB-0x41000-8)},
		synthSection{at: partB, magic: MagicModule4, content: []byte("journal")},
	)
}

// synthTrailingPad is a 2711 image whose bootconf.txt is followed by a
// padding section up to the reserved sector: not the last section, so the
// replace writes a padding header (upstream's is_last is literal).
func synthTrailingPad(t testing.TB) []byte {
	return buildImage(t, Size2711,
		synthSection{magic: MagicBootcode, content: bytes.Repeat([]byte{0xBC}, 0x1000)},
		synthSection{at: 0x70000, magic: MagicFile, name: BootConfName, content: []byte("[all]\nBOOT_UART=0\n")},
		synthSection{magic: MagicPadding, content: bytes.Repeat([]byte{0xFF}, Size2711-ReservedSize-align8(0x70000+24+18)-8)},
	)
}

func TestTrailingPadding(t *testing.T) {
	img := synthTrailingPad(t)
	im, err := Parse(img)
	if err != nil {
		t.Fatal(err)
	}
	slot, err := im.BootConfSlot()
	if err != nil {
		t.Fatal(err)
	}
	if slot.Last || slot.Limit != Size2711-ReservedSize {
		t.Fatalf("slot = %+v, want not last, limit 0x%x", slot, Size2711-ReservedSize)
	}
	conf := []byte("[all]\nBOOT_ORDER=0xf21\n")
	if err := im.SetBootConf(conf); err != nil {
		t.Fatal(err)
	}
	secs := im.Sections()
	if last := secs[len(secs)-1]; last.Magic != MagicPadding || last.End() != Size2711-ReservedSize {
		t.Errorf("last section = %+v, want padding up to the reserved sector", last)
	}
	if err := im.SetBootConf([]byte("[all]\nBOOT_UART=0\n")); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(im.Bytes(), img) {
		t.Error("writing the original config back did not restore the image")
	}
}

func Test2712(t *testing.T) {
	img := synth2712(t)
	im, err := Parse(img)
	if err != nil {
		t.Fatal(err)
	}
	if im.SoC() != 2712 {
		t.Fatalf("SoC = %d, want 2712", im.SoC())
	}
	slot, err := im.BootConfSlot()
	if err != nil {
		t.Fatal(err)
	}
	if slot.Last || slot.Limit != partB || slot.Max != MaxBootConf {
		t.Fatalf("slot = %+v, want not last, limit 0x%x", slot, partB)
	}
	conf := []byte("[all]\nBOOT_ORDER=0xf21\nBOOT_UART=1\n")
	if err := im.SetBootConf(conf); err != nil {
		t.Fatal(err)
	}
	out := im.Bytes()
	p := align8(0x40000 + 24 + len(conf))
	if m := Magic(binary.BigEndian.Uint32(out[p:])); m != MagicPadding {
		t.Fatalf("no padding header after the config: magic %s at 0x%x", m, p)
	}
	if l := int(binary.BigEndian.Uint32(out[p+4:])); p+8+l != partB {
		t.Errorf("padding ends at 0x%x, want 0x%x", p+8+l, partB)
	}
	secs := im.Sections()
	if got := secs[len(secs)-1]; got.Offset != partB || got.Magic != MagicModule4 {
		t.Errorf("last section = %+v, want the module at 0x%x", got, partB)
	}
	if !bytes.Equal(out[partB:], img[partB:]) {
		t.Error("bytes beyond the partition changed")
	}
	// The timestamp goes into both updatetime files, below 64 KiB and in
	// the partition (as rpi-eeprom-config --timestamp).
	if err := im.SetTimestamp(1700000000); err != nil {
		t.Fatal(err)
	}
	out = im.Bytes()
	for _, ut := range []int{align8(8+0x8000) + 24, align8(0x10000+8+16+0x20000) + 24} {
		if got := hex.EncodeToString(out[ut : ut+8]); got != "ff0eac9a00f15365" {
			t.Errorf("updatetime at 0x%x = %s", ut, got)
		}
	}
	if ts, ok := im.Timestamp(); !ok || ts != 1700000000 {
		t.Errorf("Timestamp = %d, %v", ts, ok)
	}
	if got := out[Size2712-8:]; !bytes.Equal(got, bytes.Repeat([]byte{0xFF}, 8)) {
		t.Errorf("2712 timestamp also written to the last 8 bytes: %x", got)
	}
	if err := im.ClearTimestamp(); err != nil {
		t.Fatal(err)
	}
	if _, ok := im.Timestamp(); ok {
		t.Error("timestamp still set after ClearTimestamp")
	}
	// a read-only updatetime without its partition copy is refused, as upstream does
	broken := buildImage(t, Size2712,
		synthSection{magic: MagicBootcode, content: make([]byte, 64)},
		synthSection{magic: MagicFile, name: "updatetime", content: bytes.Repeat([]byte{0xFF}, 8)},
		synthSection{at: 0x10000, magic: MagicFile, name: BootConfName, content: []byte("[all]\n")})
	bim, err := Parse(broken)
	if err != nil {
		t.Fatal(err)
	}
	if err := bim.SetTimestamp(1); !errors.Is(err, ErrCorrupt) || !bytes.Equal(bim.Bytes(), broken) {
		t.Errorf("SetTimestamp without a partition updatetime = %v", err)
	}
}

func TestTimestamp(t *testing.T) {
	orig := readVector(t, "pieeprom-2026-05-17.bin")
	im, err := Parse(orig)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := im.Timestamp(); ok {
		t.Fatal("release image reports a timestamp")
	}
	if err := im.SetTimestamp(1700000000); err != nil {
		t.Fatal(err)
	}
	out := im.Bytes()
	if got := hex.EncodeToString(out[Size2711-8:]); got != "ff0eac9a00f15365" {
		t.Errorf("last 8 bytes = %s, want ff0eac9a00f15365", got)
	}
	if !bytes.Equal(out[:Size2711-8], orig[:Size2711-8]) {
		t.Error("SetTimestamp changed bytes outside the last 8")
	}
	if ts, ok := im.Timestamp(); !ok || ts != 1700000000 {
		t.Errorf("Timestamp = %d, %v", ts, ok)
	}
	if err := im.ClearTimestamp(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(im.Bytes(), orig) {
		t.Error("ClearTimestamp did not restore the erased sector")
	}
}

func TestDigestTargetSoC(t *testing.T) {
	got := string(Digest([]byte("abc"), 42, 2711))
	want := "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\nts: 42\ntarget-soc: 2711\n"
	if got != want {
		t.Errorf("Digest = %q, want %q", got, want)
	}
}

func TestCorrupt(t *testing.T) {
	vec := readVector(t, "pieeprom-2026-05-17.bin")
	mod := func(f func(b []byte)) []byte { b := bytes.Clone(vec); f(b); return b }
	for _, tt := range []struct {
		name    string
		data    []byte
		want    error
		wantMsg string
	}{
		{"empty", nil, ErrImageSize, "image is 0 bytes"},
		{"truncated", vec[:Size2711-1], ErrImageSize, "image is 524287 bytes, want 524288"},
		{"too long", append(bytes.Clone(vec), 0), ErrImageSize, "524289"},
		{"erased", bytes.Repeat([]byte{0xFF}, Size2711), ErrCorrupt, "no section at offset 0"},
		{"bad first magic", mod(func(b []byte) { b[0] = 0x12 }), ErrCorrupt, "section at 0x0: bad magic 0x12aaf00f"},
		{"bad module magic", mod(func(b []byte) { b[0x45c88+2] = 0x00 }), ErrCorrupt, "section at 0x45c88: bad magic 0x55aa004f"},
		{"length past end", mod(func(b []byte) { binary.BigEndian.PutUint32(b[0x72e04:], 0x10000) }), ErrCorrupt, "file section at 0x72e00: length 65536 runs past the end"},
		{"short file header", mod(func(b []byte) { binary.BigEndian.PutUint32(b[0x72e04:], 8) }), ErrCorrupt, "shorter than its 16-byte name header"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			im, err := Parse(tt.data)
			if !errors.Is(err, tt.want) || im != nil {
				t.Fatalf("Parse = %v, %v; want %v", im, err, tt.want)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("error %q does not contain %q", err, tt.wantMsg)
			}
		})
	}
	// No bootconf.txt: parses, but show and replace fail clearly.
	im, err := Parse(mod(func(b []byte) { copy(b[0x72e08:], "bootconf.old") }))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := im.BootConf(); !errors.Is(err, ErrNoBootConf) {
		t.Errorf("BootConf = %v, want ErrNoBootConf", err)
	}
	if err := im.SetBootConf([]byte("x\n")); !errors.Is(err, ErrNoBootConf) || !strings.Contains(err.Error(), "[0x10000, 0x107000)") {
		t.Errorf("SetBootConf = %v, want ErrNoBootConf naming the window", err)
	}
	// bootconf.txt below 64 KiB: readable, not replaceable.
	low := buildImage(t, Size2711,
		synthSection{magic: MagicBootcode, content: make([]byte, 64)},
		synthSection{magic: MagicFile, name: BootConfName, content: []byte("[all]\n")})
	im, err = Parse(low)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := im.BootConf(); err != nil || string(got) != "[all]\n" {
		t.Errorf("BootConf = %q, %v", got, err)
	}
	if err := im.SetBootConf([]byte("x\n")); !errors.Is(err, ErrNoBootConf) {
		t.Errorf("SetBootConf below 64 KiB = %v, want ErrNoBootConf", err)
	}
}

func TestBuildInfo(t *testing.T) {
	for _, tt := range []struct {
		name string
		want BuildInfo
	}{
		{"pieeprom-2026-05-17", BuildInfo{Timestamp: 1779045198, Version: "224877da", Date: "2026/05/17"}},
		{"pieeprom-2023-01-11", BuildInfo{Timestamp: 1673458852, Version: "8ba17717", Date: "2023/01/11"}},
	} {
		im, err := Parse(readVector(t, tt.name+".bin"))
		if err != nil {
			t.Fatal(err)
		}
		if got := im.BuildInfo(); got != tt.want {
			t.Errorf("%s: BuildInfo = %+v, want %+v", tt.name, got, tt.want)
		}
	}
}
