package simbench

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/cm4bench/cm4bench/netboot/sim/netns"
	"github.com/cm4bench/cm4bench/netboot/sim/pisim"
)

// Device states, as Status reports them.
const (
	StateOff      = "off"
	StateNetboot  = "netbooting"      // bootloader: DHCP and TFTP
	StateAgent    = "agent"           // netbooted: cm4agent is running
	StateEMMC     = "booted-emmc"     // booted the OS on its eMMC
	StateNoBoot   = "no-boot"         // BOOT_ORDER ran out (STOP)
	StateFailed   = "failed"          // the simulation itself failed
	StateLinkDown = "link-down"       // eth0 is down (fault injection)
	emmcHostname  = "cm4-provisioned" // what the booted OS calls itself
)

// Device is one simulated CM4 of a bench.
type Device struct {
	Index int
	NS    *netns.NS // its namespace; Iface is DeviceIface
	Port  string    // its bridge port in the bench namespace
	Board pisim.Board
	Dir   string // its directory: emmc.img, proc/ and sys/ fact trees
	bench *Bench

	mu       sync.Mutex
	st       Status
	linkDown bool
	cycle    chan struct{}
}

// Status is a snapshot of a device.
type Status struct {
	Index     int       `json:"index"`
	MAC       string    `json:"mac"`
	Serial    string    `json:"serial"`
	State     string    `json:"state"`
	IP        string    `json:"ip,omitempty"`
	Boots     int       `json:"boots"`    // power-ons
	Netboots  int       `json:"netboots"` // boots that loaded firmware over TFTP
	EMMCBoots int       `json:"emmc_boots"`
	AgentRuns int       `json:"agent_runs"`
	AgentExit string    `json:"agent_exit,omitempty"` // how the last agent run ended
	LastBoot  []string  `json:"last_boot,omitempty"`  // boot modes tried, in order
	TFTPFiles int       `json:"tftp_files"`           // RRQs in the last netboot
	Probes    int       `json:"probes"`               // of which Early-terminate probes
	Error     string    `json:"error,omitempty"`
	Since     time.Time `json:"since"`
}

// EMMC is the path of the device's file-backed eMMC.
func (d *Device) EMMC() string { return filepath.Join(d.Dir, "emmc.img") }

// ProcRoot and SysRoot are the fact trees the agent reads instead of the
// host's /proc and /sys (serial, revision, eMMC CID/CSD, MAC, temperature).
func (d *Device) ProcRoot() string { return filepath.Join(d.Dir, "proc") }

// SysRoot: see ProcRoot.
func (d *Device) SysRoot() string { return filepath.Join(d.Dir, "sys") }

// prepare writes the blank (sparse) eMMC and the fact trees.
func (d *Device) prepare(emmcBytes int64) error {
	if err := os.MkdirAll(d.Dir, 0o755); err != nil {
		return fmt.Errorf("simbench: device %d: %w", d.Index, err)
	}
	f, err := os.Create(d.EMMC())
	if err != nil {
		return fmt.Errorf("simbench: device %d: eMMC: %w", d.Index, err)
	}
	err = f.Truncate(emmcBytes)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("simbench: device %d: eMMC: %w", d.Index, err)
	}
	serial := d.Board.SerialString()
	files := map[string]string{
		"proc/cpuinfo": fmt.Sprintf("processor\t: 0\nBogoMIPS\t: 108.00\nHardware\t: BCM2835\nRevision\t: %x\nSerial\t\t: 10000000%s\nModel\t\t: Raspberry Pi Compute Module 4 Rev 1.0\n",
			d.Board.Revision|pisim.RevisionCM4, serial),
		"proc/device-tree/model":                     "Raspberry Pi Compute Module 4 Rev 1.0\x00",
		"proc/device-tree/serial-number":             "10000000" + serial + "\x00",
		"proc/device-tree/chosen/bootloader/version": "simulated-pieeprom\x00",
		"sys/block/mmcblk0/size":                     fmt.Sprint(emmcBytes / 512),
		"sys/block/mmcblk0/device/cid":               fmt.Sprintf("150100424a5444345207%08x00e5", d.Board.Serial),
		"sys/block/mmcblk0/device/csd":               "d02700328f5903ffffffffef86400000",
		"sys/class/net/eth0/address":                 d.Board.MAC.String(),
		"sys/class/net/eth0/type":                    "1",
		"sys/class/thermal/thermal_zone0/temp":       fmt.Sprint(41000 + 500*d.Index%8000),
	}
	for name, body := range files {
		p := filepath.Join(d.Dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return fmt.Errorf("simbench: device %d: %w", d.Index, err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			return fmt.Errorf("simbench: device %d: %w", d.Index, err)
		}
	}
	d.st = Status{Index: d.Index, MAC: d.Board.MAC.String(), Serial: serial, State: StateOff, Since: time.Now()}
	d.cycle = make(chan struct{}, 1)
	return nil
}

