package usbboot_test

import (
	"os/exec"
	"strings"
	"testing"
)

// The protocol and the simulator stay free of gousb and cgo: only
// usbboot/gousbdev may import github.com/google/gousb.
func TestNoGousbOrCgo(t *testing.T) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go tool not on PATH")
	}
	out, err := exec.Command(gobin, "list", "-deps", "-f", "{{.ImportPath}} {{len .CgoFiles}}",
		"github.com/cm4bench/cm4bench/usbboot", "github.com/cm4bench/cm4bench/usbboot/usbboottest").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		pkg, cgo, _ := strings.Cut(line, " ")
		if strings.HasPrefix(pkg, "github.com/google/gousb") {
			t.Errorf("usbboot depends on %s", pkg)
		}
		if cgo != "0" && !strings.HasPrefix(pkg, "runtime/cgo") && strings.Contains(pkg, ".") {
			t.Errorf("usbboot depends on cgo package %s", pkg)
		}
	}
}
