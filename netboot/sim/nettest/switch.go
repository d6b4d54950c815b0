package nettest

import (
	"net"
	"strings"
	"sync"
)

// Switch is a per-MAC netboot switch for tests: the Policy the DHCP and
// TFTP servers consult (the bench's store plays this part in production).
// The zero value has every MAC on.
type Switch struct {
	mu  sync.Mutex
	off map[string]bool
}

// NetbootEnabled reports whether mac's netboot is on.
func (s *Switch) NetbootEnabled(mac net.HardwareAddr) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return !s.off[mac.String()]
}

// Set switches mac (any form net.ParseMAC reads, or a net.HardwareAddr's
// String) on or off.
func (s *Switch) Set(mac string, on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.off == nil {
		s.off = map[string]bool{}
	}
	if hw, err := net.ParseMAC(mac); err == nil {
		mac = hw.String()
	}
	s.off[strings.ToLower(mac)] = !on
}

// Disable switches mac off, as action-done does after a successful deploy.
func (s *Switch) Disable(mac net.HardwareAddr) { s.Set(mac.String(), false) }
