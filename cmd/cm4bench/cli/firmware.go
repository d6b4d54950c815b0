package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/cm4bench/cm4bench/firmware"
	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
)

// defaultFetchSets are the sets "firmware fetch" gets when none is named:
// everything the catalogue pins. netboot is pinned on first fetch, so it is
// fetched only when asked for.
func defaultFetchSets() []string { return []string{"bootfiles", "eeprom", "msd", "recovery"} }

// firmwareOptions are the flags shared by the firmware subcommands.
type firmwareOptions struct {
	cache  string // --cache: cache root ("" = user cache dir)
	mirror string // --mirror: base URL replacing https://raw.githubusercontent.com
}

func (o *firmwareOptions) newCache(cmd *cobra.Command) (*firmware.Cache, error) {
	cat, err := firmware.Default()
	if err != nil {
		return nil, err
	}
	c := &firmware.Cache{Dir: o.cache, Catalogue: cat, BaseURL: o.mirror, Logger: newLogger(cmd)}
	if c.Dir == "" {
		if c.Dir, err = firmware.DefaultDir(); err != nil {
			return nil, err
		}
	}
	if showProgress(cmd) {
		stderr := cmd.ErrOrStderr()
		c.Progress = func(f firmware.File, size int64) io.Writer {
			return byteBar(stderr, size, path.Base(f.ID),
				progressbar.OptionSetWidth(30),
				progressbar.OptionThrottle(100*time.Millisecond),
				progressbar.OptionOnCompletion(func() { fmt.Fprintln(stderr) }),
			)
		}
	}
	return c, nil
}

func newFirmwareCmd() *cobra.Command {
	opts := &firmwareOptions{}
	cmd := &cobra.Command{
		Use:   "firmware",
		Short: "Download, verify and cache the pinned Raspberry Pi boot firmware",
		Long: `cm4bench serves real Raspberry Pi boot files (usbboot's mass-storage and recovery files,
bootfiles.bin, recovery.bin, bootloader images, and the netboot firmware). An embedded catalogue
pins each file by URL, size and SHA-256 and groups them into sets:

  msd        usbboot legacy mass-storage mode (bootcode4.bin, bootcode.bin, start4.elf, start.elf)
  recovery   usbboot EEPROM recovery (recovery.bin as bootcode4.bin, config.txt, boot.conf,
             pieeprom.original.bin)
  bootfiles  bootfiles.bin, the 2711/ and 2712/ boot stages
  eeprom     recovery.bin and the BCM2711 bootloader images
  netboot    start4.elf, fixup4.dat, bcm2711-rpi-cm4.dtb, kernel8.img for network boot

Files are downloaded once, verified, and kept under their SHA-256 in the cache
($XDG_CACHE_HOME/cm4bench/firmware, or --cache DIR). A download goes to a temporary file and only
gets its hash name once size and SHA-256 match, so nothing unverified is ever served. The netboot
files are not pinned in the catalogue: their first fetch records size and SHA-256 in the cache's
lock.json, and a later download with other content is refused.

Without internet access, copy the files over and import them with "fetch --from DIR": every file
whose SHA-256 is in the catalogue is taken, whatever its name.`,
		Example: `  cm4bench firmware list
  cm4bench firmware fetch
  cm4bench firmware fetch recovery --from /media/usb/usbboot
  cm4bench firmware verify
  cm4bench firmware dir msd`,
	}
	cmd.PersistentFlags().StringVar(&opts.cache, "cache", "", "firmware cache `DIR` (default: the user cache dir)")
	cmd.PersistentFlags().StringVar(&opts.mirror, "mirror", "", "download from `URL` instead of https://raw.githubusercontent.com (same paths)")
	cmd.AddCommand(newFirmwareListCmd(opts), newFirmwareFetchCmd(opts), newFirmwareVerifyCmd(opts), newFirmwareDirCmd(opts))
	return cmd
}

// firmwareSetReport is the --json form of one set.
type firmwareSetReport struct {
	Set         string               `json:"set"`
	Description string               `json:"description"`
	Files       []firmwareFileReport `json:"files"`
}

