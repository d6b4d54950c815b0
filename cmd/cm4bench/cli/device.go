package cli

import (
	"context"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/cm4bench/cm4bench/api/client"
	"github.com/cm4bench/cm4bench/internal/contract"
	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
)

// defaultDataDir is where `netboot serve` keeps its data unless told.
const defaultDataDir = "/var/lib/cm4bench"

// apiOptions find the running server: from --server and --token, or from the
// data dir the server records itself in.
type apiOptions struct {
	data   string
	server string
	token  string
}

func (o *apiOptions) bind(cmd *cobra.Command) {
	f := cmd.PersistentFlags()
	f.StringVar(&o.data, "data", defaultDataDir, "data `DIR` of the running netboot serve (its server.json and admin-token)")
	f.StringVar(&o.server, "server", "", "server URL, e.g. http://127.0.0.1:5000 (instead of --data)")
	f.StringVar(&o.token, "token", "", "admin token (with --server; default: <data>/admin-token)")
}

// clientFor checks the MAC arguments (a usage error, exit 2, before any
// server is contacted), then returns them normalised with the API client.
func (o *apiOptions) clientFor(args []string) ([]string, *client.Client, error) {
	macs, err := checkMACs(args)
	if err != nil {
		return nil, nil, err
	}
	c, err := o.client()
	if err != nil {
		return nil, nil, err
	}
	return macs, c, nil
}

func (o *apiOptions) client() (*client.Client, error) {
	if o.server != "" {
		tok := o.token
		if tok == "" {
			b, err := os.ReadFile(filepath.Join(o.data, contract.FileAdminToken))
			if err != nil {
				return nil, fmt.Errorf("--server needs --token (or a readable %s/%s): %w", o.data, contract.FileAdminToken, err)
			}
			tok = strings.TrimSpace(string(b))
		}
		return &client.Client{BaseURL: o.server, Token: tok, Source: "--server"}, nil
	}
	c, err := client.FromDataDir(o.data)
	if err != nil {
		return nil, err
	}
	if o.token != "" {
		c.Token = o.token
	}
	return c, nil
}

// checkMACs validates the boards named on the command line before anything
// is sent: a MAC in any common form, or a serial number (the server finds
// the board that reports it).
func checkMACs(args []string) ([]string, error) {
	out := make([]string, len(args))
	for i, a := range args {
		if contract.LooksLikeSerial(a) {
			out[i] = strings.ToLower(a)
			continue
		}
		m, err := contract.NormalizeMAC(a)
		if err != nil {
			return nil, &ExitError{Code: 2, Err: fmt.Errorf("%q is neither a MAC (like dc:a6:32:01:02:03) nor a serial number (8 or 16 hex digits)", a)}
		}
		out[i] = m
	}
	return out, nil
}

func newDeviceCmd() *cobra.Command {
	o := &apiOptions{}
	cmd := &cobra.Command{
		Use:   "device",
		Short: "List netbooted boards and tell them to deploy, back up or stand by",
		Long: `The device commands talk to a running ` + "`cm4bench netboot serve`" + ` over its HTTP API.

A board that netboots into the provisioning initramfs (cm4agent, or the original curl+dd
provisioning-client.sh) registers with the server and polls it. These commands give it an
action: deploy writes the image (the device's assigned image, else the server's --image) to its
eMMC; backup reads its eMMC to the server. When the board reports success, netboot is switched
off for its MAC, so it boots from eMMC next time. Setting a new action switches it back on.

The server and admin token are found from --data DIR (the server writes server.json and
admin-token there) or given with --server URL --token T.

Exit status: 0 ok, 1 error, 2 bad arguments, 3 an action failed (with --wait).`,
		Example: `  cm4bench device list
  cm4bench device show dc:a6:32:01:02:03
  cm4bench device deploy dc:a6:32:01:02:03 dc:a6:32:01:02:04 --wait
  cm4bench device deploy dc:a6:32:01:02:03 --image customer-b.img.zst
  cm4bench device backup dc:a6:32:01:02:03 --wait
  cm4bench device cancel dc:a6:32:01:02:03
  cm4bench device power-cycle dc:a6:32:01:02:03   # with serve --power-command
  cm4bench device image dc:a6:32:01:02:03 customer-b.img.zst
  cm4bench device list --json --server http://10.42.0.1:5000 --token "$(cat token)"`,
	}
	o.bind(cmd)
	cmd.AddCommand(newDeviceListCmd(o), newDeviceShowCmd(o), newDeviceActionCmd(o, contract.ActionDeploy),
		newDeviceActionCmd(o, contract.ActionBackup), newDeviceActionCmd(o, contract.ActionIdentify), newDeviceCancelCmd(o), newDevicePowerCmd(o), newDeviceImageCmd(o))
	return cmd
}

