package serve

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cm4bench/cm4bench/firmware"
	"github.com/cm4bench/cm4bench/internal/atomicfile"
	"github.com/cm4bench/cm4bench/internal/contract"
	"github.com/cm4bench/cm4bench/netboot/initramfs"
)

// PrepareMode says what PrepareTFTPRoot installs.
type PrepareMode string

const (
	// PrepareAll places the catalogue's netboot firmware (from the
	// firmware cache, never downloaded here) and the initramfs.
	PrepareAll PrepareMode = "all"
	// PrepareInitramfsOnly leaves the firmware files alone (the
	// technician supplies them) and installs only the initramfs and the
	// config.txt / cmdline.txt edits.
	PrepareInitramfsOnly PrepareMode = "initramfs-only"
)

// FirmwareSet is the catalogue set whose files PrepareAll places.
const FirmwareSet = "netboot"

// Errors wrapped by PrepareTFTPRoot, so callers can add their own hints.
var (
	// ErrFirmwareMissing: a netboot firmware file is not in the cache.
	ErrFirmwareMissing = errors.New("netboot firmware is not in the firmware cache")
	// ErrFirmwareConflict: the TFTP root holds a firmware file with other
	// content than the catalogue's, and ReplaceFirmware is off.
	ErrFirmwareConflict = errors.New("the TFTP root holds a different firmware file")
	// ErrNoAgent: no cm4agent executable was given.
	ErrNoAgent = errors.New("no cm4agent executable")
)

// FirmwareSource finds verified firmware files without downloading them.
// *firmware.Cache satisfies it (Lookup never touches the network); a file
// that is not there gives an error wrapping firmware.ErrNotCached.
type FirmwareSource interface {
	Lookup(f firmware.File) (string, error)
}

// PrepareOptions are the inputs of PrepareTFTPRoot.
type PrepareOptions struct {
	// Root is the TFTP root (must exist). Bench.PrepareTFTPRoot defaults it
	// to Config.TFTPRoot.
	Root string
	// ServerURL is the URL the boards reach the API at; it goes into
	// cmdline.txt (cm4bench.server=) and the agent's config.
	// Bench.PrepareTFTPRoot defaults it to Bench.DeviceURL.
	ServerURL string
	// Mode is PrepareAll ("" means PrepareAll) or PrepareInitramfsOnly.
	Mode PrepareMode
	// Agent is the cm4agent executable for Arch. Required.
	Agent []byte
	// Arch is the boards' architecture; "" means arm64 (CM4). The agent
	// must be an ELF for it.
	Arch string
	// Target is the agent's eMMC device; "" means /dev/mmcblk0.
	Target string
	// Modules are packed into the initramfs and loaded in this order.
	Modules []initramfs.Module
	// Firmware is where PrepareAll takes the firmware from. Required for
	// PrepareAll.
	Firmware FirmwareSource
	// Catalogue lists the FirmwareSet files; nil means firmware.Default().
	Catalogue *firmware.Catalogue
	// ReplaceFirmware replaces a firmware file whose content differs from
	// the catalogue's; the old file is kept as NAME.orig-<sha256 prefix>.
	// Without it such a file is an error wrapping ErrFirmwareConflict.
	ReplaceFirmware bool
	// Logger receives one line per file changed; nil = silent.
	Logger *slog.Logger
	// Signed, when set, also packs the prepared files into boot.img and
	// signs it as boot.sig, for boards in secure-boot mode (signed.go).
	Signed *SignedBoot
}

// Report says what PrepareTFTPRoot did, file by file.
type Report struct {
	Root      string       `json:"root"`
	ServerURL string       `json:"server_url"`
	Mode      PrepareMode  `json:"mode"`
	Files     []FileAction `json:"files"`
	// Warnings are problems that do not stop the bench (for example
	// start4.elf missing in initramfs-only mode).
	Warnings []string `json:"warnings,omitempty"`
}

// Changed lists the files that were written.
func (r Report) Changed() []string {
	var out []string
	for _, f := range r.Files {
		if f.Action != ActionUnchanged {
			out = append(out, f.Name)
		}
	}
	return out
}

