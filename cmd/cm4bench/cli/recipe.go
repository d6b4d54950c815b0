package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/cm4bench/cm4bench/api/recipe"
	"github.com/cm4bench/cm4bench/internal/atomicfile"
	"github.com/cm4bench/cm4bench/internal/contract"
)

func newRecipeCmd() *cobra.Command {
	o := &apiOptions{}
	cmd := &cobra.Command{
		Use:   "recipe",
		Short: "Apply, list and export recipes: what a production board gets",
		Long: `A recipe is a named, versioned bundle kept by the running server:
  - the image, pinned by its sha256;
  - what a board must have before anything is written (requires: min_emmc, min_bootloader, model);
  - per-device files rendered from templates into the image's FAT boot partition after the image
    is written and verified (cloud-init user-data, meta-data, network-config, firstrun.sh, a serial
    number, a certificate), with values from pools handed out once per board;
  - the verify policy (readback, the default, or stream) and what the board does after success
    (reboot into the eMMC, poweroff or hold).

Recipes round-trip as YAML, so a factory keeps them in git: ` + "`recipe apply -f`" + ` then
` + "`recipe export`" + ` gives the same file back. A recipe used by a board never changes: applying an
edited one makes a new version, and each board's record names the version it got.

Templates are Go text/template. A template sees .Serial .MAC .MACs .Model .Revision .CID .EMMCBytes
.Recipe .Version, and {{ pool "NAME" }} gives the board its value of a pool (the same value each time
within one board's files). Pools:
  counter   format: "line-a-%04d", start: 1        numbers, never reused once used
  list      values: [...] or csv: FILE, column: NAME   each value once (serial numbers, MACs)
  files     files: {SERIAL: ...} or dir: FOLDER      keyed by the board's serial (certificates)
on_failure: return (the default: a failed board's value goes back) or retire (never given again).

Which boards get which recipe is decided by ` + "`cm4bench rule`" + `.`,
		Example: `  cm4bench recipe apply -f line-a.yaml
  cm4bench recipe list
  cm4bench recipe show line-a --version 2
  cm4bench recipe export line-a > line-a.yaml
  cm4bench recipe values line-a          # which board got which serial and hostname
  cm4bench device deploy dc:a6:32:01:02:03 --recipe line-a`,
	}
	o.bind(cmd)
	cmd.AddCommand(newRecipeApplyCmd(o), newRecipeListCmd(o), newRecipeShowCmd(o), newRecipeExportCmd(o), newRecipeValuesCmd(o))
	return cmd
}

type recipeApplyOptions struct {
	api   *apiOptions
	files []string
}

func newRecipeApplyCmd(a *apiOptions) *cobra.Command {
	o := &recipeApplyOptions{api: a}
	cmd := &cobra.Command{
		Use:   "apply -f FILE...",
		Short: "Apply recipes from YAML files (checked completely before anything is stored)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(o.files) == 0 {
				return &ExitError{Code: 2, Err: errors.New("recipe apply: name the YAML file with -f FILE")}
			}
			return o.run(cmd.Context(), wantJSON(cmd), cmd.OutOrStdout())
		},
	}
	cmd.Flags().StringArrayVarP(&o.files, "file", "f", nil, "recipe YAML `FILE` (repeatable; - for stdin); csv: and dir: pools are read relative to it")
	return cmd
}

func (o *recipeApplyOptions) run(ctx context.Context, asJSON bool, out io.Writer) error {
	var all []recipe.Recipe
	for _, f := range o.files {
		rs, err := readRecipeFile(f)
		if err != nil {
			return err
		}
		all = append(all, rs...)
	}
	body, err := recipe.MarshalRecipes(all)
	if err != nil {
		return err
	}
	c, err := o.api.client()
	if err != nil {
		return err
	}
	res, err := c.ApplyRecipes(ctx, body)
	if err != nil {
		return fmt.Errorf("recipe apply: %w", err)
	}
	if asJSON {
		return writeJSON(out, res)
	}
	for _, r := range res {
		what := "unchanged"
		if r.Changed {
			what = "applied"
		}
		fmt.Fprintf(out, "%s v%d %s\n", r.Name, r.Version, what)
	}
	return nil
}

