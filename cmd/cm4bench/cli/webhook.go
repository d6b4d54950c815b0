package cli

import (
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/cm4bench/cm4bench/internal/contract"
)

func newWebhookCmd() *cobra.Command {
	o := &apiOptions{}
	cmd := &cobra.Command{
		Use:   "webhook",
		Short: "Push board.registered, action.done, action.failed and ledger.row to your MES/ERP",
		Long: `Webhooks send the bench's events as signed JSON POSTs to your endpoints, from a persistent
outbox: at least once, retried with backoff (1 s doubling to 10 min, given up after 25 tries), across
restarts. A dead endpoint never slows a board.

Each POST carries X-Cm4bench-Event, X-Cm4bench-Delivery (the same on every retry: deduplicate by it)
and X-Cm4bench-Signature: sha256=<hex HMAC-SHA256 of the raw body with the webhook's secret>. Check it
in a shell with:

  printf %s "$BODY" | openssl dgst -sha256 -hmac "$SECRET"`,
		Example: `  cm4bench webhook add https://mes.example/cm4bench               # all events; prints the secret once
  cm4bench webhook add https://erp.example/hook --event ledger.row --secret "$(cat erp.secret)"
  cm4bench webhook list
  cm4bench webhook deliveries
  cm4bench webhook rm 2`,
	}
	o.bind(cmd)
	var events []string
	var secret string
	add := &cobra.Command{
		Use:   "add URL",
		Short: "Add an endpoint (the secret is shown this once)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.client()
			if err != nil {
				return err
			}
			if len(events) == 0 {
				events = contract.WebhookEvents()
			}
			h, err := c.AddWebhook(cmd.Context(), contract.WebhookRequest{URL: args[0], Events: events, Secret: secret})
			if err != nil {
				return fmt.Errorf("webhook add: %w", err)
			}
			if wantJSON(cmd) {
				return writeJSON(cmd.OutOrStdout(), h)
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "webhook %s: %s for %s\nsecret (shown once): %s\n", h.ID, h.URL, strings.Join(h.Events, ", "), h.Secret)
			return err
		},
	}
	add.Flags().StringSliceVar(&events, "event", nil, "an event to send (repeatable; default: all of "+strings.Join(contract.WebhookEvents(), ", ")+")")
	add.Flags().StringVar(&secret, "secret", "", "the signing secret (default: a random one, printed)")
	list := &cobra.Command{
		Use:   "list",
		Short: "List the endpoints",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.client()
			if err != nil {
				return err
			}
			hs, err := c.Webhooks(cmd.Context())
			if err != nil {
				return fmt.Errorf("webhook list: %w", err)
			}
			if wantJSON(cmd) {
				return writeJSON(cmd.OutOrStdout(), hs)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tURL\tEVENTS")
			for _, h := range hs {
				fmt.Fprintf(tw, "%s\t%s\t%s\n", h.ID, h.URL, strings.Join(h.Events, ","))
			}
			return tw.Flush()
		},
	}
	rm := &cobra.Command{
		Use:   "rm ID",
		Short: "Remove an endpoint and its undelivered deliveries",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.client()
			if err != nil {
				return err
			}
			if err := c.DeleteWebhook(cmd.Context(), args[0]); err != nil {
				return fmt.Errorf("webhook rm: %w", err)
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "webhook %s removed\n", args[0])
			return err
		},
	}
	var limit int
	dels := &cobra.Command{
		Use:   "deliveries",
		Short: "The delivery log, newest first: delivered, retrying (with the error), or given up",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.client()
			if err != nil {
				return err
			}
			ds, err := c.Deliveries(cmd.Context(), limit)
			if err != nil {
				return fmt.Errorf("webhook deliveries: %w", err)
			}
			if wantJSON(cmd) {
				return writeJSON(cmd.OutOrStdout(), ds)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tCREATED\tEVENT\tURL\tSTATE\tTRIES\tLAST ERROR")
			for _, d := range ds {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\n", d.ID, d.Created.Local().Format(time.DateTime), d.Event, d.URL, d.State, d.Attempts, clip(or(d.LastError, "-"), 60))
			}
			return tw.Flush()
		},
	}
	dels.Flags().IntVar(&limit, "limit", 50, "at most this many")
	cmd.AddCommand(add, list, rm, dels)
	return cmd
}
