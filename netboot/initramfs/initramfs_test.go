package initramfs

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/u-root/u-root/pkg/cpio"

	"github.com/cm4bench/cm4bench/internal/contract"
)

// self is a real ELF executable to stand in for the agent.
func self(t *testing.T) []byte {
	t.Helper()
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

type entry struct {
	name       string
	mode       uint64
	data       []byte
	rmaj, rmin uint64
	uid, mtime uint64
}

func unpack(t *testing.T, img []byte) []entry {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(img))
	if err != nil {
		t.Fatalf("gzip: %v", err)
	}
	if zr.Header.Name != "" || !zr.Header.ModTime.IsZero() {
		t.Errorf("gzip header carries name %q / time %v", zr.Header.Name, zr.Header.ModTime)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(bytes.NewReader(raw)))
	if err != nil {
		t.Fatalf("cpio: %v", err)
	}
	var out []entry
	for _, r := range recs {
		var data []byte
		if r.ReaderAt != nil && r.FileSize > 0 {
			data = make([]byte, r.FileSize)
			if _, err := r.ReadAt(data, 0); err != nil && err != io.EOF {
				t.Fatal(err)
			}
		}
		out = append(out, entry{r.Name, r.Mode, data, r.Rmajor, r.Rminor, r.UID, r.MTime})
	}
	return out
}

func TestBuildContentsAndReproducible(t *testing.T) {
	agent := self(t)
	o := Options{
		Agent:   agent,
		Config:  contract.AgentConfig{Server: "http://10.0.0.1:5000", Target: "/dev/mmcblk0"},
		Modules: []Module{{Name: "a.ko", Data: []byte("AAAA")}, {Name: "b.ko", Data: []byte("BB")}},
	}
	one, err := Build(o)
	if err != nil {
		t.Fatal(err)
	}
	two, err := Build(o)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(one, two) {
		t.Fatal("the same inputs gave different archives")
	}
	o2 := o
	o2.Config.Server = "http://10.0.0.2:5000"
	three, _ := Build(o2)
	if bytes.Equal(one, three) {
		t.Fatal("a different config gave the same archive")
	}

	got := map[string]entry{}
	var order []string
	for _, e := range unpack(t, one) {
		got[e.name] = e
		order = append(order, e.name)
		if e.uid != 0 || e.mtime != 0 {
			t.Errorf("%s: uid %d mtime %d, want 0", e.name, e.uid, e.mtime)
		}
	}
	want := []string{"dev", "etc", "lib", "lib/modules", "proc", "sys", "tmp", "dev/console", "etc/cm4agent.json", "init", "lib/modules/a.ko", "lib/modules/b.ko"}
	if strings.Join(order, " ") != strings.Join(want, " ") {
		t.Errorf("records %q, want %q", order, want)
	}
	if e := got["init"]; e.mode != 0o100755 || !bytes.Equal(e.data, agent) {
		t.Errorf("/init mode %o, %d bytes; want 100755 and the agent", e.mode, len(e.data))
	}
	if e := got["dev/console"]; e.mode != 0o020600 || e.rmaj != 5 || e.rmin != 1 {
		t.Errorf("/dev/console %+v, want char 5,1", e)
	}
	if e := got["tmp"]; e.mode != 0o041777 {
		t.Errorf("/tmp mode %o", e.mode)
	}
	var cfg contract.AgentConfig
	if err := json.Unmarshal(got["etc/cm4agent.json"].data, &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.Server != "http://10.0.0.1:5000" || strings.Join(cfg.Modules, ",") != "a.ko,b.ko" || cfg.Target != "/dev/mmcblk0" {
		t.Errorf("config %+v", cfg)
	}
	if string(got["lib/modules/a.ko"].data) != "AAAA" {
		t.Error("module a.ko content")
	}
}

func TestBuildErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    Options
		want string
	}{
		{"no agent", Options{}, "no agent"},
		{"not elf", Options{Agent: []byte("#!/bin/sh\n")}, "not an ELF"},
		{"bad module", Options{Agent: self(t), Modules: []Module{{Name: "../x.ko"}}}, "bad module name"},
		{"dup module", Options{Agent: self(t), Modules: []Module{{Name: "x.ko"}, {Name: "x.ko"}}}, "listed twice"},
	} {
		if _, err := Build(tc.o); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want %q", tc.name, err, tc.want)
		}
	}
}

