// Package initramfs builds the netboot initramfs of cm4bench: a
// gzip-compressed newc cpio archive (written with u-root's pkg/cpio) whose
// /init is cm4agent, with its configuration in /etc/cm4agent.json, the kernel
// modules it loads under /lib/modules, and /dev/console. The output is
// reproducible: fixed order, inode numbers, owners and mtimes, and a gzip
// header with no name and no time. PrepareTFTPRoot installs it next to the
// Raspberry Pi firmware in a TFTP root.
package initramfs

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/u-root/u-root/pkg/cpio"
	"github.com/ulikunitz/xz"

	"github.com/cm4bench/cm4bench/internal/atomicfile"
	"github.com/cm4bench/cm4bench/internal/contract"
)

// Module is one kernel module to pack, in load order.
type Module struct {
	Name string // file name under /lib/modules, e.g. "virtio_net.ko"
	Data []byte // the uncompressed .ko
}

// Options are the inputs of an initramfs.
type Options struct {
	// Agent is the cm4agent executable for the board's architecture.
	Agent []byte
	// Config goes to /etc/cm4agent.json; Modules is filled from Modules
	// below.
	Config contract.AgentConfig
	// Modules are packed under /lib/modules and loaded in this order.
	Modules []Module
}

// Unix mode bits as cpio stores them.
const (
	modeDir  = 0o040000
	modeFile = 0o100000
	modeChr  = 0o020000
)

// Records returns the archive's records in their fixed order.
func Records(o Options) ([]cpio.Record, error) {
	if len(o.Agent) == 0 {
		return nil, errors.New("initramfs: no agent executable")
	}
	if !isELF(o.Agent) {
		return nil, errors.New("initramfs: the agent is not an ELF executable")
	}
	cfg := o.Config
	cfg.Modules = nil
	seen := map[string]bool{}
	for _, m := range o.Modules {
		if m.Name == "" || strings.ContainsAny(m.Name, "/\x00") || m.Name == "." || m.Name == ".." {
			return nil, fmt.Errorf("initramfs: bad module name %q", m.Name)
		}
		if seen[m.Name] {
			return nil, fmt.Errorf("initramfs: module %s listed twice", m.Name)
		}
		seen[m.Name] = true
		cfg.Modules = append(cfg.Modules, m.Name)
	}
	js, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("initramfs: config: %w", err)
	}
	js = append(js, '\n')

	var recs []cpio.Record
	ino := uint64(0)
	add := func(name string, mode uint64, data []byte, rmajor, rminor uint64) {
		ino++
		nlink := uint64(1)
		if mode&0o170000 == modeDir {
			nlink = 2
		}
		recs = append(recs, cpio.Record{
			ReaderAt: bytes.NewReader(data),
			Info: cpio.Info{
				Ino: ino, Mode: mode, NLink: nlink, FileSize: uint64(len(data)),
				Rmajor: rmajor, Rminor: rminor, Name: name,
			},
		})
	}
	for _, d := range []string{"dev", "etc", "lib", "lib/modules", "proc", "sys", "tmp"} {
		perm := uint64(0o755)
		if d == "tmp" {
			perm = 0o1777
		}
		add(d, modeDir|perm, nil, 0, 0)
	}
	add("dev/console", modeChr|0o600, nil, 5, 1)
	add(strings.TrimPrefix(contract.AgentConfigPath, "/"), modeFile|0o644, js, 0, 0)
	add("init", modeFile|0o755, o.Agent, 0, 0)
	for _, m := range o.Modules {
		add(strings.TrimPrefix(contract.AgentModulesDir, "/")+"/"+m.Name, modeFile|0o644, m.Data, 0, 0)
	}
	return recs, nil
}

// Write writes the gzip-compressed newc archive to w.
func Write(w io.Writer, o Options) error {
	recs, err := Records(o)
	if err != nil {
		return err
	}
	zw, err := gzip.NewWriterLevel(w, gzip.BestCompression)
	if err != nil {
		return err
	}
	// The zero Header: no name, no mtime, OS unknown.
	cw := cpio.Newc.Writer(zw)
	for _, r := range recs {
		if err := cw.WriteRecord(r); err != nil {
			return fmt.Errorf("initramfs: cpio %s: %w", r.Name, err)
		}
	}
	if err := cpio.WriteTrailer(cw); err != nil {
		return fmt.Errorf("initramfs: cpio trailer: %w", err)
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("initramfs: gzip: %w", err)
	}
	return nil
}

