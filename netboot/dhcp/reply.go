package dhcp

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/cm4bench/cm4bench/internal/contract"
	"github.com/cm4bench/cm4bench/internal/tokenbucket"
)

// Reply decides the answer to one request: an OFFER, ACK or NAK, or nil to
// stay silent (not for us, or nothing to say). It touches no socket; it
// updates the lease table. An error means the request was valid but could
// not be served (for example the pool is exhausted); it is dropped.
func (s *Server) Reply(req *dhcpv4.DHCPv4) (*dhcpv4.DHCPv4, error) {
	return s.ReplyFrom(req, netip.Addr{})
}

// ReplyFrom is Reply for a packet whose IP source is from (invalid: not
// known, as in unit tests). RELEASE and DECLINE count only from the address
// leased to their MAC: a forged one from elsewhere cannot drop a board's
// lease.
func (s *Server) ReplyFrom(req *dhcpv4.DHCPv4, from netip.Addr) (*dhcpv4.DHCPv4, error) {
	if err := s.setup(); err != nil {
		return nil, err
	}
	if req == nil || req.OpCode != dhcpv4.OpcodeBootRequest {
		return nil, nil
	}
	mac := req.ClientHWAddr
	if len(mac) != 6 || req.HWType != 1 {
		s.count(func(st *Stats) { st.Dropped++ })
		return nil, nil // only Ethernet clients
	}
	if s.ownMAC != nil && bytes.Equal(mac, s.ownMAC) {
		return nil, nil // our own rival probe
	}
	reason := classify(req)
	if reason == ReasonNone && s.pool.isPi(mac) {
		reason = ReasonRemembered
	}
	if reason == ReasonNone && s.PiOnly {
		s.count(func(st *Stats) { st.Dropped++ })
		return nil, nil // --pi-only: no lease for anything but a Raspberry Pi
	}
	if !s.pool.known(mac) && !s.newMACs.allow(s.now()) {
		s.count(func(st *Stats) { st.Dropped++ })
		return nil, nil // too many new MACs at once: a flood, not a bench powering on
	}
	if s.Proxy {
		return s.replyProxy(req, reason)
	}
	switch req.MessageType() {
	case dhcpv4.MessageTypeDiscover:
		return s.replyDiscover(req, reason)
	case dhcpv4.MessageTypeRequest:
		return s.replyRequest(req, reason)
	case dhcpv4.MessageTypeRelease:
		if sid := req.ServerIdentifier(); sid != nil && !sid.Equal(s.Addr.Addr().AsSlice()) {
			return nil, nil
		}
		if !s.fromLease(mac, from) {
			return nil, nil
		}
		s.pool.release(mac, s.now())
		s.leasesChanged()
		s.emit(contract.EventDHCPRelease, "info", mac.String(), "", "released "+req.ClientIPAddr.String(), map[string]any{"ip": req.ClientIPAddr.String()})
		return nil, nil
	case dhcpv4.MessageTypeDecline:
		if sid := req.ServerIdentifier(); sid != nil && !sid.Equal(s.Addr.Addr().AsSlice()) {
			return nil, nil
		}
		if !s.fromLease(mac, from) {
			return nil, nil
		}
		ip, ok := netip.AddrFromSlice(req.RequestedIPAddress().To4())
		if ok {
			s.pool.decline(mac, ip, s.now())
			s.leasesChanged()
			s.emit(contract.EventDHCPDecline, "warn", mac.String(), "", "client says "+ip.String()+" is in use by another host", map[string]any{"ip": ip.String()})
		}
		return nil, nil
	case dhcpv4.MessageTypeInform:
		resp, err := s.base(req, dhcpv4.MessageTypeAck, netip.Addr{})
		if err != nil {
			return nil, err
		}
		resp.ClientIPAddr = req.ClientIPAddr
		return resp, nil
	default:
		s.count(func(st *Stats) { st.Dropped++ })
		return nil, nil
	}
}

// netboot reports whether mac gets the boot menu: a recognised Pi whose
// netboot the Policy allows.
func (s *Server) netboot(reason string, mac net.HardwareAddr) bool {
	if reason == ReasonNone {
		return false
	}
	return s.FastFallthrough || s.Policy == nil || s.Policy.NetbootEnabled(mac)
}

