package contract_test

import (
	"testing"

	"github.com/cm4bench/cm4bench/internal/contract"
)

func TestNormalizeMAC(t *testing.T) {
	for _, tt := range []struct {
		in, want string
		ok       bool
	}{
		{"dc:a6:32:01:02:03", "dc:a6:32:01:02:03", true},
		{"DC:A6:32:01:02:0A", "dc:a6:32:01:02:0a", true},
		{"dc-a6-32-01-02-03", "dc:a6:32:01:02:03", true},
		{" dc:a6:32:01:02:03 ", "dc:a6:32:01:02:03", true},
		{"dc:a6:32:01:02", "", false},
		{"zz:a6:32:01:02:03", "", false},
		{"", "", false},
		{"00:00:00:00:fe:80:00:00:00:00:00:00:02:00:5e:10:00:00:00:01", "", false},
	} {
		got, err := contract.NormalizeMAC(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("NormalizeMAC(%q) = %q, %v; want %q, ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}
