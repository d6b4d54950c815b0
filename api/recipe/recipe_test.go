package recipe

import (
	"bytes"
	"fmt"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/cm4bench/cm4bench/internal/contract"
)

// memValues hands out values like the store does, without a database.
type memValues struct {
	next map[string]int
	r    *Recipe
}

func (m *memValues) Next(pool string) (string, error) {
	for _, p := range m.r.Pools {
		if p.Name != pool {
			continue
		}
		i := m.next[pool]
		m.next[pool]++
		if p.Kind == PoolCounter {
			return fmt.Sprintf(p.Format, p.Start+int64(i)), nil
		}
		if i >= len(p.Values) {
			return "", fmt.Errorf("pool %s is empty", pool)
		}
		return p.Values[i], nil
	}
	return "", fmt.Errorf("no pool %s", pool)
}

func (m *memValues) Keyed(pool, key string) (string, error) { return "file for " + key, nil }

func readSample(t *testing.T) []Recipe {
	t.Helper()
	f, err := os.Open("../../testdata/recipes/line-a.yaml")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rs, err := ParseRecipes(f)
	if err != nil {
		t.Fatalf("the sample recipe: %v", err)
	}
	if err := Resolve(rs, "../../testdata/recipes"); err != nil {
		t.Fatalf("resolve the sample's CSV: %v", err)
	}
	return rs
}

func TestSampleRecipeRendersAndRoundTrips(t *testing.T) {
	rs := readSample(t)
	r := rs[0]
	r.Version = 3
	v := &memValues{next: map[string]int{}, r: &r}
	b := SampleBoard()
	files, err := r.Render(b, v)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, f := range files {
		got[f.Path] = string(f.Data)
	}
	if !strings.Contains(got["user-data"], "hostname: line-a-0001\n") || got["serial.txt"] != "SN-A-0001\n" ||
		!strings.Contains(got["cm4bench.txt"], "recipe line-a v3, hostname line-a-0001, serial SN-A-0001") {
		t.Errorf("rendered %q", got)
	}
	// A second board gets the next values.
	files, _ = r.Render(b, v)
	if string(files[2].Data) != "SN-A-0002\n" {
		t.Errorf("second board's serial %q", files[2].Data)
	}
	out, err := MarshalRecipes(rs)
	if err != nil {
		t.Fatal(err)
	}
	back, err := ParseRecipes(bytes.NewReader(out))
	if err != nil || !reflect.DeepEqual(back, rs) {
		t.Errorf("round trip: %v\n%+v\n%+v\n%s", err, back, rs, out)
	}
}

