package sparseimg

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// testImage is size bytes with data at the given grain indexes (random
// bytes, except grain "zeroish" ones that hold a single non-zero byte at
// the end, the case a sloppy zero check misses).
func testImage(size int64, data []int64, seed uint64) []byte {
	img := make([]byte, size)
	r := rand.New(rand.NewPCG(seed, 1))
	for i, g := range data {
		b := img[g*Grain : min((g+1)*Grain, size)]
		if i%3 == 2 {
			b[len(b)-1] = 1
			continue
		}
		for j := range b {
			b[j] = byte(r.Uint32())
		}
	}
	return img
}

func encode(t testing.TB, img []byte) ([]Extent, []byte) {
	t.Helper()
	ext, err := Map(context.Background(), bytes.NewReader(img), int64(len(img)))
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewStream(bytes.NewReader(img), int64(len(img)), ext)
	if err != nil {
		t.Fatal(err)
	}
	wire := make([]byte, s.Size())
	if n, err := s.ReadAt(wire, 0); n != len(wire) || err != nil {
		t.Fatalf("ReadAt whole stream: %d of %d, %v", n, len(wire), err)
	}
	return ext, wire
}

func TestRoundTrip(t *testing.T) {
	for _, tt := range []struct {
		name string
		size int64
		data []int64
		want []Extent
	}{
		{"empty image", 0, nil, nil},
		{"all zero", 5 * Grain, nil, nil},
		{"one grain", 5 * Grain, []int64{2}, []Extent{{2 * Grain, Grain}}},
		{"runs merge", 8 * Grain, []int64{0, 1, 2, 5}, []Extent{{0, 3 * Grain}, {5 * Grain, Grain}}},
		{"short last grain", 3*Grain + 100, []int64{3}, []Extent{{3 * Grain, 100}}},
		{"everything", 4 * Grain, []int64{0, 1, 2, 3}, []Extent{{0, 4 * Grain}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			img := testImage(tt.size, tt.data, 7)
			ext, wire := encode(t, img)
			if !reflect.DeepEqual(ext, tt.want) {
				t.Fatalf("extents %v, want %v", ext, tt.want)
			}
			if want := int64(headerSize+recordSize) + int64(len(ext))*recordSize + DataBytes(ext); int64(len(wire)) != want {
				t.Errorf("wire %d bytes, want %d", len(wire), want)
			}
			r, err := NewReader(bytes.NewReader(wire))
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(r)
			if err != nil || !bytes.Equal(got, img) {
				t.Fatalf("decoded %d bytes (%v), want the %d-byte image back", len(got), err, len(img))
			}
		})
	}
}

// TestReadAtAnywhere: every window of the stream, as a Range request
// would read it, equals the same bytes of the whole encoding.
func TestReadAtAnywhere(t *testing.T) {
	img := testImage(20*Grain+7, []int64{0, 3, 4, 9, 20}, 3)
	ext, wire := encode(t, img)
	s, _ := NewStream(bytes.NewReader(img), int64(len(img)), ext)
	r := rand.New(rand.NewPCG(9, 9))
	for range 500 {
		off := r.Int64N(int64(len(wire)) + 1)
		n := r.Int64N(3*Grain + 1)
		buf := make([]byte, n)
		m, err := s.ReadAt(buf, off)
		end := min(off+n, int64(len(wire)))
		if int64(m) != end-off || !bytes.Equal(buf[:m], wire[off:end]) {
			t.Fatalf("ReadAt(%d bytes at %d) = %d, %v: differs from the stream", n, off, m, err)
		}
		if (off+n > int64(len(wire))) != errors.Is(err, io.EOF) {
			t.Fatalf("ReadAt(%d at %d) of %d: err %v", n, off, len(wire), err)
		}
	}
}

