package contract

import (
	"fmt"
	"net"
	"strings"
)

// Where the netboot initramfs carries what cm4agent needs. The builder
// (netboot/initramfs) writes these paths and the agent (netboot/device/pid1)
// reads them; both take them from here.
const (
	AgentConfigPath = "/etc/cm4agent.json" // AgentConfig as JSON
	AgentModulesDir = "/lib/modules"       // kernel modules, loaded in AgentConfig.Modules order
)

// Kernel command-line arguments the agent reads. KernelArgURL (above) names
// the server; these override the initramfs config.
const (
	KernelArgTarget = "cm4bench.target" // cm4bench.target=/dev/mmcblk0
	KernelArgReboot = "cm4bench.reboot" // cm4bench.reboot=0 keeps the agent polling after a deploy
)

// AgentConfig is the agent configuration packed into the initramfs as JSON
// at AgentConfigPath. The kernel command line can override Server
// (KernelArgURL), Target (KernelArgTarget) and NoReboot (KernelArgReboot).
type AgentConfig struct {
	// Server is the base URL of the cm4bench API; "" = from DHCP (option 66
	// or siaddr) and DefaultPort.
	Server string `json:"server,omitempty"`
	// Target is the eMMC block device; "" = /dev/mmcblk0.
	Target string `json:"target,omitempty"`
	// Modules are module file names under AgentModulesDir, in load order.
	Modules []string `json:"modules,omitempty"`
	// Interface is the link to configure; "" = the first Ethernet link that
	// gets a lease.
	Interface string `json:"interface,omitempty"`
	// NoReboot keeps the agent polling after a deploy instead of rebooting.
	NoReboot bool `json:"no_reboot,omitempty"`
	// AcceptZstd asks for the zstd image stream.
	AcceptZstd bool `json:"accept_zstd,omitempty"`
	// AcceptSparse asks for the sparse image stream (data extents only) of
	// a raw image.
	AcceptSparse bool `json:"accept_sparse,omitempty"`
	// PollSeconds overrides the server's poll interval.
	PollSeconds float64 `json:"poll_seconds,omitempty"`
	// TargetExplicit is set by the agent's loader when Target came from the
	// file or the command line rather than the default (the agent then
	// writes it even if it is an SD card). It is never in the JSON.
	TargetExplicit bool `json:"-"`
}

// NormalizeMAC parses a MAC in any form net.ParseMAC accepts (and with
// dashes) and returns it lower-case with colons, the one form the store,
// the API, the DHCP leases and the CLI use. Only 6-byte MACs are accepted.
func NormalizeMAC(s string) (string, error) {
	hw, err := net.ParseMAC(strings.TrimSpace(s))
	if err != nil || len(hw) != 6 {
		return "", fmt.Errorf("malformed MAC %q: want 6 bytes like b8:27:eb:12:34:56", s)
	}
	return hw.String(), nil
}

// LooksLikeSerial reports whether s reads as a Raspberry Pi serial number
// (8 or 16 hex digits, as on the board's label and in /proc/cpuinfo), so
// that a technician may name a board by it instead of its MAC.
func LooksLikeSerial(s string) bool {
	if n := len(s); n != 8 && n != 16 {
		return false
	}
	for _, c := range s {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}