// Build returns the archive as bytes.
func Build(o Options) ([]byte, error) {
	var b bytes.Buffer
	if err := Write(&b, o); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

func isELF(b []byte) bool { return len(b) > 4 && string(b[:4]) == "\x7fELF" }

// ELFArch names the architecture of an ELF executable: "arm64", "amd64",
// or the ELF machine name.
func ELFArch(b []byte) (string, error) {
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return "", fmt.Errorf("initramfs: not an ELF file: %w", err)
	}
	switch f.Machine {
	case elf.EM_AARCH64:
		return "arm64", nil
	case elf.EM_X86_64:
		return "amd64", nil
	}
	return f.Machine.String(), nil
}

// ResolveModules finds the named modules (without ".ko"; '-' and '_' are
// the same) under dir (a lib/modules/<version> tree or any directory of
// .ko, .ko.xz, .ko.zst or .ko.gz files) and returns them, decompressed, with
// their dependencies (the "depends=" of each module's .modinfo) first.
func ResolveModules(dir string, names []string) ([]Module, error) {
	index := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		if n, ok := moduleName(d.Name()); ok {
			if _, dup := index[n]; !dup {
				index[n] = p
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("initramfs: modules dir: %w", err)
	}
	builtin := map[string]bool{}
	if b, err := os.ReadFile(filepath.Join(dir, "modules.builtin")); err == nil {
		for _, l := range strings.Fields(string(b)) {
			if n, ok := moduleName(filepath.Base(l)); ok {
				builtin[n] = true
			}
		}
	}
	var out []Module
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(n, from string) error
	visit = func(n, from string) error {
		n = canon(n)
		switch state[n] {
		case 1:
			return fmt.Errorf("initramfs: module dependency cycle at %s", n)
		case 2:
			return nil
		}
		p, ok := index[n]
		if !ok {
			if builtin[n] {
				state[n] = 2
				return nil
			}
			if from != "" {
				return fmt.Errorf("initramfs: module %s (needed by %s) not found under %s", n, from, dir)
			}
			return fmt.Errorf("initramfs: module %s not found under %s", n, dir)
		}
		state[n] = 1
		data, err := readModule(p)
		if err != nil {
			return err
		}
		deps, err := modinfoDepends(data)
		if err != nil {
			return fmt.Errorf("initramfs: module %s: %w", p, err)
		}
		for _, d := range deps {
			if err := visit(d, n); err != nil {
				return err
			}
		}
		state[n] = 2
		out = append(out, Module{Name: n + ".ko", Data: data})
		return nil
	}
	for _, n := range names {
		if n = strings.TrimSpace(n); n == "" {
			continue
		}
		if err := visit(strings.TrimSuffix(n, ".ko"), ""); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func canon(n string) string { return strings.ReplaceAll(n, "-", "_") }

func moduleName(file string) (string, bool) {
	for _, suf := range []string{".ko", ".ko.xz", ".ko.zst", ".ko.gz"} {
		if n, ok := strings.CutSuffix(file, suf); ok {
			return canon(n), true
		}
	}
	return "", false
}

func readModule(p string) ([]byte, error) {
	raw, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("initramfs: %w", err)
	}
	var r io.Reader
	switch {
	case strings.HasSuffix(p, ".xz"):
		r, err = xz.NewReader(bytes.NewReader(raw))
	case strings.HasSuffix(p, ".zst"):
		var d *zstd.Decoder
		d, err = zstd.NewReader(bytes.NewReader(raw))
		if err == nil {
			defer d.Close()
			r = d
		}
	case strings.HasSuffix(p, ".gz"):
		r, err = gzip.NewReader(bytes.NewReader(raw))
	default:
		return raw, nil
	}
	if err != nil {
		return nil, fmt.Errorf("initramfs: decompress %s: %w", p, err)
	}
	out, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("initramfs: decompress %s: %w", p, err)
	}
	return out, nil
}

// modinfoDepends returns the "depends=" list of a module's .modinfo section.
func modinfoDepends(ko []byte) ([]string, error) {
	f, err := elf.NewFile(bytes.NewReader(ko))
	if err != nil {
		return nil, fmt.Errorf("not an ELF module: %w", err)
	}
	s := f.Section(".modinfo")
	if s == nil {
		return nil, errors.New("no .modinfo section")
	}
	b, err := s.Data()
	if err != nil {
		return nil, fmt.Errorf("read .modinfo: %w", err)
	}
	for _, kv := range bytes.Split(b, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok {
			var deps []string
			for _, d := range strings.Split(string(v), ",") {
				if d != "" {
					deps = append(deps, d)
				}
			}
			sort.Strings(deps)
			return deps, nil
		}
	}
	return nil, nil
}

// PrepareTFTPRoot installs an initramfs in a TFTP root that already holds
// (or will hold) the Raspberry Pi firmware: it writes root/initrd.img, makes
// config.txt carry "initramfs initrd.img followkernel" (replacing another
// initramfs line), and makes cmdline.txt carry "cm4bench.server=URL"
// (replacing an earlier one). Each file is replaced atomically.
func PrepareTFTPRoot(root string, img []byte, serverURL string) error {
	if serverURL == "" || strings.ContainsAny(serverURL, " \t\n\"") {
		return fmt.Errorf("initramfs: prepare %s: bad server URL %q", root, serverURL)
	}
	if err := atomicfile.WriteFile(filepath.Join(root, "initrd.img"), img, 0o644); err != nil {
		return fmt.Errorf("initramfs: write initrd.img: %w", err)
	}
	cfgPath := filepath.Join(root, "config.txt")
	cfg, err := readOptional(cfgPath)
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(cfgPath, []byte(EditConfigTxt(string(cfg))), 0o644); err != nil {
		return fmt.Errorf("initramfs: write config.txt: %w", err)
	}
	clPath := filepath.Join(root, "cmdline.txt")
	cl, err := readOptional(clPath)
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(clPath, []byte(EditCmdline(string(cl), serverURL)), 0o644); err != nil {
		return fmt.Errorf("initramfs: write cmdline.txt: %w", err)
	}
	return nil
}

func readOptional(p string) ([]byte, error) {
	b, err := os.ReadFile(p)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("initramfs: read %s: %w", filepath.Base(p), err)
	}
	return b, nil
}

