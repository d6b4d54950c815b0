package cli

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/cm4bench/cm4bench/internal/atomicfile"
	"github.com/cm4bench/cm4bench/internal/contract"
	"github.com/cm4bench/cm4bench/netboot/initramfs"
	"github.com/cm4bench/cm4bench/netboot/initramfs/agentbin"
)

type netbootInitramfsOptions struct {
	output       string
	arch         string
	server       string
	modulesDir   string
	modules      []string
	agentFile    string
	target       string
	iface        string
	noReboot     bool
	acceptZstd   bool
	acceptSparse bool
}

// newNetbootInitramfsCmd builds `cm4bench netboot initramfs`.
func newNetbootInitramfsCmd() *cobra.Command {
	o := &netbootInitramfsOptions{}
	cmd := &cobra.Command{
		Use:   "initramfs -o initrd.img [flags]",
		Short: "Build the netboot initramfs whose /init is cm4agent",
		Long: `Build the initramfs that netbooted boards run: a gzip-compressed newc cpio
archive whose /init is cm4agent, the cm4bench device agent, for the board's
architecture. As PID 1 the agent mounts proc, sys and devtmpfs, loads the
kernel modules packed with it, configures the Ethernet link by DHCP, registers
with the cm4bench server and waits for the technician's Deploy or Backup.

The archive holds:
  /init               cm4agent (embedded in release builds, or --agent FILE)
  /etc/cm4agent.json  the agent's configuration (server, target, modules)
  /lib/modules/*.ko   the --modules and their dependencies, decompressed
  /dev/console        so the kernel gives init a console
  /dev /proc /sys /tmp

The same inputs give a byte-identical file (fixed order, owners and times;
gzip without name or time), so an initramfs can be checked by its sha256.

The server URL is taken, in this order, from the kernel command line
(cm4bench.server=URL, which "cm4bench netboot serve" writes into
cmdline.txt), from --server, and from the DHCP answer (option 66 or siaddr,
port 5000).

Modules come from a kernel's lib/modules/<version> directory (or any
directory of .ko, .ko.xz, .ko.zst or .ko.gz files); each module's "depends="
is followed, so naming virtio_net also packs net_failover and failover.
Modules listed in modules.builtin are skipped.

A release cm4bench (make build) carries cm4agent for arm64 and amd64. A
build without it needs --agent FILE, a cm4agent built with
  CGO_ENABLED=0 GOOS=linux GOARCH=arm64 go build ./cmd/cm4agent`,
		Example: `  # The initramfs for a CM4 (arm64), server from the kernel command line:
  cm4bench netboot initramfs -o /srv/tftp/initrd.img

  # A QEMU "virt" machine: virtio modules from Debian's arm64 kernel package
  cm4bench netboot initramfs -o initrd.img --server http://10.0.2.2:5000 \
      --modules-dir /var/cache/cm4bench-test/arm64-kernel/modules \
      --modules virtio_mmio,virtio_blk,virtio_net --target /dev/vda

  # With an agent built from source, and its sha256 as JSON
  cm4bench --json netboot initramfs -o initrd.img --agent build/cm4agent-linux-arm64`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.run(cmd.Context(), wantJSON(cmd), cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.StringVarP(&o.output, "output", "o", "", "file to write (required); replaced atomically")
	f.StringVar(&o.arch, "arch", "arm64", "architecture of the board: arm64 (CM4) or amd64")
	f.StringVar(&o.server, "server", "", "cm4bench server URL baked into the config (the kernel command line overrides it)")
	f.StringVar(&o.modulesDir, "modules-dir", "", "directory of kernel modules, e.g. /lib/modules/<version>")
	f.StringSliceVar(&o.modules, "modules", nil, "modules to pack and load, in order, comma-separated (needs --modules-dir)")
	f.StringVar(&o.agentFile, "agent", "", "cm4agent executable to pack instead of the embedded one")
	f.StringVar(&o.target, "target", "/dev/mmcblk0", "block device the agent deploys to and backs up")
	f.StringVar(&o.iface, "interface", "", "network interface for DHCP (default: the first Ethernet link that gets a lease)")
	f.BoolVar(&o.noReboot, "no-reboot", false, "keep polling after a deploy instead of rebooting")
	f.BoolVar(&o.acceptZstd, "accept-zstd", false, "have the agent ask for the zstd image stream")
	f.BoolVar(&o.acceptSparse, "accept-sparse", false, "have the agent ask for the sparse stream of a raw image (only its data crosses the network)")
	_ = cmd.MarkFlagRequired("output")
	return cmd
}

type initramfsReport struct {
	Output  string   `json:"output"`
	Arch    string   `json:"arch"`
	Size    int      `json:"size"`
	SHA256  string   `json:"sha256"`
	Agent   string   `json:"agent"` // "embedded" or the file
	Server  string   `json:"server,omitempty"`
	Target  string   `json:"target"`
	Modules []string `json:"modules,omitempty"`
}

func (o *netbootInitramfsOptions) run(_ context.Context, asJSON bool, stdout io.Writer) error {
	if o.arch != "arm64" && o.arch != "amd64" {
		return &ExitError{Code: 2, Err: fmt.Errorf("netboot initramfs: --arch %q: want arm64 or amd64", o.arch)}
	}
	if len(o.modules) > 0 && o.modulesDir == "" {
		return &ExitError{Code: 2, Err: errors.New("netboot initramfs: --modules needs --modules-dir")}
	}
	var agent []byte
	source := "embedded"
	if o.agentFile != "" {
		b, err := os.ReadFile(o.agentFile)
		if err != nil {
			return fmt.Errorf("netboot initramfs: read agent: %w", err)
		}
		agent, source = b, o.agentFile
	} else {
		b, err := agentbin.Agent(o.arch)
		if err != nil {
			return &ExitError{Code: 2, Err: fmt.Errorf("netboot initramfs: %w", err)}
		}
		agent = b
	}
	arch, err := initramfs.ELFArch(agent)
	if err != nil {
		return fmt.Errorf("netboot initramfs: agent %s: %w", source, err)
	}
	if arch != o.arch {
		return &ExitError{Code: 2, Err: fmt.Errorf("netboot initramfs: agent %s is for %s, not --arch %s", source, arch, o.arch)}
	}
	var mods []initramfs.Module
	if len(o.modules) > 0 {
		mods, err = initramfs.ResolveModules(o.modulesDir, o.modules)
		if err != nil {
			return fmt.Errorf("netboot initramfs: %w", err)
		}
	}
	img, err := initramfs.Build(initramfs.Options{
		Agent: agent,
		Config: contract.AgentConfig{
			Server: strings.TrimRight(o.server, "/"), Target: o.target, Interface: o.iface,
			NoReboot: o.noReboot, AcceptZstd: o.acceptZstd, AcceptSparse: o.acceptSparse,
		},
		Modules: mods,
	})
	if err != nil {
		return fmt.Errorf("netboot initramfs: %w", err)
	}
	if err := atomicfile.WriteFile(o.output, img, 0o644); err != nil {
		return fmt.Errorf("netboot initramfs: write %s: %w", o.output, err)
	}
	sum := sha256.Sum256(img)
	rep := initramfsReport{Output: o.output, Arch: o.arch, Size: len(img), SHA256: hex.EncodeToString(sum[:]),
		Agent: source, Server: o.server, Target: o.target}
	for _, m := range mods {
		rep.Modules = append(rep.Modules, m.Name)
	}
	if asJSON {
		return writeJSON(stdout, rep)
	}
	fmt.Fprintf(stdout, "wrote %s: %d bytes, sha256 %s\n", rep.Output, rep.Size, rep.SHA256)
	fmt.Fprintf(stdout, "  /init: cm4agent for %s (%s)\n", rep.Arch, rep.Agent)
	fmt.Fprintf(stdout, "  target %s, server %s\n", rep.Target, or(rep.Server, "from cmdline.txt or DHCP"))
	if len(rep.Modules) > 0 {
		fmt.Fprintf(stdout, "  modules (load order): %s\n", strings.Join(rep.Modules, " "))
	}
	return nil
}