func TestELFArch(t *testing.T) {
	arch, err := ELFArch(self(t))
	if err != nil || arch != runtime.GOARCH {
		t.Errorf("ELFArch(test binary) = %q, %v; want %s", arch, err, runtime.GOARCH)
	}
	if _, err := ELFArch([]byte("nope")); err == nil {
		t.Error("ELFArch accepted garbage")
	}
}

// fakeModule makes an ELF object whose .modinfo says depends=deps, with
// objcopy (binutils comes with the C toolchain cgo needs).
func fakeModule(t *testing.T, dir, name, deps string) {
	t.Helper()
	objcopy, err := exec.LookPath("objcopy")
	if err != nil {
		t.Fatalf("objcopy (binutils) is needed to make test modules: %v", err)
	}
	info := filepath.Join(dir, name+".modinfo")
	os.WriteFile(info, []byte("license=GPL\x00depends="+deps+"\x00name="+name+"\x00"), 0o644)
	out := filepath.Join(dir, name+".ko")
	cmd := exec.Command(objcopy, "-I", "binary", "-O", "elf64-x86-64", "--rename-section", ".data=.modinfo", info, out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("objcopy: %v\n%s", err, b)
	}
	os.Remove(info)
}

func TestResolveModules(t *testing.T) {
	dir := t.TempDir()
	sub := filepath.Join(dir, "kernel", "drivers")
	os.MkdirAll(sub, 0o755)
	fakeModule(t, sub, "virtio_net", "net_failover")
	fakeModule(t, sub, "net_failover", "failover")
	fakeModule(t, sub, "failover", "")
	fakeModule(t, sub, "virtio_blk", "virtio")
	fakeModule(t, sub, "loop_a", "loop_b")
	fakeModule(t, sub, "loop_b", "loop_a")
	fakeModule(t, sub, "needs_missing", "nowhere")
	os.WriteFile(filepath.Join(dir, "modules.builtin"), []byte("kernel/drivers/virtio/virtio.ko\n"), 0o644)
	// A zstd-compressed module is unpacked.
	ko, _ := os.ReadFile(filepath.Join(sub, "failover.ko"))
	os.Remove(filepath.Join(sub, "failover.ko"))
	zst := exec.Command("zstd", "-q", "-o", filepath.Join(sub, "failover.ko.zst"))
	zst.Stdin = bytes.NewReader(ko)
	if out, err := zst.CombinedOutput(); err != nil {
		t.Fatalf("zstd: %v %s", err, out)
	}

	mods, err := ResolveModules(dir, []string{"virtio-net", "virtio_blk", "failover"})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, m := range mods {
		names = append(names, m.Name)
	}
	if got := strings.Join(names, " "); got != "failover.ko net_failover.ko virtio_net.ko virtio_blk.ko" {
		t.Errorf("load order %q", got)
	}
	if !bytes.Equal(mods[0].Data, ko) {
		t.Error("failover.ko.zst was not decompressed")
	}
	for _, tc := range []struct{ name, want string }{
		{"nosuch", "module nosuch not found"},
		{"needs_missing", "module nowhere (needed by needs_missing) not found"},
		{"loop_a", "cycle"},
	} {
		if _, err := ResolveModules(dir, []string{tc.name}); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want %q", tc.name, err, tc.want)
		}
	}
}

func TestPrepareTFTPRoot(t *testing.T) {
	root := t.TempDir()
	os.WriteFile(filepath.Join(root, "config.txt"), []byte("arm_64bit=1\ninitramfs old.img\n[cm4]\notg_mode=1\n"), 0o644)
	os.WriteFile(filepath.Join(root, "cmdline.txt"), []byte("console=serial0,115200 cm4bench.server=http://old:1 rootwait\n"), 0o644)
	if err := PrepareTFTPRoot(root, []byte("IMG"), "http://192.168.7.1:5000"); err != nil {
		t.Fatal(err)
	}
	// Twice: the edits are idempotent.
	if err := PrepareTFTPRoot(root, []byte("IMG"), "http://192.168.7.1:5000"); err != nil {
		t.Fatal(err)
	}
	img, _ := os.ReadFile(filepath.Join(root, "initrd.img"))
	cfg, _ := os.ReadFile(filepath.Join(root, "config.txt"))
	cl, _ := os.ReadFile(filepath.Join(root, "cmdline.txt"))
	if string(img) != "IMG" {
		t.Errorf("initrd.img %q", img)
	}
	if want := "arm_64bit=1\n[cm4]\notg_mode=1\n\n[all]\nenable_uart=1\ninitramfs initrd.img followkernel\n"; string(cfg) != want {
		t.Errorf("config.txt\n%q\nwant\n%q", cfg, want)
	}
	if want := "console=serial0,115200 rootwait cm4bench.server=http://192.168.7.1:5000\n"; string(cl) != want {
		t.Errorf("cmdline.txt %q, want %q", cl, want)
	}

	empty := t.TempDir()
	if err := PrepareTFTPRoot(empty, []byte("X"), "http://10.0.0.1:5000"); err != nil {
		t.Fatal(err)
	}
	cfg, _ = os.ReadFile(filepath.Join(empty, "config.txt"))
	cl, _ = os.ReadFile(filepath.Join(empty, "cmdline.txt"))
	if string(cfg) != "[all]\nenable_uart=1\narm_64bit=1\ninitramfs initrd.img followkernel\n" || !strings.HasSuffix(string(cl), " cm4bench.server=http://10.0.0.1:5000\n") {
		t.Errorf("fresh root: config %q cmdline %q", cfg, cl)
	}
	if err := PrepareTFTPRoot(empty, nil, "http://a b"); err == nil {
		t.Error("a URL with a space was accepted")
	}
	if err := PrepareTFTPRoot(filepath.Join(empty, "missing"), nil, "http://x"); err == nil {
		t.Error("a missing root was accepted")
	}
}

