package repotest_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/cm4bench/cm4bench/internal/repotest"
)

const mod = repotest.Module

// Groups of packages, by the job they do (see ARCHITECTURE.md).
var (
	serverPkgs = []string{mod + "/api", mod + "/netboot/dhcp", mod + "/netboot/tftp", mod + "/netboot/serve",
		mod + "/netboot/initramfs", mod + "/netboot/sim", mod + "/usbboot", mod + "/eeprom", mod + "/firmware",
		mod + "/cmd/cm4bench", "github.com/gin-gonic/gin", "modernc.org/sqlite", "github.com/google/gousb",
		"github.com/spf13/cobra"}
	agentPkgs = []string{mod + "/netboot/device", mod + "/cmd/cm4agent"}
	// netlink and the DHCP client are the agent's network set-up; the
	// simulated boards (netboot/sim/pisim) use them too, the servers never.
	clientNetPkgs = []string{"github.com/vishvananda/netlink", "github.com/insomniacslk/dhcp/dhcpv4/nclient4"}
)

func banned(t *testing.T, what string, deps map[string]repotest.Package, prefixes []string) {
	t.Helper()
	for p := range deps {
		for _, b := range prefixes {
			if repotest.Under(p, b) {
				t.Errorf("%s depends on %s", what, p)
			}
		}
	}
}

func present(t *testing.T, what string, deps map[string]repotest.Package, want ...string) {
	t.Helper()
	for _, w := range want {
		if _, ok := deps[w]; !ok {
			t.Errorf("%s: expected dependency %s missing (is go list answering?)", what, w)
		}
	}
}

// TestArchitecture enforces which way the arrows go.
func TestArchitecture(t *testing.T) {
	t.Run("cm4agent has no server package and no cgo", func(t *testing.T) {
		for _, arch := range []string{"arm64", "amd64"} {
			deps := repotest.Deps(t, []string{"CGO_ENABLED=0", "GOOS=linux", "GOARCH=" + arch}, "./cmd/cm4agent")
			banned(t, "cm4agent/"+arch, deps, append(serverPkgs, "runtime/cgo"))
			for _, p := range deps {
				if p.Cgo {
					t.Errorf("cm4agent/%s depends on cgo package %s", arch, p.Path)
				}
			}
			present(t, "cm4agent/"+arch, deps, mod+"/netboot/device/agent", mod+"/internal/contract")
		}
	})
	t.Run("the server has no agent package", func(t *testing.T) {
		deps := repotest.Deps(t, nil, "./cmd/cm4bench")
		banned(t, "cm4bench", deps, agentPkgs)
		present(t, "cm4bench", deps, mod+"/netboot/serve", mod+"/netboot/initramfs/agentbin")
		deps = repotest.Deps(t, nil, "./netboot/serve", "./api/...")
		banned(t, "the servers", deps, append(agentPkgs, clientNetPkgs...))
	})
	t.Run("dhcp and tftp import no api package, store or gin", func(t *testing.T) {
		for _, pkg := range []string{"./netboot/dhcp", "./netboot/tftp"} {
			deps := repotest.Deps(t, nil, pkg)
			banned(t, pkg, deps, []string{mod + "/api", "github.com/gin-gonic/gin", "modernc.org/sqlite"})
			present(t, pkg, deps, mod+"/internal/contract")
		}
	})
	t.Run("the device side imports no server package", func(t *testing.T) {
		deps := repotest.Deps(t, []string{"CGO_ENABLED=0"}, "./netboot/device/agent", "./netboot/device/blockdev",
			"./netboot/device/facts", "./netboot/device/pid1")
		banned(t, "netboot/device", deps, serverPkgs)
	})
	t.Run("contract imports only the standard library", func(t *testing.T) {
		deps := repotest.Deps(t, nil, "./internal/contract")
		for _, p := range deps {
			if first, _, _ := strings.Cut(p.Path, "/"); strings.Contains(first, ".") && p.Path != mod+"/internal/contract" {
				t.Errorf("internal/contract depends on %s", p.Path)
			}
		}
	})
	t.Run("eeprom does no file I/O", func(t *testing.T) {
		deps := repotest.Deps(t, nil, "./eeprom")
		for _, io := range []string{"os", "io/ioutil", "path/filepath", "io/fs"} {
			if slices.Contains(deps[mod+"/eeprom"].Imports, io) {
				t.Errorf("package eeprom imports %s: it works on bytes; files are the CLI's and recoverydir's", io)
			}
		}
		present(t, "eeprom", deps, mod+"/eeprom")
	})
	t.Run("usbboot and its simulator have no gousb and no cgo", func(t *testing.T) {
		deps := repotest.Deps(t, nil, "./usbboot", "./usbboot/usbboottest")
		banned(t, "usbboot", deps, []string{"github.com/google/gousb"})
		for _, p := range deps {
			if p.Cgo && strings.Contains(p.Path, ".") {
				t.Errorf("usbboot depends on cgo package %s", p.Path)
			}
		}
	})
	t.Run("gousb only in usbboot/gousbdev", func(t *testing.T) {
		deps := repotest.Deps(t, nil, "./...")
		for _, p := range deps {
			if !strings.HasPrefix(p.Path, mod) || p.Path == mod+"/usbboot/gousbdev" {
				continue
			}
			for _, imp := range p.Imports {
				if repotest.Under(imp, "github.com/google/gousb") {
					t.Errorf("%s imports %s; only usbboot/gousbdev may", p.Path, imp)
				}
			}
		}
	})
}

// TestRulesCanFail: the rule helpers report a banned dependency that is
// there (the agent does depend on netlink).
func TestRulesCanFail(t *testing.T) {
	deps := repotest.Deps(t, []string{"CGO_ENABLED=0", "GOOS=linux", "GOARCH=arm64"}, "./cmd/cm4agent")
	found := false
	for p := range deps {
		if repotest.Under(p, "github.com/vishvananda/netlink") {
			found = true
		}
	}
	if !found {
		t.Fatal("cm4agent should depend on netlink; the dependency listing is wrong")
	}
}