// TestMapSparseFile: a file with holes is mapped through SEEK_DATA, and
// zero blocks written as data are still found to be zero.
func TestMapSparseFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "img")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const size = 1 << 30 // 1 GiB, almost all hole
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte{0xab}, 3*Grain)
	f.WriteAt(data, 512<<20)
	f.WriteAt(make([]byte, 4*Grain), 700<<20) // written zeros
	f.WriteAt([]byte{1}, size-1)
	ext, err := Map(context.Background(), f, size)
	if err != nil {
		t.Fatal(err)
	}
	want := []Extent{{512 << 20, 3 * Grain}, {size - Grain, Grain}}
	if !reflect.DeepEqual(ext, want) {
		t.Fatalf("extents %v, want %v", ext, want)
	}
	if _, err := Map(context.Background(), f, size+Grain); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("map past the end: %v, want unexpected EOF", err)
	}
}

func TestNewStreamRefusesBadExtents(t *testing.T) {
	for _, ext := range [][]Extent{
		{{0, 0}},
		{{10, 5}, {12, 5}},
		{{90, 20}},
		{{-1, 5}},
	} {
		if _, err := NewStream(bytes.NewReader(nil), 100, ext); err == nil {
			t.Errorf("NewStream(%v) of a 100-byte image: no error", ext)
		}
	}
}

func TestReaderRefusesBadStreams(t *testing.T) {
	u := func(v ...uint64) []byte {
		var b []byte
		for _, x := range v {
			b = binary.BigEndian.AppendUint64(b, x)
		}
		return b
	}
	hdr := append([]byte(Magic), u(100)...)
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	for _, tt := range []struct {
		name   string
		stream []byte
	}{
		{"no header", []byte("CM4S")},
		{"bad magic", append([]byte("CM4SPARX"), u(100)...)},
		{"no end record", hdr},
		{"cut data", cat(hdr, u(0, 10), []byte("abc"))},
		{"past the end", cat(hdr, u(95, 10), make([]byte, 10), u(100, 0))},
		{"backwards", cat(hdr, u(50, 2), []byte("ab"), u(40, 2), []byte("cd"), u(100, 0))},
		{"overlap", cat(hdr, u(50, 4), []byte("abcd"), u(52, 2), []byte("cd"), u(100, 0))},
		{"empty record", cat(hdr, u(50, 0), u(100, 0))},
		{"end record with the wrong size", cat(hdr, u(99, 0))},
		{"bytes after the end", cat(hdr, u(100, 0), []byte{0})},
		{"huge size", append([]byte(Magic), u(1<<63)...)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r, err := NewReader(bytes.NewReader(tt.stream))
			if err == nil {
				_, err = io.ReadAll(r)
			}
			if !errors.Is(err, ErrFormat) {
				t.Fatalf("error %v, want ErrFormat", err)
			}
		})
	}
}

// FuzzReader: any input decodes to at most the announced size, or fails
// with ErrFormat; what decodes re-encodes to a stream that decodes the same.
func FuzzReader(f *testing.F) {
	_, wire := encode(f, testImage(6*Grain, []int64{1, 4}, 5))
	f.Add(wire[:200])
	f.Add(append([]byte(Magic), make([]byte, 24)...))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := NewReader(bytes.NewReader(b))
		if err != nil {
			if !errors.Is(err, ErrFormat) {
				t.Fatalf("error %v is not ErrFormat", err)
			}
			return
		}
		if r.Size() > 1<<24 {
			return // a large announced size: decoding would only make zeros
		}
		img, err := io.ReadAll(r)
		if err != nil {
			if !errors.Is(err, ErrFormat) {
				t.Fatalf("error %v is not ErrFormat", err)
			}
			return
		}
		if int64(len(img)) != r.Size() {
			t.Fatalf("decoded %d bytes, announced %d", len(img), r.Size())
		}
		_, again := encode(t, img)
		r2, err := NewReader(bytes.NewReader(again))
		if err != nil {
			t.Fatal(err)
		}
		if img2, err := io.ReadAll(r2); err != nil || !bytes.Equal(img2, img) {
			t.Fatalf("re-encoded image decodes differently: %v", err)
		}
	})
}