type deviceListOptions struct{ api *apiOptions }

func newDeviceListCmd(a *apiOptions) *cobra.Command {
	o := &deviceListOptions{api: a}
	return &cobra.Command{
		Use:   "list",
		Short: "List every board the server has seen, with its state and progress",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.run(cmd.Context(), wantJSON(cmd), cmd.OutOrStdout())
		},
	}
}

func (o *deviceListOptions) run(ctx context.Context, asJSON bool, out io.Writer) error {
	c, err := o.api.client()
	if err != nil {
		return err
	}
	devs, err := c.Devices(ctx)
	if err != nil {
		return fmt.Errorf("device list: %w", err)
	}
	if asJSON {
		return writeJSON(out, devs)
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "MAC\tSERIAL\tIP\tSTATE\tACTION\tPROGRESS\tNETBOOT\tLAST SEEN")
	for _, d := range devs {
		act, prog := "-", "-"
		if a := d.Action; a != nil {
			act = a.Type + " " + a.State
			prog = progressText(*a)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", d.MAC, or(d.Serial, "-"), or(d.IP, "-"), d.State, act, prog, onOffText(d.Netboot), ago(d.LastSeen))
	}
	return tw.Flush()
}

func progressText(a contract.Action) string {
	switch {
	case a.State == contract.StateFailed:
		return "failed: " + clip(a.Error, 60)
	case a.State == contract.StateDone:
		if a.SHA256 != "" {
			return "verified " + a.SHA256[:min(12, len(a.SHA256))]
		}
		return "done"
	case a.State == contract.StateCancelled:
		return "cancelled"
	case a.State == contract.StatePending:
		return "queued"
	case a.Total > 0:
		s := fmt.Sprintf("%s %.0f%%", or(a.Phase, "-"), 100*float64(a.Done)/float64(a.Total))
		if a.Rate > 0 {
			s += fmt.Sprintf(" %.1f MB/s", a.Rate/1e6)
		}
		return s
	case a.Phase != "":
		return a.Phase
	}
	return "-"
}

type deviceShowOptions struct{ api *apiOptions }

func newDeviceShowCmd(a *apiOptions) *cobra.Command {
	o := &deviceShowOptions{api: a}
	return &cobra.Command{
		Use:   "show MAC",
		Short: "Show one board: facts, switches and its recent actions",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.run(cmd.Context(), args[0], wantJSON(cmd), cmd.OutOrStdout())
		},
	}
}

