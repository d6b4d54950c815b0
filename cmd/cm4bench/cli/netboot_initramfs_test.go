package cli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/cm4bench/cm4bench/cmd/cm4bench/cli"
	"github.com/cm4bench/cm4bench/netboot/initramfs/agentbin"
)

func TestNetbootInitramfs(t *testing.T) {
	exe, err := os.Executable() // an ELF for this GOARCH stands in for cm4agent
	if err != nil {
		t.Fatal(err)
	}
	other := map[string]string{"amd64": "arm64", "arm64": "amd64"}[runtime.GOARCH]
	dir := t.TempDir()
	run := func(args ...string) (string, error) {
		var out bytes.Buffer
		err := cli.Context{Stdout: &out, Stderr: &out, Args: args}.Execute(context.Background())
		return out.String(), err
	}

	a, b := filepath.Join(dir, "a.img"), filepath.Join(dir, "b.img")
	out, err := run("--json", "netboot", "initramfs", "-o", a, "--agent", exe, "--arch", runtime.GOARCH, "--server", "http://10.0.0.1:5000")
	if err != nil {
		t.Fatalf("initramfs: %v\n%s", err, out)
	}
	var rep struct {
		Output, Arch, SHA256, Agent, Server, Target string
		Size                                        int
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("--json output %q: %v", out, err)
	}
	img, _ := os.ReadFile(a)
	if rep.Size != len(img) || rep.Arch != runtime.GOARCH || rep.Target != "/dev/mmcblk0" || len(rep.SHA256) != 64 {
		t.Errorf("report %+v for a %d-byte file", rep, len(img))
	}
	if _, err := run("netboot", "initramfs", "-o", b, "--agent", exe, "--arch", runtime.GOARCH, "--server", "http://10.0.0.1:5000"); err != nil {
		t.Fatal(err)
	}
	img2, _ := os.ReadFile(b)
	if !bytes.Equal(img, img2) {
		t.Error("two runs with the same inputs differ")
	}

	for _, tc := range []struct {
		name string
		args []string
		want string
		code int
	}{
		{"wrong arch", []string{"--agent", exe, "--arch", other}, "is for " + runtime.GOARCH, 2},
		{"bad arch", []string{"--agent", exe, "--arch", "riscv64"}, "want arm64 or amd64", 2},
		{"modules without dir", []string{"--agent", exe, "--arch", runtime.GOARCH, "--modules", "virtio_net"}, "--modules needs --modules-dir", 2},
		{"missing module", []string{"--agent", exe, "--arch", runtime.GOARCH, "--modules-dir", dir, "--modules", "virtio_net"}, "module virtio_net not found", 1},
		{"agent not ELF", []string{"--agent", a, "--arch", runtime.GOARCH}, "not an ELF", 1},
		{"agent missing", []string{"--agent", filepath.Join(dir, "none"), "--arch", runtime.GOARCH}, "read agent", 1},
	} {
		out := filepath.Join(dir, tc.name+".img")
		_, err := run(append([]string{"netboot", "initramfs", "-o", out}, tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) || cli.ExitCode(err) != tc.code {
			t.Errorf("%s: err %v (exit %d), want %q (exit %d)", tc.name, err, cli.ExitCode(err), tc.want, tc.code)
		}
		if _, serr := os.Stat(out); serr == nil {
			t.Errorf("%s: a failed run left %s", tc.name, out)
		}
	}

	// Without --agent: the embedded agent, or a clear error in a build
	// without it.
	_, err = run("netboot", "initramfs", "-o", filepath.Join(dir, "emb.img"))
	if agentbin.Embedded {
		if err != nil {
			t.Errorf("embedded agent: %v", err)
		}
	} else if !errors.Is(err, agentbin.ErrNotEmbedded) || cli.ExitCode(err) != 2 {
		t.Errorf("no embedded agent: err %v, want ErrNotEmbedded with exit 2", err)
	}
}
