// Package doctor checks a bench workstation before the first board: USB,
// udev, the bench interface, other DHCP servers, the ports, the firmware
// cache, the TFTP root and the data directory. Each check says in one line
// what it found and, when it is not ok, what to do. `cm4bench doctor` runs
// it; every input is injectable so each check is tested failing.
package doctor

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cm4bench/cm4bench/firmware"
	"github.com/cm4bench/cm4bench/netboot/dhcp"
	"github.com/cm4bench/cm4bench/usbboot"
)

// Status of one check.
type Status string

// Statuses, from good to bad.
const (
	OK   Status = "ok"
	Skip Status = "skip" // not applicable with the options given
	Warn Status = "warn"
	Fail Status = "fail"
)

// Result is one check's verdict.
type Result struct {
	Check  string `json:"check"`
	Status Status `json:"status"`
	Detail string `json:"detail"`
	Fix    string `json:"fix,omitempty"`
}

// Port is a port the bench serves on.
type Port struct {
	Net  string // "udp" or "tcp"
	Port int
	What string // "DHCP", "TFTP", "HTTP"
}

// DefaultPorts are the ports netboot serve needs.
var DefaultPorts = []Port{{"udp", 67, "DHCP"}, {"udp", 69, "TFTP"}, {"tcp", 5000, "HTTP API and dashboard"}}

// Doctor holds what the checks look at. Zero fields take the real
// machine's defaults or skip their check, as each says.
type Doctor struct {
	// Root is prefixed to /sys/bus/usb, /dev/bus/usb ("" = "/").
	Root string
	// UdevDirs are searched for a rule that grants access to 0a5c devices
	// (nil = /etc/udev/rules.d, /run/udev/rules.d, /lib/udev/rules.d,
	// /usr/lib/udev/rules.d).
	UdevDirs []string
	// ListUSB lists the bus (nil: the device check is skipped).
	ListUSB func(ctx context.Context) ([]usbboot.Desc, error)
	// Iface is the bench interface ("" skips the interface, DHCP and port checks).
	Iface string
	// Rival probes Iface for another DHCP server: it describes the first one
	// that answers, or returns "" (nil: skipped).
	Rival func(ctx context.Context, iface string) (string, error)
	// Ports to find free (nil = DefaultPorts), bound on BindAddr ("" = all).
	Ports    []Port
	BindAddr string
	// Firmware is the cache to verify (nil: skipped), for FirmwareSets.
	Firmware     *firmware.Cache
	FirmwareSets []string
	// NetbootSet is the catalogue set the TFTP root must hold ("" = "netboot").
	NetbootSet string
	// TFTPRoot is checked for the prepared files ("" skips it).
	TFTPRoot string
	// DataDir must be writable with room for one backup ("" skips it).
	DataDir string
	// LargestEMMC is the largest eMMC a board of this bench reported (nil or
	// 0: the check asks for MinFree only).
	LargestEMMC func(ctx context.Context) (int64, error)
	// MinFree is the free space wanted when no eMMC size is known (0 = 8 GiB,
	// a CM4's smallest eMMC).
	MinFree int64
	// FreeBytes reports the free space of a path (nil: statfs).
	FreeBytes func(path string) (int64, error)
}

// Run runs every check, in order.
func (d *Doctor) Run(ctx context.Context) []Result {
	var out []Result
	out = append(out, d.usbSubsystem(), d.udevRule(), d.devices(ctx))
	out = append(out, d.iface()...)
	out = append(out, d.rival(ctx))
	out = append(out, d.ports()...)
	out = append(out, d.firmware(), d.tftpRoot(), d.dataDir(ctx))
	return out
}

// Failed reports whether any result is Fail.
func Failed(rs []Result) bool {
	for _, r := range rs {
		if r.Status == Fail {
			return true
		}
	}
	return false
}

func (d *Doctor) path(p string) string {
	if d.Root == "" {
		return p
	}
	return filepath.Join(d.Root, p)
}

func (d *Doctor) usbSubsystem() Result {
	r := Result{Check: "usb-subsystem"}
	for _, p := range []string{"/sys/bus/usb", "/dev/bus/usb"} {
		if _, err := os.Stat(d.path(p)); err == nil {
			r.Status, r.Detail = OK, p+" present"
			return r
		}
	}
	r.Status, r.Detail = Fail, "no /sys/bus/usb and no /dev/bus/usb: this machine has no USB subsystem"
	r.Fix = "run on the bench PC itself; a container or VM needs USB passthrough"
	return r
}

