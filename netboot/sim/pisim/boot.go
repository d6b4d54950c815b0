package pisim

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// EEPROM holds the bootloader properties (rpi-eeprom-config) that shape what
// the device does on the network. The zero value means the factory defaults.
type EEPROM struct {
	BootOrder       uint32        // BOOT_ORDER nibbles, right to left; 0 = 0xf21
	DHCPTimeout     time.Duration // DHCP_TIMEOUT, whole exchange per attempt; 0 = 45 s
	DHCPReqTimeout  time.Duration // DHCP_REQ_TIMEOUT, retransmit interval; 0 = 4 s
	TFTPFileTimeout time.Duration // TFTP_FILE_TIMEOUT, per file; 0 = 30 s
	TFTPIP          net.IP        // TFTP_IP; overrides the DHCP-given server
	TFTPPrefix      int           // TFTP_PREFIX: 0 serial, 1 TFTPPrefixStr, 2 MAC with dashes
	TFTPPrefixStr   string        // TFTP_PREFIX_STR
	PXEOption43     string        // PXE_OPTION43; "" = "Raspberry Pi Boot"
	BlockSize       int           // TFTP blksize requested; 0 = 1024
	SelfUpdate      bool          // ENABLE_SELF_UPDATE: probe pieeprom.sig on the TFTP server
}

func (e EEPROM) withDefaults() EEPROM {
	if e.BootOrder == 0 {
		e.BootOrder = 0xf21
	}
	if e.DHCPTimeout == 0 {
		e.DHCPTimeout = 45 * time.Second
	}
	if e.DHCPReqTimeout == 0 {
		e.DHCPReqTimeout = 4 * time.Second
	}
	if e.TFTPFileTimeout == 0 {
		e.TFTPFileTimeout = 30 * time.Second
	}
	if e.PXEOption43 == "" {
		e.PXEOption43 = DefaultMenuText
	}
	if e.BlockSize == 0 {
		e.BlockSize = 1024
	}
	return e
}

// Link is the device's Ethernet port as the bootloader uses it. The caller
// decides where its sockets live (netboot/sim/simbench opens them inside the
// device's network namespace).
type Link interface {
	// DHCPConn opens a socket that sends and receives DHCP on the
	// unconfigured link: UDP port 68, replies matched by port only, every
	// send an Ethernet broadcast from 0.0.0.0.
	DHCPConn() (net.PacketConn, error)
	// Configure gives the link the leased address (and default route).
	Configure(addr net.IPNet, gw net.IP) error
	// UDPConn opens a UDP socket on the configured address for one transfer.
	UDPConn() (net.PacketConn, error)
	// Reset drops every address, as a reboot does.
	Reset() error
}

// EMMC is the device's eMMC as the bootloader's SD/eMMC boot mode sees it.
type EMMC interface {
	io.ReaderAt
}

// Boot modes (BOOT_ORDER nibbles).
const (
	ModeSD      = 0x1 // SD card / eMMC
	ModeNetwork = 0x2
	ModeRPIBoot = 0x3
	ModeUSBMSD  = 0x4
	ModeStop    = 0xe
	ModeRestart = 0xf
)

// Outcome is where one power-on ended up.
type Outcome struct {
	Mode      string // "network" or "emmc"
	EMMC      string // for emmc: what made it bootable
	Lease     *Offer // for network: the merged ACK
	TFTP      net.IP // for network: the TFTP server used
	Prefix    string // for network: the TFTP prefix kept ("" = root)
	Config    BootConfig
	Cmdline   string
	Files     []Transfer // every RRQ, in order
	Probes    int        // transfers aborted with Early terminate
	NotFound  int        // transfers answered "file not found"
	KernelSHA string     // sha256 of the kernel loaded
	NoMenu    int        // DHCP answers ignored for lack of the boot menu
	Attempts  []string   // one line per boot mode tried, as the UART log would say
	Signed    bool       // for network: booted from a boot.img whose boot.sig verified (Locked)
}

// ErrNoBootMedia is returned by Boot when BOOT_ORDER ends in STOP (0xe) or
// the context ends while every mode keeps failing.
var ErrNoBootMedia = errors.New("pisim: no bootable media")