// readRecipeFile parses a recipe file and reads its csv: and dir: pools.
func readRecipeFile(name string) ([]recipe.Recipe, error) {
	var data []byte
	var err error
	base := "."
	if name == "-" {
		data, err = io.ReadAll(io.LimitReader(os.Stdin, 64<<20))
	} else {
		data, err = os.ReadFile(name)
		base = filepath.Dir(name)
	}
	if err != nil {
		return nil, fmt.Errorf("recipe apply: %w", err)
	}
	rs, err := recipe.ParseRecipes(bytes.NewReader(data))
	if err != nil {
		return nil, &ExitError{Code: 2, Err: fmt.Errorf("recipe apply: %s: %w", name, err)}
	}
	if err := recipe.Resolve(rs, base); err != nil {
		return nil, &ExitError{Code: 2, Err: fmt.Errorf("recipe apply: %s: %w", name, err)}
	}
	return rs, nil
}

type recipeListOptions struct{ api *apiOptions }

func newRecipeListCmd(a *apiOptions) *cobra.Command {
	o := &recipeListOptions{api: a}
	return &cobra.Command{
		Use:   "list",
		Short: "List recipes (latest versions) and how much is left in their pools",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.run(cmd.Context(), wantJSON(cmd), cmd.OutOrStdout())
		},
	}
}

func (o *recipeListOptions) run(ctx context.Context, asJSON bool, out io.Writer) error {
	c, err := o.api.client()
	if err != nil {
		return err
	}
	rs, err := c.Recipes(ctx)
	if err != nil {
		return fmt.Errorf("recipe list: %w", err)
	}
	if asJSON {
		return writeJSON(out, rs)
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tVERSION\tIMAGE\tFILES\tAFTER\tPOOLS")
	for _, r := range rs {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%s\t%s\n", r.Name, r.Version, r.Image, len(r.Files), or(r.After, contract.AfterReboot), poolSummary(r.PoolStates))
	}
	return tw.Flush()
}

// poolSummary is "serials 3 free 5 used, hostnames next 9".
func poolSummary(ps []contract.PoolState) string {
	var parts []string
	for _, p := range ps {
		var st []string
		for _, k := range []string{"free", "allocated", "used", "retired"} {
			if n := p.States[k]; n > 0 {
				st = append(st, fmt.Sprintf("%d %s", n, k))
			}
		}
		if p.Kind == recipe.PoolCounter {
			st = append(st, fmt.Sprintf("next %d", p.Next))
		}
		if p.Kind == recipe.PoolList && p.States["free"] == 0 {
			st = append(st, "EMPTY")
		}
		parts = append(parts, p.Pool+" "+strings.Join(st, " "))
	}
	return or(strings.Join(parts, ", "), "-")
}

type recipeShowOptions struct {
	api     *apiOptions
	version int
}

func newRecipeShowCmd(a *apiOptions) *cobra.Command {
	o := &recipeShowOptions{api: a}
	cmd := &cobra.Command{
		Use:   "show NAME",
		Short: "Show a recipe as YAML, with its pools' state as comments (--json: everything)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.run(cmd.Context(), args[0], wantJSON(cmd), cmd.OutOrStdout())
		},
	}
	cmd.Flags().IntVar(&o.version, "version", 0, "recipe version (default: the latest)")
	return cmd
}

func (o *recipeShowOptions) run(ctx context.Context, name string, asJSON bool, out io.Writer) error {
	c, err := o.api.client()
	if err != nil {
		return err
	}
	info, err := c.Recipe(ctx, name, o.version)
	if err != nil {
		return fmt.Errorf("recipe show: %w", err)
	}
	if asJSON {
		return writeJSON(out, info)
	}
	y, err := recipe.MarshalRecipes([]recipe.Recipe{info.Recipe})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "# pools: %s\n", poolSummary(info.PoolStates))
	_, err = out.Write(y)
	return err
}

type recipeExportOptions struct {
	api     *apiOptions
	version int
	out     string
}

