package cli

import (
	"context"
	"errors"
	"fmt"
	"github.com/cm4bench/cm4bench/internal/sdnotify"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/cm4bench/cm4bench/internal/contract"
	"github.com/cm4bench/cm4bench/netboot/serve"
)

func newNetbootCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "netboot",
		Short: "Network-boot provisioning: DHCP + TFTP + HTTP API and dashboard, netboot switches",
		Long: `A Raspberry Pi 4 / CM4 whose bootloader tries the network gets a lease with the PXE menu its
bootloader needs from ` + "`cm4bench netboot serve`" + `, fetches its boot files over TFTP, boots the
provisioning initramfs, registers with the HTTP API and waits for the technician's Deploy or
Backup. When that succeeds, netboot is switched off for its MAC, so it boots from eMMC next time.

  serve      run DHCP, TFTP and the HTTP API + dashboard on the bench interface
  enable     switch netboot on (globally, or for given MACs) on the running server
  disable    switch netboot off (globally, or for given MACs)
  status     show the switches
  initramfs  build the provisioning initramfs (cm4agent as /init)`,
		Example: `  cm4bench netboot serve --iface eth1 --tftp-root /srv/tftp --data /var/lib/cm4bench --image golden.img.zst
  cm4bench netboot disable dc:a6:32:01:02:03
  cm4bench netboot status`,
	}
	cmd.AddCommand(newNetbootServeCmd(), newNetbootSwitchCmd(true), newNetbootSwitchCmd(false), newNetbootStatusCmd(), newNetbootInitramfsCmd())
	return cmd
}

// netbootServeOptions are the flags of `netboot serve`. Extra modes (such as
// the demo bench) add their flags here and branch in run.
type netbootServeOptions struct {
	iface            string
	addr             string
	rangeFlag        string
	proxy            bool
	allowOtherDHCP   bool
	fastFallthrough  bool
	capture          string
	adminListen      []string
	dashboardURL     string
	powerCommand     string
	recipeFiles      []string
	station          string
	rulesFile        string
	backupReserveMiB int64
	eventsMaxAge     time.Duration
	eventsMaxCount   int
	piOnly           bool
	allowedHosts     []string
	allowUnleased    bool
	tftpRoot         string
	data             string
	http             string
	image            string
	noDHCP           bool
	noTFTP           bool
	compressBackups  bool
	pollInterval     time.Duration
	demo             bool
	prep             netbootPrepareOptions
}