// ErrNetbootInitFailed is NETBOOT init failed: no DHCP answer carried the
// boot menu within DHCP_TIMEOUT.
var ErrNetbootInitFailed = errors.New("NETBOOT init failed")

// ErrFirmwareNotFound means start4.elf (or another required file) was not on
// the TFTP server.
var ErrFirmwareNotFound = errors.New("firmware not found")

// Bootloader is one simulated CM4 EEPROM bootloader.
type Bootloader struct {
	Board  Board
	EEPROM EEPROM
	Link   Link
	EMMC   EMMC         // nil = no eMMC (CM4Lite)
	Logger *slog.Logger // nil = silent
	// Sleep between boot modes and before RESTART (the LED error pattern
	// throttles real devices); 0 = 1 s.
	ModeDelay time.Duration
	// Locked makes it a secure-boot board (signed.go); nil = not locked.
	Locked *Locked
	// TFTPPace is the bootloader's own time per TFTP block, which bounds a
	// real board at 2-5 MB/s whatever the server (the bench twin sets it;
	// 0 = as fast as the link).
	TFTPPace time.Duration
}

func (b *Bootloader) log() *slog.Logger {
	if b.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return b.Logger.With("mac", b.Board.MAC.String(), "serial", b.Board.SerialString())
}

// Boot walks BOOT_ORDER from the lowest nibble until a mode succeeds,
// restarting at 0xf, like a power-on. It returns ErrNoBootMedia at STOP and
// the context's error when cancelled.
func (b *Bootloader) Boot(ctx context.Context) (*Outcome, error) {
	e := b.EEPROM.withDefaults()
	delay := b.ModeDelay
	if delay == 0 {
		delay = time.Second
	}
	out := &Outcome{}
	lg := b.log()
	for {
		for order := e.BootOrder; order != 0; order >>= 4 {
			if err := ctx.Err(); err != nil {
				return out, err
			}
			switch mode := order & 0xf; mode {
			case ModeSD:
				why, ok := b.emmcBootable()
				out.Attempts = append(out.Attempts, "SD/eMMC: "+why)
				lg.Debug("boot mode SD/eMMC", "bootable", ok, "why", why)
				if ok {
					out.Mode, out.EMMC = "emmc", why
					return out, nil
				}
			case ModeNetwork:
				err := b.netboot(ctx, e, out)
				if err == nil {
					out.Mode = "network"
					out.Attempts = append(out.Attempts, "NETWORK: booted")
					return out, nil
				}
				if ctx.Err() != nil {
					return out, ctx.Err()
				}
				out.Attempts = append(out.Attempts, "NETWORK: "+err.Error())
				lg.Info("network boot failed, next boot mode", "err", err)
				if rerr := b.Link.Reset(); rerr != nil {
					return out, fmt.Errorf("pisim: reset link: %w", rerr)
				}
			case ModeStop:
				out.Attempts = append(out.Attempts, "STOP")
				return out, ErrNoBootMedia
			case ModeRestart:
				out.Attempts = append(out.Attempts, "RESTART")
			default:
				out.Attempts = append(out.Attempts, fmt.Sprintf("mode 0x%x: not present on the simulated bench", mode))
			}
			select {
			case <-ctx.Done():
				return out, ctx.Err()
			case <-time.After(delay):
			}
		}
	}
}

// emmcBootable decides whether the SD/eMMC boot mode would load firmware
// from the eMMC: an MBR (55 aa) whose first partition is FAT (type 0x0b,
// 0x0c or 0x0e) and whose boot sector also ends in 55 aa. The real
// bootloader then looks for start4.elf in that FAT; the simulation stops at
// the partition level.
func (b *Bootloader) emmcBootable() (string, bool) {
	if b.EMMC == nil {
		return "no eMMC", false
	}
	return EMMCBootable(b.EMMC)
}

