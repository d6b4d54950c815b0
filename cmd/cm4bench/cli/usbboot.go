package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/cm4bench/cm4bench/firmware"
	"github.com/cm4bench/cm4bench/internal/atomicfile"
	"github.com/cm4bench/cm4bench/usbboot"
	"github.com/cm4bench/cm4bench/usbboot/gousbdev"
	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
)

// Exit statuses of the usbboot commands (and of eeprom set-boot-order when
// it flashes).
const (
	exitUSBNoDevice = 3 // no RPIBOOT device appeared, or no USB subsystem
	exitUSBAccess   = 4 // the device node is not accessible (udev rules)
	exitUSBFailed   = 5 // a board failed (transfer, protocol, bootcode rejected, flash not confirmed)
	exitUSBTimeout  = 6 // a board passed its deadline
)

// USBEnv replaces libusb for the usbboot, eeprom and doctor commands: tests
// and simulations set Context.USB to a simulated bus (usbboot/usbboottest)
// and a fake clock.
type USBEnv struct {
	Bus   usbboot.Bus
	Clock usbboot.Clock // nil: real time
}

// usbAccess is how a command reaches the USB bus: Context.USB when set,
// else libusb.
type usbAccess struct{ env *USBEnv }

// open returns the bus, its clock (nil: real time) and its closer.
func (u usbAccess) open() (usbboot.Bus, usbboot.Clock, func() error, error) {
	if u.env != nil && u.env.Bus != nil {
		return u.env.Bus, u.env.Clock, func() error { return nil }, nil
	}
	bus, err := gousbdev.Open()
	if err != nil {
		return nil, nil, nil, &ExitError{Code: exitUSBNoDevice, Err: err}
	}
	return bus, nil, bus.Close, nil
}

// hint explains an empty bus on a machine without a USB subsystem.
func (u usbAccess) hint() string {
	if u.env != nil || gousbdev.SubsystemPresent() {
		return ""
	}
	return "/sys/bus/usb and /dev/bus/usb are missing (a container or VM needs USB passthrough)"
}

// usbServeFlags are the board-selection and serving flags shared by
// usbboot and eeprom set-boot-order.
type usbServeFlags struct {
	Loop        bool
	Ports       []string
	Serials     []string
	Timeout     time.Duration
	MetadataDir string
	Strict      bool   // --strict: a recovery.bin session must end with Done
	Trace       string // --trace FILE: every USB transfer, in the golden-transcript format
	usb         usbAccess
	asJSON      bool         // --json, captured before RunE
	logger      *slog.Logger // from --log-level/--json, captured before RunE
}

func (f *usbServeFlags) bind(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.BoolVar(&f.Loop, "loop", false, "serve board after board until interrupted (a board is served again only after it is unplugged or re-enumerates)")
	fl.StringSliceVar(&f.Ports, "port", nil, "only boards on USB port `PATH` (e.g. 1-1.3; repeatable)")
	fl.StringSliceVar(&f.Serials, "serial", nil, "only boards whose ROM serial string is `S` (e.g. af04b2da; repeatable)")
	fl.DurationVar(&f.Timeout, "timeout", 2*time.Minute, "per-board deadline from first sight to Done; without --loop also the wait for the first board")
	fl.StringVar(&f.MetadataDir, "metadata-dir", "", "write each board's metadata to `DIR`/<serial>.json (like rpiboot -j)")
	fl.StringVar(&f.Trace, "trace", "", "record every USB setup packet, bulk transfer and file request to `FILE` (for bug reports and replay)")
	prev := cmd.PreRunE
	cmd.PreRunE = func(cmd *cobra.Command, args []string) error {
		f.asJSON, f.logger = wantJSON(cmd), newLogger(cmd)
		if prev != nil {
			return prev(cmd, args)
		}
		return nil
	}
}

// bindFlash adds the flags that only matter when recovery.bin flashes.
func (f *usbServeFlags) bindFlash(cmd *cobra.Command) {
	cmd.Flags().BoolVar(&f.Strict, "strict", false, "count a board as flashed only when recovery.bin also sends Done (default: leaving the bus after a matching EEPROM_HASH is enough, as rpiboot treats it)")
}