func newNetbootServeCmd() *cobra.Command {
	o := &netbootServeOptions{}
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run DHCP, TFTP and the HTTP API + dashboard for a netboot bench",
		Long: `serve runs the whole bench in one process: a DHCP server on --iface that gives Raspberry Pi 4 /
CM4 bootloaders the PXE menu they need (only to MACs whose netboot is on), a read-only TFTP server
jailed to --tftp-root, and the HTTP API + dashboard (127.0.0.1:5000 and <bench address>:5000 unless
--http is given). All three run under one context: if one fails the others stop, and Ctrl-C stops
them all cleanly.

A board whose netboot is off gets a plain lease with no boot menu; the Pi bootloader ignores such
offers until its DHCP_TIMEOUT (45 s by default) runs out, then boots its next mode (eMMC). With
--fast-fallthrough it gets the menu too and TFTP answers its start4.elf "not found": it moves on
in about a second. The default stays the plain lease until a real board confirms the fast one.

Who may act for a board: with the DHCP server on (not --proxy), every device request (register,
poll, progress, log, action-done, the image and backup streams) must come from the address leased to
that board's MAC; an address with no lease is refused unless --allow-unleased-devices. With --no-dhcp
or --proxy there are no leases to check: a board is then trusted by its MAC, the address that first
fetched its action, and the action's token. A second address never gets an action's token.

Before it starts, serve sends a DHCPDISCOVER on the interface and refuses to run next to another
DHCP server, naming it, unless --allow-other-dhcp (or --proxy, for a network that already has a
DHCP server: then only the PXE options are offered, like dnsmasq's proxy mode).

Everything the bench keeps lives in --data: the SQLite database (devices, actions, events,
backups, netboot switches), the admin token (admin-token, mode 0600, printed once when it is
created), uploaded images (images/), backups (backups/), DHCP leases and server.json, from which
the device, backup and netboot commands find the server.

Images: --image is the golden default; more can be uploaded through the API or the dashboard.
Raw .img, .img.gz, .img.xz and .img.zst are served; sha256 and size are computed once and cached.

--no-dhcp and --no-tftp leave those servers out, for an HTTP-only bench next to an existing
netboot server (point its boot files' cm4bench.server= at this server).

--prepare-tftp-root makes --tftp-root ready before the servers start. It copies the catalogue's
netboot firmware (start4.elf, fixup4.dat, bcm2711-rpi-cm4.dtb, kernel8.img) from the verified
firmware cache: fetch it once with "cm4bench firmware fetch netboot" (same user, or
--firmware-cache DIR); serve never downloads, and a file that is not cached stops it. Then it
writes initrd.img (cm4agent as /init: the embedded one, or --agent FILE), adds "initramfs
initrd.img followkernel" to config.txt and cm4bench.server=URL to cmdline.txt, keeping the rest
of both files. URL is http://<bench address>:<HTTP port> unless --advertise-url is given.
A firmware file already in the root with other content stops serve, naming it, before anything
is written: --replace-firmware replaces it (yours is kept as NAME.orig-<sha256>), and
--prepare-tftp-root=initramfs-only leaves all firmware files to you. Files already as wanted are
not rewritten, so running it at every start changes nothing. Every write is atomic. Per-board
folders (<serial>/, <mac>/) are not edited: a config.txt or cmdline.txt there that lacks these
settings is reported as a warning.

--signed (with --prepare-tftp-root) is for boards in secure-boot mode: it then packs start4.elf,
fixup4.dat, the device trees, the kernel, initrd.img with the agent, config.txt and cmdline.txt
into boot.img, the FAT ramdisk a locked bootloader loads, and signs it as boot.sig with --key
(a PEM or a PKCS#11 URI) or --sign-command with --pubkey, the key whose hash is in the boards'
OTP (see "cm4bench secure-boot"). boot.sig's ts: is $SOURCE_DATE_EPOCH or now.`,
		Example: `  # A dedicated bench NIC with 10.42.0.1/24 on it:
  cm4bench netboot serve --iface eth1 --tftp-root /srv/tftp --data /var/lib/cm4bench \
      --image /srv/images/golden.img.zst

  # Pool and address given explicitly:
  cm4bench netboot serve --iface eth1 --addr 10.42.0.1/24 --range 10.42.0.100-10.42.0.199 \
      --tftp-root /srv/tftp --data /var/lib/cm4bench

  # The office network already has a DHCP server: proxyDHCP only.
  cm4bench netboot serve --iface eth0 --proxy --tftp-root /srv/tftp --data /var/lib/cm4bench

  # Install the firmware and the initramfs into the TFTP root first:
  cm4bench firmware fetch netboot
  cm4bench netboot serve --iface eth1 --tftp-root /srv/tftp --data /var/lib/cm4bench --prepare-tftp-root

  # No hardware: a demo bench of simulated CM4s (what make run starts):
  sudo cm4bench netboot serve --demo

  # HTTP API and dashboard only (another server does DHCP/TFTP):
  cm4bench netboot serve --no-dhcp --no-tftp --data ./bench --http 0.0.0.0:5000 --image golden.img`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.demo {
				return runDemo(cmd, o.data, o.image, o.http)
			}
			return o.run(cmd.Context(), newLogger(cmd), cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.BoolVar(&o.demo, "demo", false, "run the simulated bench instead (needs root): 4 simulated CM4s in network namespaces, a generated golden image, the dashboard on 127.0.0.1:5000 (see cm4bench sim)")
	f.StringVar(&o.iface, "iface", "", "bench network interface (required unless --no-dhcp --no-tftp)")
	f.StringVar(&o.addr, "addr", "", "server address on the bench link as IP/CIDR (default: the interface's first IPv4 address)")
	f.StringVar(&o.rangeFlag, "range", "", "DHCP pool as FIRST-LAST, e.g. 10.42.0.100-10.42.0.199 (default: the whole subnet)")
	f.BoolVar(&o.proxy, "proxy", false, "proxyDHCP: offer only the PXE options, next to an existing DHCP server")
	f.BoolVar(&o.allowOtherDHCP, "allow-other-dhcp", false, "start even when another DHCP server answers on the interface")
	f.BoolVar(&o.allowUnleased, "allow-unleased-devices", false, "accept device requests from addresses our DHCP server did not lease (static addresses, a proxy in front of the API); by default a device must come from the address leased to its MAC")
	f.Int64Var(&o.backupReserveMiB, "backup-reserve", 1024, "free space in `MiB` a backup upload never eats into (0: none, the disk may fill up)")
	f.DurationVar(&o.eventsMaxAge, "events-max-age", 30*24*time.Hour, "drop events older than this from the event log")
	f.IntVar(&o.eventsMaxCount, "events-max-count", 200000, "keep at most this many events (the newest)")
	f.StringSliceVar(&o.allowedHosts, "allowed-host", nil, "a host `NAME` the dashboard and API may be reached by (repeatable); IP addresses and localhost always work, any other name is refused (DNS-rebinding guard)")
	f.BoolVar(&o.piOnly, "pi-only", false, "lease addresses only to Raspberry Pis (option 97, PXEClient, a Pi OUI); off by default because a board's own OS on a non-Pi NIC and a technician's laptop on the bench switch need addresses too")
	f.StringVar(&o.capture, "capture", "", "record every DHCP and TFTP packet on --iface into the pcap `FILE` (tshark/Wireshark read it; written as FILE.partial until serve stops; needs CAP_NET_RAW)")
	f.BoolVar(&o.fastFallthrough, "fast-fallthrough", false, "give boards whose netboot is off the boot menu too, and refuse their start4.elf over TFTP, so they move on to eMMC in about a second instead of after the bootloader's 45 s DHCP_TIMEOUT (not yet confirmed on a real board)")
	f.StringVar(&o.tftpRoot, "tftp-root", "", "directory served read-only over TFTP (the Pi boot files)")
	f.StringVar(&o.data, "data", defaultDataDir, "data directory (database, token, images, backups, leases)")
	f.StringVar(&o.http, "http", "", "HTTP listen address (default 127.0.0.1:5000 plus <bench address>:5000)")
	f.StringVar(&o.dashboardURL, "dashboard-url", "", "the `URL` technicians open, when it is not the first listen address (a forwarded demo, a reverse proxy); the printed login link points there")
	f.StringSliceVar(&o.adminListen, "admin-listen", nil, "also serve the technician API and dashboard on `HOST:PORT` (repeatable); by default only 127.0.0.1 gets them, the bench address serves the device API only")
	f.StringVar(&o.image, "image", "", "golden default image (.img, .img.gz, .img.xz or .img.zst)")
	f.StringArrayVar(&o.recipeFiles, "recipes", nil, "recipe YAML `FILE` applied at start, as `cm4bench recipe apply -f` would (repeatable); a bad one stops the start")
	f.StringVar(&o.station, "station", "", "this bench's `NAME` in the ledger (default: the host name)")
	f.StringVar(&o.rulesFile, "rules", "", "rule list YAML `FILE` applied at start, as `cm4bench rule apply -f` would")
	f.StringVar(&o.powerCommand, "power-command", "", "shell `CMD` that power-cycles one board, run with its MAC as $1 (and CM4BENCH_MAC, CM4BENCH_SERIAL): a hub port switch such as uhubctl, a PoE switch or a relay; enables Power-cycle on the dashboard and `device power-cycle`")
	f.BoolVar(&o.noDHCP, "no-dhcp", false, "do not run the DHCP server")
	f.BoolVar(&o.noTFTP, "no-tftp", false, "do not run the TFTP server")
	f.BoolVar(&o.compressBackups, "compress-backups", false, "store raw backup uploads zstd-compressed")
	f.DurationVar(&o.pollInterval, "poll-interval", 5*time.Second, "how often devices are told to poll")
	o.prep.bind(cmd)
	return cmd
}

// config turns the flags into a serve.Config.
func (o *netbootServeOptions) config(logger *slog.Logger) (serve.Config, error) {
	cfg := serve.Config{
		Iface: o.iface, Proxy: o.proxy, AllowOtherDHCP: o.allowOtherDHCP, FastFallthrough: o.fastFallthrough, Capture: o.capture, AllowUnleased: o.allowUnleased, TFTPRoot: o.tftpRoot,
		DataDir: o.data, HTTPAddr: o.http, AdminListen: o.adminListen, DashboardURL: o.dashboardURL, PowerCommand: o.powerCommand, RecipeFiles: o.recipeFiles, Station: o.station, RulesFile: o.rulesFile, BackupReserve: reserveBytes(o.backupReserveMiB), EventMaxAge: o.eventsMaxAge, EventMaxCount: o.eventsMaxCount, PiOnly: o.piOnly, AllowedHosts: o.allowedHosts, Image: o.image, NoDHCP: o.noDHCP, NoTFTP: o.noTFTP,
		CompressBackups: o.compressBackups, PollInterval: o.pollInterval, Version: version(), Logger: logger,
		OnReady: func() {
			// Under systemd (Type=notify): the unit is active only now.
			if _, err := sdnotify.Ready(); err != nil {
				logger.Warn("systemd readiness notification failed", "err", err)
			}
		},
	}
	if o.addr != "" {
		p, err := netip.ParsePrefix(o.addr)
		if err != nil || !p.Addr().Is4() {
			return cfg, &ExitError{Code: 2, Err: fmt.Errorf("netboot serve: --addr %q: want an IPv4 address with its prefix, like 10.42.0.1/24", o.addr)}
		}
		cfg.Addr = p
	}
	if o.rangeFlag != "" {
		a, b, ok := strings.Cut(o.rangeFlag, "-")
		first, err1 := netip.ParseAddr(strings.TrimSpace(a))
		last, err2 := netip.ParseAddr(strings.TrimSpace(b))
		if !ok || err1 != nil || err2 != nil || !first.Is4() || !last.Is4() || last.Less(first) {
			return cfg, &ExitError{Code: 2, Err: fmt.Errorf("netboot serve: --range %q: want FIRST-LAST IPv4 addresses, first <= last", o.rangeFlag)}
		}
		cfg.Range = [2]netip.Addr{first, last}
	}
	return cfg, nil
}

func (o *netbootServeOptions) run(ctx context.Context, logger *slog.Logger, out io.Writer) error {
	if u, err := url.Parse(o.dashboardURL); o.dashboardURL != "" && (err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "") {
		return &ExitError{Code: 2, Err: fmt.Errorf("netboot serve: --dashboard-url %q: want http://HOST[:PORT]", o.dashboardURL)}
	}
	if o.iface == "" && !o.noDHCP {
		return &ExitError{Code: 2, Err: errors.New(noIfaceHelp())}
	}
	cfg, err := o.config(logger)
	if err != nil {
		return err
	}
	if o.prep.mode == "" && (o.prep.signed || o.prep.key.key != "" || o.prep.key.signCommand != "") {
		return &ExitError{Code: 2, Err: errors.New("netboot serve: --signed builds boot.img while preparing the TFTP root: add --prepare-tftp-root")}
	}
	if o.prep.mode == "" {
		if err := serve.Run(ctx, cfg, out); err != nil {
			return fmt.Errorf("netboot serve: %w", err)
		}
		return nil
	}
	popts, err := o.prep.options(o.tftpRoot, logger)
	if err != nil {
		return err
	}
	b, err := serve.New(ctx, cfg)
	if err != nil {
		return fmt.Errorf("netboot serve: %w", err)
	}
	defer b.Close()
	go b.Announce(ctx, out)
	if err := o.prep.prepare(ctx, b, popts, out); err != nil {
		return err
	}
	if err := b.Serve(ctx); err != nil {
		return fmt.Errorf("netboot serve: %w", err)
	}
	return nil
}

type netbootSwitchOptions struct {
	api *apiOptions
	on  bool
}

func newNetbootSwitchCmd(on bool) *cobra.Command {
	o := &netbootSwitchOptions{api: &apiOptions{}, on: on}
	verb := "disable"
	if on {
		verb = "enable"
	}
	cmd := &cobra.Command{
		Use:   verb + " [MAC...]",
		Short: strings.ToUpper(verb[:1]) + verb[1:] + " network boot, globally or for given MACs, on the running server",
		Long: `Without a MAC this flips the global switch: with it off, no board gets the PXE menu (they
all boot from eMMC). With MACs it flips those boards' own switches (a MAC the server has not
seen yet may be given too). A board netboots only when both switches are on. The change is
effective at the next DHCP packet and survives a restart.`,
		Example: "  cm4bench netboot " + verb + "\n  cm4bench netboot " + verb + " dc:a6:32:01:02:03 dc:a6:32:01:02:04",
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.run(cmd.Context(), args, wantJSON(cmd), cmd.OutOrStdout())
		},
	}
	o.api.bind(cmd)
	return cmd
}