type firmwareFileReport struct {
	Name   string `json:"name"`
	ID     string `json:"id"`
	URL    string `json:"url"`
	Size   int64  `json:"size,omitempty"`
	SHA256 string `json:"sha256,omitempty"`
	State  string `json:"state"`
	Path   string `json:"path,omitempty"`
	Detail string `json:"detail,omitempty"`
}

// setReports joins the catalogue's sets with the cache state of their files.
func setReports(c *firmware.Cache, sets []string) ([]firmwareSetReport, error) {
	if len(sets) == 0 {
		sets = c.Catalogue.SetNames()
	}
	st, err := c.Verify(sets...)
	if err != nil {
		return nil, err
	}
	byID := map[string]firmware.Status{}
	for _, s := range st {
		byID[s.File.ID] = s
	}
	var out []firmwareSetReport
	for _, name := range sets {
		set, err := c.Catalogue.Set(name)
		if err != nil {
			return nil, err
		}
		files, _ := c.Catalogue.SetFiles(name)
		r := firmwareSetReport{Set: name, Description: set.Description}
		for _, sf := range files {
			s := byID[sf.File.ID]
			r.Files = append(r.Files, firmwareFileReport{
				Name: sf.Name, ID: sf.File.ID, URL: sf.File.URL, Size: sf.File.Size, SHA256: sf.File.SHA256,
				State: s.State, Path: s.Path, Detail: s.Detail,
			})
		}
		out = append(out, r)
	}
	return out, nil
}

