package recipe

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"text/template"

	"github.com/cm4bench/cm4bench/internal/contract"
	"github.com/cm4bench/cm4bench/netboot/bootfs"
)

// Board is what a template sees of the board.
type Board struct {
	Serial    string   // 8 hex digits
	MAC       string   // the MAC it netbooted with
	MACs      []string // every Ethernet MAC
	Model     string
	Revision  string
	CID       string // eMMC CID
	EMMCBytes int64
	Recipe    string
	Version   int
}

// BoardFrom makes the template data of a registered board.
func BoardFrom(mac string, f *contract.Facts) Board {
	b := Board{MAC: mac}
	if f != nil {
		b.Serial, b.MACs, b.Model, b.Revision, b.CID, b.EMMCBytes = f.Serial, f.MACs, f.Model, f.Revision, f.EMMCCID, f.EMMCBytes
	}
	if len(b.MACs) == 0 {
		b.MACs = []string{mac}
	}
	return b
}

// SampleBoard is the board a recipe is test-rendered with when applied.
func SampleBoard() Board {
	return Board{Serial: "10000abc", MAC: "dc:a6:32:00:00:01", MACs: []string{"dc:a6:32:00:00:01"},
		Model: "Raspberry Pi Compute Module 4 Rev 1.1", Revision: "c03141", CID: "150100424a54443452077a1f4cd4c300", EMMCBytes: 32 << 30}
}

// Values hands out pool values while a recipe renders: Next gives the
// next value of a counter or list pool, Keyed the value of a files pool
// for a key (the board's serial). The store's allocator makes each value
// this board's, once.
type Values interface {
	Next(pool string) (string, error)
	Keyed(pool, key string) (string, error)
}

// Render renders the recipe's files for one board. A pool used twice in
// the files gives the same value both times. Any error (a template that
// does not parse or execute, a missing key, a dry pool) renders nothing.
func (r *Recipe) Render(b Board, v Values) ([]contract.CustomFile, error) {
	b.Recipe, b.Version = r.Name, r.Version
	pools := map[string]Pool{}
	for _, p := range r.Pools {
		pools[p.Name] = p
	}
	got := map[string]string{}
	pool := func(name string) (string, error) {
		p, ok := pools[name]
		if !ok {
			return "", fmt.Errorf("no pool %q in the recipe", name)
		}
		if val, ok := got[name]; ok {
			return val, nil
		}
		var val string
		var err error
		if p.Kind == PoolFiles {
			if b.Serial == "" {
				return "", fmt.Errorf("pool %q is keyed by serial and the board reported none", name)
			}
			val, err = v.Keyed(name, b.Serial)
		} else {
			val, err = v.Next(name)
		}
		if err != nil {
			return "", err
		}
		got[name] = val
		return val, nil
	}
	funcs := template.FuncMap{
		"pool":  pool,
		"upper": strings.ToUpper,
		"lower": strings.ToLower,
		"trim":  strings.TrimSpace,
		"join":  strings.Join,
	}
	out := make([]contract.CustomFile, 0, len(r.Files))
	for _, f := range r.Files {
		t, err := template.New(f.Path).Funcs(funcs).Option("missingkey=error").Parse(f.Template)
		if err != nil {
			return nil, fmt.Errorf("file %s: the template does not parse: %w", f.Path, err)
		}
		var buf bytes.Buffer
		if err := t.Execute(&buf, b); err != nil {
			return nil, fmt.Errorf("file %s: the template does not render: %w", f.Path, err)
		}
		if buf.Len() > bootfs.MaxFileBytes {
			return nil, fmt.Errorf("file %s: renders to %d bytes, at most %d", f.Path, buf.Len(), bootfs.MaxFileBytes)
		}
		sum := sha256.Sum256(buf.Bytes())
		out = append(out, contract.CustomFile{Path: f.Path, Data: buf.Bytes(), SHA256: hex.EncodeToString(sum[:])})
	}
	return out, nil
}

// sampleValues stands in for the store when a recipe is checked: the first
// value of each pool, without allocating anything.
type sampleValues struct{ r *Recipe }

func (s *sampleValues) pool(name string) (Pool, error) {
	for _, p := range s.r.Pools {
		if p.Name == name {
			return p, nil
		}
	}
	return Pool{}, fmt.Errorf("no pool %q in the recipe", name)
}

func (s *sampleValues) Next(name string) (string, error) {
	p, err := s.pool(name)
	if err != nil {
		return "", err
	}
	switch p.Kind {
	case PoolCounter:
		return fmt.Sprintf(p.Format, p.Start), nil
	case PoolList:
		if len(p.Values) > 0 {
			return p.Values[0], nil
		}
		return "SAMPLE", nil
	}
	return "", fmt.Errorf("pool %q is a %s pool", name, p.Kind)
}

func (s *sampleValues) Keyed(name, key string) (string, error) {
	if _, err := s.pool(name); err != nil {
		return "", err
	}
	return "SAMPLE FILE FOR " + key, nil
}
