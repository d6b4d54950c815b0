package recipe

import (
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/cm4bench/cm4bench/internal/contract"
)

// Limits on what Resolve reads.
const (
	maxCSVRows      = 1 << 20
	maxPoolDirFiles = 100000
	maxPoolFile     = 256 << 10
)

// Resolve reads each pool's csv: FILE into its values and dir: FOLDER into
// its files, relative to base (the YAML file's folder), and clears the
// names. The CLI calls it; the server refuses pools that still name files.
func Resolve(rs []Recipe, base string) error {
	for i := range rs {
		for j := range rs[i].Pools {
			p := &rs[i].Pools[j]
			if p.CSV != "" {
				vals, err := readCSV(filepath.Join(base, p.CSV), p.Column)
				if err != nil {
					return fmt.Errorf("recipe %s, pool %s: %w", rs[i].Name, p.Name, err)
				}
				p.Values, p.CSV, p.Column = append(p.Values, vals...), "", ""
			}
			if p.Dir != "" {
				files, err := readPoolDir(filepath.Join(base, p.Dir))
				if err != nil {
					return fmt.Errorf("recipe %s, pool %s: %w", rs[i].Name, p.Name, err)
				}
				p.Files, p.Dir = files, ""
			}
			if err := p.Check(); err != nil {
				return fmt.Errorf("recipe %s: %w", rs[i].Name, err)
			}
		}
	}
	return nil
}

// readCSV reads one column of an RFC 4180 file with a header row.
func readCSV(path, column string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r := csv.NewReader(f)
	r.FieldsPerRecord = -1
	head, err := r.Read()
	if err != nil {
		return nil, fmt.Errorf("%s: no header row: %w", path, err)
	}
	col := 0
	if column != "" {
		col = -1
		for i, h := range head {
			if strings.EqualFold(strings.TrimSpace(h), column) {
				col = i
			}
		}
		if col < 0 {
			return nil, fmt.Errorf("%s: no column %q in the header %q", path, column, strings.Join(head, ","))
		}
	}
	var out []string
	for line := 2; ; line++ {
		rec, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if col >= len(rec) {
			return nil, fmt.Errorf("%s line %d: no column %d", path, line, col+1)
		}
		if v := strings.TrimSpace(rec[col]); v != "" {
			out = append(out, v)
		}
		if len(out) > maxCSVRows {
			return nil, fmt.Errorf("%s: more than %d rows", path, maxCSVRows)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no values under the header", path)
	}
	return out, nil
}

// readPoolDir reads a folder of per-board files named by serial
// (10000abc.pem, 10000abc.txt or just 10000abc).
func readPoolDir(dir string) (map[string]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	if len(ents) > maxPoolDirFiles {
		return nil, fmt.Errorf("%s: more than %d files", dir, maxPoolDirFiles)
	}
	out := map[string]string{}
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue
		}
		key := strings.ToLower(strings.SplitN(e.Name(), ".", 2)[0])
		if !contract.LooksLikeSerial(key) {
			return nil, fmt.Errorf("%s: %s is not named by a board serial (8 or 16 hex digits, like 10000abc.pem)", dir, e.Name())
		}
		if _, dup := out[key]; dup {
			return nil, fmt.Errorf("%s: two files for serial %s", dir, key)
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, err
		}
		if len(b) > maxPoolFile {
			return nil, fmt.Errorf("%s: %s is larger than %d bytes", dir, e.Name(), maxPoolFile)
		}
		out[key] = string(b)
	}
	return out, nil
}
