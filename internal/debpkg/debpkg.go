// Package debpkg builds the cm4bench Debian package with nfpm as a library
// (no external tool, no download): the binary, the systemd unit and its
// /etc/default file, the udev rules, man pages and shell completions, and
// the maintainer scripts that create the cm4bench system user and
// /var/lib/cm4bench. The unit and scripts are plain files in scripts/deb.
package debpkg

import (
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"time"

	"github.com/goreleaser/nfpm/v2"
	"github.com/goreleaser/nfpm/v2/deb"
	"github.com/goreleaser/nfpm/v2/files"
)

// Options are the inputs of Build.
type Options struct {
	Binary      string            // the cm4bench executable (built with the embedded agents)
	ScriptsDir  string            // scripts/deb: cm4bench.service, cm4bench.default, postinst, prerm, postrm
	ManDir      string            // man pages from `cm4bench man --dir` (*.1, gzipped here)
	Completions map[string]string // shell -> completion script file ("bash", "zsh", "fish")
	UdevRules   string            // the output of `cm4bench usbboot udev-rules`
	Version     string            // git describe output or a release version
	Arch        string            // Debian/Go architecture: amd64, arm64
	OutDir      string            // where cm4bench_<version>_<arch>.deb is written
	MTime       time.Time
}

// Install paths (the unit's ExecStart, ReadWritePaths and the README agree).
const (
	UnitPath     = "/lib/systemd/system/cm4bench.service"
	DefaultsPath = "/etc/default/cm4bench"
	UdevPath     = "/lib/udev/rules.d/60-cm4bench.rules"
	BinaryPath   = "/usr/bin/cm4bench"
)

var completionPaths = map[string]string{
	"bash": "/usr/share/bash-completion/completions/cm4bench",
	"zsh":  "/usr/share/zsh/vendor-completions/_cm4bench",
	"fish": "/usr/share/fish/vendor_completions.d/cm4bench.fish",
}

// DebVersion turns a version into a Debian one. A tag "v1.2.3" is
// "1.2.3", and a describe past it, "v1.2.3-4-gabc1234", is
// "1.2.3+4.gabc1234"; an untagged describe such as "4d20393-dirty" (a bare
// commit) is "0.0~git4d20393.dirty", which sorts before any release.
func DebVersion(v string) string {
	bad := regexp.MustCompile(`[^A-Za-z0-9.+~]+`)
	if m := regexp.MustCompile(`^v?(\d+(?:\.\d+)+)(?:-(.*))?$`).FindStringSubmatch(v); m != nil {
		if m[2] == "" {
			return m[1]
		}
		return m[1] + "+" + bad.ReplaceAllString(m[2], ".")
	}
	if clean := bad.ReplaceAllString(v, "."); clean != "" {
		return "0.0~git" + clean
	}
	return "0.0~dev"
}

// Build writes the package and returns its path.
func Build(o Options) (string, error) {
	fail := func(err error) (string, error) { return "", fmt.Errorf("debpkg: %w", err) }
	for _, p := range []string{o.Binary, o.ScriptsDir, o.ManDir, o.UdevRules} {
		if _, err := os.Stat(p); err != nil {
			return fail(err)
		}
	}
	if o.Arch == "" || o.OutDir == "" {
		return fail(errors.New("arch and output directory are required"))
	}
	staging, err := os.MkdirTemp("", "cm4bench-deb-")
	if err != nil {
		return fail(err)
	}
	defer os.RemoveAll(staging)
	script := func(name string) string { return filepath.Join(o.ScriptsDir, name) }
	contents := files.Contents{
		{Source: o.Binary, Destination: BinaryPath, FileInfo: &files.ContentFileInfo{Mode: 0o755}},
		{Source: script("cm4bench.service"), Destination: UnitPath, FileInfo: &files.ContentFileInfo{Mode: 0o644}},
		{Source: script("cm4bench.default"), Destination: DefaultsPath, Type: files.TypeConfigNoReplace, FileInfo: &files.ContentFileInfo{Mode: 0o644}},
		{Source: o.UdevRules, Destination: UdevPath, FileInfo: &files.ContentFileInfo{Mode: 0o644}},
	}
	for _, sh := range slices.Sorted(maps.Keys(o.Completions)) {
		dst, ok := completionPaths[sh]
		if !ok {
			return fail(fmt.Errorf("no install path for %s completions", sh))
		}
		contents = append(contents, &files.Content{Source: o.Completions[sh], Destination: dst, FileInfo: &files.ContentFileInfo{Mode: 0o644}})
	}
	pages, err := filepath.Glob(filepath.Join(o.ManDir, "*.1"))
	if err != nil || len(pages) == 0 {
		return fail(fmt.Errorf("no man pages in %s (run `cm4bench man --dir %s`)", o.ManDir, o.ManDir))
	}
	for _, p := range pages {
		gz := filepath.Join(staging, filepath.Base(p)+".gz")
		if err := gzipFile(p, gz); err != nil {
			return fail(err)
		}
		contents = append(contents, &files.Content{Source: gz, Destination: "/usr/share/man/man1/" + filepath.Base(gz), FileInfo: &files.ContentFileInfo{Mode: 0o644}})
	}
	info := &nfpm.Info{
		Name:          "cm4bench",
		Arch:          o.Arch,
		Platform:      "linux",
		Version:       DebVersion(o.Version),
		VersionSchema: "none",
		Section:       "admin",
		Priority:      "optional",
		Maintainer:    "cm4bench <cm4bench@localhost>",
		Description: "provisioning bench for Raspberry Pi Compute Modules\n" +
			"USB boot (rpiboot), bootloader EEPROM editing and signing, secure-boot key\n" +
			"provisioning, and a netboot bench server (DHCP, TFTP, HTTP API, dashboard)\n" +
			"that writes golden images to CM4/CM5 eMMC. The service runs as the\n" +
			"unprivileged user cm4bench.",
		Homepage: "https://github.com/cm4bench/cm4bench",
		License:  "Apache-2.0",
		MTime:    o.MTime,
		Overridables: nfpm.Overridables{
			Depends:    []string{"passwd", "libusb-1.0-0"},
			Recommends: []string{"udev"},
			Suggests:   []string{"uhubctl", "softhsm2"},
			Contents:   contents,
			Scripts: nfpm.Scripts{
				PostInstall: script("postinst"),
				PreRemove:   script("prerm"),
				PostRemove:  script("postrm"),
			},
		},
	}
	info = nfpm.WithDefaults(info)
	if err := nfpm.PrepareForPackager(info, "deb"); err != nil {
		return fail(err)
	}
	if err := os.MkdirAll(o.OutDir, 0o755); err != nil {
		return fail(err)
	}
	out := filepath.Join(o.OutDir, fmt.Sprintf("cm4bench_%s_%s.deb", info.Version, o.Arch))
	tmp := out + ".partial"
	f, err := os.Create(tmp)
	if err != nil {
		return fail(err)
	}
	defer os.Remove(tmp)
	if err := deb.Default.Package(info, f); err != nil {
		f.Close()
		return fail(err)
	}
	if err := f.Close(); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp, out); err != nil {
		return fail(err)
	}
	return out, nil
}

// gzipFile compresses src to dst reproducibly (no name, no time), as
// Debian installs man pages.
func gzipFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if _, err := zw.Write(b); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	return os.WriteFile(dst, buf.Bytes(), 0o644)
}