func FuzzEditConfigTxt(f *testing.F) {
	for _, s := range []string{"", "arm_64bit=1\n", "initramfs a b\n[pi4]\nx=1", "\r\n\r\n", "[all]\ninitramfs initrd.img followkernel\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		once := EditConfigTxt(s)
		if EditConfigTxt(once) != once {
			t.Fatalf("not idempotent: %q -> %q -> %q", s, once, EditConfigTxt(once))
		}
		if strings.Count(once, InitramfsLine) != 1 || !strings.HasSuffix(once, "\n"+InitramfsLine+"\n") || !strings.Contains(once, "[all]\n") {
			t.Fatalf("%q -> %q", s, once)
		}
		// P2: the UART is on unless the technician set it either way.
		if !strings.Contains(s, "enable_uart") && !strings.Contains(once, "\nenable_uart=1\n") && !strings.HasPrefix(once, "enable_uart=1\n") {
			t.Fatalf("%q -> %q: no enable_uart=1", s, once)
		}
	})
}

// P2: the prepared config.txt turns the UART on (serial0 is the CM4's
// mini-UART, off by default) and states arm_64bit, but never overrides a
// value the technician chose.
func TestEditConfigTxtBenchSettings(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"", "[all]\nenable_uart=1\narm_64bit=1\n" + InitramfsLine + "\n"},
		{"dtoverlay=dwc2\n", "dtoverlay=dwc2\n\n[all]\nenable_uart=1\narm_64bit=1\n" + InitramfsLine + "\n"},
		{"enable_uart=0\n", "enable_uart=0\n\n[all]\narm_64bit=1\n" + InitramfsLine + "\n"},
		{"[cm4]\nenable_uart=1\narm_64bit=0\n", "[cm4]\nenable_uart=1\narm_64bit=0\n\n[all]\n" + InitramfsLine + "\n"},
	} {
		if got := EditConfigTxt(tt.in); got != tt.want {
			t.Errorf("EditConfigTxt(%q)\n got %q\nwant %q", tt.in, got, tt.want)
		}
	}
}

func FuzzEditCmdline(f *testing.F) {
	for _, s := range []string{"", "console=tty1 root=/dev/mmcblk0p2", "cm4bench.server=x cm4bench.server=y", "  \n"} {
		f.Add(s, "http://10.0.0.1:5000")
	}
	f.Fuzz(func(t *testing.T, s, url string) {
		if url == "" || strings.ContainsAny(url, " \t\n\r\v\f\u0085\u00a0\"") {
			return
		}
		once := EditCmdline(s, url)
		if EditCmdline(once, url) != once {
			t.Fatalf("not idempotent: %q", s)
		}
		n := 0
		for _, w := range strings.Fields(once) {
			if strings.HasPrefix(w, "cm4bench.server=") {
				n++
			}
		}
		if n != 1 || !strings.HasSuffix(once, " cm4bench.server="+url+"\n") || strings.Count(once, "\n") != 1 {
			t.Fatalf("%q -> %q", s, once)
		}
	})
}

func FuzzResolveModinfo(f *testing.F) {
	f.Add([]byte("\x7fELF"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = modinfoDepends(b) // must not panic on any input
	})
}