// FileAction is what happened to one file of the TFTP root.
type FileAction struct {
	Name   string `json:"name"`
	Action string `json:"action"` // Action* constants
	SHA256 string `json:"sha256,omitempty"`
	// Backup is where a replaced firmware file was kept.
	Backup string `json:"backup,omitempty"`
}

// FileAction.Action values.
const (
	ActionPlaced    = "placed"    // firmware file was absent and is now the catalogue's
	ActionReplaced  = "replaced"  // firmware file differed; kept as Backup, now the catalogue's
	ActionWritten   = "written"   // initrd.img, config.txt or cmdline.txt created or changed
	ActionUnchanged = "unchanged" // already as wanted: not touched
)

// PrepareTFTPRoot makes root a netboot TFTP root for the bench: with
// PrepareAll it places the catalogue's netboot firmware (start4.elf,
// fixup4.dat, bcm2711-rpi-cm4.dtb, kernel8.img) from o.Firmware, then it
// builds the initramfs (cm4agent as /init, o.ServerURL in its config) and
// installs it through initramfs.PrepareTFTPRoot: initrd.img, the
// "initramfs initrd.img followkernel" line of config.txt and the
// cm4bench.server= argument of cmdline.txt.
//
// Everything is checked before anything is written: a missing agent, a
// firmware file not in the cache (ErrFirmwareMissing) or a different
// firmware file already in root (ErrFirmwareConflict, unless
// ReplaceFirmware) leave root untouched. Files already as wanted are not
// rewritten, so a second run changes nothing. Every write is atomic.
func PrepareTFTPRoot(ctx context.Context, o PrepareOptions) (Report, error) {
	rep := Report{Root: o.Root, ServerURL: o.ServerURL, Mode: o.Mode}
	if rep.Mode == "" {
		rep.Mode = PrepareAll
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	fail := func(err error) (Report, error) {
		return Report{}, fmt.Errorf("serve: prepare TFTP root %s: %w", o.Root, err)
	}
	if rep.Mode != PrepareAll && rep.Mode != PrepareInitramfsOnly {
		return fail(fmt.Errorf("unknown mode %q (want %s or %s)", o.Mode, PrepareAll, PrepareInitramfsOnly))
	}
	if o.Root == "" {
		return fail(errors.New("no TFTP root given (--tftp-root DIR)"))
	}
	if fi, err := os.Stat(o.Root); err != nil || !fi.IsDir() {
		return fail(errors.New("not a directory"))
	}
	if err := checkServerURL(o.ServerURL); err != nil {
		return fail(err)
	}
	img, err := buildInitramfs(o)
	if err != nil {
		return fail(err)
	}

	var plan []fwPlan
	if rep.Mode == PrepareAll {
		plan, err = planFirmware(o)
		if err != nil {
			return fail(err)
		}
	} else if _, err := os.Stat(filepath.Join(o.Root, "start4.elf")); err != nil {
		w := "initramfs-only: the TFTP root has no start4.elf, so boards cannot netboot from it yet (run without =initramfs-only to place the catalogue's firmware)"
		rep.Warnings = append(rep.Warnings, w)
		log.Warn("TFTP root has no start4.elf", "root", o.Root)
	}
	if err := ctx.Err(); err != nil {
		return fail(err)
	}

	for _, p := range plan {
		fa, err := p.apply(o.Root)
		if err != nil {
			return fail(err)
		}
		if fa.Action != ActionUnchanged {
			log.Info("TFTP root: firmware "+fa.Action, "file", fa.Name, "sha256", fa.SHA256, "backup", fa.Backup)
		}
		rep.Files = append(rep.Files, fa)
	}

	// initrd.img, config.txt, cmdline.txt: compare with what is there,
	// and write only when something differs.
	want := map[string][]byte{"initrd.img": img}
	for name, edit := range map[string]func(string) string{
		"config.txt":  initramfs.EditConfigTxt,
		"cmdline.txt": func(s string) string { return initramfs.EditCmdline(s, o.ServerURL) },
	} {
		cur, err := readIfExists(filepath.Join(o.Root, name))
		if err != nil {
			return fail(err)
		}
		want[name] = []byte(edit(string(cur)))
	}
	var installed []FileAction
	dirty := false
	for _, name := range []string{"initrd.img", "config.txt", "cmdline.txt"} {
		cur, err := readIfExists(filepath.Join(o.Root, name))
		if err != nil {
			return fail(err)
		}
		fa := FileAction{Name: name, Action: ActionUnchanged, SHA256: sum(want[name])}
		if cur == nil || !bytes.Equal(cur, want[name]) {
			fa.Action, dirty = ActionWritten, true
		}
		installed = append(installed, fa)
	}
	if dirty {
		if err := initramfs.PrepareTFTPRoot(o.Root, img, o.ServerURL); err != nil {
			return fail(err)
		}
		for _, fa := range installed {
			if fa.Action != ActionUnchanged {
				log.Info("TFTP root: "+fa.Action, "file", fa.Name, "sha256", fa.SHA256)
			}
		}
	}
	rep.Files = append(rep.Files, installed...)
	if o.Signed != nil {
		// Last: boot.img packs what was just installed.
		signed, err := BuildSignedBoot(o.Root, *o.Signed)
		if err != nil {
			return fail(err)
		}
		for _, fa := range signed {
			log.Info("TFTP root: "+fa.Action, "file", fa.Name, "sha256", fa.SHA256)
		}
		rep.Files = append(rep.Files, signed...)
	}
	for _, w := range overrideWarnings(o.Root, o.ServerURL) {
		rep.Warnings = append(rep.Warnings, w)
		log.Warn("TFTP root: per-board override misses the bench settings", "detail", w)
	}
	log.Info("TFTP root prepared", "root", o.Root, "server", o.ServerURL, "mode", string(rep.Mode), "changed", len(rep.Changed()))
	return rep, nil
}

func checkServerURL(s string) error {
	if s == "" {
		return errors.New("no server URL for the boards")
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || strings.ContainsAny(s, " \t\n\"") {
		return fmt.Errorf("server URL %q: want http://HOST:PORT", s)
	}
	if ip, err := netip.ParseAddr(u.Hostname()); err == nil && (ip.IsLoopback() || ip.IsUnspecified()) {
		return fmt.Errorf("server URL %q: boards cannot reach %s (give --advertise-url, or an --iface with the bench address)", s, ip)
	}
	return nil
}

func buildInitramfs(o PrepareOptions) ([]byte, error) {
	arch := o.Arch
	if arch == "" {
		arch = "arm64"
	}
	if len(o.Agent) == 0 {
		return nil, fmt.Errorf("%w: pass --agent FILE (a cm4agent built with CGO_ENABLED=0 GOOS=linux GOARCH=%s go build ./cmd/cm4agent), or use a cm4bench built by make build, which embeds it", ErrNoAgent, arch)
	}
	got, err := initramfs.ELFArch(o.Agent)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	if got != arch {
		return nil, fmt.Errorf("agent is a cm4agent for %s, the boards need %s", got, arch)
	}
	img, err := initramfs.Build(initramfs.Options{
		Agent:   o.Agent,
		Config:  contract.AgentConfig{Server: strings.TrimRight(o.ServerURL, "/"), Target: o.Target},
		Modules: o.Modules,
	})
	if err != nil {
		return nil, err
	}
	return img, nil
}

// fwPlan is one firmware file to place: blob is its verified cached copy.
type fwPlan struct {
	name, blob, want string
	have             string // sha256 of the file in the root; "" = absent
	replace          bool
}

// planFirmware looks every FirmwareSet file up and compares it with the
// root. Missing cache entries and conflicts are reported all at once.
func planFirmware(o PrepareOptions) ([]fwPlan, error) {
	if o.Firmware == nil {
		return nil, errors.New("no firmware cache given")
	}
	cat := o.Catalogue
	if cat == nil {
		var err error
		if cat, err = firmware.Default(); err != nil {
			return nil, err
		}
	}
	files, err := cat.SetFiles(FirmwareSet)
	if err != nil {
		return nil, err
	}
	var plan []fwPlan
	var missing, conflicts []string
	for _, sf := range files {
		blob, err := o.Firmware.Lookup(sf.File)
		if errors.Is(err, firmware.ErrNotCached) {
			missing = append(missing, sf.Name)
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("firmware %s: %w", sf.Name, err)
		}
		want, _, err := firmware.FileSHA256(blob)
		if err != nil {
			return nil, fmt.Errorf("firmware %s: %w", sf.Name, err)
		}
		p := fwPlan{name: sf.Name, blob: blob, want: want}
		dst := filepath.Join(o.Root, filepath.FromSlash(sf.Name))
		fi, err := os.Stat(dst)
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			return nil, fmt.Errorf("%s: %w", sf.Name, err)
		case !fi.Mode().IsRegular():
			return nil, fmt.Errorf("%s in the TFTP root is not a regular file", sf.Name)
		default:
			if p.have, _, err = firmware.FileSHA256(dst); err != nil {
				return nil, fmt.Errorf("%s: %w", sf.Name, err)
			}
			if p.have != p.want {
				if !o.ReplaceFirmware {
					conflicts = append(conflicts, fmt.Sprintf("%s (sha256 %.12s, the catalogue's is %.12s)", sf.Name, p.have, p.want))
				}
				p.replace = true
			}
		}
		plan = append(plan, p)
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("%w: %s: fetch it first with `cm4bench firmware fetch %s` (serve never downloads), or use --prepare-tftp-root=%s if the TFTP root already has its firmware",
			ErrFirmwareMissing, strings.Join(missing, ", "), FirmwareSet, PrepareInitramfsOnly)
	}
	if len(conflicts) > 0 {
		return nil, fmt.Errorf("%w: %s: nothing was changed; keep your files with --prepare-tftp-root=%s, or replace them with --replace-firmware (yours are kept as NAME.orig-<sha256>)",
			ErrFirmwareConflict, strings.Join(conflicts, "; "), PrepareInitramfsOnly)
	}
	return plan, nil
}

// apply places one firmware file, keeping a differing old one as a backup.
func (p fwPlan) apply(root string) (FileAction, error) {
	fa := FileAction{Name: p.name, SHA256: p.want}
	dst := filepath.Join(root, filepath.FromSlash(p.name))
	switch {
	case p.have == p.want:
		fa.Action = ActionUnchanged
		return fa, nil
	case p.replace:
		fa.Action = ActionReplaced
		fa.Backup = p.name + ".orig-" + p.have[:12]
		bak := filepath.Join(root, filepath.FromSlash(fa.Backup))
		if err := os.Link(dst, bak); err != nil && !errors.Is(err, fs.ErrExist) {
			if err := copyFile(dst, bak, p.have); err != nil {
				return fa, fmt.Errorf("keep %s as %s: %w", p.name, fa.Backup, err)
			}
		}
	default:
		fa.Action = ActionPlaced
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return fa, fmt.Errorf("place %s: %w", p.name, err)
	}
	if err := copyFile(p.blob, dst, p.want); err != nil {
		return fa, fmt.Errorf("place %s: %w", p.name, err)
	}
	return fa, nil
}

// copyFile copies src to dst atomically (mode 0644). With want set, the
// bytes copied must hash to it (the cache blob was verified when it was
// looked up; this catches a change since), else nothing is committed.
func copyFile(src, dst, want string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := atomicfile.Create(dst, 0o644)
	if err != nil {
		return err
	}
	defer out.Abort()
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(out, h), in); err != nil {
		return err
	}
	if got := hex.EncodeToString(h.Sum(nil)); want != "" && got != want {
		return fmt.Errorf("%s changed while it was copied (sha256 %s, want %s)", src, got, want)
	}
	return out.Commit()
}

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func readIfExists(p string) ([]byte, error) {
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", filepath.Base(p), err)
	}
	return b, nil
}