func (s *Server) replyDiscover(req *dhcpv4.DHCPv4, reason string) (*dhcpv4.DHCPv4, error) {
	mac := req.ClientHWAddr
	want, _ := netip.AddrFromSlice(req.RequestedIPAddress().To4())
	l, err := s.pool.offer(mac, want, s.now(), offerHold)
	if err != nil {
		s.emit(contract.EventDHCPError, "error", mac.String(), "", err.Error(), nil)
		return nil, err
	}
	if reason != ReasonNone {
		s.pool.markPi(mac)
	}
	resp, err := s.base(req, dhcpv4.MessageTypeOffer, l.IP)
	if err != nil {
		return nil, err
	}
	menu := s.netboot(reason, mac)
	if menu {
		s.addPXE(req, resp)
	}
	s.count(func(st *Stats) { st.Offers++ })
	serial := SerialFromGUID(req)
	s.log().Debug("dhcp: offer", "mac", mac.String(), "ip", l.IP, "pi", reason, "netboot", menu)
	s.emit(contract.EventDHCPOffer, "info", mac.String(), serial, fmt.Sprintf("offered %s", l.IP), map[string]any{
		"ip": l.IP.String(), "xid": req.TransactionID.String(), "pi": reason, "netboot": menu,
	})
	return resp, nil
}

func (s *Server) replyRequest(req *dhcpv4.DHCPv4, reason string) (*dhcpv4.DHCPv4, error) {
	mac := req.ClientHWAddr
	ours := s.Addr.Addr().AsSlice()
	if sid := req.ServerIdentifier(); sid != nil && !sid.Equal(ours) {
		return nil, nil // the client chose another server's offer
	}
	ipb := req.RequestedIPAddress()
	if ipb == nil || ipb.IsUnspecified() {
		ipb = req.ClientIPAddr // RENEWING/REBINDING
	}
	ip, ok := netip.AddrFromSlice(ipb.To4())
	if !ok || ip.IsUnspecified() {
		return s.nak(req, "request without an address")
	}
	if !s.Addr.Contains(ip) {
		return s.nak(req, fmt.Sprintf("%s is not on this link (%s)", ip, s.Addr.Masked()))
	}
	serial := SerialFromGUID(req)
	l, err := s.pool.bind(mac, ip, s.now(), s.leaseTime(), reason != ReasonNone, serial)
	if err != nil {
		// The address is another client's or not ours to give (also for
		// INIT-REBOOT: we know it is wrong for this client).
		return s.nak(req, err.Error())
	}
	s.leasesChanged()
	resp, err := s.base(req, dhcpv4.MessageTypeAck, l.IP)
	if err != nil {
		return nil, err
	}
	menu := s.netboot(reason, mac)
	if menu {
		s.addPXE(req, resp)
	}
	if serial == "" {
		serial = l.Serial
	}
	s.count(func(st *Stats) { st.Acks++ })
	s.log().Info("dhcp: ack", "mac", mac.String(), "ip", l.IP, "pi", reason, "netboot", menu)
	s.emit(contract.EventDHCPAck, "info", mac.String(), serial, fmt.Sprintf("leased %s", l.IP), map[string]any{
		"ip": l.IP.String(), "xid": req.TransactionID.String(), "pi": reason, "netboot": menu,
	})
	return resp, nil
}

func (s *Server) nak(req *dhcpv4.DHCPv4, why string) (*dhcpv4.DHCPv4, error) {
	resp, err := dhcpv4.NewReplyFromRequest(req,
		dhcpv4.WithMessageType(dhcpv4.MessageTypeNak),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(s.Addr.Addr().AsSlice())),
		dhcpv4.WithOption(dhcpv4.OptMessage(why)),
	)
	if err != nil {
		return nil, fmt.Errorf("dhcp: build nak: %w", err)
	}
	s.count(func(st *Stats) { st.Naks++ })
	s.log().Info("dhcp: nak", "mac", req.ClientHWAddr.String(), "why", why)
	s.emit(contract.EventDHCPNak, "warn", req.ClientHWAddr.String(), "", why, map[string]any{"xid": req.TransactionID.String()})
	return resp, nil
}

