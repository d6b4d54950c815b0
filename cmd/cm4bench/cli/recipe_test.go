package cli

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cm4bench/cm4bench/internal/contract"
	"github.com/cm4bench/cm4bench/netboot/bootfs/bootfstest"
)

// startServe runs `netboot serve` (HTTP only) with image as --image and
// returns its data directory once it answers.
func startServe(t *testing.T, image string) string {
	t.Helper()
	data := filepath.Join(t.TempDir(), "data")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Context{Stdout: io.Discard, Stderr: io.Discard, Args: []string{"netboot", "serve", "--no-dhcp", "--no-tftp",
			"--http", "127.0.0.1:0", "--data", data, "--image", image}}.Execute(ctx)
	}()
	t.Cleanup(func() { cancel(); <-done })
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		b, err := os.ReadFile(filepath.Join(data, contract.FileServerInfo))
		var info contract.ServerInfo
		if err == nil && json.Unmarshal(b, &info) == nil && info.URL != "" {
			return data
		}
		if time.Now().After(deadline) {
			t.Fatalf("server.json never appeared: %v", err)
		}
	}
}

// recipe and rule commands: YAML in, --json and YAML out, and an export
// that applies back unchanged; bad files exit 2 and store nothing.
func TestRecipeAndRuleCommands(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "golden.img")
	if _, err := bootfstest.Make(img, bootfstest.Disk{BootMiB: 16, FAT: 16, RootMiB: 2}); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(img)
	sum := sha256.Sum256(b)
	data := startServe(t, img)
	cli := func(args ...string) (string, error) {
		t.Helper()
		out, _, err := runCLI(t, append(args, "--data", data)...)
		return out, err
	}
	os.WriteFile(filepath.Join(dir, "serials.csv"), []byte("serial\nSN-1\nSN-2\n"), 0o644)
	recipeFile := filepath.Join(dir, "line-a.yaml")
	os.WriteFile(recipeFile, []byte(`name: line-a
image: golden.img
sha256: `+hex.EncodeToString(sum[:])+`
pools:
  - name: serials
    kind: list
    csv: serials.csv
files:
  - path: serial.txt
    template: '{{ pool "serials" }}'
`), 0o644)
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("name: line-b\nimage: golden.img\nsha256: "+hex.EncodeToString(sum[:])+"\nverfy: stream\n"), 0o644)
	rules := filepath.Join(dir, "rules.yaml")
	os.WriteFile(rules, []byte("rules:\n  - name: all\n    recipe: line-a\n    mode: auto\n    match: {serial_pattern: '1000.*'}\n"), 0o644)

	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"recipe", "apply", "-f", bad}, 2, "field verfy not found"},
		{[]string{"recipe", "apply"}, 2, "-f FILE"},
		{[]string{"recipe", "list"}, 0, "NAME"},
		{[]string{"recipe", "apply", "-f", recipeFile}, 0, "line-a v1 applied"},
		{[]string{"recipe", "apply", "-f", recipeFile}, 0, "line-a v1 unchanged"},
		{[]string{"recipe", "list"}, 0, "serials 2 free"},
		{[]string{"recipe", "show", "line-a"}, 0, "- SN-2"},
		{[]string{"rule", "apply", "-f", rules}, 0, "1 rules applied"},
		{[]string{"rule", "list"}, 0, "serial_pattern=1000.*"},
		{[]string{"rule", "list"}, 0, "not armed"},
		{[]string{"rule", "arm"}, 0, "ARMED"},
		{[]string{"rule", "list", "--json"}, 0, `"armed": true`},
		{[]string{"recipe", "values", "line-a"}, 0, "POOL"},
	} {
		out, err := cli(tc.args...)
		if err != nil {
			out += err.Error()
		}
		if ExitCode(err) != tc.code || !strings.Contains(out, tc.want) {
			t.Errorf("%v: exit %d %q, want %d with %q", tc.args, ExitCode(err), out, tc.code, tc.want)
		}
	}
	// Round trips: what export writes, apply takes back unchanged.
	exp := filepath.Join(dir, "exported.yaml")
	if _, err := cli("recipe", "export", "-o", exp); err != nil {
		t.Fatal(err)
	}
	if out, err := cli("recipe", "apply", "-f", exp, "--json"); err != nil || !strings.Contains(out, `"changed": false`) {
		t.Errorf("apply of the export: %q %v", out, err)
	}
	ry, err := cli("rule", "export")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(exp, []byte(ry), 0o644)
	if out, err := cli("rule", "apply", "-f", exp); err != nil || !strings.Contains(out, "1 rules") {
		t.Errorf("apply of the rule export: %q %v", out, err)
	}
	var list []map[string]any
	out, _ := cli("recipe", "list", "--json")
	if json.Unmarshal([]byte(out), &list) != nil || len(list) != 1 || list[0]["name"] != "line-a" {
		t.Errorf("recipe list --json = %s", out)
	}
}