// DeviceURL is the URL the boards reach the API at: the bench address with
// the HTTP port (contract.DefaultPort unless Config.HTTPAddr says otherwise),
// or Config.HTTPAddr's host when it is a specific, non-loopback address.
// It is an error when boards could not reach any listener: no bench
// address, HTTP on loopback only, or port 0.
func (b *Bench) DeviceURL() (string, error) {
	host, port := "", contract.DefaultPort
	if b.cfg.HTTPAddr != "" {
		h, p, err := net.SplitHostPort(b.cfg.HTTPAddr)
		if err != nil {
			return "", fmt.Errorf("serve: --http %q: %w", b.cfg.HTTPAddr, err)
		}
		n, err := strconv.Atoi(p)
		if err != nil || n <= 0 || n > 65535 {
			return "", fmt.Errorf("serve: --http %q: boards need a fixed port (not %q)", b.cfg.HTTPAddr, p)
		}
		port = n
		if ip, err := netip.ParseAddr(h); err == nil {
			switch {
			case ip.IsLoopback():
				return "", fmt.Errorf("serve: --http %s listens on loopback only, which boards cannot reach (give --advertise-url, or listen on the bench address)", b.cfg.HTTPAddr)
			case !ip.IsUnspecified():
				host = ip.String()
			}
		} else if h != "" {
			host = h // a name the technician chose
		}
	}
	if host == "" {
		if !b.bench.IsValid() {
			return "", errors.New("serve: cannot tell the address boards reach this server at: no bench interface (give --iface, or --advertise-url)")
		}
		host = b.bench.Addr().String()
	}
	return "http://" + net.JoinHostPort(host, strconv.Itoa(port)), nil
}

