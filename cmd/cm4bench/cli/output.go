package cli

// Everything the commands use to talk to the technician: JSON for scripts,
// text helpers for tables, progress bars for long work, and the logger of
// the servers. Commands print nothing through any other path.

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"
)

// wantJSON reports whether the persistent --json flag was given.
func wantJSON(cmd *cobra.Command) bool {
	v, _ := cmd.Flags().GetBool("json")
	return v
}

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

// newLogger builds the one slog handler of the process, writing to stderr.
// Servers log JSON when --json is set and text otherwise.
func newLogger(cmd *cobra.Command) *slog.Logger {
	var lvl slog.Level
	name, _ := cmd.Flags().GetString("log-level")
	if err := lvl.UnmarshalText([]byte(name)); err != nil {
		lvl = slog.LevelInfo
	}
	hopts := &slog.HandlerOptions{Level: lvl}
	if wantJSON(cmd) {
		return slog.New(slog.NewJSONHandler(cmd.ErrOrStderr(), hopts))
	}
	return slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), hopts))
}

// ---- text ----

// or returns s, or fallback when s is empty ("-" in tables, "(server
// default)" for an unset image, ...).
func or(s, fallback string) string {
	if s == "" {
		return fallback
	}
	return s
}

// clip shortens s to n runes with an ellipsis, so one long error cannot
// break a table (the full text is in --json and "device show").
func clip(s string, n int) string {
	r := []rune(strings.Join(strings.Fields(s), " "))
	if len(r) <= n {
		return string(r)
	}
	return string(r[:n-1]) + "…"
}

// onOffText is a switch in words.
func onOffText(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

// yesNo is a yes/no answer in words.
func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// ago says how long ago t was, to the second ("never" for zero).
func ago(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return time.Since(t).Round(time.Second).String() + " ago"
}

// prefixWriter prefixes every line written to w.
func prefixWriter(w io.Writer, prefix string) io.Writer {
	return &linePrefixer{w: w, prefix: prefix, bol: true}
}

type linePrefixer struct {
	mu     sync.Mutex
	w      io.Writer
	prefix string
	bol    bool
}

func (l *linePrefixer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var b []byte
	for _, c := range p {
		if l.bol {
			b = append(b, l.prefix...)
			l.bol = false
		}
		b = append(b, c)
		if c == '\n' {
			l.bol = true
		}
	}
	if _, err := l.w.Write(b); err != nil {
		return 0, err
	}
	return len(p), nil
}

// ---- progress ----

// isTerminal reports whether w is a terminal: progress bars go only there.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// showProgress: progress bars go to stderr, only when it is a terminal and
// --json is off.
func showProgress(cmd *cobra.Command) bool {
	return !wantJSON(cmd) && isTerminal(cmd.ErrOrStderr())
}

// byteBar is a progress bar of total bytes (-1: unknown) on w, described by
// desc; more options (throttle, completion) may follow.
func byteBar(w io.Writer, total int64, desc string, more ...progressbar.Option) *progressbar.ProgressBar {
	opts := append([]progressbar.Option{progressbar.OptionSetWriter(w), progressbar.OptionShowBytes(true),
		progressbar.OptionSetDescription(desc)}, more...)
	return progressbar.NewOptions64(total, opts...)
}