func (o *deviceShowOptions) run(ctx context.Context, mac string, asJSON bool, out io.Writer) error {
	macs, c, err := o.api.clientFor([]string{mac})
	if err != nil {
		return err
	}
	d, err := c.Device(ctx, macs[0])
	if err != nil {
		return fmt.Errorf("device show: %w", err)
	}
	if asJSON {
		return writeJSON(out, d)
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "MAC:\t%s\nState:\t%s\nSerial:\t%s\nIP:\t%s\nNetboot:\t%s\nImage:\t%s\nFirst seen:\t%s\nLast seen:\t%s\n",
		d.MAC, d.State, or(d.Serial, "-"), or(d.IP, "-"), onOffText(d.Netboot), or(d.Image, "(server default)"), d.FirstSeen.Format(time.RFC3339), ago(d.LastSeen))
	if f := d.Facts; f != nil {
		fmt.Fprintf(tw, "Model:\t%s\nRevision:\t%s\neMMC:\t%d bytes, CID %s\nBootloader:\t%s\nTemperature:\t%.1f °C\nAgent:\t%s\n",
			or(f.Model, "-"), or(f.Revision, "-"), f.EMMCBytes, or(f.EMMCCID, "-"), or(f.Bootloader, "-"), float64(f.TempMilliC)/1000, or(f.Agent, "-"))
	}
	tw.Flush()
	if len(d.Actions) > 0 {
		fmt.Fprintln(out, "\nRecent actions:")
		tw = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tTYPE\tIMAGE\tSTATE\tCREATED\tPROGRESS\tSHA256")
		for _, a := range d.Actions {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", a.ID, a.Type, or(a.Image, "-"), a.State, a.Created.Format(time.RFC3339), progressText(a), or(a.SHA256, "-"))
		}
		tw.Flush()
	}
	if d.Action != nil && len(d.Action.Log) > 0 {
		fmt.Fprintln(out, "\nLog tail:")
		for _, l := range d.Action.Log {
			fmt.Fprintln(out, "  "+l)
		}
	}
	return nil
}

type deviceActionOptions struct {
	api     *apiOptions
	action  string
	image   string
	recipe  string
	wait    bool
	timeout time.Duration
}

