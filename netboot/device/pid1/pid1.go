// Package pid1 is what cm4agent does before its first request when it runs
// as the init process of the netboot initramfs: mount proc, sys and
// devtmpfs, load the kernel modules packed with it (finit_module), bring
// the Ethernet link up and configure it by DHCP (insomniacslk nclient4,
// address and default route through netlink), and find the server URL.
package pid1

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/cm4bench/cm4bench/internal/contract"
)

// LoadConfig reads the config file (missing = zero config) and applies the
// kernel command line.
func LoadConfig(path, cmdline string) (contract.AgentConfig, error) {
	var c contract.AgentConfig
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		if err := json.Unmarshal(b, &c); err != nil {
			return c, fmt.Errorf("pid1: config %s: %w", path, err)
		}
	case !errors.Is(err, os.ErrNotExist):
		return c, fmt.Errorf("pid1: config: %w", err)
	}
	args := ParseCmdline(cmdline)
	if v := args[contract.KernelArgURL]; v != "" {
		c.Server = v
	}
	if v := args[contract.KernelArgTarget]; v != "" {
		c.Target = v
	}
	if v, ok := args[contract.KernelArgReboot]; ok && (v == "0" || v == "no" || v == "false") {
		c.NoReboot = true
	}
	c.TargetExplicit = c.Target != ""
	if c.Target == "" {
		c.Target = "/dev/mmcblk0"
	}
	return c, nil
}

// ParseCmdline splits a kernel command line into key=value pairs (a bare
// word maps to ""). Double quotes group words, as the kernel does.
func ParseCmdline(s string) map[string]string {
	m := map[string]string{}
	var cur strings.Builder
	inQ := false
	flush := func() {
		if cur.Len() == 0 {
			return
		}
		k, v, _ := strings.Cut(cur.String(), "=")
		m[k] = v
		cur.Reset()
	}
	for _, r := range s {
		switch {
		case r == '"':
			inQ = !inQ
		case !inQ && (r == ' ' || r == '\t' || r == '\n'):
			flush()
		default:
			cur.WriteRune(r)
		}
	}
	flush()
	return m
}

// Mount mounts proc, sys, devtmpfs and a tmpfs on /tmp (each once).
func Mount() error {
	for _, m := range []struct{ src, dst, fstype string }{
		{"proc", "/proc", "proc"},
		{"sysfs", "/sys", "sysfs"},
		{"devtmpfs", "/dev", "devtmpfs"},
		{"tmpfs", "/tmp", "tmpfs"},
	} {
		if err := os.MkdirAll(m.dst, 0o755); err != nil {
			return fmt.Errorf("pid1: mkdir %s: %w", m.dst, err)
		}
		if err := unix.Mount(m.src, m.dst, m.fstype, unix.MS_NOSUID, ""); err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("pid1: mount %s on %s: %w", m.fstype, m.dst, err)
		}
	}
	return nil
}

// LoadModules loads each module file (relative to dir) with finit_module,
// in order. A module already loaded or built in is not an error.
func LoadModules(dir string, names []string, log *slog.Logger) error {
	for _, n := range names {
		p := filepath.Join(dir, n)
		f, err := os.Open(p)
		if err != nil {
			return fmt.Errorf("pid1: module %s: %w", n, err)
		}
		err = unix.FinitModule(int(f.Fd()), "", 0)
		f.Close()
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("pid1: finit_module %s: %w", n, err)
		}
		if log != nil {
			log.Info("module loaded", "module", n)
		}
	}
	return nil
}

// Lease is the network configuration the agent got.
type Lease struct {
	Interface string
	MAC       string
	IP        net.IP
	Server    string // base URL derived from DHCP (option 66/siaddr), "" if none
}

// Network brings lo and the Ethernet links up and runs DHCP on iface (or on
// each Ethernet link in turn until one gets a lease), then sets the address
// and default route. It retries until ctx ends.
func Network(ctx context.Context, iface string, log *slog.Logger) (*Lease, error) {
	if lo, err := netlink.LinkByName("lo"); err == nil {
		_ = netlink.LinkSetUp(lo)
	}
	for attempt := 0; ; attempt++ {
		links, err := ethernetLinks(iface)
		if err != nil {
			return nil, err
		}
		for _, l := range links {
			if err := netlink.LinkSetUp(l); err != nil {
				return nil, fmt.Errorf("pid1: link up %s: %w", l.Attrs().Name, err)
			}
		}
		for _, l := range links {
			lease, err := dhcp(ctx, l, log)
			if err == nil {
				return lease, nil
			}
			if log != nil {
				log.Warn("dhcp failed", "iface", l.Attrs().Name, "err", err)
			}
		}
		if len(links) == 0 && log != nil && attempt%10 == 0 {
			log.Warn("no Ethernet link yet")
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("pid1: network: %w", ctx.Err())
		case <-time.After(time.Second):
		}
	}
}

