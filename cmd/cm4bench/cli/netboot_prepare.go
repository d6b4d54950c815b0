package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/cm4bench/cm4bench/firmware"
	"github.com/cm4bench/cm4bench/netboot/initramfs"
	"github.com/cm4bench/cm4bench/netboot/initramfs/agentbin"
	"github.com/cm4bench/cm4bench/netboot/serve"
)

// netbootPrepareOptions are the `netboot serve` flags that prepare the TFTP
// root before the servers start (serve.PrepareTFTPRoot).
type netbootPrepareOptions struct {
	mode            string // "" = off, else a serve.PrepareMode
	agentFile       string
	arch            string
	modulesDir      string
	modules         []string
	firmwareCache   string
	replaceFirmware bool
	advertiseURL    string
	signed          bool                // --signed: also boot.img + boot.sig for locked boards
	key             eepromDigestOptions // --key, --pubkey, --sign-command, --sig-timestamp for --signed
	closeSigner     func()              // releases a PKCS#11 token after prepare
}

func (p *netbootPrepareOptions) bind(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&p.mode, "prepare-tftp-root", "", "before serving, install the netboot firmware from the firmware cache and the initramfs into --tftp-root (=initramfs-only: leave the firmware files alone)")
	f.Lookup("prepare-tftp-root").NoOptDefVal = string(serve.PrepareAll)
	f.StringVar(&p.agentFile, "agent", "", "with --prepare-tftp-root: cm4agent executable to pack instead of the embedded one")
	f.StringVar(&p.arch, "initramfs-arch", "arm64", "with --prepare-tftp-root: architecture of the boards (arm64 for a CM4, amd64)")
	f.StringVar(&p.modulesDir, "initramfs-modules-dir", "", "with --prepare-tftp-root: directory of kernel modules for the initramfs")
	f.StringSliceVar(&p.modules, "initramfs-modules", nil, "with --prepare-tftp-root: modules to pack and load, comma-separated (needs --initramfs-modules-dir)")
	f.StringVar(&p.firmwareCache, "firmware-cache", "", "with --prepare-tftp-root: firmware cache `DIR` filled by `cm4bench firmware fetch netboot` (default: the user cache dir)")
	f.BoolVar(&p.replaceFirmware, "replace-firmware", false, "with --prepare-tftp-root: replace firmware files in the TFTP root that differ from the catalogue's (the old ones are kept as NAME.orig-<sha256>)")
	f.BoolVar(&p.signed, "signed", false, "with --prepare-tftp-root: also pack the netboot files into boot.img and sign it as boot.sig, for boards in secure-boot mode (needs --key or --sign-command)")
	f.StringVar(&p.key.key, "key", "", "with --signed: RSA-2048 private key `PEM` or PKCS#11 URI that signs boot.img")
	f.StringVar(&p.key.pubkey, "pubkey", "", "with --signed: the public key `PEM` in the boards' OTP (must match the key)")
	f.StringVar(&p.key.signCommand, "sign-command", "", "with --signed: HSM wrapper `CMD` that signs boot.img instead of --key")
	f.StringVar(&p.advertiseURL, "advertise-url", "", "with --prepare-tftp-root: URL the boards reach this server at, written to cmdline.txt (default http://<bench address>:<HTTP port>)")
}