// base builds an OFFER/ACK with the plain lease options.
func (s *Server) base(req *dhcpv4.DHCPv4, t dhcpv4.MessageType, yiaddr netip.Addr) (*dhcpv4.DHCPv4, error) {
	mask := net.CIDRMask(s.Addr.Bits(), 32)
	mods := []dhcpv4.Modifier{
		dhcpv4.WithMessageType(t),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(s.Addr.Addr().AsSlice())),
		dhcpv4.WithNetmask(mask),
	}
	if yiaddr.IsValid() {
		mods = append(mods,
			dhcpv4.WithYourIP(yiaddr.AsSlice()),
			dhcpv4.WithOption(dhcpv4.OptIPAddressLeaseTime(s.leaseTime())),
			dhcpv4.WithOption(dhcpv4.OptRenewTimeValue(s.leaseTime()/2)),
			dhcpv4.WithOption(dhcpv4.OptRebindingTimeValue(s.leaseTime()*7/8)),
		)
	}
	if s.Router.IsValid() {
		mods = append(mods, dhcpv4.WithRouter(s.Router.AsSlice()))
	}
	resp, err := dhcpv4.NewReplyFromRequest(req, mods...)
	if err != nil {
		return nil, fmt.Errorf("dhcp: build %s: %w", t, err)
	}
	return resp, nil
}

// addPXE adds what a Pi 4 bootloader needs to netboot from us.
func (s *Server) addPXE(req, resp *dhcpv4.DHCPv4) {
	ip := s.Addr.Addr()
	resp.ServerIPAddr = ip.AsSlice()
	resp.UpdateOption(dhcpv4.OptGeneric(dhcpv4.OptionVendorSpecificInformation, PXEMenu()))
	resp.UpdateOption(dhcpv4.OptClassIdentifier(vendorPXE))
	resp.UpdateOption(dhcpv4.OptTFTPServerName(ip.String()))
	if g := req.GetOneOption(dhcpv4.OptionClientMachineIdentifier); len(g) > 0 {
		resp.UpdateOption(dhcpv4.OptGeneric(dhcpv4.OptionClientMachineIdentifier, g))
	}
}

// replyProxy answers like dnsmasq's proxy mode: DISCOVERs from PXE clients
// get an OFFER with no address, only the PXE options.
func (s *Server) replyProxy(req *dhcpv4.DHCPv4, reason string) (*dhcpv4.DHCPv4, error) {
	if req.MessageType() != dhcpv4.MessageTypeDiscover || len(req.ClassIdentifier()) < len(vendorPXE) || req.ClassIdentifier()[:len(vendorPXE)] != vendorPXE {
		return nil, nil
	}
	mac := req.ClientHWAddr
	if !s.netboot(reason, mac) {
		s.log().Debug("dhcp: proxy: netboot off, no offer", "mac", mac.String())
		return nil, nil
	}
	resp, err := dhcpv4.NewReplyFromRequest(req,
		dhcpv4.WithMessageType(dhcpv4.MessageTypeOffer),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(s.Addr.Addr().AsSlice())),
		dhcpv4.WithBroadcast(true),
	)
	if err != nil {
		return nil, fmt.Errorf("dhcp: build proxy offer: %w", err)
	}
	resp.YourIPAddr = net.IPv4zero
	s.addPXE(req, resp)
	s.count(func(st *Stats) { st.Offers++ })
	s.emit(contract.EventDHCPOffer, "info", mac.String(), SerialFromGUID(req), "proxy offer (boot menu only)", map[string]any{
		"xid": req.TransactionID.String(), "pi": reason, "netboot": true, "proxy": true,
	})
	return resp, nil
}

// fromLease reports whether a RELEASE or DECLINE for mac may be believed:
// its source is the address leased to mac (or unknown, in unit tests).
func (s *Server) fromLease(mac net.HardwareAddr, from netip.Addr) bool {
	if !from.IsValid() {
		return true
	}
	if owner, ok := s.MACForIP(from.Unmap()); ok && owner.String() == mac.String() {
		return true
	}
	s.count(func(st *Stats) { st.Dropped++ })
	s.log().Warn("dhcp: release/decline not from the address leased to that MAC: ignored", "mac", mac.String(), "from", from.String())
	return false
}

// newMACLimit bounds how fast MACs never seen before get answers: a bench
// powering 64 boards at once passes, a flood of random MACs does not
// exhaust the pool in seconds (security item 8).
type newMACLimit struct {
	mu sync.Mutex
	b  tokenbucket.Bucket
}

const (
	newMACBurst = 64
	newMACRate  = 1.0 // per second
)

func (l *newMACLimit) allow(now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b.Rate, l.b.Burst = newMACRate, newMACBurst
	return l.b.Allow(now)
}
