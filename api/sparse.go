package api

import (
	"context"
	"fmt"
	"os"
	"slices"
	"sync"

	"github.com/cm4bench/cm4bench/internal/sparseimg"
)

// maxSparseMaps bounds the cached image maps (a few KiB each, but images
// come and go all day).
const maxSparseMaps = 8

// sparseMaps caches the data extents of raw images for the sparse image
// stream, by file (path, size, modification time and sha256): the first
// board's request maps the image (holes skipped with SEEK_DATA, the rest
// read once), the boards after it share the map.
type sparseMaps struct {
	mu    sync.Mutex
	m     map[string]*sparseMap
	order []string // oldest first
}

type sparseMap struct {
	once sync.Once
	ext  []sparseimg.Extent
	err  error
}

// get returns the map of the raw image f of size bytes, cached under key.
func (c *sparseMaps) get(ctx context.Context, key string, f *os.File, size int64) ([]sparseimg.Extent, error) {
	c.mu.Lock()
	if c.m == nil {
		c.m = map[string]*sparseMap{}
	}
	e := c.m[key]
	if e == nil {
		e = &sparseMap{}
		c.m[key] = e
		c.order = append(c.order, key)
		if len(c.order) > maxSparseMaps {
			delete(c.m, c.order[0])
			c.order = c.order[1:]
		}
	}
	c.mu.Unlock()
	// The map outlives this request: a board that hangs up must not leave
	// a cancelled map to the next one.
	e.once.Do(func() { e.ext, e.err = sparseimg.Map(context.WithoutCancel(ctx), f, size) })
	if e.err != nil {
		c.mu.Lock()
		if c.m[key] == e { // the next request tries again
			delete(c.m, key)
			c.order = slices.DeleteFunc(c.order, func(k string) bool { return k == key })
		}
		c.mu.Unlock()
		return nil, fmt.Errorf("map image: %w", e.err)
	}
	return e.ext, nil
}
