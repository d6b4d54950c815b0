package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/cm4bench/cm4bench/internal/contract"
)

// Register records a device contact from register: it creates the device
// if new and updates ip, facts and last_seen. It reports whether the device
// is new.
func (s *Store) Register(ctx context.Context, mac, ip string, facts *contract.Facts) (created bool, err error) {
	now := s.now().UnixNano()
	var fj, serial string
	if facts != nil {
		b, err := json.Marshal(facts)
		if err != nil {
			return false, fmt.Errorf("store: encode facts: %w", err)
		}
		fj, serial = string(b), facts.Serial
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return false, fmt.Errorf("store: register %s: %w", mac, err)
	}
	defer tx.Rollback()
	var lastSeen int64
	err = tx.QueryRowContext(ctx, `SELECT last_seen FROM devices WHERE mac = ?`, mac).Scan(&lastSeen)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		created = true
		_, err = tx.ExecContext(ctx, `INSERT INTO devices (mac, serial, ip, facts, first_seen, last_seen) VALUES (?, ?, ?, ?, ?, ?)`,
			mac, serial, ip, fj, now, now)
	case err == nil:
		created = lastSeen == 0 // known only from a switch set before its first boot
		_, err = tx.ExecContext(ctx, `UPDATE devices SET ip = ?, last_seen = ?,
			serial = CASE WHEN ? != '' THEN ? ELSE serial END,
			facts = CASE WHEN ? != '' THEN ? ELSE facts END WHERE mac = ?`,
			ip, now, serial, serial, fj, fj, mac)
	}
	if err != nil {
		return false, fmt.Errorf("store: register %s: %w", mac, err)
	}
	n, err := s.enqueueTx(ctx, tx, contract.WebhookBoardRegistered, map[string]any{"mac": mac, "ip": ip, "facts": facts, "new": created})
	if err != nil {
		return false, err
	}
	if err := tx.Commit(); err != nil {
		return false, fmt.Errorf("store: register %s: %w", mac, err)
	}
	if n > 0 {
		s.outboxChanged()
	}
	return created, nil
}

// Touch updates a known device's ip and last_seen (on poll). It returns
// ErrNotFound for a device that never registered.
func (s *Store) Touch(ctx context.Context, mac, ip string) error {
	res, err := s.db.ExecContext(ctx, `UPDATE devices SET last_seen = ?, ip = CASE WHEN ? != '' THEN ? ELSE ip END WHERE mac = ? AND last_seen != 0`,
		s.now().UnixNano(), ip, ip, mac)
	if err != nil {
		return fmt.Errorf("store: touch %s: %w", mac, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("store: device %s: %w", mac, ErrNotFound)
	}
	return nil
}

const deviceCols = `d.mac, d.serial, d.ip, d.facts, d.first_seen, d.last_seen, d.netboot, d.image, ` + actionColsA

const actionColsA = `a.id, a.mac, a.type, a.image, a.state, a.phase, a.done, a.total, a.rate, a.error, a.created, a.started, a.finished,
	a.sha256, a.bytes, a.compressed_sha256, a.compressed_bytes, a.backup_id, a.log, a.token, a.polled_ip, a.served,
	a.recipe, a.recipe_version, a.rule, a.vals, a.files`

type scanner interface{ Scan(...any) error }

func (s *Store) scanDevice(r scanner) (contract.Device, error) {
	var d contract.Device
	var facts string
	var first, last int64
	var a nullAction
	err := r.Scan(&d.MAC, &d.Serial, &d.IP, &facts, &first, &last, &d.Netboot, &d.Image,
		&a.id, &a.mac, &a.typ, &a.image, &a.state, &a.phase, &a.done, &a.total, &a.rate, &a.err, &a.created, &a.started, &a.finished,
		&a.sha, &a.bytes, &a.csha, &a.cbytes, &a.backup, &a.log, &a.token, &a.polledIP, &a.served,
		&a.recipe, &a.recipeVersion, &a.rule, &a.vals, &a.files)
	if err != nil {
		return d, err
	}
	if facts != "" {
		var f contract.Facts
		if json.Unmarshal([]byte(facts), &f) == nil {
			d.Facts = &f
		}
	}
	d.FirstSeen = time.Unix(0, first).UTC()
	if last != 0 {
		d.LastSeen = time.Unix(0, last).UTC()
	}
	if a.id.Valid {
		act := a.action()
		d.Action = &act.Action
	}
	d.State = deviceState(d, s.now())
	return d, nil
}

func deviceState(d contract.Device, now time.Time) string {
	if d.Action != nil {
		switch d.Action.State {
		case contract.StatePending:
			return contract.DevicePending
		case contract.StateRunning:
			return contract.DeviceRunning
		case contract.StateDone:
			if !contract.EMMCAction(d.Action.Type) {
				break // an identify changed nothing: the board is as it was, ready
			}
			return contract.DeviceDone
		case contract.StateFailed:
			return contract.DeviceFailed
		}
	}
	if d.LastSeen.IsZero() || now.Sub(d.LastSeen) > OfflineAfter {
		return contract.DeviceOffline
	}
	return contract.DeviceIdle
}

// Device returns one device with its current or last action.
func (s *Store) Device(ctx context.Context, mac string) (contract.Device, error) {
	row := s.db.QueryRowContext(ctx, `SELECT `+deviceCols+` FROM devices d LEFT JOIN actions a ON a.id = d.last_action WHERE d.mac = ?`, mac)
	d, err := s.scanDevice(row)
	if errors.Is(err, sql.ErrNoRows) {
		return d, fmt.Errorf("store: device %s: %w", mac, ErrNotFound)
	}
	if err != nil {
		return d, fmt.Errorf("store: device %s: %w", mac, err)
	}
	return d, nil
}

// Devices lists every device, by MAC.
func (s *Store) Devices(ctx context.Context) ([]contract.Device, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+deviceCols+` FROM devices d LEFT JOIN actions a ON a.id = d.last_action ORDER BY d.mac`)
	if err != nil {
		return nil, fmt.Errorf("store: list devices: %w", err)
	}
	defer rows.Close()
	out := []contract.Device{}
	for rows.Next() {
		d, err := s.scanDevice(rows)
		if err != nil {
			return nil, fmt.Errorf("store: list devices: %w", err)
		}
		out = append(out, d)
	}
	return out, rows.Err()
}

// SetDeviceImage assigns an image to a device ("" = the default).
func (s *Store) SetDeviceImage(ctx context.Context, mac, image string) error {
	res, err := s.db.ExecContext(ctx, `UPDATE devices SET image = ? WHERE mac = ?`, image, mac)
	if err != nil {
		return fmt.Errorf("store: set image of %s: %w", mac, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("store: device %s: %w", mac, ErrNotFound)
	}
	return nil
}