func newRecipeExportCmd(a *apiOptions) *cobra.Command {
	o := &recipeExportOptions{api: a}
	cmd := &cobra.Command{
		Use:   "export [NAME]",
		Short: "Export recipes as YAML, as recipe apply reads them (no NAME: all)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := ""
			if len(args) == 1 {
				name = args[0]
			}
			return o.run(cmd.Context(), name, cmd.OutOrStdout())
		},
	}
	cmd.Flags().IntVar(&o.version, "version", 0, "recipe version (default: the latest)")
	cmd.Flags().StringVarP(&o.out, "output", "o", "", "write to `FILE` (atomically) instead of stdout")
	return cmd
}

func (o *recipeExportOptions) run(ctx context.Context, name string, out io.Writer) error {
	c, err := o.api.client()
	if err != nil {
		return err
	}
	y, err := c.RecipesYAML(ctx, name, o.version)
	if err != nil {
		return fmt.Errorf("recipe export: %w", err)
	}
	if o.out != "" {
		return atomicfile.WriteFile(o.out, y, 0o644)
	}
	_, err = out.Write(y)
	return err
}

type recipeValuesOptions struct{ api *apiOptions }

func newRecipeValuesCmd(a *apiOptions) *cobra.Command {
	o := &recipeValuesOptions{api: a}
	return &cobra.Command{
		Use:   "values NAME",
		Short: "Which board got which pool value of a recipe, and whether it was used, returned or retired",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.run(cmd.Context(), args[0], wantJSON(cmd), cmd.OutOrStdout())
		},
	}
}

func (o *recipeValuesOptions) run(ctx context.Context, name string, asJSON bool, out io.Writer) error {
	c, err := o.api.client()
	if err != nil {
		return err
	}
	rows, err := c.RecipeValues(ctx, name)
	if err != nil {
		return fmt.Errorf("recipe values: %w", err)
	}
	if asJSON {
		return writeJSON(out, rows)
	}
	sort.SliceStable(rows, func(i, j int) bool { return rows[i].Pool < rows[j].Pool })
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "POOL\tVALUE\tSTATE\tMAC\tACTION")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.Pool, r.Value, r.State, or(r.MAC, "-"), r.ActionID)
	}
	return tw.Flush()
}

func newRuleCmd() *cobra.Command {
	o := &apiOptions{}
	cmd := &cobra.Command{
		Use:   "rule",
		Short: "Zero-click rules: which boards get which recipe, and the bench's armed switch",
		Long: `Rules form an ordered list; the first rule whose conditions all hold for a board picks its
recipe. Conditions (all optional; a rule with none matches every board):
  model, revision                  the board's model (substring) and revision code
  serial_from, serial_to           a hex serial range, inclusive
  serial_pattern                   a regular expression on the 8-digit serial
  mac_prefix                       e.g. dc:a6:32:0a
  emmc_min, emmc_max               e.g. 16GB, 32GiB
  min_bootloader                   the oldest bootloader build date, e.g. 2024-04-15
A rule's mode is auto (the deploy starts the moment the board registers, if the bench is armed)
or ask (the card offers the recipe and the technician confirms). Nothing auto happens until
` + "`cm4bench rule arm`" + `; a board that matches no rule waits and its card says so.`,
		Example: `  cm4bench rule apply -f rules.yaml
  cm4bench rule list
  cm4bench rule export > rules.yaml
  cm4bench rule arm        # auto rules start deploys from now on
  cm4bench rule disarm`,
	}
	o.bind(cmd)
	cmd.AddCommand(newRuleApplyCmd(o), newRuleListCmd(o), newRuleExportCmd(o), newRuleArmCmd(o, true), newRuleArmCmd(o, false))
	return cmd
}

type ruleApplyOptions struct {
	api  *apiOptions
	file string
}

func newRuleApplyCmd(a *apiOptions) *cobra.Command {
	o := &ruleApplyOptions{api: a}
	cmd := &cobra.Command{
		Use:   "apply -f FILE",
		Short: "Replace the rule list from a YAML file",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.file == "" {
				return &ExitError{Code: 2, Err: errors.New("rule apply: name the YAML file with -f FILE")}
			}
			return o.run(cmd.Context(), wantJSON(cmd), cmd.OutOrStdout())
		},
	}
	cmd.Flags().StringVarP(&o.file, "file", "f", "", "rules YAML `FILE` (- for stdin)")
	return cmd
}

