package eeprom

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"github.com/cm4bench/cm4bench/internal/repotest"
)

// sharedDir is ../shared beside the repository; CI has it, so a missing
// directory fails the test.
func sharedDir(t testing.TB) string {
	t.Helper()
	return repotest.Shared(t, "")
}

func readVector(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(sharedDir(t), "eeprom-vectors", name))
	if err != nil {
		t.Fatalf("test vector missing (../shared must be present): %v", err)
	}
	return b
}

// synthSection is one section of a synthetic image built by buildImage.
type synthSection struct {
	at      int // offset; 0 means right after the previous section
	magic   Magic
	name    string // file sections
	content []byte // file content or opaque body
}

// buildImage lays out sections the way release images do: 8-byte headers,
// 8-byte alignment, file sections with name + reserved word, erased (0xFF)
// flash everywhere else.
func buildImage(t testing.TB, size int, secs ...synthSection) []byte {
	t.Helper()
	img := bytes.Repeat([]byte{0xFF}, size)
	off := 0
	for _, s := range secs {
		if s.at != 0 {
			if s.at < off || (s.at > off && s.at-off < 8) {
				t.Fatalf("synthetic section at 0x%x does not fit after 0x%x", s.at, off)
			}
			if s.at > off { // real images fill gaps with padding sections
				binary.BigEndian.PutUint32(img[off:], uint32(MagicPadding))
				binary.BigEndian.PutUint32(img[off+4:], uint32(s.at-off-8))
			}
			off = s.at
		}
		binary.BigEndian.PutUint32(img[off:], uint32(s.magic))
		body := s.content
		if s.magic == MagicFile {
			hdr := make([]byte, 16)
			copy(hdr, s.name)
			body = append(hdr, s.content...)
		}
		binary.BigEndian.PutUint32(img[off+4:], uint32(len(body)))
		copy(img[off+8:], body)
		off = align8(off + 8 + len(body))
	}
	return img
}

// configOfSize returns a plausible bootconf.txt of exactly n bytes.
func configOfSize(n int) []byte {
	b := []byte("[all]\nBOOT_ORDER=0xf21\n")
	for len(b) < n {
		b = append(b, "# padding comment line to grow the config to its limit\n"...)
	}
	b = b[:n]
	if n > 0 {
		b[n-1] = '\n'
	}
	return b
}