func ethernetLinks(iface string) ([]netlink.Link, error) {
	if iface != "" {
		l, err := netlink.LinkByName(iface)
		if err != nil {
			return nil, nil // not there yet (driver still probing)
		}
		return []netlink.Link{l}, nil
	}
	all, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("pid1: list links: %w", err)
	}
	var out []netlink.Link
	for _, l := range all {
		a := l.Attrs()
		if a.EncapType == "ether" && len(a.HardwareAddr) == 6 && l.Type() == "device" {
			out = append(out, l)
		}
	}
	return out, nil
}

func dhcp(ctx context.Context, l netlink.Link, log *slog.Logger) (*Lease, error) {
	name := l.Attrs().Name
	c, err := nclient4.New(name, nclient4.WithTimeout(3*time.Second), nclient4.WithRetry(3))
	if err != nil {
		return nil, fmt.Errorf("pid1: dhcp client on %s: %w", name, err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	lease, err := c.Request(ctx, dhcpv4.WithOption(dhcpv4.OptClassIdentifier("cm4agent")))
	if err != nil {
		return nil, fmt.Errorf("pid1: dhcp on %s: %w", name, err)
	}
	ack := lease.ACK
	mask := ack.SubnetMask()
	if mask == nil {
		mask = ack.YourIPAddr.DefaultMask()
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: ack.YourIPAddr, Mask: mask}}
	if err := netlink.AddrReplace(l, addr); err != nil {
		return nil, fmt.Errorf("pid1: set address %s on %s: %w", addr.IPNet, name, err)
	}
	if rs := ack.Router(); len(rs) > 0 {
		r := &netlink.Route{LinkIndex: l.Attrs().Index, Gw: rs[0]}
		if err := netlink.RouteReplace(r); err != nil {
			return nil, fmt.Errorf("pid1: default route via %s: %w", rs[0], err)
		}
	}
	out := &Lease{Interface: name, MAC: l.Attrs().HardwareAddr.String(), IP: ack.YourIPAddr, Server: ServerFromDHCP(ack)}
	if log != nil {
		log.Info("dhcp lease", "iface", name, "ip", addr.IPNet.String(), "router", ack.Router(), "server", out.Server)
	}
	return out, nil
}

// ServerFromDHCP derives the API base URL from a DHCP answer: option 66
// (TFTP server name; an address or a URL) if present, else siaddr, with
// contract.DefaultPort. It returns "" if the answer names no server.
func ServerFromDHCP(m *dhcpv4.DHCPv4) string {
	host := strings.TrimSpace(m.TFTPServerName())
	if strings.HasPrefix(host, "http://") || strings.HasPrefix(host, "https://") {
		if _, err := url.Parse(host); err == nil {
			return strings.TrimRight(host, "/")
		}
	}
	if host == "" && m.ServerIPAddr != nil && !m.ServerIPAddr.IsUnspecified() {
		host = m.ServerIPAddr.String()
	}
	if host == "" {
		return ""
	}
	return "http://" + net.JoinHostPort(host, strconv.Itoa(contract.DefaultPort))
}

// Reboot syncs and restarts the machine (PID 1 only).
func Reboot() error {
	unix.Sync()
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART); err != nil {
		return fmt.Errorf("pid1: reboot: %w", err)
	}
	return nil
}

// PowerOff syncs and powers the machine off (PID 1 only): a recipe's
// "after: poweroff", so the board is ready to pack.
func PowerOff() error {
	unix.Sync()
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF); err != nil {
		return fmt.Errorf("pid1: power off: %w", err)
	}
	return nil
}

// Console opens /dev/console for output, falling back to stdout.
func Console() io.Writer {
	f, err := os.OpenFile("/dev/console", os.O_WRONLY|unix.O_NOCTTY, 0)
	if err != nil {
		return os.Stdout
	}
	return f
}