// EMMCBootable is the SD/eMMC boot-mode check of the simulation (see
// Bootloader). It returns a plain-words reason either way.
func EMMCBootable(r io.ReaderAt) (string, bool) {
	mbr := make([]byte, 512)
	if _, err := r.ReadAt(mbr, 0); err != nil {
		return fmt.Sprintf("read MBR: %v", err), false
	}
	if mbr[510] != 0x55 || mbr[511] != 0xaa {
		return "no partition table (blank eMMC)", false
	}
	p := mbr[446:462]
	typ := p[4]
	start := binary.LittleEndian.Uint32(p[8:12])
	size := binary.LittleEndian.Uint32(p[12:16])
	if typ != 0x0b && typ != 0x0c && typ != 0x0e {
		return fmt.Sprintf("partition 1 has type 0x%02x, not FAT", typ), false
	}
	if start == 0 || size == 0 {
		return "partition 1 is empty", false
	}
	bs := make([]byte, 512)
	if _, err := r.ReadAt(bs, int64(start)*512); err != nil {
		return fmt.Sprintf("read boot partition at sector %d: %v", start, err), false
	}
	if bs[510] != 0x55 || bs[511] != 0xaa {
		return fmt.Sprintf("boot partition at sector %d has no FAT boot sector", start), false
	}
	return fmt.Sprintf("FAT boot partition at sector %d (%d MiB)", start, int64(size)*512>>20), true
}

// netboot is the NETWORK boot mode: DHCP, then the TFTP firmware sequence.
func (b *Bootloader) netboot(ctx context.Context, e EEPROM, out *Outcome) error {
	lg := b.log()
	lease, noMenu, err := b.dhcp(ctx, e)
	out.NoMenu += noMenu
	if err != nil {
		return err
	}
	out.Lease = lease
	ones := 24
	if lease.Mask != nil {
		ones, _ = lease.Mask.Size()
	}
	if err := b.Link.Configure(net.IPNet{IP: lease.YourIP, Mask: net.CIDRMask(ones, 32)}, lease.Router); err != nil {
		return fmt.Errorf("configure %v: %w", lease.YourIP, err)
	}
	srv := lease.TFTPServer(e.TFTPIP)
	if srv == nil {
		return errors.New("no TFTP server in the DHCP answer")
	}
	out.TFTP = srv
	lg.Info("NET", "ip", lease.YourIP, "gw", lease.Router, "tftp", srv)
	c := &tftpClient{server: srv, blksize: e.BlockSize, timeout: e.TFTPFileTimeout, retry: 2 * time.Second, listen: b.Link.UDPConn, pace: b.TFTPPace}
	return b.loadFirmware(ctx, e, c, out)
}

