package cli

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/cm4bench/cm4bench/api/store"
	"github.com/cm4bench/cm4bench/firmware"
	"github.com/cm4bench/cm4bench/internal/doctor"
	"github.com/cm4bench/cm4bench/usbboot"
)

// doctorOptions are the flags of "cm4bench doctor".
type doctorOptions struct {
	iface, tftpRoot, data, cache, http string
	dhcpWait                           time.Duration
	noUSB                              bool
	usb                                usbAccess
}

func newDoctorCmd(usb usbAccess) *cobra.Command {
	o := &doctorOptions{usb: usb}
	cmd := &cobra.Command{
		Use:   "doctor [--iface IF] [--tftp-root DIR] [--data DIR]",
		Short: "Check this workstation before the first board: USB, udev, network, ports, firmware, disk",
		Long: `doctor checks what a bench needs and prints one line per check, with what to do when a
check is not ok:

  usb-subsystem    the machine has USB (/sys/bus/usb, /dev/bus/usb)
  udev-rule        a rule gives non-root access to RPIBOOT devices (cm4bench usbboot udev-rules)
  rpiboot-devices  boards in RPIBOOT mode on the bus right now
  interface        --iface exists, is up, has a link and an IPv4 address
  other-dhcp       no other DHCP server answers on --iface (a DHCPDISCOVER; needs root)
  port-*           UDP 67 (DHCP), UDP 69 (TFTP) and TCP 5000 (--http port) are free
  firmware-cache   the netboot, recovery and bootfiles sets are cached and verified
  tftp-root        --tftp-root holds the catalogue's netboot firmware byte for byte, initrd.img,
                   and the config.txt and cmdline.txt edits (netboot serve --prepare-tftp-root)
  data-dir         --data is writable with room for one raw backup of the largest eMMC a board
                   of this bench reported (8 GiB when none has)

Checks whose flag is not given are skipped. Exit status 1 when a check fails; warnings (no
board plugged in yet, say) do not fail.`,
		Example: `  sudo cm4bench doctor --iface eth1 --tftp-root /srv/tftp --data /var/lib/cm4bench
  cm4bench doctor --json | jq -r '.[] | select(.status=="fail") | .fix'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.run(cmd.Context(), wantJSON(cmd), cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.iface, "iface", "", "bench network `INTERFACE` to check")
	f.StringVar(&o.tftpRoot, "tftp-root", "", "TFTP root `DIR` to check")
	f.StringVar(&o.data, "data", "", "data `DIR` to check (netboot serve --data)")
	f.StringVar(&o.cache, "cache", "", "firmware cache `DIR` (default: the user cache)")
	f.StringVar(&o.http, "http", "", "the HTTP listen `ADDR` serve will use (default port 5000)")
	f.DurationVar(&o.dhcpWait, "dhcp-wait", 2*time.Second, "how long to wait for another DHCP server's offer")
	f.BoolVar(&o.noUSB, "no-usb", false, "do not list USB devices")
	return cmd
}

func (o *doctorOptions) run(ctx context.Context, asJSON bool, stdout io.Writer) error {
	d := &doctor.Doctor{Iface: o.iface, TFTPRoot: o.tftpRoot, DataDir: o.data, Rival: doctor.DHCPProbe(o.dhcpWait),
		FirmwareSets: []string{"netboot", "recovery", "bootfiles"}}
	if o.http != "" {
		host, port, err := net.SplitHostPort(o.http)
		p, perr := strconv.Atoi(port)
		if err != nil || perr != nil {
			return &ExitError{Code: 2, Err: fmt.Errorf("doctor: --http %q: want HOST:PORT", o.http)}
		}
		d.Ports = append(append([]doctor.Port(nil), doctor.DefaultPorts[:2]...), doctor.Port{Net: "tcp", Port: p, What: "HTTP API and dashboard"})
		d.BindAddr = host
	}
	if !o.noUSB {
		d.ListUSB = func(ctx context.Context) ([]usbboot.Desc, error) {
			bus, _, closeBus, err := o.usb.open()
			if err != nil {
				return nil, err
			}
			defer closeBus()
			return bus.List(ctx)
		}
	}
	dir := o.cache
	if dir == "" {
		if def, err := firmware.DefaultDir(); err == nil {
			dir = def
		}
	}
	if dir != "" {
		d.Firmware = &firmware.Cache{Dir: dir, Offline: true}
	}
	if o.data != "" {
		db := filepath.Join(o.data, "cm4bench.db")
		d.LargestEMMC = func(ctx context.Context) (int64, error) {
			if _, err := os.Stat(db); err != nil {
				return 0, nil // no board seen yet
			}
			st, err := store.Open(ctx, db)
			if err != nil {
				return 0, err
			}
			defer st.Close()
			devs, err := st.Devices(ctx)
			if err != nil {
				return 0, err
			}
			var max int64
			for _, dv := range devs {
				if dv.Facts != nil && dv.Facts.EMMCBytes > max {
					max = dv.Facts.EMMCBytes
				}
			}
			return max, nil
		}
	}
	results := d.Run(ctx)
	if asJSON {
		if err := writeJSON(stdout, results); err != nil {
			return err
		}
	} else {
		for _, r := range results {
			fmt.Fprintf(stdout, "%-4s  %-16s %s\n", r.Status, r.Check, r.Detail)
			if r.Fix != "" && r.Status != doctor.OK {
				fmt.Fprintf(stdout, "      %-16s fix: %s\n", "", r.Fix)
			}
		}
	}
	if doctor.Failed(results) {
		return &ExitError{Code: 1, Err: fmt.Errorf("doctor: some checks failed")}
	}
	return nil
}
