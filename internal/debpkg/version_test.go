package debpkg

import "testing"

func TestDebVersion(t *testing.T) {
	for in, want := range map[string]string{
		"v1.2.3":            "1.2.3",
		"1.4":               "1.4",
		"v1.2.3-4-gabc1234": "1.2.3+4.gabc1234",
		"4d20393-dirty":     "0.0~git4d20393.dirty",
		"e117f29":           "0.0~gite117f29",
		"dev":               "0.0~gitdev",
		"":                  "0.0~dev",
		"v2.0.0-rc1":        "2.0.0+rc1",
	} {
		if got := DebVersion(in); got != want {
			t.Errorf("DebVersion(%q) = %q, want %q", in, got, want)
		}
	}
}
