package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// writeJSON writes v as indented JSON followed by a newline.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// eachMAC applies fn to every MAC, then reports the results that worked (a
// JSON array, or one line each from line) before it returns the failures,
// joined and prefixed with step. One bad board does not hide the others.
func eachMAC[T any](macs []string, asJSON bool, out io.Writer, step string, fn func(mac string) (T, error), line func(T) string) error {
	res := []T{}
	var errs []error
	for _, m := range macs {
		r, err := fn(m)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", m, err))
			continue
		}
		res = append(res, r)
	}
	if asJSON {
		if err := writeJSON(out, res); err != nil {
			return err
		}
	} else {
		for _, r := range res {
			fmt.Fprintln(out, line(r))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%s: %w", step, errors.Join(errs...))
	}
	return nil
}
