package repotest

import (
	"os"
	"path/filepath"
	"testing"
)

func TestRootAndShared(t *testing.T) {
	root := Root(t)
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("Root() = %s has no go.mod: %v", root, err)
	}
	if got, want := Shared(t, "eeprom-vectors/README.md"), filepath.Join(filepath.Dir(root), "shared", "eeprom-vectors", "README.md"); got != want {
		t.Errorf("Shared = %s, want %s", got, want)
	}
}

func TestFindRootOutsideModule(t *testing.T) {
	t.Chdir(t.TempDir())
	if _, err := FindRoot(); err == nil {
		t.Error("FindRoot outside any module succeeded")
	}
}
