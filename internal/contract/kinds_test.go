package contract_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/cm4bench/cm4bench/internal/contract"
	"github.com/cm4bench/cm4bench/internal/repotest"
)

// kindLike matches a string that reads as an event kind: a known source, a
// dot, one lower-case word.
var kindLike = regexp.MustCompile(`^(device|action|netboot|backup|image|server|auth|dhcp|tftp)\.[a-z]+$`)

// notKinds are strings of that shape that are file names, not kinds.
var notKinds = map[string]bool{contract.FileServerInfo: true}

// productionGo parses every non-test Go file of the repository outside this
// package and calls fn for each string literal.
func productionGo(t *testing.T, fn func(pos token.Position, s string)) {
	t.Helper()
	root := repotest.Root(t)
	own, _ := filepath.Abs(".")
	fset := token.NewFileSet()
	files := 0
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if name := d.Name(); p != root && (strings.HasPrefix(name, ".") || name == "testdata" || p == own) {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, p, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		files++
		ast.Inspect(f, func(n ast.Node) bool {
			if lit, ok := n.(*ast.BasicLit); ok && lit.Kind == token.STRING {
				if s, err := strconv.Unquote(lit.Value); err == nil {
					fn(fset.Position(lit.Pos()), s)
				}
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files < 100 {
		t.Fatalf("walked only %d Go files under %s", files, root)
	}
}

// TestNoUndeclaredKinds fails when production code spells an event kind as
// a string instead of using a declared constant: a kind that is not in
// contract.Kinds would reach the dashboard and the event log unannounced.
func TestNoUndeclaredKinds(t *testing.T) {
	productionGo(t, func(pos token.Position, s string) {
		if !kindLike.MatchString(s) || notKinds[s] {
			return
		}
		if contract.KnownKind(s) {
			t.Errorf("%s: event kind %q spelled as a string; use its contract.Event* constant", pos, s)
		} else {
			t.Errorf("%s: event kind %q is not declared in package contract", pos, s)
		}
	})
}

// TestEveryKindEmitted fails when a declared kind is used by no production
// code: the list must not promise events nothing sends.
func TestEveryKindEmitted(t *testing.T) {
	src, err := os.ReadFile("events.go")
	if err != nil {
		t.Fatal(err)
	}
	decl := regexp.MustCompile(`(?m)^\s+(Event[A-Za-z]+)\s+= "`).FindAllSubmatch(src, -1)
	if len(decl) != len(contract.Kinds()) {
		t.Fatalf("events.go declares %d kinds, Kinds() lists %d", len(decl), len(contract.Kinds()))
	}
	used := map[string]bool{}
	root := repotest.Root(t)
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") || strings.Contains(p, "/internal/contract/") {
			return err
		}
		b, err := os.ReadFile(p)
		for _, m := range regexp.MustCompile(`contract\.(Event[A-Za-z]+)\b`).FindAllSubmatch(b, -1) {
			used[string(m[1])] = true
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range decl {
		if !used[string(m[1])] {
			t.Errorf("contract.%s is declared but no production code emits it", m[1])
		}
	}
}

// TestDashboardKindsFromServer: the dashboard names only declared kinds and
// keeps no list of its own (it loads kinds.js, which api/ui makes from
// contract.Kinds).
func TestDashboardKindsFromServer(t *testing.T) {
	js, err := os.ReadFile(filepath.Join(repotest.Root(t), "api", "ui", "static", "app.js"))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range regexp.MustCompile(`"([a-z]+\.[a-z]+)"`).FindAllSubmatch(js, -1) {
		if s := string(m[1]); kindLike.MatchString(s) && !contract.KnownKind(s) {
			t.Errorf("app.js names event kind %q, which no Go code declares", s)
		}
	}
	// A list of most kinds in one array is a hand-kept copy of contract.Kinds.
	for _, arr := range regexp.MustCompile(`(?s)\[[^\[\]]*\]`).FindAll(js, -1) {
		n := 0
		for _, m := range regexp.MustCompile(`"([a-z]+\.[a-z]+)"`).FindAllSubmatch(arr, -1) {
			if kindLike.Match(m[1]) {
				n++
			}
		}
		if n > len(contract.Kinds())/2 {
			t.Errorf("app.js keeps a list of %d event kinds: use the kinds.js the server makes", n)
		}
	}
}
