package cli

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

func newManCmd() *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "man --dir DIR",
		Short: "Write man pages for every command (cm4bench.1, cm4bench-usbboot.1, ...)",
		Long: `man writes one man page (section 1) per command into DIR, from the same text as --help:
cm4bench.1, cm4bench-eeprom-digest.1, cm4bench-recipe-apply.1 and so on. Read one with
"man -l DIR/cm4bench-usbboot.1", or install them under /usr/share/man/man1.`,
		Example: `  cm4bench man --dir build/man && man -l build/man/cm4bench-netboot-serve.1`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if dir == "" {
				return &ExitError{Code: 2, Err: errors.New("man: name the folder with --dir DIR")}
			}
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
			root := cmd.Root()
			root.DisableAutoGenTag = true // reproducible pages
			hdr := &doc.GenManHeader{Title: "CM4BENCH", Section: "1", Source: "cm4bench " + version(), Manual: "cm4bench manual"}
			if err := doc.GenManTree(root, hdr, dir); err != nil {
				return fmt.Errorf("man: %w", err)
			}
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "man pages written to %s\n", dir)
			return err
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "the `DIR` to write the pages into")
	return cmd
}
