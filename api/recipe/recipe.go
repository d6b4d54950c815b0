// Package recipe is the production line's vocabulary: recipes (what a
// board gets), pools (per-device values handed out once) and rules (which
// boards get which recipe, with or without a click). It parses and checks
// their YAML form, renders a recipe's per-device files, and matches a
// board's facts against the rules. It stores nothing: api/store keeps the
// versions and the allocations, the api package wires them to boards.
package recipe

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/cm4bench/cm4bench/api/label"
	"github.com/cm4bench/cm4bench/internal/contract"
	"github.com/cm4bench/cm4bench/netboot/bootfs"
)

// Recipe is a named bundle: an image pinned by sha256, the bootloader and
// eMMC facts a board must have, the per-device files, the verify policy and
// what the board does after success. Version is given by the store: a
// recipe used by a board never changes, an edit makes a new version.
type Recipe struct {
	Name     string   `yaml:"name" json:"name"`
	Version  int      `yaml:"version,omitempty" json:"version"`
	Image    string   `yaml:"image" json:"image"`
	SHA256   string   `yaml:"sha256" json:"sha256"`
	Requires Requires `yaml:"requires,omitempty" json:"requires"`
	Verify   string   `yaml:"verify,omitempty" json:"verify,omitempty"` // contract.Verify* ("" = readback)
	After    string   `yaml:"after,omitempty" json:"after,omitempty"`   // contract.After* ("" = reboot)
	Files    []File   `yaml:"files,omitempty" json:"files,omitempty"`
	Pools    []Pool   `yaml:"pools,omitempty" json:"pools,omitempty"`
	// Label is printed for each board the recipe provisions (api/label).
	Label *label.Spec `yaml:"label,omitempty" json:"label,omitempty"`
}

// Info is a recipe with the state of its pools (GET /api/v1/recipes).
type Info struct {
	Recipe
	PoolStates []contract.PoolState `json:"pool_states"`
}

// Requires are facts checked before anything is written. The eMMC must
// always hold the image; these add to that.
type Requires struct {
	// MinBootloader is the oldest bootloader build date accepted
	// (YYYY-MM-DD); a board that does not report its build date is refused.
	MinBootloader string `yaml:"min_bootloader,omitempty" json:"min_bootloader,omitempty"`
	// MinEMMC is the smallest eMMC accepted, e.g. "16GB" or "8GiB".
	MinEMMC string `yaml:"min_emmc,omitempty" json:"min_emmc,omitempty"`
	// Model must appear in the board's model string, e.g. "Compute Module 4".
	Model string `yaml:"model,omitempty" json:"model,omitempty"`
	// Locked requires a board in secure-boot mode: its bootloader reports
	// the customer key hash in OTP (cm4bench secure-boot provision).
	Locked bool `yaml:"locked,omitempty" json:"locked,omitempty"`
}

// File is one per-device file written into the boot partition's root.
type File struct {
	Path     string `yaml:"path" json:"path"`
	Template string `yaml:"template" json:"template"`
}

// Pool kinds.
const (
	PoolCounter = "counter" // Start, Start+1, ... formatted with Format
	PoolList    = "list"    // Values, each given once (a CSV of serials or MACs)
	PoolFiles   = "files"   // Files keyed by the board's serial (certificates)
)

// What happens to a failed board's value.
const (
	OnFailureReturn = "return" // back into the pool for the next board
	OnFailureRetire = "retire" // never given again (printed labels, registered MACs)
)

// Pool hands out per-device values. Pools belong to a recipe name, not a
// version: a new version goes on counting where the last one stopped.
type Pool struct {
	Name      string            `yaml:"name" json:"name"`
	Kind      string            `yaml:"kind" json:"kind"`
	Format    string            `yaml:"format,omitempty" json:"format,omitempty"` // counter: fmt verb for the number, e.g. "line-a-%04d"
	Start     int64             `yaml:"start,omitempty" json:"start,omitempty"`   // counter: first number
	Values    []string          `yaml:"values,omitempty" json:"values,omitempty"` // list
	Files     map[string]string `yaml:"files,omitempty" json:"files,omitempty"`   // files: serial -> content
	OnFailure string            `yaml:"on_failure,omitempty" json:"on_failure,omitempty"`
	// CSV (a list pool) and Dir (a files pool) name a file or folder next
	// to the YAML file; `cm4bench recipe apply` reads them into Values and
	// Files (Resolve) before sending, so the server never reads client paths.
	CSV    string `yaml:"csv,omitempty" json:"csv,omitempty"`
	Column string `yaml:"column,omitempty" json:"column,omitempty"` // CSV column by header name (default: the first)
	Dir    string `yaml:"dir,omitempty" json:"dir,omitempty"`
}