// options checks the flags and gathers the agent, modules and firmware
// cache, before anything is opened or written.
func (p *netbootPrepareOptions) options(tftpRoot string, logger *slog.Logger) (serve.PrepareOptions, error) {
	usage := func(err error) (serve.PrepareOptions, error) {
		return serve.PrepareOptions{}, &ExitError{Code: 2, Err: fmt.Errorf("netboot serve: %w", err)}
	}
	mode := serve.PrepareMode(p.mode)
	if mode != serve.PrepareAll && mode != serve.PrepareInitramfsOnly {
		return usage(fmt.Errorf("--prepare-tftp-root=%s: want %s (the default) or %s", p.mode, serve.PrepareAll, serve.PrepareInitramfsOnly))
	}
	if tftpRoot == "" {
		return usage(errors.New("--prepare-tftp-root needs --tftp-root DIR"))
	}
	if p.arch != "arm64" && p.arch != "amd64" {
		return usage(fmt.Errorf("--initramfs-arch %q: want arm64 or amd64", p.arch))
	}
	if len(p.modules) > 0 && p.modulesDir == "" {
		return usage(errors.New("--initramfs-modules needs --initramfs-modules-dir"))
	}
	if !p.signed && (p.key.key != "" || p.key.signCommand != "" || p.key.pubkey != "") {
		return usage(errors.New("--key, --pubkey and --sign-command sign boot.img: add --signed"))
	}
	o := serve.PrepareOptions{Root: tftpRoot, ServerURL: p.advertiseURL, Mode: mode, Arch: p.arch,
		ReplaceFirmware: p.replaceFirmware, Logger: logger}
	if p.signed {
		s, want, done, err := p.key.signer("netboot serve --signed", "")
		if err != nil {
			return serve.PrepareOptions{}, err
		}
		p.closeSigner = done
		ts, err := digestTimestamp(timestampFlag{})
		if err != nil {
			done()
			return serve.PrepareOptions{}, err
		}
		o.Signed = &serve.SignedBoot{Signer: s, PublicKey: want, Timestamp: ts}
	}
	if p.agentFile != "" {
		b, err := os.ReadFile(p.agentFile)
		if err != nil {
			return serve.PrepareOptions{}, fmt.Errorf("netboot serve: read agent: %w", err)
		}
		o.Agent = b
	} else {
		b, err := agentbin.Agent(p.arch)
		if err != nil {
			return usage(fmt.Errorf("--prepare-tftp-root: %w", err))
		}
		o.Agent = b
	}
	if len(p.modules) > 0 {
		mods, err := initramfs.ResolveModules(p.modulesDir, p.modules)
		if err != nil {
			return serve.PrepareOptions{}, fmt.Errorf("netboot serve: %w", err)
		}
		o.Modules = mods
	}
	if mode == serve.PrepareAll {
		dir := p.firmwareCache
		if dir == "" {
			d, err := firmware.DefaultDir()
			if err != nil {
				return serve.PrepareOptions{}, fmt.Errorf("netboot serve: %w", err)
			}
			dir = d
		}
		p.firmwareCache = dir
		// Offline: serve never downloads; Lookup does not either.
		o.Firmware = &firmware.Cache{Dir: dir, Offline: true, Logger: logger}
	}
	return o, nil
}

// prepare runs the preparation for bench b and prints what it did.
func (p *netbootPrepareOptions) prepare(ctx context.Context, b *serve.Bench, o serve.PrepareOptions, out io.Writer) error {
	rep, err := b.PrepareTFTPRoot(ctx, o)
	if p.closeSigner != nil {
		p.closeSigner()
	}
	if errors.Is(err, serve.ErrFirmwareMissing) {
		err = fmt.Errorf("%w (looked in the firmware cache %s; another one: --firmware-cache DIR)", err, p.firmwareCache)
	}
	if err != nil {
		return fmt.Errorf("netboot serve: %w", err)
	}
	fmt.Fprintf(out, "TFTP root %s prepared (%s) for boards reaching %s:\n", rep.Root, rep.Mode, rep.ServerURL)
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	for _, f := range rep.Files {
		line := fmt.Sprintf("  %s\t%s\tsha256 %.16s", f.Action, f.Name, f.SHA256)
		if f.Backup != "" {
			line += "\t(yours kept as " + f.Backup + ")"
		}
		fmt.Fprintln(tw, line)
	}
	tw.Flush()
	for _, w := range rep.Warnings {
		fmt.Fprintf(out, "WARNING: %s\n", w)
	}
	return nil
}
