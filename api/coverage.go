package api

import (
	"bufio"
	"cmp"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Coverage spaces: offsets in the raw image, or in a stored .zst passed
// through as is, or in a sparse stream (spaceSparse).
const (
	spaceRaw = "raw"
	spaceZst = "zst"
)

// spaceSparse is the space of a sparse image stream of wire bytes. The
// length is in the name, written by the server itself, so completeness is
// judged without mapping the image again.
func spaceSparse(wire int64) string { return sparsePrefix + strconv.FormatInt(wire, 10) }

const sparsePrefix = "sparse/"

// coverageBook records, per deploy action, which byte ranges of its image
// the server has handed to the network, in <data>/streams/<action>.cov, so
// a deploy is marked done only when the server itself streamed the whole
// image to that board (security item 2), for every client, across resumed
// downloads and server restarts.
//
// Each chunk is claimed before it is written ("C stream space start end")
// and recorded after ("S stream space start end" with the bytes actually
// written). A claim that a stream of an earlier server instance never
// followed up (the server died while writing it) counts as sent: those
// bytes may have reached the board, and a client cannot make the server
// die. Claims of the running instance count only once recorded.
type coverageBook struct {
	dir      string
	instance string

	mu     sync.Mutex
	seq    uint64
	active map[string]int // action -> streams in flight
}

func newCoverageBook(dir string) *coverageBook {
	b := make([]byte, 6)
	rand.Read(b)
	return &coverageBook{dir: dir, instance: hex.EncodeToString(b), active: map[string]int{}}
}

func (b *coverageBook) path(action string) string {
	return filepath.Join(b.dir, action+".cov")
}

// covStream is one image stream's writer into the book.
type covStream struct {
	b      *coverageBook
	action string
	space  string
	id     string
	f      *os.File
	w      *bufio.Writer
}

// open starts recording one stream of action in space. A nil stream (the
// book could not be written) records nothing; the deploy then cannot be
// proven and is refused at action-done, with the reason logged.
func (b *coverageBook) open(action, space string) (*covStream, error) {
	if err := os.MkdirAll(b.dir, 0o750); err != nil {
		return nil, fmt.Errorf("coverage: %w", err)
	}
	f, err := os.OpenFile(b.path(action), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, fmt.Errorf("coverage: %w", err)
	}
	b.mu.Lock()
	b.seq++
	id := fmt.Sprintf("%s/%d", b.instance, b.seq)
	b.active[action]++
	b.mu.Unlock()
	return &covStream{b: b, action: action, space: space, id: id, f: f, w: bufio.NewWriterSize(f, 256)}, nil
}

func (c *covStream) record(kind byte, start, end int64) {
	if c == nil || end < start {
		return
	}
	fmt.Fprintf(c.w, "%c %s %s %d %d\n", kind, c.id, c.space, start, end)
	c.w.Flush() // one write(2): in the page cache, it survives a killed server
}

// claim is called before bytes [start, start+n) are written.
func (c *covStream) claim(start, n int64) { c.record('C', start, start+n) }

// sent is called after they were: n is what the writer took.
func (c *covStream) sent(start, n int64) { c.record('S', start, start+n) }

func (c *covStream) close() {
	if c == nil {
		return
	}
	c.w.Flush()
	c.f.Close()
	c.b.mu.Lock()
	if c.b.active[c.action]--; c.b.active[c.action] <= 0 {
		delete(c.b.active, c.action)
	}
	c.b.mu.Unlock()
}

// interval is a byte range [a, b) of a stream space.
type interval struct{ a, b int64 }

// read parses action's book into what each space shows as streamed: the
// recorded sends, and the claims a dead server instance never followed up.
func (b *coverageBook) read(action string) (map[string][]interval, error) {
	f, err := os.Open(b.path(action))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("coverage: %w", err)
	}
	defer f.Close()
	type claim struct {
		space string
		iv    interval
	}
	sent := map[string][]interval{}
	last := map[string]claim{} // stream -> its last claim not yet followed up
	var order []string         // streams with a pending claim
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) != 5 {
			continue
		}
		st, err1 := strconv.ParseInt(fs[3], 10, 64)
		en, err2 := strconv.ParseInt(fs[4], 10, 64)
		if err1 != nil || err2 != nil || st < 0 || en < st {
			continue
		}
		switch fs[0] {
		case "C":
			if _, ok := last[fs[1]]; !ok {
				order = append(order, fs[1])
			}
			last[fs[1]] = claim{fs[2], interval{st, en}}
		case "S":
			delete(last, fs[1])
			sent[fs[2]] = append(sent[fs[2]], interval{st, en})
		}
	}
	for _, id := range order {
		c, ok := last[id]
		if ok && !strings.HasPrefix(id, b.instance+"/") {
			sent[c.space] = append(sent[c.space], c.iv) // the server died writing it
		}
	}
	return sent, sc.Err()
}

// coveredBytes is how many bytes of [0, size) the intervals cover.
func coveredBytes(ivs []interval, size int64) int64 {
	ivs = slices.Clone(ivs)
	slices.SortFunc(ivs, func(x, y interval) int { return cmp.Compare(x.a, y.a) })
	var total, reach int64
	for _, x := range ivs {
		a, e := max(x.a, reach), min(x.b, size)
		if e > a {
			total += e - a
			reach = e
		}
	}
	return total
}

// complete reports whether the whole image went out, in any space: the
// raw stream, a passed-through .zst, or a sparse stream (whose length is
// in its space's name).
func (b *coverageBook) complete(action string, rawSize, zstSize int64) (bool, int64, error) {
	sent, err := b.read(action)
	raw := coveredBytes(sent[spaceRaw], rawSize)
	switch {
	case err != nil:
		return false, raw, err
	case raw >= rawSize:
		return true, raw, nil
	case zstSize > 0 && coveredBytes(sent[spaceZst], zstSize) >= zstSize:
		return true, raw, nil
	}
	for space, ivs := range sent {
		n, ok := strings.CutPrefix(space, sparsePrefix)
		if !ok {
			continue
		}
		if wire, err := strconv.ParseInt(n, 10, 64); err == nil && wire > 0 && coveredBytes(ivs, wire) >= wire {
			return true, rawSize, nil // the whole image, holes included, went out
		}
	}
	return false, raw, nil
}

// settle waits (at most d) until no stream of action is in flight, so a
// client that reports right after its last byte does not race the
// server's record of that byte.
func (b *coverageBook) settle(action string, d time.Duration) {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		b.mu.Lock()
		n := b.active[action]
		b.mu.Unlock()
		if n == 0 {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// remove drops an action's book (the action is closed).
func (b *coverageBook) remove(action string) {
	os.Remove(b.path(action))
}