// dhcp runs DISCOVER/OFFER/REQUEST/ACK until an answer carries the boot menu
// (or, with TFTP_IP set, any address) or DHCP_TIMEOUT passes. It merges a
// proxyDHCP offer (menu, no address) with an address offer, as the Pi 4
// bootloader does.
func (b *Bootloader) dhcp(ctx context.Context, e EEPROM) (*Offer, int, error) {
	conn, err := b.Link.DHCPConn()
	if err != nil {
		return nil, 0, fmt.Errorf("dhcp: open socket: %w", err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, e.DHCPTimeout)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { conn.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	bcast := &net.UDPAddr{IP: net.IPv4bcast, Port: 67}
	noMenu := 0
	buf := make([]byte, 1500)
	for ctx.Err() == nil {
		var xid dhcpv4.TransactionID
		if x, err := dhcpv4.GenerateTransactionID(); err == nil {
			xid = x
		}
		disc, err := b.Board.Discover(xid)
		if err != nil {
			return nil, noMenu, err
		}
		if _, err := conn.WriteTo(disc.ToBytes(), bcast); err != nil {
			return nil, noMenu, fmt.Errorf("dhcp: send DISCOVER: %w", err)
		}
		var addrOffer, proxyOffer *Offer
		deadline := time.Now().Add(e.DHCPReqTimeout)
		for addrOffer == nil || (!addrOffer.Menu && proxyOffer == nil && e.TFTPIP == nil) {
			o, err := readReply(conn, buf, deadline, b.Board.MAC, xid, e.PXEOption43)
			if err != nil {
				break
			}
			if o.Type != dhcpv4.MessageTypeOffer {
				continue
			}
			switch {
			case o.Proxy() && o.Menu:
				proxyOffer = o
			case !o.Proxy() && (addrOffer == nil || (o.Menu && !addrOffer.Menu)):
				if !o.Menu {
					noMenu++
				}
				addrOffer = o
			}
		}
		usable := addrOffer != nil && (addrOffer.Menu || proxyOffer != nil || e.TFTPIP != nil)
		if !usable {
			continue // retransmit DISCOVER after DHCP_REQ_TIMEOUT
		}
		ack, err := b.request(ctx, e, conn, buf, xid, addrOffer)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			b.log().Info("dhcp request failed, discover again", "err", err)
			continue
		}
		// The PXE part of the decision was made on the OFFER: a server that
		// keys its PXE options on option 60 (dnsmasq) sends no menu in the
		// ACK to the Pi's REQUEST, which lacks 60, and the Pi boots anyway.
		for _, src := range []*Offer{addrOffer, proxyOffer} {
			if ack.Menu || src == nil || !src.Menu {
				continue
			}
			ack.Menu, ack.Opt43 = true, src.Opt43
			if ack.TFTP == nil {
				ack.TFTP = src.TFTP
			}
			if src.Proxy() {
				ack.SIAddr, ack.TFTP = src.ServerID, src.TFTP
			}
		}
		if ack.Opt97 == nil {
			ack.Opt60, ack.Opt97 = addrOffer.Opt60, addrOffer.Opt97
		}
		return ack, noMenu, nil
	}
	if noMenu > 0 {
		return nil, noMenu, fmt.Errorf("%w: %d DHCP answers without the %q menu item in %v", ErrNetbootInitFailed, noMenu, e.PXEOption43, e.DHCPTimeout)
	}
	return nil, noMenu, fmt.Errorf("%w: no DHCP answer in %v", ErrNetbootInitFailed, e.DHCPTimeout)
}

func (b *Bootloader) request(ctx context.Context, e EEPROM, conn net.PacketConn, buf []byte, xid dhcpv4.TransactionID, offer *Offer) (*Offer, error) {
	req, err := b.Board.Request(xid, offer.YourIP, offer.ServerID)
	if err != nil {
		return nil, err
	}
	bcast := &net.UDPAddr{IP: net.IPv4bcast, Port: 67}
	for try := 0; try < 3 && ctx.Err() == nil; try++ {
		if _, err := conn.WriteTo(req.ToBytes(), bcast); err != nil {
			return nil, fmt.Errorf("dhcp: send REQUEST: %w", err)
		}
		deadline := time.Now().Add(e.DHCPReqTimeout)
		for {
			o, err := readReply(conn, buf, deadline, b.Board.MAC, xid, e.PXEOption43)
			if err != nil {
				break
			}
			switch o.Type {
			case dhcpv4.MessageTypeAck:
				if !o.YourIP.Equal(offer.YourIP) {
					return nil, fmt.Errorf("dhcp: ACK for %v, requested %v", o.YourIP, offer.YourIP)
				}
				return o, nil
			case dhcpv4.MessageTypeNak:
				return nil, errors.New("dhcp: NAK")
			}
		}
	}
	return nil, errors.New("dhcp: no ACK")
}

// readReply waits until deadline for one reply to this board and xid.
func readReply(conn net.PacketConn, buf []byte, deadline time.Time, mac net.HardwareAddr, xid dhcpv4.TransactionID, match string) (*Offer, error) {
	for {
		conn.SetReadDeadline(deadline)
		n, _, err := conn.ReadFrom(buf)
		if err != nil {
			return nil, err
		}
		o, err := ParseOffer(buf[:n], mac, match)
		if err != nil || o.XID != xid {
			continue // someone else's reply, or garbage: the bootloader drops it
		}
		return o, nil
	}
}

// loadFirmware is the TFTP sequence of a real Pi 4 / CM4 (the order of the
// dnsmasq log of a public Pi 4 LTSP netboot guide, rpi-eeprom#74 and #87):
//
//	<p>/start4.elf, <p>/start.elf   prefix probes (the prefix is dropped when
//	                                neither exists; cm4bench's TFTP serves the
//	                                root file under any prefix, so the board
//	                                keeps it)
//	config.txt                      read by the bootloader
//	pieeprom.sig                    self-update probe (ENABLE_SELF_UPDATE)
//	recover4.elf, recovery.elf      probes
//	start4.elf, fixup4.dat          the GPU firmware
//	recovery.elf                    probed again, by start4.elf
//	config.txt                      read again, by start4.elf
//	dt-blob.bin, bootcfg.txt        probes
//	initramfs, then device tree     (initrd before the dtb)
//	overlays/overlay_map.dtb, overlays
//	cmdline.txt
//	kernel                          an Early-terminate probe, then the file
//	armstub8-gic.bin                probe
//
// Files start4.elf loads are probed (tsize, Early terminate) before they are
// read, as the firmware does. "Kernel served" is not the sign that a board
// booted: the armstub probe and the OS come after it.
func (b *Bootloader) loadFirmware(ctx context.Context, e EEPROM, c *tftpClient, out *Outcome) error {
	var prefix string
	switch e.TFTPPrefix {
	case 0:
		prefix = b.Board.SerialString() + "/"
	case 1:
		if e.TFTPPrefixStr != "" {
			prefix = strings.TrimSuffix(e.TFTPPrefixStr, "/") + "/"
		}
	case 2:
		prefix = b.Board.MACPrefix() + "/"
	}
	do := func(name string, probe bool, w io.Writer) (Transfer, error) { return out.fetch(ctx, c, name, probe, w) }
	exists := func(name string) (bool, error) {
		_, err := do(name, true, nil)
		if errors.Is(err, ErrNotFound) {
			return false, nil
		}
		return err == nil, err
	}
	probeAll := func(names ...string) error {
		for _, n := range names {
			if _, err := exists(prefix + n); err != nil {
				return err
			}
		}
		return nil
	}
	if b.Locked != nil {
		return b.loadSigned(ctx, c, prefix, out)
	}
	if prefix != "" {
		ok, err := exists(prefix + "start4.elf")
		if err != nil {
			return err
		}
		if !ok {
			if ok, err = exists(prefix + "start.elf"); err != nil {
				return err
			}
		}
		if !ok {
			prefix = "" // dropped for the rest of this boot
		}
	}
	out.Prefix = strings.TrimSuffix(prefix, "/")
	var cfg bytes.Buffer
	if _, err := do(prefix+"config.txt", false, &cfg); err != nil && !errors.Is(err, ErrNotFound) {
		return err
	}
	if e.SelfUpdate {
		if err := probeAll("pieeprom.sig"); err != nil {
			return err
		}
	}
	if err := probeAll("recover4.elf", "recovery.elf"); err != nil {
		return err
	}
	for _, f := range []string{"start4.elf", "fixup4.dat"} {
		if _, err := do(prefix+f, false, nil); err != nil {
			if errors.Is(err, ErrNotFound) {
				return fmt.Errorf("%w: %s", ErrFirmwareNotFound, prefix+f)
			}
			return err
		}
	}
	// start4.elf is running now: it probes recovery.elf and reads
	// config.txt again itself.
	if err := probeAll("recovery.elf"); err != nil {
		return err
	}
	cfg.Reset()
	if _, err := do(prefix+"config.txt", false, &cfg); err != nil && !errors.Is(err, ErrNotFound) {
		return err
	}
	out.Config = ParseConfigTxt(cfg.Bytes())
	if err := probeAll("dt-blob.bin", "bootcfg.txt"); err != nil {
		return err
	}
	load := func(name string, required bool, w io.Writer) error {
		ok, err := exists(prefix + name)
		if err != nil {
			return err
		}
		if !ok {
			if required {
				return fmt.Errorf("%w: %s", ErrFirmwareNotFound, prefix+name)
			}
			return nil
		}
		_, err = do(prefix+name, false, w)
		return err
	}
	if out.Config.Initramfs != "" {
		if err := load(out.Config.Initramfs, true, nil); err != nil {
			return err
		}
	}
	if err := load(out.Config.DeviceTree, false, nil); err != nil {
		return err
	}
	if len(out.Config.Overlays) > 0 {
		if err := load("overlays/overlay_map.dtb", false, nil); err != nil {
			return err
		}
		for _, o := range out.Config.Overlays {
			if err := load("overlays/"+o+".dtbo", false, nil); err != nil {
				return err
			}
		}
	}
	var cmd bytes.Buffer
	if err := load(out.Config.Cmdline, false, &cmd); err != nil {
		return err
	}
	out.Cmdline = strings.TrimSpace(cmd.String())
	h := sha256.New()
	if err := load(out.Config.Kernel, true, h); err != nil {
		return err
	}
	out.KernelSHA = hex.EncodeToString(h.Sum(nil))
	return probeAll("armstub8-gic.bin")
}

// fetch runs one TFTP request and records it in the outcome: the
// transfer, a probe aborted with Early terminate, a file not found.
func (out *Outcome) fetch(ctx context.Context, c *tftpClient, name string, probe bool, w io.Writer) (Transfer, error) {
	if w == nil {
		w = io.Discard
	}
	tr, err := c.fetch(ctx, name, probe, w)
	out.Files = append(out.Files, tr)
	switch {
	case err == nil && probe:
		out.Probes++
	case errors.Is(err, ErrNotFound):
		out.NotFound++
	}
	return tr, err
}

// OSDHCP is what the operating system booted from the eMMC does first: an
// ordinary DHCP exchange (dhcpcd on Raspberry Pi OS: hostname, no PXE
// options), after which the link is configured with the lease. The server
// sees the MAC come back as a plain client.
func (b *Bootloader) OSDHCP(ctx context.Context, hostname string) (*Offer, error) {
	e := b.EEPROM.withDefaults()
	conn, err := b.Link.DHCPConn()
	if err != nil {
		return nil, fmt.Errorf("os dhcp: open socket: %w", err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, e.DHCPTimeout)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { conn.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	bcast := &net.UDPAddr{IP: net.IPv4bcast, Port: 67}
	buf := make([]byte, 1500)
	plain := []dhcpv4.Modifier{
		dhcpv4.WithHwAddr(b.Board.MAC),
		dhcpv4.WithOption(dhcpv4.OptHostName(hostname)),
		dhcpv4.WithRequestedOptions(dhcpv4.OptionSubnetMask, dhcpv4.OptionRouter, dhcpv4.OptionDomainNameServer, dhcpv4.OptionDomainName),
	}
	for ctx.Err() == nil {
		disc, err := dhcpv4.New(append([]dhcpv4.Modifier{dhcpv4.WithMessageType(dhcpv4.MessageTypeDiscover)}, plain...)...)
		if err != nil {
			return nil, fmt.Errorf("os dhcp: %w", err)
		}
		if _, err := conn.WriteTo(disc.ToBytes(), bcast); err != nil {
			return nil, fmt.Errorf("os dhcp: send DISCOVER: %w", err)
		}
		o, err := readReply(conn, buf, time.Now().Add(e.DHCPReqTimeout), b.Board.MAC, disc.TransactionID, e.PXEOption43)
		if err != nil || o.Type != dhcpv4.MessageTypeOffer || o.Proxy() {
			continue
		}
		req, err := dhcpv4.New(append([]dhcpv4.Modifier{
			dhcpv4.WithTransactionID(disc.TransactionID),
			dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
			dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(o.YourIP)),
			dhcpv4.WithOption(dhcpv4.OptServerIdentifier(o.ServerID)),
		}, plain...)...)
		if err != nil {
			return nil, fmt.Errorf("os dhcp: %w", err)
		}
		if _, err := conn.WriteTo(req.ToBytes(), bcast); err != nil {
			return nil, fmt.Errorf("os dhcp: send REQUEST: %w", err)
		}
		ack, err := readReply(conn, buf, time.Now().Add(e.DHCPReqTimeout), b.Board.MAC, disc.TransactionID, e.PXEOption43)
		if err != nil || ack.Type != dhcpv4.MessageTypeAck {
			continue
		}
		ones := 24
		if ack.Mask != nil {
			ones, _ = ack.Mask.Size()
		}
		if err := b.Link.Configure(net.IPNet{IP: ack.YourIP, Mask: net.CIDRMask(ones, 32)}, ack.Router); err != nil {
			return ack, fmt.Errorf("os dhcp: configure %v: %w", ack.YourIP, err)
		}
		return ack, nil
	}
	return nil, fmt.Errorf("os dhcp: no lease in %v: %w", e.DHCPTimeout, ctx.Err())
}
