package store

import (
	"context"
	"fmt"
	"net"

	"github.com/cm4bench/cm4bench/internal/contract"
)

// NetbootEnabled reports whether mac may netboot now: the global switch is
// on and the MAC's own switch is not off. Unknown MACs are enabled. It reads
// only memory, so the DHCP and TFTP hot paths never touch the database.
func (s *Store) NetbootEnabled(mac net.HardwareAddr) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if !s.global {
		return false
	}
	on, ok := s.perMAC[mac.String()]
	return !ok || on
}

// GlobalNetboot reports the global switch.
func (s *Store) GlobalNetboot() bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.global
}

// SetGlobalNetboot sets and persists the global switch.
func (s *Store) SetGlobalNetboot(ctx context.Context, on bool) error {
	v := "on"
	if !on {
		v = "off"
	}
	if err := s.putSetting(ctx, "netboot", v); err != nil {
		return fmt.Errorf("store: set global netboot: %w", err)
	}
	s.mu.Lock()
	s.global = on
	s.mu.Unlock()
	return nil
}

// SetDeviceNetboot sets and persists the switch of one MAC. A MAC never
// seen before is recorded as a device, so a switch can be set before the
// board first boots.
func (s *Store) SetDeviceNetboot(ctx context.Context, mac string, on bool) error {
	mac, err := contract.NormalizeMAC(mac)
	if err != nil {
		return err
	}
	now := s.now().UnixNano()
	if _, err := s.db.ExecContext(ctx, `INSERT INTO devices (mac, first_seen, last_seen, netboot) VALUES (?, ?, 0, ?)
		ON CONFLICT(mac) DO UPDATE SET netboot = excluded.netboot`, mac, now, on); err != nil {
		return fmt.Errorf("store: set netboot for %s: %w", mac, err)
	}
	s.mu.Lock()
	if on {
		delete(s.perMAC, mac)
	} else {
		s.perMAC[mac] = false
	}
	s.mu.Unlock()
	return nil
}