func (d *Doctor) udevRule() Result {
	r := Result{Check: "udev-rule"}
	dirs := d.UdevDirs
	if dirs == nil {
		dirs = []string{"/etc/udev/rules.d", "/run/udev/rules.d", "/lib/udev/rules.d", "/usr/lib/udev/rules.d"}
	}
	for _, dir := range dirs {
		files, _ := filepath.Glob(filepath.Join(dir, "*.rules"))
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				continue
			}
			for _, l := range strings.Split(string(b), "\n") {
				l = strings.TrimSpace(l)
				if !strings.HasPrefix(l, "#") && strings.Contains(l, `"0a5c"`) && strings.Contains(l, "2711") &&
					(strings.Contains(l, "MODE=") || strings.Contains(l, "GROUP=") || strings.Contains(l, "uaccess")) {
					r.Status, r.Detail = OK, "RPIBOOT access rule in "+f
					return r
				}
			}
		}
	}
	r.Status, r.Detail = Warn, "no udev rule gives access to RPIBOOT devices (0a5c:2711/2712): usbboot needs root"
	r.Fix = "cm4bench usbboot udev-rules | sudo tee /etc/udev/rules.d/70-cm4bench.rules && sudo udevadm control --reload-rules && sudo udevadm trigger"
	return r
}

func (d *Doctor) devices(ctx context.Context) Result {
	r := Result{Check: "rpiboot-devices"}
	if d.ListUSB == nil {
		r.Status, r.Detail = Skip, "USB not listed"
		return r
	}
	list, err := d.ListUSB(ctx)
	if err != nil && list == nil {
		r.Status, r.Detail = Fail, "cannot list USB devices: "+err.Error()
		r.Fix = "check the USB subsystem and libusb (cm4bench usbboot list)"
		return r
	}
	var found []string
	for _, x := range list {
		if x.IsRPIBoot() {
			found = append(found, fmt.Sprintf("%s (%s, %s)", x.Port, x.SoC(), x.Stage()))
		}
	}
	if len(found) == 0 {
		r.Status, r.Detail = Warn, fmt.Sprintf("no board in RPIBOOT mode among %d USB devices", len(list))
		r.Fix = "fit nRPIBOOT (CM4IO J2), connect the USB slave port, then power the board on"
		return r
	}
	r.Status, r.Detail = OK, fmt.Sprintf("%d RPIBOOT device(s): %s", len(found), strings.Join(found, ", "))
	if err != nil {
		r.Status, r.Detail = Warn, r.Detail+"; the listing was partial: "+err.Error()
	}
	return r
}

func (d *Doctor) iface() []Result {
	r := Result{Check: "interface"}
	if d.Iface == "" {
		r.Status, r.Detail = Skip, "no --iface given"
		return []Result{r}
	}
	ifi, err := net.InterfaceByName(d.Iface)
	if err != nil {
		names := []string{}
		if all, err := net.Interfaces(); err == nil {
			for _, i := range all {
				if i.Flags&net.FlagLoopback == 0 {
					names = append(names, i.Name)
				}
			}
		}
		r.Status, r.Detail = Fail, fmt.Sprintf("no interface %s", d.Iface)
		r.Fix = "pick the NIC wired to the bench switch: " + strings.Join(names, ", ")
		return []Result{r}
	}
	if ifi.Flags&net.FlagUp == 0 {
		r.Status, r.Detail = Fail, d.Iface+" is down"
		r.Fix = "sudo ip link set " + d.Iface + " up"
		return []Result{r}
	}
	if b, err := os.ReadFile(d.path("/sys/class/net/" + d.Iface + "/carrier")); err == nil && strings.TrimSpace(string(b)) == "0" {
		r.Status, r.Detail = Fail, d.Iface+" has no link (no carrier)"
		r.Fix = "plug the cable into the bench switch and check the switch is powered"
		return []Result{r}
	}
	addrs, _ := ifi.Addrs()
	var v4 []string
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && ipn.IP.To4() != nil {
			v4 = append(v4, ipn.String())
		}
	}
	if len(v4) == 0 {
		r.Status, r.Detail = Fail, d.Iface+" has no IPv4 address"
		r.Fix = "give the bench NIC a static address, e.g. sudo ip addr add 10.42.0.1/24 dev " + d.Iface
		return []Result{r}
	}
	r.Status, r.Detail = OK, fmt.Sprintf("%s up with %s", d.Iface, strings.Join(v4, ", "))
	return []Result{r}
}