func (o *netbootSwitchOptions) run(ctx context.Context, args []string, asJSON bool, out io.Writer) error {
	macs, c, err := o.api.clientFor(args)
	if err != nil {
		return err
	}
	if len(macs) == 0 {
		if err := c.SetNetboot(ctx, o.on); err != nil {
			return fmt.Errorf("netboot: %w", err)
		}
		if asJSON {
			return writeJSON(out, contract.NetbootSwitch{Enabled: o.on})
		}
		_, err := fmt.Fprintf(out, "global netboot %s\n", onOffText(o.on))
		return err
	}
	return eachMAC(macs, asJSON, out, "netboot",
		func(m string) (contract.NetbootSwitch, error) { return c.SetDeviceNetboot(ctx, m, o.on) },
		func(sw contract.NetbootSwitch) string {
			return fmt.Sprintf("%s: netboot %s", sw.MAC, onOffText(sw.Enabled))
		})
}

type netbootStatusOptions struct{ api *apiOptions }

// netbootStatus is the --json answer of `netboot status`.
type netbootStatus struct {
	Global  bool                     `json:"global"`
	Devices []contract.NetbootSwitch `json:"devices"`
	Rivals  []string                 `json:"rival_dhcp,omitempty"`
}

func newNetbootStatusCmd() *cobra.Command {
	o := &netbootStatusOptions{api: &apiOptions{}}
	cmd := &cobra.Command{
		Use:   "status [MAC...]",
		Short: "Show the global netboot switch and the per-board switches",
		Long: `status shows the global switch and each board's own switch, and whether it would get the
PXE menu now (both on). With MACs it shows only those boards.`,
		Example: "  cm4bench netboot status\n  cm4bench netboot status dc:a6:32:01:02:03 --json",
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.run(cmd.Context(), args, wantJSON(cmd), cmd.OutOrStdout())
		},
	}
	o.api.bind(cmd)
	return cmd
}

