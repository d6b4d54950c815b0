package libusbfake

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
)

func TestDecodeRequestRoundTrip(t *testing.T) {
	for _, q := range []*Request{
		{Op: OpList},
		{Op: OpOpen, Device: 0x0107},
		{Op: OpClose, Handle: 3},
		{Op: OpGetConfig, Handle: 3},
		{Op: OpReset, Handle: 3},
		{Op: OpClaim, Handle: 3, Arg: 1},
		{Op: OpRelease, Handle: 3, Arg: 1},
		{Op: OpSetConfig, Handle: 3, Arg: 1},
		{Op: OpClearHalt, Handle: 3, Arg: 0x81},
		{Op: OpSetAlt, Handle: 3, Arg: 1, Alt: 2},
		{Op: OpControl, Handle: 9, Setup: Setup{RequestType: 0x40, Value: 0x1da0, Index: 1}, Timeout: 1000},
		{Op: OpControl, Handle: 9, Setup: Setup{RequestType: 0xc0, Value: 0x104, Length: 260}, Timeout: 20000},
		{Op: OpControl, Handle: 9, Setup: Setup{RequestType: 0x21, Request: 9, Length: 3}, Data: []byte{1, 2, 3}},
		{Op: OpTransfer, Handle: 9, Endpoint: 0x01, Length: 4, Data: []byte{1, 2, 3, 4}},
		{Op: OpTransfer, Handle: 9, Endpoint: 0x82, Timeout: 5, Length: 512},
	} {
		t.Run(q.Op.String(), func(t *testing.T) {
			frame := q.Encode()
			got, err := ReadRequest(bytes.NewReader(frame))
			if err != nil {
				t.Fatalf("ReadRequest(%x): %v", frame, err)
			}
			if !reflect.DeepEqual(normalize(got), normalize(q)) {
				t.Fatalf("round trip:\n got %+v\nwant %+v", got, q)
			}
		})
	}
}

func normalize(q *Request) *Request {
	c := *q
	if len(c.Data) == 0 {
		c.Data = nil
	}
	return &c
}

func TestDecodeRequestErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		body []byte
	}{
		{"empty", nil},
		{"unknown op", []byte{99}},
		{"open short", []byte{byte(OpOpen), 1, 2}},
		{"trailing", []byte{byte(OpList), 0}},
		{"control short data", []byte{byte(OpControl), 1, 0, 0, 0, 0x40, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 1, 2}},
		{"transfer too long", []byte{byte(OpTransfer), 1, 0, 0, 0, 0x81, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if q, err := DecodeRequest(tc.body); !errors.Is(err, ErrMalformed) {
				t.Fatalf("DecodeRequest(%x) = %+v, %v; want ErrMalformed", tc.body, q, err)
			}
		})
	}
}

func FuzzDecodeRequest(f *testing.F) {
	for _, q := range []*Request{
		{Op: OpList},
		{Op: OpOpen, Device: 0x0102},
		{Op: OpSetAlt, Handle: 1, Arg: 1, Alt: 1},
		{Op: OpControl, Handle: 1, Setup: Setup{RequestType: 0x40, Length: 2}, Data: []byte{7, 8}, Timeout: 1000},
		{Op: OpControl, Handle: 1, Setup: Setup{RequestType: 0xc0, Value: 4, Length: 4}, Timeout: 20000},
		{Op: OpTransfer, Handle: 1, Endpoint: 1, Length: 3, Data: []byte{1, 2, 3}},
		{Op: OpTransfer, Handle: 1, Endpoint: 0x82, Length: 64},
	} {
		f.Add(q.Encode()[4:])
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		q, err := DecodeRequest(body)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error does not wrap ErrMalformed: %v", err)
			}
			return
		}
		// Anything accepted must encode back to exactly the same bytes.
		if got := q.Encode()[4:]; !bytes.Equal(got, body) {
			t.Fatalf("re-encode:\n got %x\nwant %x", got, body)
		}
	})
}

func TestAttachmentPath(t *testing.T) {
	for _, tc := range []struct {
		a    Attachment
		want string
	}{
		{Attachment{Bus: 1, Ports: []int{1, 3}}, "1-1.3"},
		{Attachment{Bus: 3, Ports: []int{2}}, "3-2"},
		{Attachment{Bus: 2}, "2"},
	} {
		if got := tc.a.Path(); got != tc.want {
			t.Errorf("%+v.Path() = %q, want %q", tc.a, got, tc.want)
		}
	}
}
