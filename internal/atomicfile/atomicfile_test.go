package atomicfile

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestWriteFileCommitAndAbort(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "out.bin")

	for _, tt := range []struct {
		name   string
		commit bool
		want   bool
	}{
		{"abort leaves nothing", false, false},
		{"commit publishes", true, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f, err := Create(target, 0o600)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.Write([]byte("hello")); err != nil {
				t.Fatal(err)
			}
			if tt.commit {
				if err := f.Commit(); err != nil {
					t.Fatal(err)
				}
			} else if err := f.Abort(); err != nil {
				t.Fatal(err)
			}
			_, err = os.Stat(target)
			if got := err == nil; got != tt.want {
				t.Fatalf("target exists = %v, want %v (err %v)", got, tt.want, err)
			}
			ents, _ := os.ReadDir(dir)
			for _, e := range ents {
				if e.Name() != "out.bin" {
					t.Errorf("stray file %q left behind", e.Name())
				}
			}
		})
	}
	got, err := os.ReadFile(target)
	if err != nil || string(got) != "hello" {
		t.Fatalf("ReadFile = %q, %v; want hello", got, err)
	}
	if err := WriteFile(target, []byte("second"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(target); string(got) != "second" {
		t.Fatalf("after WriteFile got %q", got)
	}
}

func TestCreateInMissingDirFails(t *testing.T) {
	_, err := Create(filepath.Join(t.TempDir(), "nope", "x"), 0o644)
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Create in missing dir: err = %v, want ErrNotExist", err)
	}
}