func newDeviceActionCmd(a *apiOptions, action string) *cobra.Command {
	o := &deviceActionOptions{api: a, action: action}
	cmd := &cobra.Command{
		Use:  action + " MAC...",
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.run(cmd.Context(), args, wantJSON(cmd), cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	if action == contract.ActionDeploy {
		cmd.Short = "Write an image to the eMMC of one or more boards"
		cmd.Flags().StringVar(&o.image, "image", "", "image name (default: each board's assigned image, else the bench default)")
		cmd.Flags().StringVar(&o.recipe, "recipe", "", "deploy this recipe's latest version instead of a plain image: its per-device files and pool values too")
		cmd.MarkFlagsMutuallyExclusive("image", "recipe")
	} else if action == contract.ActionBackup {
		cmd.Short = "Read the eMMC of one or more boards to the server"
	} else {
		cmd.Short = "Blink the activity LED of one or more netbooted boards, to find them on the bench"
	}
	cmd.Flags().BoolVar(&o.wait, "wait", false, "wait until every board reports done or failed, showing progress")
	cmd.Flags().DurationVar(&o.timeout, "timeout", 2*time.Hour, "give up waiting after this long (with --wait)")
	return cmd
}

func (o *deviceActionOptions) run(ctx context.Context, args []string, asJSON bool, out, errOut io.Writer) error {
	macs, c, err := o.api.clientFor(args)
	if err != nil {
		return err
	}
	var acts []contract.Action
	if o.recipe != "" {
		// One board at a time: each gets its own pool values.
		for _, m := range macs {
			a, err := c.DeployRecipe(ctx, m, o.recipe)
			if err != nil {
				return fmt.Errorf("device deploy --recipe %s: %s: %w", o.recipe, m, err)
			}
			acts = append(acts, a)
		}
	} else if acts, err = c.SetActions(ctx, macs, o.action, o.image); err != nil {
		return fmt.Errorf("device %s: %w", o.action, err)
	}
	if !o.wait {
		if asJSON {
			return writeJSON(out, acts)
		}
		for _, a := range acts {
			img := ""
			if a.Image != "" {
				img = " of " + a.Image
			}
			if a.Recipe != "" {
				img = fmt.Sprintf(" of recipe %s v%d", a.Recipe, a.RecipeVersion)
			}
			fmt.Fprintf(out, "%s: %s%s requested (action %s); it runs when the board netboots and polls\n", a.MAC, a.Type, img, a.ID)
		}
		return nil
	}
	final, err := waitActions(ctx, c, acts, o.timeout, !asJSON, errOut)
	if err != nil {
		return err
	}
	if asJSON {
		if err := writeJSON(out, final); err != nil {
			return err
		}
	} else {
		for _, a := range final {
			msg := a.State
			if a.Error != "" {
				msg += ": " + a.Error
			}
			fmt.Fprintf(out, "%s: %s %s\n", a.MAC, a.Type, msg)
		}
	}
	for _, a := range final {
		if a.State != contract.StateDone {
			return &ExitError{Code: 3, Err: fmt.Errorf("device %s: %s on %s: %s", o.action, a.State, a.MAC, a.Error)}
		}
	}
	return nil
}

// waitActions polls until every action has ended, drawing one progress bar
// over their summed bytes on errOut when it is a terminal.
// waitLabel names what the --wait bar shows: the board and its phase for
// one board, the count per state for several.
func waitLabel(acts []contract.Action) string {
	if len(acts) == 1 {
		a := acts[0]
		return a.MAC + " " + or(progressPhase(a), a.State)
	}
	n := map[string]int{}
	for _, a := range acts {
		n[or(progressPhase(a), a.State)]++
	}
	parts := []string{}
	for _, k := range slices.Sorted(maps.Keys(n)) {
		parts = append(parts, fmt.Sprintf("%d %s", n[k], k))
	}
	return fmt.Sprintf("%d boards: %s", len(acts), strings.Join(parts, ", "))
}

// waitNumbers is the --wait bar's bytes, rate and time left. The rate is
// the agents' own (summed over the running boards), not the bar's: the
// bar would count bytes moved before the command started as its first
// second's rate.
func waitNumbers(acts []contract.Action) string {
	var done, total int64
	var rate float64
	for _, a := range acts {
		done += a.Done
		total += a.Total
		if a.State == contract.StateRunning {
			rate += a.Rate
		}
	}
	if total <= 0 {
		return ""
	}
	s := fmt.Sprintf("%.1f of %.1f MB", float64(done)/1e6, float64(total)/1e6)
	if rate > 0 {
		s += fmt.Sprintf(" · %.1f MB/s", rate/1e6)
		if left := total - done; left > 0 {
			s += " · " + time.Duration(float64(left)/rate*float64(time.Second)).Round(time.Second).String() + " left"
		}
	}
	return s
}

// progressPhase is the agent's phase while an action runs, in words.
func progressPhase(a contract.Action) string {
	switch a.State {
	case contract.StatePending:
		return "queued"
	case contract.StateRunning:
		return or(a.Phase, "starting")
	}
	return ""
}

func waitActions(ctx context.Context, c *client.Client, acts []contract.Action, timeout time.Duration, bar bool, errOut io.Writer) ([]contract.Action, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	var pb *progressbar.ProgressBar
	if bar && isTerminal(errOut) {
		pb = progressbar.NewOptions64(-1, progressbar.OptionSetWriter(errOut), progressbar.OptionSetDescription(waitLabel(acts)),
			progressbar.OptionSetPredictTime(false), progressbar.OptionClearOnFinish())
		defer pb.Finish()
	}
	want := map[string]string{} // mac -> action id
	for _, a := range acts {
		want[a.MAC] = a.ID
	}
	hinted := map[string]bool{}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		var final []contract.Action
		var done, total int64
		var queued, running []string
		for _, a := range acts {
			d, err := c.Device(ctx, a.MAC)
			if err != nil {
				return nil, fmt.Errorf("wait: %w", err)
			}
			cur := a
			for _, h := range d.Actions {
				if h.ID == want[a.MAC] {
					cur = h
				}
			}
			final = append(final, cur)
			done += cur.Done
			total += cur.Total
			switch cur.State {
			case contract.StatePending:
				queued = append(queued, a.MAC)
				// Not picked up after a few polls: the board is not netbooting.
				if !hinted[a.MAC] && d.NotPolling {
					hinted[a.MAC] = true
					fmt.Fprintf(errOut, "%s: still queued: the board has not asked for work since %s; it is not network-booted now: power-cycle or reset it\n",
						a.MAC, d.LastSeen.Local().Format(time.TimeOnly))
				}
			case contract.StateRunning:
				running = append(running, a.MAC)
			}
		}
		if pb != nil {
			pb.Describe(strings.TrimSpace(waitLabel(final) + "  " + waitNumbers(final)))
			if total > 0 {
				pb.ChangeMax64(total)
				pb.Set64(done)
			}
		}
		if len(queued)+len(running) == 0 {
			return final, nil
		}
		select {
		case <-ctx.Done():
			return final, ctx.Err()
		case <-deadline.C:
			var parts []string
			if len(running) > 0 {
				parts = append(parts, fmt.Sprintf("still running on %s", strings.Join(running, ", ")))
			}
			if len(queued) > 0 {
				parts = append(parts, fmt.Sprintf("still queued for %s (the job stays queued; cancel it with: cm4bench device cancel %s)",
					strings.Join(queued, ", "), strings.Join(queued, " ")))
			}
			return final, fmt.Errorf("wait: gave up after %s: %s", timeout, strings.Join(parts, "; "))
		case <-tick.C:
		}
	}
}

type deviceCancelOptions struct{ api *apiOptions }

func newDeviceCancelCmd(a *apiOptions) *cobra.Command {
	o := &deviceCancelOptions{api: a}
	return &cobra.Command{
		Use:   "cancel MAC...",
		Short: "Cancel the pending or running action of one or more boards",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.run(cmd.Context(), args, wantJSON(cmd), cmd.OutOrStdout())
		},
	}
}