func TestRecipeRefused(t *testing.T) {
	base := func(extra string) string {
		return "name: r\nimage: x.img\nsha256: " + strings.Repeat("ab", 32) + "\n" + extra
	}
	for _, tc := range []struct{ name, yaml, want string }{
		{"unknown key", base("verfy: readback\n"), "field verfy not found"},
		{"unknown nested key", base("requires:\n  min_emmcc: 8GB\n"), "field min_emmcc not found"},
		{"template does not parse", base("files:\n  - path: a\n    template: '{{ .Serial '\n"), "does not parse"},
		{"template field missing", base("files:\n  - path: a\n    template: '{{ .Hostname }}'\n"), "does not render"},
		{"template names no pool", base("files:\n  - path: a\n    template: '{{ pool \"nope\" }}'\n"), `no pool "nope"`},
		{"folder path", base("files:\n  - path: a/b\n    template: x\n"), "root folder"},
		{"same file twice", base("files:\n  - path: A\n    template: x\n  - path: a\n    template: y\n"), "given twice"},
		{"bad sha", "name: r\nimage: x.img\nsha256: abc\n", "64 lower-case hex"},
		{"bad name", "name: R!\nimage: x.img\nsha256: " + strings.Repeat("ab", 32) + "\n", "recipe name"},
		{"bad after", base("after: explode\n"), "want reboot, poweroff or hold"},
		{"bad verify", base("verify: maybe\n"), "readback or stream"},
		{"counter format", base("pools:\n  - name: p\n    kind: counter\n    format: 'x-%s-%d'\n"), "one number verb"},
		{"list duplicates", base("pools:\n  - name: p\n    kind: list\n    values: [a, a]\n"), "given twice"},
		{"files key", base("pools:\n  - name: p\n    kind: files\n    files: {notaserial: x}\n"), "not a board serial"},
		{"bad min_emmc", base("requires:\n  min_emmc: lots\n"), "min_emmc"},
		{"empty file", "", "no recipe"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseRecipes(strings.NewReader(tc.yaml))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestRulesMatch(t *testing.T) {
	f, err := os.Open("../../testdata/recipes/rules.yaml")
	if err != nil {
		t.Fatal(err)
	}
	rs, err := ParseRules(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	cm4 := "Raspberry Pi Compute Module 4 Rev 1.1"
	for _, tc := range []struct {
		name  string
		mac   string
		facts *contract.Facts
		rule  string
		why   string
	}{
		{"in range", "dc:a6:32:00:00:01", &contract.Facts{Serial: "10000abc", Model: cm4}, "line-a-early-serials", "serial 10000abc in 10000000..1000ffff"},
		{"out of range falls through", "dc:a6:32:00:00:01", &contract.Facts{Serial: "10ff0abc", Model: cm4}, "everything-else-asks", "matches every board"},
		{"not a CM4", "dc:a6:32:00:00:01", &contract.Facts{Serial: "10000abc", Model: "Raspberry Pi 4 Model B"}, "everything-else-asks", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, why, ok := rs.First(tc.mac, tc.facts)
			if !ok || r.Name != tc.rule || !strings.Contains(why, tc.why) {
				t.Errorf("First = %s %q %v, want %s %q", r.Name, why, ok, tc.rule, tc.why)
			}
		})
	}
	one := RuleSet{Rules: []Rule{{Name: "big", Recipe: "x", Mode: ModeAuto, Match: Match{EMMCMin: "16GB", MACPrefix: "dc:a6:32", MinBootloader: "2024-04-15", SerialPattern: "1000[0-9a-f]{4}"}}}}
	for _, tc := range []struct {
		facts *contract.Facts
		mac   string
		ok    bool
		why   string
	}{
		{&contract.Facts{Serial: "10001234", EMMCBytes: 32e9, Bootloader: "abc (2024-05-01T00:00:00Z)"}, "dc:a6:32:01:02:03", true, "eMMC 32.0 GB"},
		{&contract.Facts{Serial: "10001234", EMMCBytes: 8e9, Bootloader: "abc (2024-05-01T00:00:00Z)"}, "dc:a6:32:01:02:03", false, "eMMC 8.0 GB is outside 16GB..any"},
		{&contract.Facts{Serial: "10001234", EMMCBytes: 32e9, Bootloader: "abc (2023-05-01T00:00:00Z)"}, "dc:a6:32:01:02:03", false, "older than 2024-04-15"},
		{&contract.Facts{Serial: "10001234", EMMCBytes: 32e9}, "dc:a6:32:01:02:03", false, "no bootloader build date"},
		{&contract.Facts{Serial: "20001234", EMMCBytes: 32e9, Bootloader: "(2024-05-01)"}, "dc:a6:32:01:02:03", false, "does not match"},
		{&contract.Facts{Serial: "10001234", EMMCBytes: 32e9, Bootloader: "(2024-05-01)"}, "2c:cf:67:01:02:03", false, "does not start with dc:a6:32"},
	} {
		_, why, ok := one.First(tc.mac, tc.facts)
		if ok != tc.ok || (tc.ok && !strings.Contains(why, tc.why)) {
			t.Errorf("%+v: ok=%v %q, want ok=%v %q", tc.facts, ok, why, tc.ok, tc.why)
		}
		if !tc.ok {
			if yes, why := one.Rules[0].Match.Why(tc.mac, tc.facts); yes || !strings.Contains(why, tc.why) {
				t.Errorf("Why = %v %q, want %q", yes, why, tc.why)
			}
		}
	}
	for _, bad := range []string{
		"rules:\n  - name: a\n    recipe: x\n    mode: sometimes\n",
		"rules:\n  - name: a\n    recipe: x\n    mode: auto\n  - name: a\n    recipe: y\n    mode: ask\n",
		"rules:\n  - name: a\n    recipe: x\n    mode: auto\n    match: {serial_from: zz}\n",
		"rules:\n  - name: a\n    recipe: x\n    mode: auto\n    match: {slot: 3}\n",
		"rules:\n  - name: a\n    recipe: x\n    mode: auto\n    match: {serial_pattern: '('}\n",
	} {
		if _, err := ParseRules(strings.NewReader(bad)); err == nil {
			t.Errorf("ParseRules(%q) accepted", bad)
		}
	}
}

func TestCheckBoard(t *testing.T) {
	r := Recipe{Name: "r", Requires: Requires{MinEMMC: "16GB", MinBootloader: "2024-01-01", Model: "Compute Module 4"}}
	good := &contract.Facts{EMMCBytes: 32e9, Model: "Raspberry Pi Compute Module 4 Rev 1.1", Bootloader: "x (2024-04-15T00:00:00Z)"}
	if err := r.CheckBoard(good, 4e9); err != nil {
		t.Errorf("good board: %v", err)
	}
	for _, tc := range []struct {
		f    contract.Facts
		img  int64
		want string
	}{
		{contract.Facts{EMMCBytes: 32e9, Model: good.Model, Bootloader: good.Bootloader}, 40e9, "the eMMC holds"},
		{contract.Facts{EMMCBytes: 8e9, Model: good.Model, Bootloader: good.Bootloader}, 4e9, "at least 16GB"},
		{contract.Facts{EMMCBytes: 32e9, Model: "Raspberry Pi 5", Bootloader: good.Bootloader}, 4e9, "needs a"},
		{contract.Facts{EMMCBytes: 32e9, Model: good.Model, Bootloader: "x (2023-04-15T00:00:00Z)"}, 4e9, "update its EEPROM"},
	} {
		if err := r.CheckBoard(&tc.f, tc.img); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.f, err, tc.want)
		}
	}
	// requires.locked: only a board whose bootloader reports the key in OTP
	locked := Recipe{Name: "sb", Requires: Requires{Locked: true}}
	u := func(v uint32) *uint32 { return &v }
	for _, tc := range []struct {
		signed *uint32
		want   string // "" = accepted
	}{
		{u(0x1 | 0x4 | 0x8), ""},
		{u(0x8), ""},
		{u(0x1), "signed=0x1: no customer key in OTP"},
		{nil, "does not report its secure-boot state"},
	} {
		err := locked.CheckBoard(&contract.Facts{SignedBoot: tc.signed}, 1)
		if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("signed %v: %v, want %q", tc.signed, err, tc.want)
		}
	}
}

