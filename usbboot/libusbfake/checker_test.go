package libusbfake_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/cm4bench/cm4bench/usbboot/libusbfake"
)

// recorder collects what the transcript checker reports.
type recorder struct{ errs []string }

func (r *recorder) Helper() {}
func (r *recorder) Errorf(format string, args ...any) {
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

func ctl(rt uint8, val, idx, length uint16, timeout uint32, result string) libusbfake.Record {
	req := uint8(0)
	if rt&0x60 == 0 {
		req = 6
	}
	return libusbfake.Record{Port: "1-1.1", Kind: "control", RequestType: &rt, Request: &req, Value: &val,
		Index: &idx, Length: &length, TimeoutMS: timeout, Result: result}
}

func bulk(ep uint8, n int) libusbfake.Record {
	return libusbfake.Record{Port: "1-1.1", Kind: "bulk", Endpoint: &ep, Len: &n, Actual: n, Result: "ok"}
}

// TestProtocolChecker feeds the e2e transcript checker the ROM phase of a
// correct host and of hosts with the glue regressions it must catch.
func TestProtocolChecker(t *testing.T) {
	iface := 0
	good := []libusbfake.Record{
		{Port: "1-1.1", Kind: "open", Result: "ok"},
		ctl(0x80, 0x0100, 0, 18, 1000, "ok"),
		{Port: "1-1.1", Kind: "claim", Arg: &iface, Result: "ok"},
		ctl(0x40, 24, 0, 0, 1000, "ok"), bulk(1, 24),
		ctl(0x40, 0x1da0, 1, 0, 1000, "ok"), bulk(1, 16384), bulk(1, 16384), bulk(1, 16384), bulk(1, 16384), bulk(1, 7584),
		ctl(0xc0, 4, 0, 4, 20000, "ok"),
	}
	wantTokens := romTokens(73120)
	mutate := func(f func([]libusbfake.Record) []libusbfake.Record) []libusbfake.Record {
		c := append([]libusbfake.Record(nil), good...)
		return f(c)
	}
	iface1 := 1
	for _, tc := range []struct {
		name string
		recs []libusbfake.Record
		want string // substring of an error; "" = none
	}{
		{"correct host", good, ""},
		{"infinite SIZE timeout", mutate(func(r []libusbfake.Record) []libusbfake.Record {
			r[3] = ctl(0x40, 24, 0, 0, 0, "ok")
			return r
		}), "timeout 0 ms, want 0 and 1000 ms"},
		{"infinite READ timeout", mutate(func(r []libusbfake.Record) []libusbfake.Record {
			r[11] = ctl(0xc0, 4, 0, 4, 0, "ok")
			return r
		}), "timeout 0 ms"},
		{"wrong endpoint", mutate(func(r []libusbfake.Record) []libusbfake.Record {
			r[4] = bulk(3, 24)
			return r
		}), "bulk on endpoint 0x03, want 0x01"},
		{"wrong interface", mutate(func(r []libusbfake.Record) []libusbfake.Record {
			r[2] = libusbfake.Record{Port: "1-1.1", Kind: "claim", Arg: &iface1, Result: "ok"}
			return r
		}), "claimed interface 1, want 0"},
		{"8 KiB chunks", mutate(func(r []libusbfake.Record) []libusbfake.Record {
			return append(r[:6:6], append([]libusbfake.Record{bulk(1, 8192)}, r[6:]...)...)
		}), "bulk chunk of 8192 bytes"},
		{"SET_CONFIGURATION", mutate(func(r []libusbfake.Record) []libusbfake.Record {
			one := 1
			return append(r[:2:2], append([]libusbfake.Record{{Port: "1-1.1", Kind: "set_config", Arg: &one, Result: "ok"}}, r[2:]...)...)
		}), "set_config"},
		{"bulk without SIZE", mutate(func(r []libusbfake.Record) []libusbfake.Record {
			return append(r[:3:3], r[4:]...)
		}), "without a SIZE"},
		{"vendor request 1", mutate(func(r []libusbfake.Record) []libusbfake.Record {
			c := ctl(0x40, 24, 0, 0, 1000, "ok")
			one := uint8(1)
			c.Request = &one
			r[3] = c
			return r
		}), "bRequest 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var rec recorder
			toks := protocol(&rec, tc.recs, "1-1.1", 0x01)
			if tc.want == "" {
				if len(rec.errs) != 0 {
					t.Fatalf("errors on a correct transcript: %q", rec.errs)
				}
				if strings.Join(toks, "|") != strings.Join(wantTokens, "|") {
					t.Fatalf("tokens %q, want %q", toks, wantTokens)
				}
				return
			}
			if !strings.Contains(strings.Join(rec.errs, "\n"), tc.want) {
				t.Fatalf("errors %q, want one containing %q", rec.errs, tc.want)
			}
		})
	}
}
