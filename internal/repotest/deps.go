package repotest

import (
	"os/exec"
	"strings"
	"testing"
)

// Module is this repository's module path.
const Module = "github.com/cm4bench/cm4bench"

// Package is one entry of `go list -deps`.
type Package struct {
	Path    string
	Cgo     bool     // has cgo files
	Imports []string // direct imports
}

// Deps runs `go list -deps` on pkgs (module-relative like "./cmd/cm4agent"
// or full paths) with env added to the environment (GOOS, GOARCH,
// CGO_ENABLED), and returns every package by path. It fails the test when
// go list fails or answers implausibly little, so a rule checked against
// its answer can fail.
func Deps(tb testing.TB, env []string, pkgs ...string) map[string]Package {
	tb.Helper()
	gobin, err := exec.LookPath("go")
	if err != nil {
		tb.Fatalf("deps: the go tool is not on PATH: %v", err)
	}
	args := append([]string{"list", "-deps", "-f", "{{.ImportPath}}|{{len .CgoFiles}}|{{join .Imports \",\"}}"}, pkgs...)
	cmd := exec.Command(gobin, args...)
	cmd.Dir = Root(tb)
	cmd.Env = append(cmd.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		tb.Fatalf("deps: go list %s: %v\n%s", strings.Join(pkgs, " "), err, out)
	}
	m := map[string]Package{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.SplitN(line, "|", 3)
		if len(f) != 3 {
			tb.Fatalf("deps: unexpected go list line %q", line)
		}
		p := Package{Path: f[0], Cgo: f[1] != "0"}
		if f[2] != "" {
			p.Imports = strings.Split(f[2], ",")
		}
		m[p.Path] = p
	}
	if len(m) < 5 {
		tb.Fatalf("deps: go list gave only %d packages for %s", len(m), strings.Join(pkgs, " "))
	}
	return m
}

// Under reports whether path is prefix or a package below it.
func Under(path, prefix string) bool {
	return path == prefix || strings.HasPrefix(path, prefix+"/")
}
