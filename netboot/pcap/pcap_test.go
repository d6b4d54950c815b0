package pcap

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"time"
)

func TestRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	w, err := NewWriter(&buf, 64, LinkEthernet)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Unix(1700000000, 123456000).UTC()
	pkts := [][]byte{[]byte("first"), bytes.Repeat([]byte{7}, 100), {}}
	for i, p := range pkts {
		if err := w.WritePacket(t0.Add(time.Duration(i)*time.Millisecond), p); err != nil {
			t.Fatal(err)
		}
	}
	r, err := NewReader(&buf)
	if err != nil || r.LinkType != LinkEthernet {
		t.Fatalf("NewReader: %v, link %d", err, r.LinkType)
	}
	for i, p := range pkts {
		got, err := r.Next()
		if err != nil {
			t.Fatal(err)
		}
		want := p
		if len(want) > 64 {
			want = want[:64]
		}
		if !bytes.Equal(got.Data, want) || got.Orig != len(p) || !got.Time.Equal(t0.Add(time.Duration(i)*time.Millisecond)) {
			t.Errorf("packet %d: %+v", i, got)
		}
	}
	if _, err := r.Next(); !errors.Is(err, io.EOF) {
		t.Errorf("end: %v", err)
	}
}

func TestReaderRejects(t *testing.T) {
	var good bytes.Buffer
	w, _ := NewWriter(&good, 0, LinkRaw)
	w.WritePacket(time.Unix(1, 0), []byte("abcdef"))
	for name, in := range map[string][]byte{
		"empty":     nil,
		"bad magic": append([]byte{1, 2, 3, 4}, good.Bytes()[4:]...),
		"cut":       good.Bytes()[:good.Len()-2],
	} {
		r, err := NewReader(bytes.NewReader(in))
		if err == nil {
			_, err = r.Next()
		}
		if err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func FuzzReader(f *testing.F) {
	var good bytes.Buffer
	w, _ := NewWriter(&good, 0, LinkEthernet)
	w.WritePacket(time.Unix(1, 0), []byte("abcdef"))
	f.Add(good.Bytes())
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := NewReader(bytes.NewReader(b))
		if err != nil {
			return
		}
		for range 1000 {
			p, err := r.Next()
			if err != nil {
				return
			}
			if len(p.Data) > MaxSnapLen {
				t.Fatalf("record of %d bytes", len(p.Data))
			}
		}
	})
}