// preflight fails at once, before anything is written, on a machine with
// no USB subsystem and nothing on the bus (rather than waiting --timeout).
func (f *usbServeFlags) preflight(ctx context.Context) error {
	bus, _, closeBus, err := f.usb.open()
	if err != nil {
		return err
	}
	defer closeBus()
	list, err := bus.List(ctx)
	if err != nil {
		return &ExitError{Code: exitUSBNoDevice, Err: fmt.Errorf("usbboot: list devices: %w", err)}
	}
	if hint := f.usb.hint(); len(list) == 0 && hint != "" {
		return &ExitError{Code: exitUSBNoDevice, Err: fmt.Errorf("usbboot: %w: %w: %s", usbboot.ErrNoDevice, usbboot.ErrNoUSB, hint)}
	}
	return nil
}

func (f *usbServeFlags) match() func(usbboot.Desc) bool {
	if len(f.Ports) == 0 && len(f.Serials) == 0 {
		return nil
	}
	return func(d usbboot.Desc) bool {
		if len(f.Ports) > 0 && !slices.Contains(f.Ports, d.Port) {
			return false
		}
		if len(f.Serials) > 0 && !slices.ContainsFunc(f.Serials, func(s string) bool { return strings.EqualFold(s, d.Serial) }) {
			return false
		}
		return true
	}
}

// serve runs a usbboot.Server over files and reports per board. check, when
// set, decides a board's success beyond the session itself.
func (f *usbServeFlags) serve(ctx context.Context, files usbboot.FileSource, check func(usbboot.Result) (string, error), stdout, stderr io.Writer) ([]usbboot.Result, error) {
	if f.Timeout <= 0 {
		return nil, errors.New("--timeout must be positive")
	}
	for _, p := range f.Ports {
		if !validPortPath(p) {
			return nil, fmt.Errorf("--port %q: want a USB port path such as 1-1.3", p)
		}
	}
	if f.MetadataDir != "" {
		if err := os.MkdirAll(f.MetadataDir, 0o755); err != nil {
			return nil, fmt.Errorf("--metadata-dir: %w", err)
		}
	}
	if err := f.preflight(ctx); err != nil {
		return nil, err
	}
	bus, clock, closeBus, err := f.usb.open()
	if err != nil {
		return nil, err
	}
	defer closeBus()
	asJSON := f.asJSON
	out := &usbReporter{json: asJSON, stdout: stdout, stderr: stderr}
	if !asJSON && isTerminal(stderr) {
		out.bars, out.throttle = true, 100*time.Millisecond
	}
	srv := &usbboot.Server{
		Bus: bus, Files: files, Match: f.match(), Loop: f.Loop, Timeout: f.Timeout, Clock: clock,
		Logger: f.logger, OnEvent: out.event, Strict: f.Strict,
		Finish: func(r usbboot.Result) error {
			var errs []error
			// A refused update is checked too: the check may know why (a
			// board locked to another key).
			if check != nil && (r.Err == nil || errors.Is(r.Err, usbboot.ErrEEPROMUpdate)) {
				w, err := check(r)
				if w != "" && !slices.Contains(r.Warnings, w) { // the session may have said it already
					out.event(usbboot.Event{Kind: usbboot.EventWarning, Port: r.Port, Serial: r.Serial, Message: w})
				}
				errs = append(errs, err)
			}
			if f.MetadataDir != "" && len(r.Metadata) > 0 {
				errs = append(errs, writeMetadata(f.MetadataDir, r))
			}
			return errors.Join(errs...)
		},
		OnResult: out.result,
	}
	if f.Trace != "" {
		tf, err := os.Create(f.Trace)
		if err != nil {
			return nil, fmt.Errorf("--trace: %w", err)
		}
		defer tf.Close()
		srv.Trace = usbboot.NewTracer(tf, clock)
		defer func() {
			if err := srv.Trace.Err(); err != nil {
				fmt.Fprintf(stderr, "warning: --trace %s: %v\n", f.Trace, err)
			}
		}()
	}
	results, err := srv.Serve(ctx)
	if err != nil {
		code := 1
		if errors.Is(err, usbboot.ErrNoDevice) {
			code = exitUSBNoDevice
			if hint := f.usb.hint(); hint != "" {
				err = fmt.Errorf("%w: %w: %s", err, usbboot.ErrNoUSB, hint)
			}
		}
		return results, &ExitError{Code: code, Err: err}
	}
	return results, boardsExit(results)
}

