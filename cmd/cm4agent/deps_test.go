package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestAgentDependencies keeps cm4agent small and cgo-free: it must not pull
// in the server (gin, SQLite), USB boot (gousb, cgo) or the CLI.
func TestAgentDependencies(t *testing.T) {
	for _, arch := range []string{"arm64", "amd64"} {
		cmd := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}} {{if .CgoFiles}}CGO{{end}}", ".")
		cmd.Env = append(cmd.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("go list (%s): %v\n%s", arch, err, out)
		}
		deps := strings.Split(strings.TrimSpace(string(out)), "\n")
		if len(deps) < 20 {
			t.Fatalf("go list gave only %d packages: %q", len(deps), deps)
		}
		banned := []string{
			"github.com/google/gousb",
			"github.com/gin-gonic/gin",
			"modernc.org/sqlite",
			"github.com/cm4bench/cm4bench/usbboot",
			"github.com/cm4bench/cm4bench/api/store",
			"github.com/cm4bench/cm4bench/netboot/serve",
			"github.com/cm4bench/cm4bench/cmd/cm4bench",
			"github.com/spf13/cobra",
			"runtime/cgo",
		}
		found := map[string]bool{}
		for _, line := range deps {
			pkg, cgo, _ := strings.Cut(line, " ")
			found[pkg] = true
			for _, b := range banned {
				if pkg == b || strings.HasPrefix(pkg, b+"/") {
					t.Errorf("%s: cm4agent depends on %s", arch, pkg)
				}
			}
			if cgo == "CGO" {
				t.Errorf("%s: cm4agent depends on cgo package %s", arch, pkg)
			}
		}
		// The check can fail: the packages the agent is made of are there.
		for _, want := range []string{"github.com/cm4bench/cm4bench/netboot/device/agent", "github.com/cm4bench/cm4bench/internal/contract", "github.com/insomniacslk/dhcp/dhcpv4/nclient4"} {
			if !found[want] {
				t.Errorf("%s: expected dependency %s missing; is go list working?", arch, want)
			}
		}
	}
}
