package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/cm4bench/cm4bench/internal/atomicfile"
	"github.com/cm4bench/cm4bench/internal/contract"
	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
)

func newBackupCmd() *cobra.Command {
	o := &apiOptions{}
	cmd := &cobra.Command{
		Use:   "backup",
		Short: "List, fetch and delete eMMC backups stored by the server",
		Long: `The backup commands manage the eMMC backups a running ` + "`cm4bench netboot serve`" + ` has
received (start one with ` + "`cm4bench device backup MAC`" + `). Each backup is recorded only
after its upload completed and was fsynced, with the sha256 and size of the raw eMMC bytes; a
backup stored zstd-compressed (.img.zst) is fetched as stored.

The server and admin token are found from --data DIR or given with --server URL --token T.`,
		Example: `  cm4bench backup list
  cm4bench backup get 7                       # writes its stored name in the current dir
  cm4bench backup get 7 -o board-17.img.zst
  cm4bench backup get 7 -o - | zstd -dc | sha256sum
  cm4bench backup rm 7 8
  cm4bench backup list --json`,
	}
	o.bind(cmd)
	cmd.AddCommand(newBackupListCmd(o), newBackupGetCmd(o), newBackupRmCmd(o))
	return cmd
}

type backupListOptions struct{ api *apiOptions }

func newBackupListCmd(a *apiOptions) *cobra.Command {
	o := &backupListOptions{api: a}
	return &cobra.Command{
		Use:   "list",
		Short: "List stored backups, newest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.run(cmd.Context(), wantJSON(cmd), cmd.OutOrStdout())
		},
	}
}

func (o *backupListOptions) run(ctx context.Context, asJSON bool, out io.Writer) error {
	c, err := o.api.client()
	if err != nil {
		return err
	}
	bs, err := c.Backups(ctx)
	if err != nil {
		return fmt.Errorf("backup list: %w", err)
	}
	if asJSON {
		return writeJSON(out, bs)
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tMAC\tSERIAL\tCREATED\tSIZE\tSTORED\tSHA256\tNAME")
	for _, b := range bs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\n", b.ID, b.MAC, or(b.Serial, "-"), b.Created.Local().Format(time.DateTime), b.Size, b.StoredSize, b.SHA256, b.Name)
	}
	return tw.Flush()
}

type backupGetOptions struct {
	api *apiOptions
	out string
}

func newBackupGetCmd(a *apiOptions) *cobra.Command {
	o := &backupGetOptions{api: a}
	cmd := &cobra.Command{
		Use:   "get ID",
		Short: "Download a backup as stored (atomically: a cut download leaves no file)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.run(cmd.Context(), args[0], wantJSON(cmd), cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	cmd.Flags().StringVarP(&o.out, "output", "o", "", "output file, - for stdout (default: the backup's name in the current dir)")
	return cmd
}

func (o *backupGetOptions) run(ctx context.Context, id string, asJSON bool, stdout, errOut io.Writer) error {
	c, err := o.api.client()
	if err != nil {
		return err
	}
	bs, err := c.Backups(ctx)
	if err != nil {
		return fmt.Errorf("backup get: %w", err)
	}
	var b *contract.Backup
	for i := range bs {
		if bs[i].ID == id {
			b = &bs[i]
		}
	}
	if b == nil {
		return &ExitError{Code: 2, Err: fmt.Errorf("backup get: no backup %q (see `cm4bench backup list`)", id)}
	}
	if o.out == "-" {
		_, err := c.DownloadBackup(ctx, id, stdout)
		return err
	}
	path := o.out
	if path == "" {
		path = filepath.Base(b.Name)
	}
	f, err := atomicfile.Create(path, 0o600) // a board's whole disk: its keys, its data
	if err != nil {
		return fmt.Errorf("backup get: %w", err)
	}
	defer f.Abort()
	var w io.Writer = f
	if !asJSON && isTerminal(errOut) {
		pb := byteBar(errOut, b.StoredSize, "backup "+id, progressbar.OptionClearOnFinish())
		defer pb.Finish()
		w = io.MultiWriter(f, pb)
	}
	n, err := c.DownloadBackup(ctx, id, w)
	if err != nil {
		return fmt.Errorf("backup get: %w", err)
	}
	if n != b.StoredSize {
		return fmt.Errorf("backup get: received %d bytes, the server recorded %d", n, b.StoredSize)
	}
	if err := f.Commit(); err != nil {
		return fmt.Errorf("backup get: %w", err)
	}
	if asJSON {
		return writeJSON(stdout, map[string]any{"backup": b, "path": path, "bytes": n})
	}
	raw := "raw"
	if b.Compressed {
		raw = "zstd-compressed; raw"
	}
	_, err = fmt.Fprintf(stdout, "wrote %s (%d bytes, %s sha256 %s)\n", path, n, raw, b.SHA256)
	return err
}

type backupRmOptions struct{ api *apiOptions }

func newBackupRmCmd(a *apiOptions) *cobra.Command {
	o := &backupRmOptions{api: a}
	return &cobra.Command{
		Use:   "rm ID...",
		Short: "Delete backups (file and record)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.run(cmd.Context(), args, wantJSON(cmd), cmd.OutOrStdout())
		},
	}
}

func (o *backupRmOptions) run(ctx context.Context, ids []string, asJSON bool, out io.Writer) error {
	c, err := o.api.client()
	if err != nil {
		return err
	}
	var gone []string
	var errs []error
	for _, id := range ids {
		if err := c.DeleteBackup(ctx, strings.TrimSpace(id)); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", id, err))
			continue
		}
		gone = append(gone, id)
	}
	if asJSON {
		if err := writeJSON(out, map[string]any{"deleted": gone}); err != nil {
			return err
		}
	} else {
		for _, id := range gone {
			fmt.Fprintf(out, "deleted backup %s\n", id)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("backup rm: %w", errors.Join(errs...))
	}
	return nil
}
