package cli

import (
	"fmt"

	"github.com/spf13/cobra"
)

func newTokenCmd() *cobra.Command {
	opts := &apiOptions{}
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Manage the admin token of a running server",
	}
	opts.bind(cmd)
	rotate := &cobra.Command{
		Use:   "rotate",
		Short: "Make a new admin token and end every dashboard session",
		Long: `rotate asks the running server for a new admin token: it is written to <data>/admin-token
(mode 0600), the old one stops working at once, and every dashboard session ends (technicians log
in again with the new token). Use it when the token may have leaked.`,
		Example: `  sudo cm4bench token rotate --data /var/lib/cm4bench`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := opts.client()
			if err != nil {
				return err
			}
			tok, err := c.RotateToken(cmd.Context())
			if err != nil {
				return err
			}
			if wantJSON(cmd) {
				return writeJSON(cmd.OutOrStdout(), map[string]string{"token": tok})
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "new admin token: %s\nevery dashboard session has ended; the old token no longer works\n", tok)
			return err
		},
	}
	cmd.AddCommand(rotate)
	return cmd
}
