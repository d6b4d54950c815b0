// Package repotest finds the repository root and the ../shared fixtures
// beside it, for tests. The fixtures come from other projects and are read
// in place, never copied into the repository; CI always has them, so a
// missing one fails the test rather than skipping it.
//
//	img := repotest.Shared(t, "eeprom-vectors/pieeprom-2026-05-17.bin")
package repotest

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// FindRoot walks up from the working directory to the directory holding
// go.mod. It is for callers without a testing.TB (a sync.Once in TestMain).
func FindRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("repotest: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("repotest: no go.mod above the working directory")
		}
		dir = parent
	}
}

// Root is FindRoot that fails the test on error.
func Root(tb testing.TB) string {
	tb.Helper()
	root, err := FindRoot()
	if err != nil {
		tb.Fatal(err)
	}
	return root
}

// Shared returns the path of rel under ../shared (beside the repository
// root), failing the test when it is missing. Shared(tb, "") is the
// directory itself.
func Shared(tb testing.TB, rel string) string {
	tb.Helper()
	p := filepath.Join(filepath.Dir(Root(tb)), "shared", rel)
	if _, err := os.Stat(p); err != nil {
		tb.Fatalf("shared fixture missing (../shared must be present beside the repository): %v", err)
	}
	return p
}