// boardsExit turns failed boards into the exit status.
func boardsExit(results []usbboot.Result) error {
	var errs []error
	code := 0
	for _, r := range results {
		if r.Err == nil {
			continue
		}
		errs = append(errs, r.Err)
		c := exitUSBFailed
		switch {
		case errors.Is(r.Err, usbboot.ErrAccess):
			c = exitUSBAccess
		case errors.Is(r.Err, usbboot.ErrDeadline):
			c = exitUSBTimeout
		}
		code = max(code, c)
	}
	if len(errs) == 0 {
		return nil
	}
	return &ExitError{Code: code, Err: fmt.Errorf("%d of %d board(s) failed: %w", len(errs), len(results), errors.Join(errs...))}
}

func validPortPath(p string) bool {
	bus, rest, ok := strings.Cut(p, "-")
	if !ok || bus == "" || rest == "" {
		return false
	}
	for _, part := range append([]string{bus}, strings.Split(rest, ".")...) {
		if part == "" || strings.Trim(part, "0123456789") != "" {
			return false
		}
	}
	return true
}

// writeMetadata writes DIR/<serial>.json (or <port>.json without a serial)
// in rpiboot's format, atomically.
func writeMetadata(dir string, r usbboot.Result) error {
	name := r.Serial
	if name == "" || strings.ContainsAny(name, `/\`) || strings.Contains(name, "..") {
		name = r.Port
	}
	p := filepath.Join(dir, name+".json")
	if err := atomicfile.WriteFile(p, r.Metadata.RPIBootJSON(), 0o644); err != nil {
		return fmt.Errorf("write metadata: %w", err)
	}
	return nil
}

// usbReporter prints events and results: JSON lines with --json, a
// progress bar (terminal only) and a summary line per board otherwise.
type usbReporter struct {
	json           bool
	bars           bool
	stdout, stderr io.Writer

	throttle time.Duration // least time between two bar redraws

	mu       sync.Mutex
	bar      *progressbar.ProgressBar
	boards   map[string]*boardProgress // port -> progress, boards in flight
	warnings map[string][]string       // port -> warnings of the board in flight
}

// boardReport is the JSON form of one board's result.
type boardReport struct {
	Event    string               `json:"event"` // "result"
	Port     string               `json:"port"`
	Serial   string               `json:"serial,omitempty"`
	SoC      usbboot.SoC          `json:"soc"`
	OK       bool                 `json:"ok"`
	Error    string               `json:"error,omitempty"`
	Done     bool                 `json:"done"`
	Seconds  float64              `json:"seconds"`
	Files    []usbboot.ServedFile `json:"files"`
	Metadata map[string]string    `json:"metadata,omitempty"`
	Warnings []string             `json:"warnings,omitempty"`
}

func (u *usbReporter) event(e usbboot.Event) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if e.Kind == usbboot.EventWarning && e.Port != "" {
		if u.warnings == nil {
			u.warnings = map[string][]string{}
		}
		u.warnings[e.Port] = append(u.warnings[e.Port], e.Message)
	}
	if u.json {
		if e.Kind != usbboot.EventProgress {
			_ = json.NewEncoder(u.stdout).Encode(e)
		}
		return
	}
	if u.bars {
		u.progress(e)
	}
}

// boardProgress is what the bar shows for one board.
type boardProgress struct {
	file        string
	bytes, size int64 // of the file being sent
	files       int   // files sent so far
	sent        int64 // bytes of the files sent so far
}

// progress keeps one bar for every board in flight: its length is the sum
// of the files being sent, and its label names each board's file and how
// many files and bytes that board has had.
func (u *usbReporter) progress(e usbboot.Event) {
	if u.boards == nil {
		u.boards = map[string]*boardProgress{}
	}
	bp := u.boards[e.Port]
	if bp == nil {
		bp = &boardProgress{}
		u.boards[e.Port] = bp
	}
	switch e.Kind {
	case usbboot.EventFileStart:
		bp.file, bp.bytes, bp.size = e.File, 0, e.Total
	case usbboot.EventProgress:
		bp.bytes = e.Bytes
	case usbboot.EventFileDone:
		bp.files++
		bp.sent += e.Total
		bp.file, bp.bytes, bp.size = "", 0, 0
	case usbboot.EventDone, usbboot.EventFailed:
		delete(u.boards, e.Port)
	default:
		return
	}
	var done, total int64
	var labels []string
	ports := make([]string, 0, len(u.boards))
	for p := range u.boards {
		ports = append(ports, p)
	}
	slices.Sort(ports)
	for _, p := range ports {
		b := u.boards[p]
		done += b.bytes
		total += b.size
		label := fmt.Sprintf("%s #%d", p, b.files+1)
		if b.file != "" {
			label += " " + b.file
		}
		labels = append(labels, label)
	}
	if total == 0 {
		if u.bar != nil && len(u.boards) == 0 {
			_ = u.bar.Finish()
			u.bar = nil
		}
		return
	}
	if u.bar == nil {
		u.bar = byteBar(u.stderr, total, "", progressbar.OptionClearOnFinish(), progressbar.OptionThrottle(u.throttle))
	}
	u.bar.ChangeMax64(total)
	u.bar.Describe(strings.Join(labels, " | "))
	_ = u.bar.Set64(done)
}

func (u *usbReporter) result(r usbboot.Result) {
	u.mu.Lock()
	defer u.mu.Unlock()
	rep := boardReport{Event: "result", Port: r.Port, Serial: r.Serial, SoC: r.SoC, OK: r.Err == nil, Done: r.Done,
		Seconds: r.End.Sub(r.Start).Seconds(), Files: r.Files}
	if r.Err != nil {
		rep.Error = r.Err.Error()
	}
	rep.Warnings = u.warnings[r.Port]
	delete(u.warnings, r.Port)
	if len(r.Metadata) > 0 {
		rep.Metadata = map[string]string{}
		for _, kv := range r.Metadata {
			rep.Metadata[kv.Key] = kv.Value
		}
	}
	if u.json {
		_ = json.NewEncoder(u.stdout).Encode(rep)
		return
	}
	var served []string
	var bytes int64
	for _, f := range r.Files {
		if !f.Missing {
			served = append(served, f.Name)
			bytes += f.Size
		}
	}
	status := "ok"
	if r.Err != nil {
		status = "FAILED"
	}
	serial := r.Serial
	if serial == "" {
		serial = "-"
	}
	fmt.Fprintf(u.stdout, "%-10s %-9s %-6s %d files, %d bytes in %.1fs: %s\n", r.Port, serial, status, len(served), bytes,
		rep.Seconds, strings.Join(served, " "))
	for _, kv := range r.Metadata {
		fmt.Fprintf(u.stdout, "%-10s   %s=%s\n", "", kv.Key, kv.Value)
	}
	for _, w := range rep.Warnings {
		fmt.Fprintf(u.stdout, "%-10s   warning: %s\n", "", w)
	}
	if r.Err != nil {
		fmt.Fprintf(u.stdout, "%-10s   error: %v\n", "", r.Err)
	}
}

// usbbootOptions are the flags of "cm4bench usbboot".
type usbbootOptions struct {
	usbServeFlags
	Mode    string // --mode msd|recovery|DIR
	PerPort bool   // --per-port: <DIR>/<port path>/ overlays (rpiboot -o)
	Cache   string // --cache: firmware cache directory
}

func newUSBBootCmd(usb usbAccess) *cobra.Command {
	opts := &usbbootOptions{}
	opts.usb = usb
	cmd := &cobra.Command{
		Use:   "usbboot [DIR]",
		Short: "Boot CM4s held in RPIBOOT mode over USB (mass storage, any boot directory, EEPROM updater)",
		Long: `usbboot does what the Raspberry Pi rpiboot tool does, natively: it finds boards whose nRPIBOOT
jumper is fitted (USB 0a5c:2711 for a CM4; 2763/2764 for CM1/CM3; 2712 for CM5), sends the boot
ROM its second stage (bootcode4.bin), waits for the board to re-enumerate on the same USB port,
then answers the second stage's file requests until it says Done.

Unlike rpiboot it serves several boards in parallel (one state machine per USB port path), has
deadlines everywhere (the second stage may be silent for 20 s while it flashes; that is waited
out, but not forever), never opens a device that a --port or --serial filter does not select,
and exits non-zero when a board fails.

What is served:
  DIR or --mode DIR   any rpiboot directory: bootfiles.bin members under 2711/, 2712/, 2710/,
                      then DIR/<soc>/NAME, then DIR/NAME (symlinks followed, names with ".."
                      refused); --per-port adds DIR/<port path>/NAME overlays first
  --mode msd          legacy mass-storage firmware from the verified firmware cache (the eMMC
                      appears as a USB disk); fetch it once with "cm4bench firmware fetch msd"
  --mode recovery     the EEPROM recovery set from the cache: recovery.bin reports the board's
                      metadata (MAC, serial, EEPROM_UPDATE); to flash a new bootloader config use
                      "cm4bench eeprom set-boot-order"

Metadata ("*KEY*VALUE" names sent by recovery.bin) is printed per board and, with
--metadata-dir, written to DIR/<serial>.json as rpiboot -j does. A board that reports
EEPROM_UPDATE other than success or none (nothing to flash), or an EEPROM_HASH that is not
the sha256 of the served pieeprom.bin, counts as failed.

Without --loop, usbboot serves every selected board present or appearing while any board is in
progress, and exits when the last one is done. With --loop it runs until interrupted; a port is
served again once its device left the bus or re-enumerated (a new board).

Exit status: 0 every board served; 3 no board appeared (or no USB subsystem); 4 access denied
to the device node (install "cm4bench usbboot udev-rules"); 5 a board failed; 6 a board
passed its --timeout.`,
		Example: `  cm4bench usbboot --mode msd                    # expose one CM4's eMMC as a USB disk
  cm4bench usbboot ./mass-storage-gadget64       # any rpiboot directory
  cm4bench usbboot --mode msd --loop             # board after board, several at once
  cm4bench usbboot --port 1-1.3 --timeout 90s ./recovery
  cm4bench usbboot --mode recovery --metadata-dir ./boards --json
  cm4bench usbboot list
  cm4bench usbboot udev-rules | sudo tee /etc/udev/rules.d/70-cm4bench.rules`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return opts.run(cmd.Context(), args, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	opts.bind(cmd)
	cmd.Flags().StringVar(&opts.Mode, "mode", "", "what to serve: msd, recovery (from the firmware cache) or a boot `DIR`")
	cmd.Flags().BoolVar(&opts.PerPort, "per-port", false, "serve DIR/<port path>/NAME before the shared files (rpiboot -o)")
	cmd.Flags().StringVar(&opts.Cache, "cache", "", "firmware cache `DIR` for --mode msd|recovery (default: the user cache)")
	cmd.AddCommand(newUSBBootListCmd(usb), newUSBBootUdevCmd())
	return cmd
}

func (o *usbbootOptions) run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	dir, err := o.bootDir(ctx, args)
	if err != nil {
		return err
	}
	src, err := usbboot.NewDir(dir, o.PerPort)
	if err != nil {
		return err
	}
	_, err = o.serve(ctx, src, nil, stdout, stderr)
	return err
}

// bootDir resolves DIR / --mode into a directory to serve.
func (o *usbbootOptions) bootDir(ctx context.Context, args []string) (string, error) {
	mode := o.Mode
	if len(args) == 1 {
		if mode != "" && mode != args[0] {
			return "", fmt.Errorf("usbboot: give the directory either as DIR or as --mode, not both (%q and %q)", args[0], mode)
		}
		mode = args[0]
	}
	switch mode {
	case "":
		return "", errors.New("usbboot: what to serve? give a boot DIR, --mode msd or --mode recovery")
	case "msd", "recovery":
		if st, err := os.Stat(mode); err == nil && st.IsDir() {
			return mode, nil // a local directory of that name wins, as in rpiboot -d
		}
		cat, err := firmware.Default()
		if err != nil {
			return "", err
		}
		c := &firmware.Cache{Dir: o.Cache, Catalogue: cat, Offline: true}
		dir, err := c.SetDir(ctx, mode)
		if err != nil {
			return "", fmt.Errorf("usbboot: --mode %s: %w (run \"cm4bench firmware fetch %s\" first)", mode, err, mode)
		}
		return dir, nil
	}
	return mode, nil
}

// usbListOptions are the flags of "usbboot list".
type usbListOptions struct {
	All bool
	usb usbAccess
}

// usbDevice is one row of "usbboot list".
type usbDevice struct {
	Port    string `json:"port"`
	Address int    `json:"address"`
	VID     string `json:"vid"`
	PID     string `json:"pid"`
	Stage   string `json:"stage"`
	Speed   string `json:"speed"`
	Serial  string `json:"serial,omitempty"`
	Warning string `json:"warning,omitempty"`
}

func newUSBBootListCmd(usb usbAccess) *cobra.Command {
	opts := &usbListOptions{usb: usb}
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List RPIBOOT devices: port path, product id, stage, speed, serial",
		Long: `list shows the Raspberry Pi boards in RPIBOOT mode on this machine's USB buses without opening
any of them: the USB port path (what --port takes), the product id, whether the boot ROM or a
second stage answers (from the iSerialNumber index: 0 or 3 is the ROM), the negotiated speed
and the serial string (the SoC serial in the ROM stage, when the OS exposes it).

A 2711/2712 ROM at full speed is flagged: transfers to it usually fail (bad cable, hub or
board). On a machine without a USB subsystem the command says so and exits with status 3.`,
		Example: `  cm4bench usbboot list
  cm4bench usbboot list --json
  cm4bench usbboot list --all`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return opts.run(cmd.Context(), wantJSON(cmd), cmd.OutOrStdout())
		},
	}
	cmd.Flags().BoolVar(&opts.All, "all", false, "list every USB device, not only RPIBOOT ones")
	return cmd
}

func (o *usbListOptions) run(ctx context.Context, asJSON bool, stdout io.Writer) error {
	bus, _, closeBus, err := o.usb.open()
	if err != nil {
		return err
	}
	defer closeBus()
	list, err := bus.List(ctx)
	if err != nil {
		return fmt.Errorf("usbboot list: %w", err)
	}
	if len(list) == 0 {
		if hint := o.usb.hint(); hint != "" {
			return &ExitError{Code: exitUSBNoDevice, Err: fmt.Errorf("usbboot list: %w: %s", usbboot.ErrNoUSB, hint)}
		}
	}
	rows := []usbDevice{}
	for _, d := range list {
		if !o.All && !d.IsRPIBoot() {
			continue
		}
		row := usbDevice{Port: d.Port, Address: d.Address, VID: fmt.Sprintf("%04x", d.VID), PID: fmt.Sprintf("%04x", d.PID),
			Speed: d.Speed.String(), Serial: d.Serial, Stage: "-"}
		if d.IsRPIBoot() {
			row.Stage = d.Stage().String()
			if d.Stage() == usbboot.StageROM && d.SoC() != usbboot.SoC2835 && d.Speed == usbboot.SpeedFull {
				row.Warning = "ROM at full speed: check cable, hub and board"
			}
		}
		rows = append(rows, row)
	}
	if asJSON {
		return writeJSON(stdout, rows)
	}
	if len(rows) == 0 {
		_, err := fmt.Fprintln(stdout, "no RPIBOOT devices (fit the nRPIBOOT jumper, connect the USB slave port, power on)")
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PORT\tADDR\tID\tSTAGE\tSPEED\tSERIAL\t")
	for _, r := range rows {
		serial := r.Serial
		if serial == "" {
			serial = "-"
		}
		fmt.Fprintf(tw, "%s\t%d\t%s:%s\t%s\t%s\t%s\t%s\n", r.Port, r.Address, r.VID, r.PID, r.Stage, r.Speed, serial, r.Warning)
	}
	return tw.Flush()
}

func newUSBBootUdevCmd() *cobra.Command {
	var group string
	cmd := &cobra.Command{
		Use:   "udev-rules",
		Short: "Print udev rules so a non-root user can boot RPIBOOT devices",
		Long: `udev-rules prints a rules file that gives the RPIBOOT devices (0a5c:2763, 2764, 2711, 2712)
to the --group group (default plugdev) and to the user logged in at the seat (uaccess), so
cm4bench usbboot runs without root. Install it, reload udev and re-plug the board.`,
		Example: `  cm4bench usbboot udev-rules | sudo tee /etc/udev/rules.d/70-cm4bench.rules
  sudo udevadm control --reload-rules && sudo udevadm trigger
  sudo usermod -aG plugdev "$USER"   # then log in again`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return writeUdevRules(cmd.OutOrStdout(), group)
		},
	}
	cmd.Flags().StringVar(&group, "group", "plugdev", "group given access to the devices")
	return cmd
}

func writeUdevRules(w io.Writer, group string) error {
	if group == "" || strings.ContainsAny(group, "\"\n ") {
		return fmt.Errorf("udev-rules: bad --group %q", group)
	}
	_, err := fmt.Fprintf(w, `# cm4bench: Raspberry Pi boards in RPIBOOT (USB boot) mode.
# Boot ROMs and second stages: 2763 (BCM2835/6/7 ROM), 2764 (283x second stage),
# 2711 (BCM2711: CM4, Pi 4), 2712 (BCM2712: CM5, Pi 5).
SUBSYSTEM=="usb", ATTR{idVendor}=="0a5c", ATTR{idProduct}=="2763|2764|2711|2712", MODE="0660", GROUP="%s", TAG+="uaccess"
`, group)
	return err
}