// Unresolved reports whether a pool still names a CSV file or a folder.
func (p *Pool) Unresolved() bool { return p.CSV != "" || p.Dir != "" }

// Rule modes.
const (
	ModeAuto = "auto" // start the moment the board registers (when the bench is armed)
	ModeAsk  = "ask"  // the technician confirms on the card
)

// Rule picks a recipe for the boards its conditions match. Every condition
// given must hold; a rule with none matches every board.
type Rule struct {
	Name   string `yaml:"name" json:"name"`
	Match  Match  `yaml:"match,omitempty" json:"match"`
	Recipe string `yaml:"recipe" json:"recipe"`
	Mode   string `yaml:"mode" json:"mode"`
}

// Match holds a rule's conditions.
type Match struct {
	Model         string `yaml:"model,omitempty" json:"model,omitempty"`                   // substring of the model, any case
	Revision      string `yaml:"revision,omitempty" json:"revision,omitempty"`             // revision code, e.g. c03141
	SerialFrom    string `yaml:"serial_from,omitempty" json:"serial_from,omitempty"`       // hex, inclusive
	SerialTo      string `yaml:"serial_to,omitempty" json:"serial_to,omitempty"`           // hex, inclusive
	SerialPattern string `yaml:"serial_pattern,omitempty" json:"serial_pattern,omitempty"` // regular expression on the 8-digit serial
	MACPrefix     string `yaml:"mac_prefix,omitempty" json:"mac_prefix,omitempty"`         // e.g. dc:a6:32:0a
	EMMCMin       string `yaml:"emmc_min,omitempty" json:"emmc_min,omitempty"`             // e.g. 16GB
	EMMCMax       string `yaml:"emmc_max,omitempty" json:"emmc_max,omitempty"`
	MinBootloader string `yaml:"min_bootloader,omitempty" json:"min_bootloader,omitempty"` // YYYY-MM-DD
}

// RuleSet is the ordered rule list, as a YAML file holds it.
type RuleSet struct {
	Rules []Rule `yaml:"rules" json:"rules"`
}

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// CheckName refuses a recipe, pool or rule name that is not 1-63 of
// a-z 0-9 . _ - (so it is safe in URLs, files and logs).
func CheckName(what, n string) error {
	if !nameRE.MatchString(n) {
		return fmt.Errorf("%s name %q: use 1-63 of a-z, 0-9, '.', '_', '-', starting with a letter or digit", what, n)
	}
	return nil
}

// ParseRecipes reads one or more recipes (YAML documents separated by
// ---). Unknown keys are errors.
func ParseRecipes(r io.Reader) ([]Recipe, error) {
	var out []Recipe
	dec := yaml.NewDecoder(r)
	dec.KnownFields(true)
	for {
		var rc Recipe
		err := dec.Decode(&rc)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("recipe: YAML document %d: %w", len(out)+1, err)
		}
		if err := rc.Check(); err != nil {
			return nil, err
		}
		out = append(out, rc)
	}
	if len(out) == 0 {
		return nil, errors.New("recipe: the file holds no recipe")
	}
	return out, nil
}

// ParseRules reads a rule list. Unknown keys are errors.
func ParseRules(r io.Reader) (RuleSet, error) {
	var rs RuleSet
	dec := yaml.NewDecoder(r)
	dec.KnownFields(true)
	if err := dec.Decode(&rs); err != nil && !errors.Is(err, io.EOF) {
		return RuleSet{}, fmt.Errorf("rules: %w", err)
	}
	return rs, rs.Check()
}