// InitramfsLine is the config.txt line that loads our initramfs.
const InitramfsLine = "initramfs initrd.img followkernel"

// benchSettings are the config.txt settings the bench block adds when the
// file does not set them anywhere: the UART, so the console=serial0 we put
// on the kernel command line shows the boot (on a CM4 serial0 is the
// mini-UART, off without enable_uart=1), and the 64-bit kernel (the default
// on the Pi 4 family, stated so an older firmware agrees).
var benchSettings = []struct{ key, line string }{
	{"enable_uart", "enable_uart=1"},
	{"arm_64bit", "arm_64bit=1"},
}

// EditConfigTxt returns config.txt with InitramfsLine in the unconditional
// [all] section at the end, and any other top-level initramfs line
// removed; enable_uart=1 and arm_64bit=1 join it when the file sets neither
// (a value the technician set anywhere is left as it is). Editing twice
// changes nothing.
func EditConfigTxt(s string) string {
	var out []string
	for _, l := range strings.Split(strings.ReplaceAll(s, "\r\n", "\n"), "\n") {
		l = strings.TrimRight(l, "\r")
		f := strings.Fields(l)
		if len(f) > 0 && (f[0] == "initramfs" || f[0] == "ramfsfile" || f[0] == "ramfsaddr") {
			continue
		}
		out = append(out, l)
	}
	ours := func(l string) bool {
		for _, b := range benchSettings {
			if l == b.line {
				return true
			}
		}
		return false
	}
	// Drop trailing blank lines, a trailing empty [all] and the bench
	// settings of an earlier edit, so that editing twice changes nothing.
	for len(out) > 0 {
		last := strings.TrimSpace(out[len(out)-1])
		if last != "" && !strings.EqualFold(last, "[all]") && !ours(last) {
			break
		}
		out = out[:len(out)-1]
	}
	block := []string{"", "[all]"}
	for _, b := range benchSettings {
		set := false
		for _, l := range out {
			if k, _, ok := strings.Cut(strings.TrimSpace(l), "="); ok && strings.TrimSpace(k) == b.key {
				set = true
			}
		}
		if !set {
			block = append(block, b.line)
		}
	}
	block = append(block, InitramfsLine)
	if len(out) == 0 {
		block = block[1:]
	}
	out = append(out, block...)
	return strings.Join(out, "\n") + "\n"
}

// EditCmdline returns cmdline.txt (one line) with cm4bench.server=URL and
// without an earlier cm4bench.server argument. An empty file gets a serial
// console.
func EditCmdline(s, serverURL string) string {
	var keep []string
	for _, w := range strings.Fields(s) {
		if strings.HasPrefix(w, "cm4bench.server=") {
			continue
		}
		keep = append(keep, w)
	}
	if len(keep) == 0 {
		keep = []string{"console=serial0,115200", "console=tty1"}
	}
	keep = append(keep, "cm4bench.server="+serverURL)
	return strings.Join(keep, " ") + "\n"
}
