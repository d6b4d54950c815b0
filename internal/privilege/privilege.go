// Package privilege turns a refused privileged socket operation into an
// error that names the Linux capability it needs, so a server run as an
// unprivileged user (the cm4bench.service unit) says what is missing.
package privilege

import (
	"errors"
	"fmt"
	"syscall"
)

// Capabilities the bench servers need when not run as root, as the
// systemd unit grants them (AmbientCapabilities=).
const (
	NetBindService = "CAP_NET_BIND_SERVICE" // bind UDP 67 and 69 (and ports below 1024)
	NetRaw         = "CAP_NET_RAW"          // the AF_PACKET socket that looks for other DHCP servers; SO_BINDTODEVICE on kernels before 5.7
)

// ErrMissing marks an operation refused for lack of a capability.
var ErrMissing = errors.New("missing capability")

// Explain wraps err, when it is EACCES or EPERM, with what was attempted
// and the capability that allows it; other errors come back unchanged.
func Explain(err error, what, capability string) error {
	if err == nil || !(errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM)) {
		return err
	}
	return fmt.Errorf("%s needs %s (run as root, or give the capability: the cm4bench.service unit sets AmbientCapabilities=%s %s): %w: %w",
		what, capability, NetBindService, NetRaw, ErrMissing, err)
}