func printSetReports(w io.Writer, reports []firmwareSetReport) error {
	for i, r := range reports {
		if i > 0 {
			fmt.Fprintln(w)
		}
		fmt.Fprintf(w, "%s: %s\n", r.Set, r.Description)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		for _, f := range r.Files {
			size, sum := "-", "pinned on first fetch"
			if f.SHA256 != "" {
				size, sum = fmt.Sprint(f.Size), f.SHA256[:16]+"…"
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", f.Name, size, sum, f.State)
			if f.Detail != "" {
				fmt.Fprintf(tw, "  \t\t%s\t\n", f.Detail)
			}
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	return nil
}

// ---- list ----

type firmwareListOptions struct{ *firmwareOptions }

func newFirmwareListCmd(shared *firmwareOptions) *cobra.Command {
	opts := &firmwareListOptions{shared}
	return &cobra.Command{
		Use:   "list [SET...]",
		Short: "List the catalogue's sets and files and whether they are cached",
		Long: `list prints every set (or the named ones) with its files: served name, size, pinned SHA-256,
and the cache state: ok (cached and verified), missing, unpinned (a netboot file never fetched)
or damaged. Listing re-hashes the cached files; damaged ones are removed.`,
		Example: `  cm4bench firmware list
  cm4bench firmware list recovery --json`,
		RunE: func(cmd *cobra.Command, args []string) error {
			return opts.run(cmd.Context(), cmd, args, cmd.OutOrStdout())
		},
	}
}

func (o *firmwareListOptions) run(_ context.Context, cmd *cobra.Command, sets []string, stdout io.Writer) error {
	c, err := o.newCache(cmd)
	if err != nil {
		return err
	}
	reports, err := setReports(c, sets)
	if err != nil {
		return err
	}
	if wantJSON(cmd) {
		return writeJSON(stdout, reports)
	}
	fmt.Fprintf(stdout, "cache: %s\n\n", c.Dir)
	return printSetReports(stdout, reports)
}

// ---- fetch ----

type firmwareFetchOptions struct {
	*firmwareOptions
	from string // --from: import from this directory instead of downloading
}

func newFirmwareFetchCmd(shared *firmwareOptions) *cobra.Command {
	opts := &firmwareFetchOptions{firmwareOptions: shared}
	cmd := &cobra.Command{
		Use:   "fetch [SET...]",
		Short: "Download and verify firmware sets into the cache",
		Long: `fetch downloads the files of the named sets (default: ` + strings.Join(defaultFetchSets(), ", ") + `; the
netboot set only when named) that are not cached yet, with a progress bar, and verifies each
against its pinned size and SHA-256 before it enters the cache. A wrong checksum or a truncated
download is refused and leaves nothing behind.

--from DIR imports instead of downloading (no network at all): every file under DIR whose SHA-256
is pinned is copied into the cache, whatever its name; the named sets must then be complete.`,
		Example: `  cm4bench firmware fetch
  cm4bench firmware fetch netboot
  cm4bench firmware fetch msd recovery --from ./usbboot-checkout`,
		RunE: func(cmd *cobra.Command, args []string) error {
			return opts.run(cmd.Context(), cmd, args, cmd.OutOrStdout())
		},
	}
	cmd.Flags().StringVar(&opts.from, "from", "", "import verified files from `DIR` instead of downloading")
	return cmd
}

func (o *firmwareFetchOptions) run(ctx context.Context, cmd *cobra.Command, sets []string, stdout io.Writer) error {
	c, err := o.newCache(cmd)
	if err != nil {
		return err
	}
	var imported []firmware.File
	if o.from != "" {
		c.Offline = true
		if imported, err = c.Import(o.from); err != nil {
			return err
		}
		if !wantJSON(cmd) {
			fmt.Fprintf(stdout, "imported %d verified files from %s\n", len(imported), o.from)
		}
	}
	if len(sets) == 0 && o.from == "" {
		sets = defaultFetchSets()
	}
	if len(sets) > 0 {
		if _, err := c.FetchAll(ctx, sets...); err != nil {
			return err
		}
	}
	reportSets := sets
	if len(reportSets) == 0 {
		reportSets = defaultFetchSets()
	}
	reports, err := setReports(c, reportSets)
	if err != nil {
		return err
	}
	if wantJSON(cmd) {
		ids := []string{}
		for _, f := range imported {
			ids = append(ids, f.ID)
		}
		return writeJSON(stdout, map[string]any{"cache": c.Dir, "imported": ids, "sets": reports})
	}
	return printSetReports(stdout, reports)
}

// ---- verify ----

type firmwareVerifyOptions struct{ *firmwareOptions }

func newFirmwareVerifyCmd(shared *firmwareOptions) *cobra.Command {
	opts := &firmwareVerifyOptions{shared}
	return &cobra.Command{
		Use:   "verify [SET...]",
		Short: "Re-hash the cached firmware and report damaged or missing files",
		Long: `verify re-reads every cached file and checks its size and SHA-256 against the catalogue
(or the lock file for netboot files). A damaged file is removed from the cache. The exit status
is 1 when any file is damaged, or when a named set is incomplete.`,
		Example: `  cm4bench firmware verify
  cm4bench firmware verify msd recovery`,
		RunE: func(cmd *cobra.Command, args []string) error {
			return opts.run(cmd.Context(), cmd, args, cmd.OutOrStdout())
		},
	}
}

func (o *firmwareVerifyOptions) run(_ context.Context, cmd *cobra.Command, sets []string, stdout io.Writer) error {
	c, err := o.newCache(cmd)
	if err != nil {
		return err
	}
	reports, err := setReports(c, sets)
	if err != nil {
		return err
	}
	var damaged, missing []string
	for _, r := range reports {
		for _, f := range r.Files {
			switch f.State {
			case "damaged":
				damaged = append(damaged, r.Set+"/"+f.Name)
			case "missing", "unpinned":
				missing = append(missing, r.Set+"/"+f.Name)
			}
		}
	}
	if wantJSON(cmd) {
		err = writeJSON(stdout, reports)
	} else {
		err = printSetReports(stdout, reports)
	}
	if err != nil {
		return err
	}
	switch {
	case len(damaged) > 0:
		return &ExitError{Code: 1, Err: fmt.Errorf("firmware verify: damaged and removed: %s (fetch them again)", strings.Join(damaged, ", "))}
	case len(sets) > 0 && len(missing) > 0:
		return &ExitError{Code: 1, Err: fmt.Errorf("firmware verify: not cached: %s (run cm4bench firmware fetch %s)", strings.Join(missing, ", "), strings.Join(sets, " "))}
	}
	return nil
}

// ---- dir ----

type firmwareDirOptions struct {
	*firmwareOptions
	offline bool
}

func newFirmwareDirCmd(shared *firmwareOptions) *cobra.Command {
	opts := &firmwareDirOptions{firmwareOptions: shared}
	cmd := &cobra.Command{
		Use:   "dir SET",
		Short: "Print a directory holding a verified set under its served names",
		Long: `dir materialises SET as a directory of verified files under the names USB boot serves
them as (hard links into the cache, never symlinks) and prints its path. Missing files are
downloaded first unless --offline. The directory's name depends on its content, so it can be
handed to rpiboot -d or cm4bench usbboot as is.`,
		Example: `  cm4bench firmware dir recovery
  rpiboot -d "$(cm4bench firmware dir msd --offline)"`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return opts.run(cmd.Context(), cmd, args[0], cmd.OutOrStdout())
		},
	}
	cmd.Flags().BoolVar(&opts.offline, "offline", false, "never download; fail if a file is not cached")
	return cmd
}

func (o *firmwareDirOptions) run(ctx context.Context, cmd *cobra.Command, set string, stdout io.Writer) error {
	c, err := o.newCache(cmd)
	if err != nil {
		return err
	}
	c.Offline = o.offline
	dir, err := c.SetDir(ctx, set)
	if err != nil {
		return err
	}
	if wantJSON(cmd) {
		return writeJSON(stdout, map[string]string{"set": set, "dir": dir})
	}
	_, err = fmt.Fprintln(stdout, dir)
	return err
}

// Catalogue files set-boot-order uses when --recovery or --image is
// omitted.
const (
	recoveryBinID  = "rpi-eeprom/firmware-2711/latest/recovery.bin"
	bootfilesID    = "usbboot/firmware/bootfiles.bin"
	defaultImageID = "rpi-eeprom/firmware-2711/default/pieeprom-2026-05-17.bin"
)

// cachedPath returns the path of a verified catalogue file in the firmware
// cache, never downloading.
func cachedPath(cacheDir, id string) (string, error) {
	cat, err := firmware.Default()
	if err != nil {
		return "", err
	}
	f, err := cat.File(id)
	if err != nil {
		return "", err
	}
	return (&firmware.Cache{Dir: cacheDir, Catalogue: cat, Offline: true}).Lookup(f)
}

// cachedFile returns the verified bytes of a catalogue file from the
// firmware cache, never downloading (set-boot-order must not reach the
// network behind the technician's back).
func cachedFile(_ context.Context, cacheDir, id string) ([]byte, error) {
	cat, err := firmware.Default()
	if err != nil {
		return nil, err
	}
	f, err := cat.File(id)
	if err != nil {
		return nil, err
	}
	c := &firmware.Cache{Dir: cacheDir, Catalogue: cat, Offline: true}
	p, err := c.Lookup(f)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("read cached %s: %w", id, err)
	}
	// re-check: the blob could change between Lookup and ReadFile
	if got := sha256Hex(b); int64(len(b)) != f.Size || got != f.SHA256 {
		return nil, fmt.Errorf("cached %s changed while reading (sha256 %s): %w", id, got, firmware.ErrChecksum)
	}
	return b, nil
}

// recoveryFromCache returns the verified recovery.bin from the firmware
// cache.
func recoveryFromCache(ctx context.Context, step, cacheDir string) ([]byte, error) {
	b, err := cachedFile(ctx, cacheDir, recoveryBinID)
	if err != nil {
		return nil, fmt.Errorf("%s: no --recovery FILE given and recovery.bin is not usable from the firmware cache "+
			"(run `cm4bench firmware fetch recovery` or pass --recovery): %w", step, err)
	}
	return b, nil
}
