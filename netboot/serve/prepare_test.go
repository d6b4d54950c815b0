package serve_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/u-root/u-root/pkg/cpio"

	"github.com/cm4bench/cm4bench/firmware"
	"github.com/cm4bench/cm4bench/internal/contract"
	"github.com/cm4bench/cm4bench/netboot/initramfs"
	"github.com/cm4bench/cm4bench/netboot/serve"
)

// netbootMirror stands in for raw.githubusercontent.com: it serves distinct
// made-up content at the paths of the catalogue's netboot files (which the
// catalogue does not pin: the first fetch pins them in the lock file), and
// fails the test on any other request.
func netbootMirror(t *testing.T) (base string, content map[string][]byte) {
	t.Helper()
	cat, err := firmware.Default()
	if err != nil {
		t.Fatal(err)
	}
	files, err := cat.SetFiles(serve.FirmwareSet)
	if err != nil {
		t.Fatal(err)
	}
	byPath := map[string][]byte{}
	content = map[string][]byte{}
	for i, sf := range files {
		b := bytes.Repeat([]byte("firmware "+sf.Name+" "), 1000+i*37)
		content[sf.Name] = b
		u := strings.TrimPrefix(sf.File.URL, "https://raw.githubusercontent.com")
		byPath[u] = b
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, ok := byPath[r.URL.Path]
		if !ok {
			t.Errorf("mirror: unexpected request %s", r.URL.Path)
			http.NotFound(w, r)
			return
		}
		w.Write(b)
	}))
	t.Cleanup(srv.Close)
	return srv.URL, content
}

// fetchedCache is a firmware cache in which `firmware fetch netboot` has
// been done (from the mirror), opened again offline as serve would.
func fetchedCache(t *testing.T) (*firmware.Cache, map[string][]byte) {
	t.Helper()
	base, content := netbootMirror(t)
	dir := t.TempDir()
	if _, err := (&firmware.Cache{Dir: dir, BaseURL: base}).FetchAll(context.Background(), serve.FirmwareSet); err != nil {
		t.Fatal(err)
	}
	return &firmware.Cache{Dir: dir, Offline: true}, content
}

// selfExe is a real ELF executable for this GOARCH to stand in for
// cm4agent: /bin/true when it is one (small, so the many initramfs builds
// stay quick), else the test binary.
func selfExe(t *testing.T) []byte {
	t.Helper()
	if b, err := os.ReadFile("/bin/true"); err == nil {
		if arch, err := initramfs.ELFArch(b); err == nil && arch == runtime.GOARCH {
			return b
		}
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// cpioFiles unpacks a gzip newc archive into name -> data.
func cpioFiles(t *testing.T, img []byte) map[string][]byte {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(img))
	if err != nil {
		t.Fatalf("initrd.img is not gzip: %v", err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatalf("initrd.img: %v", err)
	}
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(bytes.NewReader(raw)))
	if err != nil {
		t.Fatalf("initrd.img is not a newc cpio: %v", err)
	}
	out := map[string][]byte{}
	for _, r := range recs {
		data := make([]byte, r.FileSize)
		if r.FileSize > 0 {
			if _, err := r.ReadAt(data, 0); err != nil && err != io.EOF {
				t.Fatal(err)
			}
		}
		out[r.Name] = data
	}
	return out
}

type snapshot map[string]struct {
	data  []byte
	mtime time.Time
}

func snap(t *testing.T, root string) snapshot {
	t.Helper()
	s := snapshot{}
	filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		fi, _ := d.Info()
		b, _ := os.ReadFile(p)
		rel, _ := filepath.Rel(root, p)
		s[rel] = struct {
			data  []byte
			mtime time.Time
		}{b, fi.ModTime()}
		return nil
	})
	return s
}

func (s snapshot) names() []string {
	var n []string
	for k := range s {
		n = append(n, k)
	}
	sort.Strings(n)
	return n
}

func actions(r serve.Report) map[string]string {
	m := map[string]string{}
	for _, f := range r.Files {
		m[f.Name] = f.Action
	}
	return m
}

const benchURL = "http://10.42.0.1:5000"