// MarshalRecipes writes recipes as YAML documents (what ParseRecipes reads).
func MarshalRecipes(rs []Recipe) ([]byte, error) {
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	for _, r := range rs {
		if err := enc.Encode(r); err != nil {
			return nil, err
		}
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// MarshalRules writes a rule list as YAML.
func MarshalRules(rs RuleSet) ([]byte, error) {
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(rs); err != nil {
		return nil, err
	}
	return b.Bytes(), enc.Close()
}

// Check validates a recipe on its own: names, policies, pools, file names,
// and that every template renders for a sample board with sample values.
// (That the image exists with this sha256 is the server's check.)
func (r *Recipe) Check() error {
	wrap := func(err error) error { return fmt.Errorf("recipe %q: %w", r.Name, err) }
	if err := CheckName("recipe", r.Name); err != nil {
		return wrap(err)
	}
	if r.Image == "" {
		return wrap(errors.New("no image"))
	}
	if !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(r.SHA256) {
		return wrap(fmt.Errorf("sha256 %q: want the image's 64 lower-case hex digits (cm4bench image list shows it)", r.SHA256))
	}
	switch r.Verify {
	case "", contract.VerifyReadback, contract.VerifyStream:
	default:
		return wrap(fmt.Errorf("verify %q: want readback or stream", r.Verify))
	}
	switch r.After {
	case "", contract.AfterReboot, contract.AfterPowerOff, contract.AfterHold:
	default:
		return wrap(fmt.Errorf("after %q: want reboot, poweroff or hold", r.After))
	}
	if r.Requires.MinBootloader != "" {
		if _, err := parseDate(r.Requires.MinBootloader); err != nil {
			return wrap(fmt.Errorf("requires.min_bootloader: %w", err))
		}
	}
	if r.Requires.MinEMMC != "" {
		if _, err := ParseSize(r.Requires.MinEMMC); err != nil {
			return wrap(fmt.Errorf("requires.min_emmc: %w", err))
		}
	}
	seen := map[string]bool{}
	for _, p := range r.Pools {
		if err := p.Check(); err != nil {
			return wrap(err)
		}
		if seen[p.Name] {
			return wrap(fmt.Errorf("pool %q defined twice", p.Name))
		}
		seen[p.Name] = true
	}
	if len(r.Files) > bootfs.MaxFiles {
		return wrap(fmt.Errorf("%d files, at most %d", len(r.Files), bootfs.MaxFiles))
	}
	paths := map[string]bool{}
	for _, f := range r.Files {
		if err := bootfs.CheckPath(f.Path); err != nil {
			return wrap(err)
		}
		if paths[strings.ToLower(f.Path)] {
			return wrap(fmt.Errorf("file %q given twice (FAT names ignore case)", f.Path))
		}
		paths[strings.ToLower(f.Path)] = true
	}
	if _, err := r.Render(SampleBoard(), &sampleValues{r: r}); err != nil {
		return wrap(err)
	}
	if r.Label != nil {
		if err := r.Label.Check(); err != nil {
			return wrap(err)
		}
	}
	return nil
}

// Check validates a pool definition.
func (p *Pool) Check() error {
	if err := CheckName("pool", p.Name); err != nil {
		return err
	}
	switch p.OnFailure {
	case "", OnFailureReturn, OnFailureRetire:
	default:
		return fmt.Errorf("pool %q: on_failure %q: want return or retire", p.Name, p.OnFailure)
	}
	switch p.Kind {
	case PoolCounter:
		if p.Unresolved() {
			return fmt.Errorf("pool %q: a counter takes no csv or dir", p.Name)
		}
		if p.Format == "" {
			p.Format = "%d"
		}
		if strings.Count(p.Format, "%")-2*strings.Count(p.Format, "%%") != 1 || len(p.Values)+len(p.Files) > 0 {
			return fmt.Errorf("pool %q: a counter takes a format with one number verb, like \"line-a-%%04d\", and no values", p.Name)
		}
		if s := fmt.Sprintf(p.Format, p.Start); strings.Contains(s, "%!") {
			return fmt.Errorf("pool %q: format %q does not format a number: %s", p.Name, p.Format, s)
		}
	case PoolList:
		if len(p.Files) > 0 || p.Format != "" || p.Dir != "" {
			return fmt.Errorf("pool %q: a list takes values (or csv: FILE) only", p.Name)
		}
		seen := map[string]bool{}
		for _, v := range p.Values {
			if v == "" || seen[v] {
				return fmt.Errorf("pool %q: value %q is empty or given twice", p.Name, v)
			}
			seen[v] = true
		}
	case PoolFiles:
		if len(p.Values) > 0 || p.Format != "" || p.CSV != "" {
			return fmt.Errorf("pool %q: a files pool takes files keyed by serial (or dir: FOLDER) only", p.Name)
		}
		for k := range p.Files {
			if !contract.LooksLikeSerial(k) {
				return fmt.Errorf("pool %q: key %q is not a board serial (8 or 16 hex digits)", p.Name, k)
			}
		}
	default:
		return fmt.Errorf("pool %q: kind %q: want counter, list or files", p.Name, p.Kind)
	}
	return nil
}

// Check validates the rule list: names unique, modes known, conditions
// parse. Which recipes exist is the server's check.
func (rs RuleSet) Check() error {
	seen := map[string]bool{}
	for i, r := range rs.Rules {
		if err := CheckName("rule", r.Name); err != nil {
			return fmt.Errorf("rule %d: %w", i+1, err)
		}
		if seen[r.Name] {
			return fmt.Errorf("rule %q given twice", r.Name)
		}
		seen[r.Name] = true
		if err := CheckName("recipe", r.Recipe); err != nil {
			return fmt.Errorf("rule %q: %w", r.Name, err)
		}
		if r.Mode != ModeAuto && r.Mode != ModeAsk {
			return fmt.Errorf("rule %q: mode %q: want auto or ask", r.Name, r.Mode)
		}
		if _, err := r.Match.compile(); err != nil {
			return fmt.Errorf("rule %q: %w", r.Name, err)
		}
	}
	return nil
}
