package pisim

import (
	"fmt"
	"net"

	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"github.com/vishvananda/netlink"
)

// HostLink is a Link on an interface of the calling thread's network
// namespace. Its methods must run in that namespace (netboot/sim/simbench
// calls them from a thread locked into the device's namespace).
type HostLink struct {
	Name string // interface name, e.g. "eth0"
	addr net.IP
}

// DHCPConn opens a raw packet socket on the interface (nclient4's broadcast
// UDP conn bound to port 68), so DHCP works before the link has an address.
func (l *HostLink) DHCPConn() (net.PacketConn, error) {
	c, err := nclient4.NewRawUDPConn(l.Name, 68)
	if err != nil {
		return nil, fmt.Errorf("link %s: raw socket: %w", l.Name, err)
	}
	return c, nil
}

// Configure replaces the interface's addresses with addr and, when gw is
// set, adds a default route through it.
func (l *HostLink) Configure(addr net.IPNet, gw net.IP) error {
	lk, err := netlink.LinkByName(l.Name)
	if err != nil {
		return fmt.Errorf("link %s: %w", l.Name, err)
	}
	if err := l.flush(lk); err != nil {
		return err
	}
	if err := netlink.AddrAdd(lk, &netlink.Addr{IPNet: &addr}); err != nil {
		return fmt.Errorf("link %s: add %v: %w", l.Name, addr.String(), err)
	}
	if gw != nil && !gw.IsUnspecified() && addr.Contains(gw) {
		if err := netlink.RouteReplace(&netlink.Route{LinkIndex: lk.Attrs().Index, Gw: gw}); err != nil {
			return fmt.Errorf("link %s: default route via %v: %w", l.Name, gw, err)
		}
	}
	l.addr = addr.IP
	return nil
}

// UDPConn opens a UDP socket on the configured address, ephemeral port.
func (l *HostLink) UDPConn() (net.PacketConn, error) {
	if l.addr == nil {
		return nil, fmt.Errorf("link %s: no address configured", l.Name)
	}
	return net.ListenUDP("udp4", &net.UDPAddr{IP: l.addr})
}

// Reset removes every IPv4 address from the interface.
func (l *HostLink) Reset() error {
	lk, err := netlink.LinkByName(l.Name)
	if err != nil {
		return fmt.Errorf("link %s: %w", l.Name, err)
	}
	l.addr = nil
	return l.flush(lk)
}

func (l *HostLink) flush(lk netlink.Link) error {
	addrs, err := netlink.AddrList(lk, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("link %s: list addresses: %w", l.Name, err)
	}
	for _, a := range addrs {
		if err := netlink.AddrDel(lk, &a); err != nil {
			return fmt.Errorf("link %s: remove %v: %w", l.Name, a.IPNet, err)
		}
	}
	return nil
}
