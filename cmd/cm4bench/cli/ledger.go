package cli

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/cm4bench/cm4bench/api/client"
	"github.com/cm4bench/cm4bench/internal/atomicfile"
)

type ledgerOptions struct {
	api *apiOptions
	q   client.LedgerQuery
}

func newLedgerCmd() *cobra.Command {
	o := &ledgerOptions{api: &apiOptions{}}
	cmd := &cobra.Command{
		Use:   "ledger",
		Short: "The provisioning ledger: one row per board provisioned, never rewritten",
		Long: `Every deploy that ends (done, failed or cancelled) leaves one ledger row, written in the same
database transaction that ends it and never changed afterwards. It answers, months later, which image
and which values unit X got, on which bench, when, started by whom, and whether it verified:

  serial, every MAC, eMMC CID/CSD and size, model, revision, bootloader; recipe and version, the rule,
  the image and its sha256, the pool values and the sha256 of each per-device file; the station
  (serve --station), the slot (the board's address on the bench network) and the operator (a
  dashboard session, the admin token, or the zero-click rule); start time and seconds per phase
  (netboot, register, write, verify, customise, total); bytes on the wire and written; the result and
  the error in plain words.

Filters: --since/--until (a time like 2026-12-03T06:00:00Z, or a duration back from now like 8h),
--recipe, --result (done, failed, cancelled), --serial. Exports stream every row with flat memory.`,
		Example: `  cm4bench ledger list --since 8h
  cm4bench ledger show 42
  cm4bench ledger export --format csv -o shift.csv --since 8h
  cm4bench ledger export --format jsonl --recipe line-a | jq .serial`,
	}
	o.api.bind(cmd)
	f := cmd.PersistentFlags()
	f.StringVar(&o.q.Since, "since", "", "rows that ended at or after this time or this long ago (8h)")
	f.StringVar(&o.q.Until, "until", "", "rows that ended before this time")
	f.StringVar(&o.q.Recipe, "recipe", "", "rows of this recipe")
	f.StringVar(&o.q.Result, "result", "", "rows with this result: done, failed or cancelled")
	f.StringVar(&o.q.Serial, "serial", "", "rows of the board with this serial")
	cmd.AddCommand(o.listCmd(), o.showCmd(), o.exportCmd())
	return cmd
}

func (o *ledgerOptions) listCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List ledger rows, oldest first (at most --limit, default 100 most recent)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.list(cmd.Context(), wantJSON(cmd), cmd.OutOrStdout())
		},
	}
	cmd.Flags().IntVar(&o.q.Limit, "limit", 0, "at most this many rows (default: all in range, up to 10000)")
	return cmd
}

func (o *ledgerOptions) list(ctx context.Context, asJSON bool, out io.Writer) error {
	c, err := o.api.client()
	if err != nil {
		return err
	}
	rows, err := c.Ledger(ctx, o.q)
	if err != nil {
		return fmt.Errorf("ledger list: %w", err)
	}
	if asJSON {
		return writeJSON(out, rows)
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tENDED\tSERIAL\tMAC\tRECIPE\tRESULT\tTOTAL\tOPERATOR\tERROR")
	for _, r := range rows {
		recipe := r.Image
		if r.Recipe != "" {
			recipe = fmt.Sprintf("%s v%d", r.Recipe, r.RecipeVersion)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%.0fs\t%s\t%s\n", r.ID, r.Time.Local().Format(time.DateTime), or(r.Serial, "-"), r.MAC,
			recipe, r.Result, r.Seconds.Total, r.Operator, clip(r.Error, 60))
	}
	return tw.Flush()
}

func (o *ledgerOptions) showCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "show ID",
		Short: "Show one ledger row in full (JSON)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.api.client()
			if err != nil {
				return err
			}
			r, err := c.LedgerRow(cmd.Context(), args[0])
			if err != nil {
				return fmt.Errorf("ledger show: %w", err)
			}
			return writeJSON(cmd.OutOrStdout(), r)
		},
	}
}

func (o *ledgerOptions) exportCmd() *cobra.Command {
	var format, output string
	cmd := &cobra.Command{
		Use:   "export",
		Short: "Export the ledger as CSV (RFC 4180, one header row) or JSON lines, streaming",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if format != "csv" && format != "jsonl" {
				return &ExitError{Code: 2, Err: fmt.Errorf("ledger export: --format %q: want csv or jsonl", format)}
			}
			c, err := o.api.client()
			if err != nil {
				return err
			}
			if output == "" || output == "-" {
				_, err = c.ExportLedger(cmd.Context(), o.q, format, cmd.OutOrStdout())
				return err
			}
			// Written to a temporary file and renamed: a cut export never
			// looks complete.
			f, err := atomicfile.Create(output, 0o644)
			if err != nil {
				return err
			}
			if _, err := c.ExportLedger(cmd.Context(), o.q, format, f); err != nil {
				f.Abort()
				return err
			}
			return f.Commit()
		},
	}
	cmd.Flags().StringVar(&format, "format", "csv", "csv or jsonl")
	cmd.Flags().StringVarP(&output, "output", "o", "", "write to `FILE` (default: stdout)")
	return cmd
}
