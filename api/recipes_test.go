package api_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cm4bench/cm4bench/internal/contract"
	"github.com/cm4bench/cm4bench/netboot/bootfs/bootfstest"
)

func recipeYAML(name, image, sum, serials string) string {
	return fmt.Sprintf(`name: %s
image: %s
sha256: %s
after: poweroff
pools:
  - name: hostnames
    kind: counter
    format: %s-%%03d
    start: 1
  - name: serials
    kind: list
    on_failure: retire
    values: [%s]
files:
  - path: user-data
    template: |
      #cloud-config
      hostname: {{ pool "hostnames" }}
  - path: serial.txt
    template: "{{ pool \"serials\" }} for {{ .Serial }}\n"
`, name, image, sum, name, serials)
}

// The line over HTTP: recipes applied from YAML (bad ones change nothing),
// rules, the armed switch, a zero-click start at register, the rendered
// files in the poll, and success only with the files read back.
func TestRecipesRulesAndZeroClick(t *testing.T) {
	dir := t.TempDir()
	golden := filepath.Join(dir, "golden.img")
	if _, err := bootfstest.Make(golden, bootfstest.Disk{BootMiB: 16, FAT: 16, RootMiB: 4, Seed: 9}); err != nil {
		t.Fatal(err)
	}
	gb, _ := os.ReadFile(golden)
	gsum := sha(gb)
	b := startServer(t, dir, golden)
	raw := makeImage(t, filepath.Join(dir, "raw.img"), 1<<20)
	b.admin("POST", "/api/v1/images?name=raw.img", raw, 201, nil)

	recipes := func() []contract.RecipeApplied {
		var rs []struct {
			Name    string `json:"name"`
			Version int    `json:"version"`
		}
		b.admin("GET", "/api/v1/recipes", nil, 200, &rs)
		var out []contract.RecipeApplied
		for _, r := range rs {
			out = append(out, contract.RecipeApplied{Name: r.Name, Version: r.Version})
		}
		return out
	}
	// Bad input: a clear error and nothing stored.
	for _, tc := range []struct {
		name, body string
		code       int
		want       string
	}{
		{"unknown key", recipeYAML("line-a", "golden.img", gsum, "S1") + "colour: red\n", 400, "field colour not found"},
		{"template does not render", strings.Replace(recipeYAML("line-a", "golden.img", gsum, "S1"), "{{ .Serial }}", "{{ .Hostname }}", 1), 400, "does not render"},
		{"wrong sha256", recipeYAML("line-a", "golden.img", strings.Repeat("0", 64), "S1"), 422, "pins sha256"},
		{"no FAT partition", recipeYAML("line-a", "raw.img", sha(raw), "S1"), 422, "no FAT partition"},
		{"missing image", recipeYAML("line-a", "nope.img", gsum, "S1"), 422, "nope.img"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out := b.call("PUT", "/api/v1/recipes", []byte(tc.body), b.token)
			if code != tc.code || !strings.Contains(string(out), tc.want) {
				t.Errorf("= %d %s, want %d with %q", code, out, tc.code, tc.want)
			}
			if got := recipes(); len(got) != 0 {
				t.Errorf("stored after a refusal: %+v", got)
			}
		})
	}
	var applied []contract.RecipeApplied
	b.admin("PUT", "/api/v1/recipes", []byte(recipeYAML("line-a", "golden.img", gsum, "SN-1, SN-2")+"---\n"+recipeYAML("line-b", "golden.img", gsum, "SN-B1")), 200, &applied)
	if len(applied) != 2 || applied[0].Version != 1 || !applied[0].Changed {
		t.Fatalf("applied %+v", applied)
	}
	if code, out := b.call("PUT", "/api/v1/rules", []byte("rules:\n  - {name: r1, recipe: line-z, mode: auto}\n"), b.token); code != 422 || !strings.Contains(string(out), "line-z") {
		t.Errorf("a rule naming a missing recipe = %d %s", code, out)
	}
	b.admin("PUT", "/api/v1/rules", []byte(`rules:
  - name: early
    recipe: line-a
    mode: auto
    match: {serial_from: "10000000", serial_to: "100000ff"}
  - name: rest
    recipe: line-b
    mode: ask
`), 200, nil)

	register := func(mac, serial string) {
		t.Helper()
		body := fmt.Sprintf(`{"mac":%q,"ip":"127.0.0.1","facts":{"serial":%q,"emmc_bytes":%d}}`, mac, serial, 8<<30)
		if code, out := b.call("POST", contract.PathRegister, []byte(body), ""); code != 200 {
			t.Fatalf("register = %d %s", code, out)
		}
	}
	device := func(mac string) contract.Device {
		var d contract.Device
		b.admin("GET", "/api/v1/devices/"+mac, nil, 200, &d)
		return d
	}
	const m1, m2, m3, m4 = "dc:a6:32:00:a0:01", "dc:a6:32:00:a0:02", "dc:a6:32:00:a0:03", "dc:a6:32:00:a0:04"
	register(m1, "10000001")
	if d := device(m1); d.Action != nil || d.Match == nil || d.Match.Rule != "early" || !strings.Contains(d.Match.Why, "not armed") {
		t.Fatalf("unarmed: action %+v, match %+v", d.Action, d.Match)
	}
	b.admin("PUT", "/api/v1/armed", contract.Armed{Armed: true}, 200, nil)
	d := device(m1)
	if d.Action == nil || d.Action.Recipe != "line-a" || d.Action.Rule != "early" || d.Action.State != contract.StatePending {
		t.Fatalf("arming did not start the waiting board: %+v", d.Action)
	}
	register(m2, "10000002") // zero-click at register
	register(m3, "10000003") // line-a's serial list has two values: dry
	register(m4, "20000004") // rule "rest" asks
	if d := device(m2); d.Action == nil || d.Action.Recipe != "line-a" {
		t.Errorf("second board not started: %+v", d.Action)
	}
	if d := device(m3); d.Action != nil || !strings.Contains(d.Match.Why, "has no value left") {
		t.Errorf("dry pool: action %+v, why %q", d.Action, d.Match.Why)
	}
	if d := device(m4); d.Action != nil || d.Match.Mode != "ask" || d.Match.Recipe != "line-b" {
		t.Errorf("ask rule: action %+v, match %+v", d.Action, d.Match)
	}
	var asked contract.Action
	b.admin("POST", "/api/v1/devices/"+m4+"/action", contract.SetActionRequest{Action: "deploy", Recipe: "line-b", Rule: "rest"}, 200, &asked)
	if asked.Recipe != "line-b" || len(asked.Values) != 2 {
		t.Errorf("confirmed ask: %+v", asked)
	}

	// The board's poll carries the rendered files; a wrong read-back fails it.
	finish := func(mac string, mangle bool) contract.Action {
		t.Helper()
		p := b.poll(mac)
		if p.Customise == nil || len(p.Customise.Files) != 2 || p.Customise.After != contract.AfterPowerOff {
			t.Fatalf("poll of %s: %+v", mac, p.Customise)
		}
		return b.finishRecipe(mac, p, gsum, func(files []contract.FileHash) {
			if mangle {
				files[1].SHA256 = strings.Repeat("e", 64)
			}
		})
	}
	p := b.poll(m1)
	if got := string(p.Customise.Files[0].Data); got != "#cloud-config\nhostname: line-a-001\n" {
		t.Errorf("m1 user-data %q", got)
	}
	if a := finish(m1, false); a.State != contract.StateDone {
		t.Errorf("m1: %+v", a)
	}
	if a := finish(m2, true); a.State != contract.StateFailed || !strings.Contains(a.Error, "serial.txt read back as") {
		t.Errorf("m2 with a wrong file hash: %s %q", a.State, a.Error)
	}
	var vals []contract.PoolRecord
	b.admin("GET", "/api/v1/recipes/line-a/values", nil, 200, &vals)
	states := map[string]string{}
	for _, v := range vals {
		states[v.Value] = v.State
	}
	// m1 used line-a-001 and SN-1; m2's failure returned line-a-002 and retired SN-2.
	if states["line-a-001"] != "used" || states["SN-1"] != "used" || states["SN-2"] != "retired" || states["line-a-002"] != "" {
		t.Errorf("values after one success and one failure: %v", states)
	}
	// Editing a used recipe makes version 2; v1 stays as m1 got it.
	b.admin("PUT", "/api/v1/recipes", []byte(recipeYAML("line-a", "golden.img", gsum, "SN-1, SN-2, SN-3")), 200, &applied)
	if applied[0].Version != 2 {
		t.Errorf("edit of a used recipe: %+v", applied)
	}
	var exported []byte
	code, exported := b.call("GET", "/api/v1/recipes/line-a?format=yaml", nil, b.token)
	if code != 200 || !strings.Contains(string(exported), "version: 2") || !strings.Contains(string(exported), "SN-3") {
		t.Errorf("export = %d %s", code, exported)
	}
}

// finishRecipe plays the agent's end of a recipe deploy polled as p: the
// whole image fetched from the server, then success with the image's
// sha256 and the rendered files' hashes (edit changes them first).
func (b *bench) finishRecipe(mac string, p contract.PollResponse, imageSHA string, edit func([]contract.FileHash)) contract.Action {
	b.t.Helper()
	b.download(p)
	var files []contract.FileHash
	if p.Customise != nil {
		for _, f := range p.Customise.Files {
			files = append(files, contract.FileHash{Path: f.Path, SHA256: f.SHA256})
		}
	}
	if edit != nil {
		edit(files)
	}
	var a contract.Action
	b.admin("POST", contract.PathActionDone, contract.ActionDone{MAC: mac, ActionID: p.ActionID, Token: p.Token, Status: "success", SHA256: imageSHA, Files: files}, 200, &a)
	return a
}