func (d *Doctor) rival(ctx context.Context) Result {
	r := Result{Check: "other-dhcp"}
	if d.Iface == "" || d.Rival == nil {
		r.Status, r.Detail = Skip, "no --iface given"
		return r
	}
	who, err := d.Rival(ctx, d.Iface)
	switch {
	case err != nil:
		r.Status, r.Detail = Warn, "could not probe for other DHCP servers: "+err.Error()
		r.Fix = "run doctor as root (the probe needs CAP_NET_RAW)"
	case who != "":
		r.Status, r.Detail = Fail, "another DHCP server answers on "+d.Iface+": "+who
		r.Fix = "switch it off on the bench network, or run serve with --proxy next to it"
	default:
		r.Status, r.Detail = OK, "no other DHCP server answered on "+d.Iface
	}
	return r
}

func (d *Doctor) ports() []Result {
	if d.Iface == "" {
		return []Result{{Check: "ports", Status: Skip, Detail: "no --iface given"}}
	}
	ports := d.Ports
	if ports == nil {
		ports = DefaultPorts
	}
	var out []Result
	for _, p := range ports {
		r := Result{Check: fmt.Sprintf("port-%s-%d", p.Net, p.Port)}
		addr := net.JoinHostPort(d.BindAddr, fmt.Sprint(p.Port))
		var err error
		if p.Net == "udp" {
			var c net.PacketConn
			if c, err = net.ListenPacket("udp4", addr); err == nil {
				c.Close()
			}
		} else {
			var l net.Listener
			if l, err = net.Listen("tcp4", addr); err == nil {
				l.Close()
			}
		}
		switch {
		case err == nil:
			r.Status, r.Detail = OK, fmt.Sprintf("%s/%d free for %s", p.Net, p.Port, p.What)
		case errors.Is(err, unix.EADDRINUSE):
			r.Status, r.Detail = Fail, fmt.Sprintf("%s/%d (%s) is in use by another program", p.Net, p.Port, p.What)
			r.Fix = fmt.Sprintf("find it with: sudo ss -lpn '( sport = :%d )'; stop it (dnsmasq? another cm4bench?)", p.Port)
		case errors.Is(err, unix.EACCES):
			r.Status, r.Detail = Warn, fmt.Sprintf("%s/%d (%s) needs CAP_NET_BIND_SERVICE", p.Net, p.Port, p.What)
			r.Fix = "run serve as root, or as the service with CAP_NET_BIND_SERVICE"
		default:
			r.Status, r.Detail = Fail, fmt.Sprintf("%s/%d: %v", p.Net, p.Port, err)
		}
		out = append(out, r)
	}
	return out
}

func (d *Doctor) firmware() Result {
	r := Result{Check: "firmware-cache"}
	if d.Firmware == nil {
		r.Status, r.Detail = Skip, "no cache given"
		return r
	}
	st, err := d.Firmware.Verify(d.FirmwareSets...)
	if err != nil {
		r.Status, r.Detail = Fail, err.Error()
		return r
	}
	var bad []string
	for _, s := range st {
		if s.State != "ok" {
			bad = append(bad, s.File.ID+" "+s.State)
		}
	}
	if len(bad) > 0 {
		r.Status, r.Detail = Fail, fmt.Sprintf("%d of %d files not usable: %s", len(bad), len(st), strings.Join(bad, "; "))
		r.Fix = "cm4bench firmware fetch " + strings.Join(d.FirmwareSets, " ")
		return r
	}
	r.Status, r.Detail = OK, fmt.Sprintf("%d files present and verified (%s)", len(st), strings.Join(d.FirmwareSets, ", "))
	return r
}