// PrepareTFTPRoot is PrepareTFTPRoot for this bench: Root defaults to
// Config.TFTPRoot, ServerURL to DeviceURL, Logger to Config.Logger. What
// it did is recorded as a contract.EventTFTPPrepared event when a file changed.
func (b *Bench) PrepareTFTPRoot(ctx context.Context, o PrepareOptions) (Report, error) {
	if o.Root == "" {
		o.Root = b.cfg.TFTPRoot
	}
	if o.ServerURL == "" {
		u, err := b.DeviceURL()
		if err != nil {
			return Report{}, err
		}
		o.ServerURL = u
	}
	if o.Logger == nil {
		o.Logger = b.cfg.Logger
	}
	rep, err := PrepareTFTPRoot(ctx, o)
	if err != nil {
		return rep, err
	}
	if changed := rep.Changed(); len(changed) > 0 || len(rep.Warnings) > 0 {
		ev := contract.Event{
			Kind:    contract.EventTFTPPrepared,
			Message: fmt.Sprintf("TFTP root prepared for %s: %s", rep.ServerURL, changedText(changed)),
			Fields:  map[string]any{"root": rep.Root, "server_url": rep.ServerURL, "mode": string(rep.Mode), "changed": changed},
		}
		if len(rep.Warnings) > 0 {
			ev.Level = "warn"
			ev.Fields["warnings"] = rep.Warnings
		}
		if _, err := b.st.Emit(ctx, ev); err != nil {
			b.log().Error("recording event", "kind", ev.Kind, "err", err)
		}
	}
	return rep, nil
}

func changedText(c []string) string {
	if len(c) == 0 {
		return "nothing changed"
	}
	return strings.Join(c, ", ") + " written"
}

// overrideWarnings checks the per-board folders of the root (<serial>/ or
// <mac-with-dashes>/, which the TFTP server prefers for that board): a
// config.txt there without the initramfs line, or a cmdline.txt without
// this server's cm4bench.server=, would keep that board from running the
// agent. They are the technician's files, so they are reported, not edited.
func overrideWarnings(root, serverURL string) []string {
	ents, err := os.ReadDir(root)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		if b, err := os.ReadFile(filepath.Join(root, e.Name(), "config.txt")); err == nil &&
			initramfs.EditConfigTxt(string(b)) != string(b) {
			out = append(out, fmt.Sprintf("%s/config.txt overrides the root's for that board and does not end with %q", e.Name(), initramfs.InitramfsLine))
		}
		if b, err := os.ReadFile(filepath.Join(root, e.Name(), "cmdline.txt")); err == nil &&
			initramfs.EditCmdline(string(b), serverURL) != string(b) {
			out = append(out, fmt.Sprintf("%s/cmdline.txt overrides the root's for that board and does not end with cm4bench.server=%s", e.Name(), serverURL))
		}
	}
	return out
}