func (o *netbootStatusOptions) run(ctx context.Context, args []string, asJSON bool, out io.Writer) error {
	macs, c, err := o.api.clientFor(args)
	if err != nil {
		return err
	}
	st, err := c.Status(ctx)
	if err != nil {
		return fmt.Errorf("netboot status: %w", err)
	}
	res := netbootStatus{Global: st.Netboot, Devices: []contract.NetbootSwitch{}, Rivals: st.RivalDHCP}
	if len(macs) > 0 {
		for _, m := range macs {
			sw, err := c.DeviceNetboot(ctx, m)
			if err != nil {
				return fmt.Errorf("netboot status %s: %w", m, err)
			}
			res.Devices = append(res.Devices, sw)
		}
	} else {
		devs, err := c.Devices(ctx)
		if err != nil {
			return fmt.Errorf("netboot status: %w", err)
		}
		for _, d := range devs {
			res.Devices = append(res.Devices, contract.NetbootSwitch{MAC: d.MAC, Enabled: d.Netboot})
		}
	}
	if asJSON {
		return writeJSON(out, res)
	}
	fmt.Fprintf(out, "global netboot: %s\n", onOffText(res.Global))
	for _, r := range res.Rivals {
		fmt.Fprintf(out, "WARNING: another DHCP server on the bench link: %s\n", r)
	}
	if len(res.Devices) == 0 {
		return nil
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "MAC\tSWITCH\tNETBOOTS NOW")
	for _, d := range res.Devices {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", d.MAC, onOffText(d.Enabled), yesNo(d.Enabled && res.Global))
	}
	return tw.Flush()
}