func FuzzParseRecipes(f *testing.F) {
	b, _ := os.ReadFile("../../testdata/recipes/line-a.yaml")
	f.Add(b)
	f.Add([]byte("name: x\n---\nname: y\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		rs, err := ParseRecipes(bytes.NewReader(data))
		if err != nil {
			return
		}
		out, err := MarshalRecipes(rs)
		if err != nil {
			t.Fatalf("a parsed recipe does not marshal: %v", err)
		}
		if _, err := ParseRecipes(bytes.NewReader(out)); err != nil {
			t.Fatalf("a marshalled recipe does not parse again: %v\n%s", err, out)
		}
	})
}

func FuzzParseRules(f *testing.F) {
	b, _ := os.ReadFile("../../testdata/recipes/rules.yaml")
	f.Add(b)
	f.Fuzz(func(t *testing.T, data []byte) {
		rs, err := ParseRules(bytes.NewReader(data))
		if err != nil {
			return
		}
		for _, r := range rs.Rules {
			r.Match.Why("dc:a6:32:00:00:01", &contract.Facts{Serial: "10000abc", EMMCBytes: 1 << 34, Bootloader: "(2024-01-01)"})
		}
	})
}

func TestResolve(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(dir+"/macs.csv", []byte("serial,mac\nS1,dc:a6:32:00:00:01\nS2,\"dc:a6:32:00:00:02\"\n"), 0o644)
	os.Mkdir(dir+"/certs", 0o755)
	os.WriteFile(dir+"/certs/10000abc.pem", []byte("CERT A"), 0o644)
	os.WriteFile(dir+"/certs/10000ABD.crt", []byte("CERT B"), 0o644)
	rs := []Recipe{{Name: "r", Pools: []Pool{
		{Name: "macs", Kind: PoolList, CSV: "macs.csv", Column: "MAC"},
		{Name: "certs", Kind: PoolFiles, Dir: "certs"},
	}}}
	if err := Resolve(rs, dir); err != nil {
		t.Fatal(err)
	}
	if p := rs[0].Pools[0]; !reflect.DeepEqual(p.Values, []string{"dc:a6:32:00:00:01", "dc:a6:32:00:00:02"}) || p.CSV != "" {
		t.Errorf("csv pool %+v", p)
	}
	if p := rs[0].Pools[1]; p.Files["10000abc"] != "CERT A" || p.Files["10000abd"] != "CERT B" || p.Dir != "" {
		t.Errorf("files pool %+v", p)
	}
	os.WriteFile(dir+"/certs/board-7.pem", []byte("x"), 0o644)
	for _, tc := range []struct {
		p    Pool
		want string
	}{
		{Pool{Name: "p", Kind: PoolList, CSV: "macs.csv", Column: "imei"}, `no column "imei"`},
		{Pool{Name: "p", Kind: PoolList, CSV: "missing.csv"}, "no such file"},
		{Pool{Name: "p", Kind: PoolFiles, Dir: "certs"}, "board-7.pem is not named by a board serial"},
	} {
		err := Resolve([]Recipe{{Name: "r", Pools: []Pool{tc.p}}}, dir)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.p, err, tc.want)
		}
	}
}

// Every sample recipe in testdata/recipes parses, resolves and renders.
func TestSampleRecipesRender(t *testing.T) {
	for _, name := range []string{"line-a.yaml", "firstrun.yaml"} {
		f, err := os.Open("../../testdata/recipes/" + name)
		if err != nil {
			t.Fatal(err)
		}
		rs, err := ParseRecipes(f)
		f.Close()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if err := Resolve(rs, "../../testdata/recipes"); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for _, r := range rs {
			files, err := r.Render(SampleBoard(), &memValues{next: map[string]int{}, r: &r})
			if err != nil || len(files) != len(r.Files) {
				t.Errorf("%s: %d files, %v", name, len(files), err)
			}
			for _, f := range files {
				if strings.Contains(string(f.Data), "<no value>") {
					t.Errorf("%s: %s renders a missing value", name, f.Path)
				}
			}
		}
	}
}