func (o *deviceCancelOptions) run(ctx context.Context, args []string, asJSON bool, out io.Writer) error {
	macs, c, err := o.api.clientFor(args)
	if err != nil {
		return err
	}
	return eachMAC(macs, asJSON, out, "device cancel",
		func(m string) (contract.Action, error) { return c.SetAction(ctx, m, contract.ActionNone, "") },
		func(a contract.Action) string {
			return fmt.Sprintf("%s: %s (action %s) cancelled", a.MAC, a.Type, a.ID)
		})
}

type devicePowerOptions struct{ api *apiOptions }

func newDevicePowerCmd(a *apiOptions) *cobra.Command {
	o := &devicePowerOptions{api: a}
	return &cobra.Command{
		Use:   "power-cycle MAC...",
		Short: "Cut and restore a board's power (the server needs --power-command)",
		Long: `Power-cycles each board through the command the server was started with
(` + "`netboot serve --power-command CMD`" + `): a hub port switch, a PoE switch or a relay. A board
that booted its eMMC netboots again and picks up its queued job. The demo bench
(` + "`cm4bench sim`" + `) has one for its simulated boards.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.run(cmd.Context(), args, wantJSON(cmd), cmd.OutOrStdout())
		},
	}
}

func (o *devicePowerOptions) run(ctx context.Context, args []string, asJSON bool, out io.Writer) error {
	macs, c, err := o.api.clientFor(args)
	if err != nil {
		return err
	}
	return eachMAC(macs, asJSON, out, "device power-cycle",
		func(m string) (contract.PowerCycled, error) { return c.PowerCycle(ctx, m) },
		func(r contract.PowerCycled) string { return r.MAC + ": power-cycled" })
}

type deviceImageOptions struct{ api *apiOptions }

func newDeviceImageCmd(a *apiOptions) *cobra.Command {
	o := &deviceImageOptions{api: a}
	return &cobra.Command{
		Use:   "image MAC [NAME]",
		Short: "Assign an image to a board (no NAME: back to the server default)",
		Args:  cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.run(cmd.Context(), args, wantJSON(cmd), cmd.OutOrStdout())
		},
	}
}

func (o *deviceImageOptions) run(ctx context.Context, args []string, asJSON bool, out io.Writer) error {
	macs, c, err := o.api.clientFor(args[:1])
	if err != nil {
		return err
	}
	name := ""
	if len(args) == 2 {
		name = args[1]
	}
	d, err := c.SetDeviceImage(ctx, macs[0], name)
	if err != nil {
		return fmt.Errorf("device image: %w", err)
	}
	if asJSON {
		return writeJSON(out, d)
	}
	_, err = fmt.Fprintf(out, "%s: image %s\n", d.MAC, or(d.Image, "(server default)"))
	return err
}