// Status returns a snapshot of the device.
func (d *Device) Status() Status {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := d.st
	s.LastBoot = append([]string(nil), d.st.LastBoot...)
	if d.linkDown {
		s.State = StateLinkDown
	}
	return s
}

func (d *Device) update(fn func(*Status)) {
	d.mu.Lock()
	defer d.mu.Unlock()
	fn(&d.st)
}

func (d *Device) setState(state string) {
	d.update(func(s *Status) {
		if s.State != state {
			s.State, s.Since = state, time.Now()
		}
	})
}

// SetLink brings the device's Ethernet link up or down (ip link set ... in
// its namespace): down is a pulled cable, mid-transfer or not.
func (d *Device) SetLink(ctx context.Context, up bool) error {
	state := "down"
	if up {
		state = "up"
	}
	if err := netns.IP(ctx, "-n", d.NS.Name, "link", "set", d.NS.Iface, state); err != nil {
		return err
	}
	d.mu.Lock()
	d.linkDown = !up
	d.mu.Unlock()
	return nil
}

// PowerCycle asks the device's runner to cut power and boot again: a
// running agent is killed, a booted OS is dropped.
func (d *Device) PowerCycle() {
	select {
	case d.cycle <- struct{}{}:
	default:
	}
}

// link is the device's eth0 as the bootloader model uses it, with every
// socket and address call made inside the device's namespace.
type link struct {
	ns *netns.NS
	h  *pisim.HostLink
}

func (l link) DHCPConn() (net.PacketConn, error) {
	var c net.PacketConn
	err := l.ns.Do(func() (err error) { c, err = l.h.DHCPConn(); return err })
	return c, err
}

func (l link) UDPConn() (net.PacketConn, error) {
	var c net.PacketConn
	err := l.ns.Do(func() (err error) { c, err = l.h.UDPConn(); return err })
	return c, err
}

func (l link) Configure(a net.IPNet, gw net.IP) error {
	return l.ns.Do(func() error { return l.h.Configure(a, gw) })
}

func (l link) Reset() error { return l.ns.Do(l.h.Reset) }

// Link returns the device's eth0 for a pisim.Bootloader: every socket and
// address change happens inside the device's namespace.
func (d *Device) Link() pisim.Link { return link{d.NS, &pisim.HostLink{Name: d.NS.Iface}} }

// SetRate shapes the device's link in both directions to rate (a tc rate
// such as "40mbit"), like a slow switch port; "" removes the shaping.
func (d *Device) SetRate(ctx context.Context, rate string) error {
	ends := []struct{ ns, dev string }{{d.NS.Name, d.NS.Iface}, {d.bench.Server.Name, d.Port}}
	for _, e := range ends {
		var err error
		if rate == "" {
			err = netns.IP(ctx, "netns", "exec", e.ns, "tc", "qdisc", "del", "dev", e.dev, "root")
		} else {
			err = netns.IP(ctx, "netns", "exec", e.ns, "tc", "qdisc", "replace", "dev", e.dev, "root", "tbf", "rate", rate, "burst", "64kb", "latency", "200ms")
		}
		if err != nil {
			return fmt.Errorf("simbench: device %d: shape link: %w", d.Index, err)
		}
	}
	return nil
}
