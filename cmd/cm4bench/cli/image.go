package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/cm4bench/cm4bench/internal/contract"
)

func newImageCmd() *cobra.Command {
	o := &apiOptions{}
	cmd := &cobra.Command{
		Use:   "image",
		Short: "List the server's images and choose the bench default",
		Long: `The image commands talk to a running ` + "`cm4bench netboot serve`" + `.

Deploy writes a board's own image (` + "`cm4bench device image MAC NAME`" + `) if it has one, else
the bench default. The bench default is the image chosen with ` + "`cm4bench image default NAME`" + `
(or "Set as default" on the dashboard), kept across restarts; until one is chosen it is the
server's --image file. The --image file is never deleted through the API, nor is the chosen
default: choose another one first.`,
		Example: `  cm4bench image list
  cm4bench image default customer-b.img.zst
  cm4bench image default --clear             # back to the server's --image
  cm4bench image list --json`,
	}
	o.bind(cmd)
	cmd.AddCommand(newImageListCmd(o), newImageDefaultCmd(o))
	return cmd
}

type imageListOptions struct{ api *apiOptions }

func newImageListCmd(a *apiOptions) *cobra.Command {
	o := &imageListOptions{api: a}
	return &cobra.Command{
		Use:   "list",
		Short: "List images: the bench default first marked *, sizes and sha256",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.run(cmd.Context(), wantJSON(cmd), cmd.OutOrStdout())
		},
	}
}

func (o *imageListOptions) run(ctx context.Context, asJSON bool, out io.Writer) error {
	c, err := o.api.client()
	if err != nil {
		return err
	}
	imgs, err := c.Images(ctx)
	if err != nil {
		return fmt.Errorf("image list: %w", err)
	}
	if asJSON {
		return writeJSON(out, imgs)
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DEFAULT\tNAME\tFORMAT\tSIZE\tSHA256\tNOTE")
	for _, im := range imgs {
		mark, note := "", ""
		if im.Default {
			mark = "*"
		}
		if im.Golden {
			note = "--image"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\n", or(mark, " "), im.Name, im.Format, im.Size, or(im.SHA256, "(hashing)"), note)
	}
	return tw.Flush()
}

type imageDefaultOptions struct {
	api   *apiOptions
	clear bool
}

func newImageDefaultCmd(a *apiOptions) *cobra.Command {
	o := &imageDefaultOptions{api: a}
	cmd := &cobra.Command{
		Use:   "default [NAME]",
		Short: "Show or choose the image Deploy writes to a board with none of its own",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.clear && len(args) > 0 {
				return &ExitError{Code: 2, Err: errors.New("image default: give NAME or --clear, not both")}
			}
			return o.run(cmd.Context(), args, wantJSON(cmd), cmd.OutOrStdout())
		},
	}
	cmd.Flags().BoolVar(&o.clear, "clear", false, "go back to the server's --image")
	return cmd
}

func (o *imageDefaultOptions) run(ctx context.Context, args []string, asJSON bool, out io.Writer) error {
	c, err := o.api.client()
	if err != nil {
		return err
	}
	var def string
	switch {
	case len(args) == 1 || o.clear:
		name := ""
		if len(args) == 1 {
			name = args[0]
		}
		if def, err = c.SetDefaultImage(ctx, name); err != nil {
			return fmt.Errorf("image default: %w", err)
		}
	default:
		st, err := c.Status(ctx)
		if err != nil {
			return fmt.Errorf("image default: %w", err)
		}
		def = st.DefaultImage
	}
	if asJSON {
		return writeJSON(out, contract.DefaultImageRequest{Image: def})
	}
	_, err = fmt.Fprintf(out, "bench default image: %s\n", or(def, "(none: upload one or start the server with --image)"))
	return err
}
