package agent

import "testing"

func TestParseContentRange(t *testing.T) {
	for _, tc := range []struct {
		in           string
		start, total int64
		ok           bool
	}{
		{"bytes 100-199/1000", 100, 1000, true},
		{"bytes 0-0/*", 0, -1, true},
		{"bytes 5-9", 0, 0, false},
		{"items 0-1/2", 0, 0, false},
		{"bytes -1-2/3", 0, 0, false},
		{"bytes x-2/3", 0, 0, false},
		{"bytes 1-2/-3", 0, 0, false},
	} {
		s, tot, ok := parseContentRange(tc.in)
		if ok != tc.ok || (ok && (s != tc.start || tot != tc.total)) {
			t.Errorf("%q: %d %d %v", tc.in, s, tot, ok)
		}
	}
}

func FuzzParseContentRange(f *testing.F) {
	f.Add("bytes 100-199/1000")
	f.Add("bytes 0-0/*")
	f.Fuzz(func(t *testing.T, s string) {
		start, total, ok := parseContentRange(s)
		if ok && (start < 0 || total < -1) {
			t.Fatalf("%q -> %d, %d", s, start, total)
		}
	})
}

// FuzzDeployStream feeds arbitrary bytes as a deploy stream: Deploy must
// never panic, and must either fail or write exactly what it hashed.
func FuzzDeployStream(f *testing.F) {
	f.Add([]byte("plain raw image bytes"))
	f.Add([]byte{0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff})
	f.Add([]byte{0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0})
	f.Add([]byte{0xfd, '7', 'z', 'X', 'Z', 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		fuzzDeploy(t, b)
	})
}