// reserveBytes turns --backup-reserve MiB into serve.Config.BackupReserve
// (0 MiB: no reserve).
func reserveBytes(mib int64) int64 {
	if mib <= 0 {
		return -1
	}
	return mib << 20
}

// noIfaceHelp says what to do when serve has no --iface: the Ethernet
// interfaces this machine has, and the demo for a machine without a bench.
func noIfaceHelp() string {
	var b strings.Builder
	b.WriteString("netboot serve: name the network interface that goes to the bench switch with --iface")
	ifs, _ := net.Interfaces()
	var lines []string
	for _, ifi := range ifs {
		if ifi.Flags&net.FlagLoopback != 0 || len(ifi.HardwareAddr) != 6 {
			continue
		}
		var addrs []string
		if as, err := ifi.Addrs(); err == nil {
			for _, a := range as {
				addrs = append(addrs, a.String())
			}
		}
		state := "down"
		if ifi.Flags&net.FlagUp != 0 {
			state = "up"
		}
		lines = append(lines, fmt.Sprintf("  %-12s %s  %-4s %s", ifi.Name, ifi.HardwareAddr, state, strings.Join(addrs, " ")))
	}
	if len(lines) > 0 {
		b.WriteString("; this machine has:\n" + strings.Join(lines, "\n") + "\n")
	} else {
		b.WriteString(" (this machine shows no Ethernet interface)\n")
	}
	b.WriteString("for example: sudo cm4bench netboot serve --iface eth1 --prepare-tftp-root --tftp-root /srv/tftp --image golden.img.zst\n")
	b.WriteString("no bench at hand: sudo cm4bench netboot serve --demo (simulated boards and the dashboard); HTTP only: --no-dhcp")
	return b.String()
}
