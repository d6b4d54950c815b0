package api

import (
	"os"
	"testing"
)

// covered is how many bytes of [0, size) b shows as streamed in space.
func covered(t *testing.T, b *coverageBook, action, space string, size int64) int64 {
	t.Helper()
	sent, err := b.read(action)
	if err != nil {
		t.Fatal(err)
	}
	return coveredBytes(sent[space], size)
}

// The coverage book counts what a dead server instance claimed but never
// recorded (it may have gone out before the server died), never what the
// running instance has only claimed, and merges overlapping resumes.
func TestCoverageBook(t *testing.T) {
	dir := t.TempDir()
	old := newCoverageBook(dir)
	s1, err := old.open("7", spaceRaw)
	if err != nil {
		t.Fatal(err)
	}
	s1.claim(0, 100)
	s1.sent(0, 100)
	s1.claim(100, 100) // the server is killed here, mid-write
	// a restarted server
	cur := newCoverageBook(dir)
	if got := covered(t, cur, "7", spaceRaw, 1000); got != 200 {
		t.Errorf("after the restart: %d bytes covered, want 200 (the dead instance's last claim counts)", got)
	}
	s2, _ := cur.open("7", spaceRaw)
	s2.claim(150, 850) // the resumed download overlaps, and is in flight
	if got := covered(t, cur, "7", spaceRaw, 1000); got != 200 {
		t.Errorf("with a claim in flight: %d bytes covered, want 200", got)
	}
	s2.sent(150, 400) // the client went away after 400 bytes
	s2.close()
	if done, got, _ := cur.complete("7", 1000, 0); done || got != 550 {
		t.Errorf("complete = %v, %d; want false, 550", done, got)
	}
	s3, _ := cur.open("7", spaceRaw)
	s3.claim(550, 450)
	s3.sent(550, 450)
	s3.close()
	if done, got, _ := cur.complete("7", 1000, 0); !done || got != 1000 {
		t.Errorf("complete = %v, %d; want true, 1000", done, got)
	}
	// Garbage lines are ignored; another space does not count for raw.
	f, _ := os.OpenFile(cur.path("8"), os.O_CREATE|os.O_WRONLY, 0o600)
	f.WriteString("S x zst 0 1000\nnonsense\nS y raw -5 10\nS z raw 10 5\n")
	f.Close()
	if done, got, _ := cur.complete("8", 1000, 2000); done || got != 0 {
		t.Errorf("garbage book: %v %d", done, got)
	}
	cur.remove("7")
	if got := covered(t, cur, "7", spaceRaw, 1000); got != 0 {
		t.Error("removed book still counts")
	}
}

// A sparse stream proves the whole image once every byte of the stream
// (its length is in the space's name) went out; part of it, or a sparse
// space with a bad length, proves nothing.
func TestCoverageBookSparse(t *testing.T) {
	b := newCoverageBook(t.TempDir())
	s, err := b.open("9", spaceSparse(300))
	if err != nil {
		t.Fatal(err)
	}
	s.claim(0, 200)
	s.sent(0, 200)
	s.close()
	f, _ := os.OpenFile(b.path("9"), os.O_APPEND|os.O_WRONLY, 0o600)
	f.WriteString("S x sparse/junk 0 1000\nS x sparse/0 0 0\n")
	f.Close()
	if done, _, err := b.complete("9", 1<<20, 0); done || err != nil {
		t.Fatalf("after 200 of 300 sparse bytes: done %v, %v", done, err)
	}
	s, _ = b.open("9", spaceSparse(300))
	s.claim(200, 100)
	s.sent(200, 100)
	s.close()
	if done, got, err := b.complete("9", 1<<20, 0); !done || got != 1<<20 || err != nil {
		t.Fatalf("after the whole sparse stream: done %v, %d, %v; want true and the image size", done, got, err)
	}
}