// tftpRoot checks that the TFTP root holds the catalogue's netboot files
// byte for byte (as in the verified cache), the initramfs, and the
// config.txt and cmdline.txt edits.
func (d *Doctor) tftpRoot() Result {
	r := Result{Check: "tftp-root"}
	if d.TFTPRoot == "" {
		r.Status, r.Detail = Skip, "no --tftp-root given"
		return r
	}
	fix := "cm4bench netboot serve ... --prepare-tftp-root (after cm4bench firmware fetch netboot)"
	var problems []string
	if d.Firmware != nil {
		set := d.NetbootSet
		if set == "" {
			set = "netboot"
		}
		cat, err := firmware.Default()
		if err == nil {
			files, _ := cat.SetFiles(set)
			for _, sf := range files {
				want, err := d.Firmware.Lookup(sf.File)
				if err != nil {
					problems = append(problems, sf.Name+": not in the firmware cache to compare")
					continue
				}
				got, _, err := firmware.FileSHA256(filepath.Join(d.TFTPRoot, sf.Name))
				if err != nil {
					problems = append(problems, sf.Name+" missing")
					continue
				}
				if w, _, _ := firmware.FileSHA256(want); w != got {
					problems = append(problems, sf.Name+" differs from the catalogue's")
				}
			}
		}
	}
	if _, err := os.Stat(filepath.Join(d.TFTPRoot, "initrd.img")); err != nil {
		problems = append(problems, "initrd.img missing")
	}
	if !fileHasLine(filepath.Join(d.TFTPRoot, "config.txt"), func(l string) bool { return strings.HasPrefix(l, "initramfs initrd.img") }) {
		problems = append(problems, "config.txt does not load initrd.img")
	}
	if !fileHasLine(filepath.Join(d.TFTPRoot, "cmdline.txt"), func(l string) bool { return strings.Contains(l, "cm4bench.server=") }) {
		problems = append(problems, "cmdline.txt has no cm4bench.server=")
	}
	if len(problems) > 0 {
		r.Status, r.Detail, r.Fix = Fail, d.TFTPRoot+": "+strings.Join(problems, "; "), fix
		return r
	}
	r.Status, r.Detail = OK, d.TFTPRoot+" prepared: firmware as in the catalogue, initrd.img, config.txt and cmdline.txt set"
	return r
}

func fileHasLine(p string, match func(string) bool) bool {
	b, err := os.ReadFile(p)
	if err != nil {
		return false
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if match(strings.TrimSpace(sc.Text())) {
			return true
		}
	}
	return false
}

func (d *Doctor) dataDir(ctx context.Context) Result {
	r := Result{Check: "data-dir"}
	if d.DataDir == "" {
		r.Status, r.Detail = Skip, "no --data given"
		return r
	}
	if err := os.MkdirAll(d.DataDir, 0o750); err != nil {
		r.Status, r.Detail, r.Fix = Fail, "cannot create "+d.DataDir+": "+err.Error(), "choose another --data directory"
		return r
	}
	f, err := os.CreateTemp(d.DataDir, ".doctor-*")
	if err != nil {
		r.Status, r.Detail = Fail, d.DataDir+" is not writable: "+err.Error()
		r.Fix = "sudo chown $USER " + d.DataDir + " (or the service user)"
		return r
	}
	f.Close()
	os.Remove(f.Name())
	need, why := d.MinFree, "a CM4's smallest eMMC"
	if need == 0 {
		need = 8 << 30
	}
	if d.LargestEMMC != nil {
		if n, err := d.LargestEMMC(ctx); err == nil && n > 0 {
			need, why = n, "the largest eMMC a board here reported"
		}
	}
	free := d.FreeBytes
	if free == nil {
		free = statfsFree
	}
	have, err := free(d.DataDir)
	if err != nil {
		r.Status, r.Detail = Warn, "cannot tell the free space: "+err.Error()
		return r
	}
	if have < need {
		r.Status, r.Detail = Fail, fmt.Sprintf("%s has %s free; one raw backup of %s needs %s", d.DataDir, human(have), why, human(need))
		r.Fix = "free space there, or use another --data directory (backups can also be stored compressed: --compress-backups)"
		return r
	}
	r.Status, r.Detail = OK, fmt.Sprintf("%s writable, %s free (one backup of %s: %s)", d.DataDir, human(have), why, human(need))
	return r
}

func statfsFree(p string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(p, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * st.Bsize, nil
}

func human(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// DHCPProbe is the real Rival check: a DHCPDISCOVER on the interface and
// timeout to wait for any server's OFFER (dhcp.DetectRival; CAP_NET_RAW).
func DHCPProbe(timeout time.Duration) func(ctx context.Context, iface string) (string, error) {
	return func(ctx context.Context, iface string) (string, error) {
		r, err := dhcp.DetectRival(ctx, iface, timeout)
		if err != nil || r == nil {
			return "", err
		}
		return fmt.Sprintf("server %s (MAC %s) offered %s", r.ServerID, r.MAC, r.Offered), nil
	}
}