func (o *ruleApplyOptions) run(ctx context.Context, asJSON bool, out io.Writer) error {
	var data []byte
	var err error
	if o.file == "-" {
		data, err = io.ReadAll(io.LimitReader(os.Stdin, 8<<20))
	} else {
		data, err = os.ReadFile(o.file)
	}
	if err != nil {
		return fmt.Errorf("rule apply: %w", err)
	}
	if _, err := recipe.ParseRules(bytes.NewReader(data)); err != nil {
		return &ExitError{Code: 2, Err: fmt.Errorf("rule apply: %s: %w", o.file, err)}
	}
	c, err := o.api.client()
	if err != nil {
		return err
	}
	rs, err := c.ApplyRules(ctx, data)
	if err != nil {
		return fmt.Errorf("rule apply: %w", err)
	}
	if asJSON {
		return writeJSON(out, rs)
	}
	fmt.Fprintf(out, "%d rules applied\n", len(rs.Rules))
	return nil
}

type ruleListOptions struct{ api *apiOptions }

func newRuleListCmd(a *apiOptions) *cobra.Command {
	o := &ruleListOptions{api: a}
	return &cobra.Command{
		Use:   "list",
		Short: "List the rules in order, and whether the bench is armed",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.run(cmd.Context(), wantJSON(cmd), cmd.OutOrStdout())
		},
	}
}

func (o *ruleListOptions) run(ctx context.Context, asJSON bool, out io.Writer) error {
	c, err := o.api.client()
	if err != nil {
		return err
	}
	rs, err := c.Rules(ctx)
	if err != nil {
		return fmt.Errorf("rule list: %w", err)
	}
	armed, err := c.Armed(ctx)
	if err != nil {
		return fmt.Errorf("rule list: %w", err)
	}
	if asJSON {
		return writeJSON(out, map[string]any{"armed": armed, "rules": rs.Rules})
	}
	fmt.Fprintf(out, "bench %s\n", map[bool]string{true: "ARMED: auto rules start deploys", false: "not armed: auto rules wait (cm4bench rule arm)"}[armed])
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "#\tNAME\tMODE\tRECIPE\tCONDITIONS")
	for i, r := range rs.Rules {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\n", i+1, r.Name, r.Mode, r.Recipe, conditions(r.Match))
	}
	return tw.Flush()
}

func conditions(m recipe.Match) string {
	var c []string
	add := func(k, v string) {
		if v != "" {
			c = append(c, k+"="+v)
		}
	}
	add("model", m.Model)
	add("revision", m.Revision)
	add("serial_from", m.SerialFrom)
	add("serial_to", m.SerialTo)
	add("serial_pattern", m.SerialPattern)
	add("mac_prefix", m.MACPrefix)
	add("emmc_min", m.EMMCMin)
	add("emmc_max", m.EMMCMax)
	add("min_bootloader", m.MinBootloader)
	return or(strings.Join(c, " "), "every board")
}

type ruleExportOptions struct{ api *apiOptions }

func newRuleExportCmd(a *apiOptions) *cobra.Command {
	o := &ruleExportOptions{api: a}
	return &cobra.Command{
		Use:   "export",
		Short: "Export the rule list as YAML, as rule apply reads it",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.api.client()
			if err != nil {
				return err
			}
			y, err := c.RulesYAML(cmd.Context())
			if err != nil {
				return fmt.Errorf("rule export: %w", err)
			}
			_, err = cmd.OutOrStdout().Write(y)
			return err
		},
	}
}

func newRuleArmCmd(a *apiOptions, on bool) *cobra.Command {
	use, short := "arm", "Arm the bench: auto rules start deploys on their own (boards already waiting start now)"
	if !on {
		use, short = "disarm", "Disarm the bench: auto rules wait; running jobs go on"
	}
	return &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			if err := c.SetArmed(cmd.Context(), on); err != nil {
				return fmt.Errorf("rule %s: %w", use, err)
			}
			if wantJSON(cmd) {
				return writeJSON(cmd.OutOrStdout(), contract.Armed{Armed: on})
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), map[bool]string{true: "bench ARMED: auto rules start deploys", false: "bench disarmed: auto rules wait"}[on])
			return err
		},
	}
}