func TestPrepareTFTPRoot(t *testing.T) {
	cache, fw := fetchedCache(t)
	emptyCache := &firmware.Cache{Dir: t.TempDir(), Offline: true}
	agent := selfExe(t)
	other := map[string]string{"amd64": "arm64", "arm64": "amd64"}[runtime.GOARCH]
	fwNames := []string{"bcm2711-rpi-cm4.dtb", "bcm2711-rpi-cm4s.dtb", "fixup4.dat", "kernel8.img", "start4.elf"}

	for _, tc := range []struct {
		name    string
		before  map[string]string // files in the root beforehand
		opts    func(o *serve.PrepareOptions)
		wantErr error  // errors.Is target
		errText string // and/or text the error must carry
		want    map[string]string
		warn    bool
	}{
		{
			name: "fresh root",
			want: map[string]string{"start4.elf": "placed", "fixup4.dat": "placed", "bcm2711-rpi-cm4.dtb": "placed", "bcm2711-rpi-cm4s.dtb": "placed", "kernel8.img": "placed",
				"initrd.img": "written", "config.txt": "written", "cmdline.txt": "written"},
		},
		{
			name:   "technician's config kept, same start4.elf left alone",
			before: map[string]string{"config.txt": "dtoverlay=dwc2\n", "cmdline.txt": "console=serial0,115200 quiet\n", "start4.elf": "=fw:start4.elf"},
			want: map[string]string{"start4.elf": "unchanged", "fixup4.dat": "placed", "bcm2711-rpi-cm4.dtb": "placed", "bcm2711-rpi-cm4s.dtb": "placed", "kernel8.img": "placed",
				"initrd.img": "written", "config.txt": "written", "cmdline.txt": "written"},
		},
		{
			name:    "different start4.elf is refused, nothing written",
			before:  map[string]string{"start4.elf": "the technician's own start4.elf"},
			wantErr: serve.ErrFirmwareConflict,
			errText: "start4.elf (sha256 ",
		},
		{
			name:   "different start4.elf replaced on request, old one kept",
			before: map[string]string{"start4.elf": "the technician's own start4.elf"},
			opts:   func(o *serve.PrepareOptions) { o.ReplaceFirmware = true },
			want: map[string]string{"start4.elf": "replaced", "fixup4.dat": "placed", "bcm2711-rpi-cm4.dtb": "placed", "bcm2711-rpi-cm4s.dtb": "placed", "kernel8.img": "placed",
				"initrd.img": "written", "config.txt": "written", "cmdline.txt": "written"},
		},
		{
			name:   "initramfs-only leaves a different start4.elf alone",
			before: map[string]string{"start4.elf": "the technician's own start4.elf"},
			opts:   func(o *serve.PrepareOptions) { o.Mode = serve.PrepareInitramfsOnly; o.Firmware = nil },
			want:   map[string]string{"initrd.img": "written", "config.txt": "written", "cmdline.txt": "written"},
		},
		{
			name: "initramfs-only without firmware warns",
			opts: func(o *serve.PrepareOptions) { o.Mode = serve.PrepareInitramfsOnly },
			want: map[string]string{"initrd.img": "written", "config.txt": "written", "cmdline.txt": "written"},
			warn: true,
		},
		{
			name:   "per-board overrides without the bench settings are reported",
			before: map[string]string{"abcd1234/config.txt": "dtoverlay=dwc2\n", "dc-a6-32-01-36-c2/cmdline.txt": "console=tty1\n"},
			want: map[string]string{"start4.elf": "placed", "fixup4.dat": "placed", "bcm2711-rpi-cm4.dtb": "placed", "bcm2711-rpi-cm4s.dtb": "placed", "kernel8.img": "placed",
				"initrd.img": "written", "config.txt": "written", "cmdline.txt": "written"},
			warn: true,
		},
		{
			name:    "firmware not fetched",
			opts:    func(o *serve.PrepareOptions) { o.Firmware = emptyCache },
			wantErr: serve.ErrFirmwareMissing,
			errText: "cm4bench firmware fetch netboot",
		},
		{
			name:    "no agent",
			opts:    func(o *serve.PrepareOptions) { o.Agent = nil },
			wantErr: serve.ErrNoAgent,
			errText: "--agent FILE",
		},
		{
			name:    "agent for another architecture",
			opts:    func(o *serve.PrepareOptions) { o.Arch = other },
			errText: "the boards need " + other,
		},
		{
			name:    "agent not an ELF",
			opts:    func(o *serve.PrepareOptions) { o.Agent = []byte("#!/bin/sh\n") },
			errText: "not an ELF",
		},
		{
			name:    "loopback server URL",
			opts:    func(o *serve.PrepareOptions) { o.ServerURL = "http://127.0.0.1:5000" },
			errText: "boards cannot reach",
		},
		{
			name:    "unknown mode",
			opts:    func(o *serve.PrepareOptions) { o.Mode = "firmware-only" },
			errText: `unknown mode "firmware-only"`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			for n, c := range tc.before {
				os.MkdirAll(filepath.Dir(filepath.Join(root, n)), 0o755)
				if f, ok := strings.CutPrefix(c, "=fw:"); ok {
					os.WriteFile(filepath.Join(root, n), fw[f], 0o644)
				} else {
					os.WriteFile(filepath.Join(root, n), []byte(c), 0o644)
				}
			}
			o := serve.PrepareOptions{Root: root, ServerURL: benchURL, Agent: agent, Arch: runtime.GOARCH, Firmware: cache}
			if tc.opts != nil {
				tc.opts(&o)
			}
			before := snap(t, root)
			rep, err := serve.PrepareTFTPRoot(context.Background(), o)
			if tc.wantErr != nil || tc.errText != "" {
				if err == nil || (tc.wantErr != nil && !errors.Is(err, tc.wantErr)) || !strings.Contains(err.Error(), tc.errText) {
					t.Fatalf("err = %v, want %v with %q", err, tc.wantErr, tc.errText)
				}
				after := snap(t, root)
				if strings.Join(after.names(), " ") != strings.Join(before.names(), " ") {
					t.Errorf("a refused run changed the root: %v -> %v", before.names(), after.names())
				}
				for n, f := range before {
					if !bytes.Equal(after[n].data, f.data) {
						t.Errorf("a refused run changed %s", n)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := actions(rep); !mapsEqual(got, tc.want) {
				t.Errorf("actions %v, want %v", got, tc.want)
			}
			if (len(rep.Warnings) > 0) != tc.warn {
				t.Errorf("warnings %q, want some: %v", rep.Warnings, tc.warn)
			}

			// The root now holds what the boards need.
			if o.Mode != serve.PrepareInitramfsOnly {
				for _, n := range fwNames {
					if b, _ := os.ReadFile(filepath.Join(root, n)); !bytes.Equal(b, fw[n]) {
						t.Errorf("%s in the root is not the cached firmware", n)
					}
				}
			} else if c, ok := tc.before["start4.elf"]; ok {
				if b, _ := os.ReadFile(filepath.Join(root, "start4.elf")); string(b) != c {
					t.Error("initramfs-only changed start4.elf")
				}
			}
			for _, f := range rep.Files {
				if f.Action != serve.ActionReplaced {
					continue
				}
				if b, err := os.ReadFile(filepath.Join(root, f.Backup)); err != nil || f.Backup == "" || string(b) != tc.before[f.Name] {
					t.Errorf("backup %q of the replaced %s: %q, %v", f.Backup, f.Name, b, err)
				}
			}
			img, _ := os.ReadFile(filepath.Join(root, "initrd.img"))
			files := cpioFiles(t, img)
			if !bytes.Equal(files["init"], agent) {
				t.Errorf("/init is not the agent (%d bytes)", len(files["init"]))
			}
			if !bytes.Contains(files["etc/cm4agent.json"], []byte(`"server": "`+benchURL+`"`)) {
				t.Errorf("agent config %s", files["etc/cm4agent.json"])
			}
			cfg, _ := os.ReadFile(filepath.Join(root, "config.txt"))
			cl, _ := os.ReadFile(filepath.Join(root, "cmdline.txt"))
			if !strings.HasSuffix(string(cfg), "\ninitramfs initrd.img followkernel\n") || !strings.Contains(string(cfg), "[all]\nenable_uart=1\n") {
				t.Errorf("config.txt %q", cfg)
			}
			if !strings.Contains(string(cl), " cm4bench.server="+benchURL+"\n") {
				t.Errorf("cmdline.txt %q", cl)
			}
			for _, keep := range []string{"config.txt", "cmdline.txt"} {
				if c, ok := tc.before[keep]; ok && !strings.HasPrefix(string(map[string][]byte{"config.txt": cfg, "cmdline.txt": cl}[keep]), strings.TrimSpace(c)) {
					t.Errorf("%s lost the technician's settings %q", keep, c)
				}
			}

			// Idempotent: a second run writes nothing.
			first := snap(t, root)
			time.Sleep(10 * time.Millisecond) // so a rewrite would show in the mtime
			rep2, err := serve.PrepareTFTPRoot(context.Background(), o)
			if err != nil {
				t.Fatalf("second run: %v", err)
			}
			if c := rep2.Changed(); len(c) != 0 {
				t.Errorf("second run changed %v", c)
			}
			second := snap(t, root)
			if strings.Join(second.names(), " ") != strings.Join(first.names(), " ") {
				t.Errorf("second run: files %v -> %v", first.names(), second.names())
			}
			for n, f := range first {
				if !bytes.Equal(second[n].data, f.data) || !second[n].mtime.Equal(f.mtime) {
					t.Errorf("second run rewrote %s", n)
				}
			}

			// A new server address changes only cmdline.txt and initrd.img.
			o.ServerURL = "http://10.42.0.2:5000"
			rep3, err := serve.PrepareTFTPRoot(context.Background(), o)
			if err != nil {
				t.Fatal(err)
			}
			if c := strings.Join(rep3.Changed(), " "); c != "initrd.img cmdline.txt" {
				t.Errorf("new server URL changed %q", c)
			}
		})
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// TestBenchPrepare: the bench's own PrepareTFTPRoot derives the URL the
// boards use from its config, refuses one they could not reach, and
// records what it changed as an event.
func TestBenchPrepare(t *testing.T) {
	cache, _ := fetchedCache(t)
	agent := selfExe(t)
	for _, tc := range []struct {
		http, want, errText string
	}{
		{http: "10.1.2.3:8080", want: "http://10.1.2.3:8080"},
		{http: "bench.local:5001", want: "http://bench.local:5001"},
		{http: "127.0.0.1:5000", errText: "loopback only"},
		{http: "0.0.0.0:5000", errText: "no bench interface"},
		{http: "", errText: "no bench interface"},
		{http: "10.1.2.3:0", errText: "fixed port"},
	} {
		t.Run(tc.http, func(t *testing.T) {
			dir := t.TempDir()
			root := filepath.Join(dir, "tftp")
			os.Mkdir(root, 0o755)
			ctx := context.Background()
			b, err := serve.New(ctx, serve.Config{DataDir: filepath.Join(dir, "data"), TFTPRoot: root, NoDHCP: true, NoTFTP: true, HTTPAddr: tc.http})
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			u, err := b.DeviceURL()
			if tc.errText != "" {
				if err == nil || !strings.Contains(err.Error(), tc.errText) {
					t.Fatalf("DeviceURL = %q, %v; want an error with %q", u, err, tc.errText)
				}
				if _, err := b.PrepareTFTPRoot(ctx, serve.PrepareOptions{Agent: agent, Arch: runtime.GOARCH, Firmware: cache}); err == nil {
					t.Error("PrepareTFTPRoot without a reachable URL succeeded")
				}
				return
			}
			if err != nil || u != tc.want {
				t.Fatalf("DeviceURL = %q, %v; want %q", u, err, tc.want)
			}
			for range 2 {
				if _, err := b.PrepareTFTPRoot(ctx, serve.PrepareOptions{Agent: agent, Arch: runtime.GOARCH, Firmware: cache}); err != nil {
					t.Fatal(err)
				}
			}
			cl, _ := os.ReadFile(filepath.Join(root, "cmdline.txt"))
			if !strings.Contains(string(cl), "cm4bench.server="+tc.want) {
				t.Errorf("cmdline.txt %q", cl)
			}
			evs, err := b.Store().Events(ctx, 0, 100)
			if err != nil {
				t.Fatal(err)
			}
			var prepared []string
			for _, ev := range evs {
				if ev.Kind == contract.EventTFTPPrepared {
					prepared = append(prepared, ev.Message)
				}
			}
			// The second run changed nothing, so there is one event.
			if len(prepared) != 1 || !strings.Contains(prepared[0], "start4.elf") || !strings.Contains(prepared[0], "initrd.img") {
				t.Errorf("prepared events %q", prepared)
			}
		})
	}
}
