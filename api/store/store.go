// Package store is the bench's memory: one SQLite file (modernc.org/sqlite,
// no cgo) in the data dir holding devices, actions, the event log, backups,
// the image hash cache and the netboot switches, with numbered schema
// migrations.
//
// The Store also is the netboot Policy the DHCP and TFTP servers ask
// (NetbootEnabled): the switches are cached in memory, so a change made
// through the API is effective at the next packet, and persisted, so it
// survives a restart.
//
//	st, err := store.Open(ctx, filepath.Join(dataDir, "cm4bench.db"))
//	if err != nil { return err }
//	defer st.Close()
//	ev, _ := st.Emit(ctx, contract.Event{Kind: "device.register", MAC: mac, Message: "registered"})
//	ch, cancel := st.Subscribe(64) // live events, for SSE and metrics
//	defer cancel()
package store

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/cm4bench/cm4bench/internal/contract"
	_ "modernc.org/sqlite" // database/sql driver "sqlite"
)

// Sentinel errors; callers test them with errors.Is.
var (
	ErrNotFound = errors.New("not found")
	ErrConflict = errors.New("conflict")
)

// OfflineAfter is how long an idle device may stay silent before it is
// shown as offline.
const OfflineAfter = 2 * time.Minute

// maxLogLines bounds the log tail kept per action.
const maxLogLines = 200

// Store is an open bench database. All methods are safe for concurrent use.
type Store struct {
	db  *sql.DB
	now func() time.Time

	mu      sync.RWMutex    // guards global and perMAC
	global  bool            // global netboot switch
	perMAC  map[string]bool // explicit per-MAC switches; absent = on
	subsMu  sync.Mutex
	subs    map[int]chan contract.Event
	nextSub int
}

// Action is an action as stored, with the fields that never leave the
// server: the per-action token and the IP of the device that polled it.
type Action struct {
	contract.Action
	Token    string
	PolledIP string
	Served   bool // the whole image was streamed to a client reporting no progress
}

// Open opens (creating if needed) the database at path and applies any
// pending migrations.
func Open(ctx context.Context, path string) (*Store, error) {
	dsn := "file:" + path + "?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)&_pragma=foreign_keys(1)&_txlock=immediate"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	// One connection: SQLite has one writer anyway, and this rules out
	// SQLITE_BUSY between our own goroutines.
	db.SetMaxOpenConns(1)
	s := &Store{db: db, now: time.Now, perMAC: map[string]bool{}, subs: map[int]chan contract.Event{}}
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("store: migrate %s: %w", path, err)
	}
	if err := s.loadSwitches(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("store: load netboot switches: %w", err)
	}
	// The database holds action tokens and device facts: owner only. SQLite
	// creates the -wal and -shm files with the database file's mode.
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		if err := os.Chmod(p, 0o600); err != nil && !errors.Is(err, os.ErrNotExist) {
			db.Close()
			return nil, fmt.Errorf("store: restrict %s: %w", p, err)
		}
	}
	return s, nil
}

// Close closes the database and ends every subscription.
func (s *Store) Close() error {
	s.subsMu.Lock()
	for id, ch := range s.subs {
		close(ch)
		delete(s.subs, id)
	}
	s.subsMu.Unlock()
	return s.db.Close()
}

// migrations are applied in order; index+1 is the schema version. Never
// edit a released entry: append a new one.
var migrations = [...]string{
	// 1: initial schema.
	`CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
	CREATE TABLE devices (
		mac TEXT PRIMARY KEY,
		serial TEXT NOT NULL DEFAULT '',
		ip TEXT NOT NULL DEFAULT '',
		facts TEXT NOT NULL DEFAULT '',
		first_seen INTEGER NOT NULL,
		last_seen INTEGER NOT NULL,
		netboot INTEGER NOT NULL DEFAULT 1,
		image TEXT NOT NULL DEFAULT '',
		last_action INTEGER NOT NULL DEFAULT 0
	);
	CREATE TABLE actions (
		id INTEGER PRIMARY KEY AUTOINCREMENT,
		mac TEXT NOT NULL,
		type TEXT NOT NULL,
		image TEXT NOT NULL DEFAULT '',
		state TEXT NOT NULL,
		phase TEXT NOT NULL DEFAULT '',
		done INTEGER NOT NULL DEFAULT 0,
		total INTEGER NOT NULL DEFAULT 0,
		rate REAL NOT NULL DEFAULT 0,
		error TEXT NOT NULL DEFAULT '',
		created INTEGER NOT NULL,
		started INTEGER NOT NULL DEFAULT 0,
		finished INTEGER NOT NULL DEFAULT 0,
		sha256 TEXT NOT NULL DEFAULT '',
		bytes INTEGER NOT NULL DEFAULT 0,
		compressed_sha256 TEXT NOT NULL DEFAULT '',
		compressed_bytes INTEGER NOT NULL DEFAULT 0,
		backup_id INTEGER NOT NULL DEFAULT 0,
		log TEXT NOT NULL DEFAULT '',
		token TEXT NOT NULL,
		polled_ip TEXT NOT NULL DEFAULT ''
	);
	CREATE INDEX actions_mac ON actions (mac, id);
	CREATE TABLE events (
		id INTEGER PRIMARY KEY AUTOINCREMENT,
		time INTEGER NOT NULL,
		kind TEXT NOT NULL,
		level TEXT NOT NULL DEFAULT '',
		mac TEXT NOT NULL DEFAULT '',
		serial TEXT NOT NULL DEFAULT '',
		message TEXT NOT NULL DEFAULT '',
		fields TEXT NOT NULL DEFAULT ''
	);
	CREATE TABLE backups (
		id INTEGER PRIMARY KEY AUTOINCREMENT,
		mac TEXT NOT NULL,
		serial TEXT NOT NULL DEFAULT '',
		action_id INTEGER NOT NULL,
		created INTEGER NOT NULL,
		size INTEGER NOT NULL,
		stored_size INTEGER NOT NULL,
		compressed INTEGER NOT NULL,
		sha256 TEXT NOT NULL,
		stored_sha256 TEXT NOT NULL,
		file TEXT NOT NULL
	);
	CREATE TABLE image_hashes (
		path TEXT PRIMARY KEY,
		size INTEGER NOT NULL,
		mtime INTEGER NOT NULL,
		raw_size INTEGER NOT NULL,
		sha256 TEXT NOT NULL
	);`,
	// 2: a deploy fully streamed to a client that reports nothing itself
	// (the shell client), kept apart from the progress phase.
	`ALTER TABLE actions ADD COLUMN served INTEGER NOT NULL DEFAULT 0;`,
}

func (s *Store) migrate(ctx context.Context) error {
	if _, err := s.db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied INTEGER NOT NULL)`); err != nil {
		return fmt.Errorf("create schema_migrations: %w", err)
	}
	var have int
	if err := s.db.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&have); err != nil {
		return fmt.Errorf("read schema version: %w", err)
	}
	if have > len(migrations) {
		return fmt.Errorf("database schema version %d is newer than this cm4bench (%d)", have, len(migrations))
	}
	for v := have + 1; v <= len(migrations); v++ {
		tx, err := s.db.BeginTx(ctx, nil)
		if err != nil {
			return fmt.Errorf("begin migration %d: %w", v, err)
		}
		if _, err := tx.ExecContext(ctx, migrations[v-1]); err != nil {
			tx.Rollback()
			return fmt.Errorf("migration %d: %w", v, err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version, applied) VALUES (?, ?)`, v, s.now().UnixNano()); err != nil {
			tx.Rollback()
			return fmt.Errorf("record migration %d: %w", v, err)
		}
		if err := tx.Commit(); err != nil {
			return fmt.Errorf("commit migration %d: %w", v, err)
		}
	}
	return nil
}

// SchemaVersion reports the applied schema version.
func (s *Store) SchemaVersion(ctx context.Context) (int, error) {
	var v int
	err := s.db.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&v)
	return v, err
}

func (s *Store) loadSwitches(ctx context.Context) error {
	g, err := s.setting(ctx, "netboot")
	if err != nil {
		return err
	}
	rows, err := s.db.QueryContext(ctx, `SELECT mac, netboot FROM devices WHERE netboot = 0`)
	if err != nil {
		return err
	}
	defer rows.Close()
	m := map[string]bool{}
	for rows.Next() {
		var mac string
		var on bool
		if err := rows.Scan(&mac, &on); err != nil {
			return err
		}
		m[mac] = on
	}
	if err := rows.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	s.global = g != "off"
	s.perMAC = m
	s.mu.Unlock()
	return nil
}

func (s *Store) setting(ctx context.Context, key string) (string, error) {
	var v string
	err := s.db.QueryRowContext(ctx, `SELECT value FROM settings WHERE key = ?`, key).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	return v, err
}

// ---- netboot policy ----

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
	if _, err := s.db.ExecContext(ctx, `INSERT INTO settings (key, value) VALUES ('netboot', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value`, v); err != nil {
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

// ---- devices ----

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
	if err := tx.Commit(); err != nil {
		return false, fmt.Errorf("store: register %s: %w", mac, err)
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
	a.sha256, a.bytes, a.compressed_sha256, a.compressed_bytes, a.backup_id, a.log, a.token, a.polled_ip, a.served`

type scanner interface{ Scan(...any) error }

func (s *Store) scanDevice(r scanner) (contract.Device, error) {
	var d contract.Device
	var facts string
	var first, last int64
	var a nullAction
	err := r.Scan(&d.MAC, &d.Serial, &d.IP, &facts, &first, &last, &d.Netboot, &d.Image,
		&a.id, &a.mac, &a.typ, &a.image, &a.state, &a.phase, &a.done, &a.total, &a.rate, &a.err, &a.created, &a.started, &a.finished,
		&a.sha, &a.bytes, &a.csha, &a.cbytes, &a.backup, &a.log, &a.token, &a.polledIP, &a.served)
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

// ---- actions ----

type nullAction struct {
	id                                      sql.NullInt64
	mac, typ, image, state, phase, err      sql.NullString
	done, total, created, started, finished sql.NullInt64
	rate                                    sql.NullFloat64
	sha, csha, log, token, polledIP         sql.NullString
	bytes, cbytes, backup                   sql.NullInt64
	served                                  sql.NullBool
}

func (a nullAction) action() Action {
	var out Action
	out.ID = strconv.FormatInt(a.id.Int64, 10)
	out.MAC, out.Type, out.Image, out.State, out.Phase = a.mac.String, a.typ.String, a.image.String, a.state.String, a.phase.String
	out.Done, out.Total, out.Rate, out.Error = a.done.Int64, a.total.Int64, a.rate.Float64, a.err.String
	out.Created = time.Unix(0, a.created.Int64).UTC()
	if a.started.Int64 != 0 {
		t := time.Unix(0, a.started.Int64).UTC()
		out.Started = &t
	}
	if a.finished.Int64 != 0 {
		t := time.Unix(0, a.finished.Int64).UTC()
		out.Finished = &t
	}
	out.SHA256, out.Bytes, out.CompressedSHA256, out.CompressedBytes = a.sha.String, a.bytes.Int64, a.csha.String, a.cbytes.Int64
	if a.backup.Int64 != 0 {
		out.BackupID = strconv.FormatInt(a.backup.Int64, 10)
	}
	if a.log.String != "" {
		json.Unmarshal([]byte(a.log.String), &out.Log)
	}
	out.Token, out.PolledIP, out.Served = a.token.String, a.polledIP.String, a.served.Bool
	return out
}

func scanAction(r scanner) (Action, error) {
	var a nullAction
	err := r.Scan(&a.id, &a.mac, &a.typ, &a.image, &a.state, &a.phase, &a.done, &a.total, &a.rate, &a.err, &a.created, &a.started, &a.finished,
		&a.sha, &a.bytes, &a.csha, &a.cbytes, &a.backup, &a.log, &a.token, &a.polledIP, &a.served)
	if err != nil {
		return Action{}, err
	}
	return a.action(), nil
}

func newToken() string {
	var b [16]byte
	rand.Read(b[:]) // never fails (crypto/rand, Go >= 1.24)
	return hex.EncodeToString(b[:])
}

func isOpen(state string) bool {
	return state == contract.StatePending || state == contract.StateRunning
}

// SetAction gives a device a new pending action (deploy or backup) with a
// fresh token. An open action of that device is cancelled first (its token
// dies with it). It returns the new action and the cancelled one, if any.
func (s *Store) SetAction(ctx context.Context, mac, typ, image string) (created Action, cancelled *Action, err error) {
	if typ != contract.ActionDeploy && typ != contract.ActionBackup {
		return Action{}, nil, fmt.Errorf("store: unknown action %q", typ)
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return Action{}, nil, fmt.Errorf("store: set action: %w", err)
	}
	defer tx.Rollback()
	cancelled, err = s.cancelOpen(ctx, tx, mac, "replaced by a new action")
	if err != nil {
		return Action{}, nil, err
	}
	now := s.now().UnixNano()
	res, err := tx.ExecContext(ctx, `INSERT INTO actions (mac, type, image, state, created, token) VALUES (?, ?, ?, ?, ?, ?)`,
		mac, typ, image, contract.StatePending, now, newToken())
	if err != nil {
		return Action{}, nil, fmt.Errorf("store: insert action: %w", err)
	}
	id, _ := res.LastInsertId()
	if _, err := tx.ExecContext(ctx, `UPDATE devices SET last_action = ? WHERE mac = ?`, id, mac); err != nil {
		return Action{}, nil, fmt.Errorf("store: link action: %w", err)
	}
	created, err = scanAction(tx.QueryRowContext(ctx, `SELECT `+actionColsA+` FROM actions a WHERE a.id = ?`, id))
	if err != nil {
		return Action{}, nil, fmt.Errorf("store: read action: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return Action{}, nil, fmt.Errorf("store: set action: %w", err)
	}
	return created, cancelled, nil
}

// CancelAction cancels the device's open action. It returns ErrNotFound
// when there is none.
func (s *Store) CancelAction(ctx context.Context, mac string) (Action, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return Action{}, fmt.Errorf("store: cancel action: %w", err)
	}
	defer tx.Rollback()
	a, err := s.cancelOpen(ctx, tx, mac, "cancelled by the technician")
	if err != nil {
		return Action{}, err
	}
	if a == nil {
		return Action{}, fmt.Errorf("store: no open action for %s: %w", mac, ErrNotFound)
	}
	if err := tx.Commit(); err != nil {
		return Action{}, fmt.Errorf("store: cancel action: %w", err)
	}
	return *a, nil
}

func (s *Store) cancelOpen(ctx context.Context, tx *sql.Tx, mac, why string) (*Action, error) {
	a, err := scanAction(tx.QueryRowContext(ctx, `SELECT `+actionColsA+` FROM actions a WHERE a.mac = ? AND a.state IN ('pending', 'running') ORDER BY a.id DESC LIMIT 1`, mac))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("store: find open action: %w", err)
	}
	now := s.now()
	if _, err := tx.ExecContext(ctx, `UPDATE actions SET state = ?, error = ?, finished = ? WHERE id = ?`, contract.StateCancelled, why, now.UnixNano(), a.ID); err != nil {
		return nil, fmt.Errorf("store: cancel action %s: %w", a.ID, err)
	}
	a.State, a.Error, a.Finished = contract.StateCancelled, why, &now
	return &a, nil
}

// OpenAction returns the device's open (pending or running) action, or
// ErrNotFound.
func (s *Store) OpenAction(ctx context.Context, mac string) (Action, error) {
	a, err := scanAction(s.db.QueryRowContext(ctx, `SELECT `+actionColsA+` FROM actions a WHERE a.mac = ? AND a.state IN ('pending', 'running') ORDER BY a.id DESC LIMIT 1`, mac))
	if errors.Is(err, sql.ErrNoRows) {
		return a, fmt.Errorf("store: no open action for %s: %w", mac, ErrNotFound)
	}
	if err != nil {
		return a, fmt.Errorf("store: open action of %s: %w", mac, err)
	}
	return a, nil
}

// ActionByID returns one action.
func (s *Store) ActionByID(ctx context.Context, id string) (Action, error) {
	n, err := strconv.ParseInt(id, 10, 64)
	if err != nil {
		return Action{}, fmt.Errorf("store: action %q: %w", id, ErrNotFound)
	}
	a, err := scanAction(s.db.QueryRowContext(ctx, `SELECT `+actionColsA+` FROM actions a WHERE a.id = ?`, n))
	if errors.Is(err, sql.ErrNoRows) {
		return a, fmt.Errorf("store: action %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return a, fmt.Errorf("store: action %s: %w", id, err)
	}
	return a, nil
}

// MarkPolled records that the device at ip fetched the action: a pending
// action becomes running. Polling again (a rebooted device) keeps it
// running and updates the IP.
func (s *Store) MarkPolled(ctx context.Context, id, ip string) (Action, error) {
	now := s.now().UnixNano()
	// The first poll binds the action (its token and its streams) to that
	// address; a poll from another address never moves it.
	res, err := s.db.ExecContext(ctx, `UPDATE actions SET polled_ip = ?,
		started = CASE WHEN started = 0 THEN ? ELSE started END,
		state = CASE WHEN state = 'pending' THEN 'running' ELSE state END,
		phase = CASE WHEN phase = '' THEN 'polled' ELSE phase END
		WHERE id = ? AND state IN ('pending', 'running') AND (polled_ip = '' OR polled_ip = ?)`, ip, now, id, ip)
	if err != nil {
		return Action{}, fmt.Errorf("store: mark action %s polled: %w", id, err)
	}
	a, err := s.ActionByID(ctx, id)
	if err != nil {
		return a, err
	}
	if n, _ := res.RowsAffected(); n == 0 && a.PolledIP != ip {
		return a, fmt.Errorf("store: action %s was fetched from %s, not %s: %w", id, a.PolledIP, ip, ErrConflict)
	}
	return a, nil
}

// Progress records an open action's progress. It returns ErrConflict if the
// action is no longer open.
func (s *Store) Progress(ctx context.Context, id, phase string, done, total int64, rate float64) error {
	res, err := s.db.ExecContext(ctx, `UPDATE actions SET phase = ?, done = ?, total = ?, rate = ?, state = 'running',
		started = CASE WHEN started = 0 THEN ? ELSE started END
		WHERE id = ? AND state IN ('pending', 'running')`, phase, done, total, rate, s.now().UnixNano(), id)
	if err != nil {
		return fmt.Errorf("store: progress of %s: %w", id, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("store: action %s is not open: %w", id, ErrConflict)
	}
	return nil
}

// MarkServed records that a deploy's whole image was streamed to a client
// that reports no progress of its own.
func (s *Store) MarkServed(ctx context.Context, id string) error {
	if _, err := s.db.ExecContext(ctx, `UPDATE actions SET served = 1 WHERE id = ? AND state IN ('pending', 'running')`, id); err != nil {
		return fmt.Errorf("store: mark %s served: %w", id, err)
	}
	return nil
}

// AppendLog adds lines to an action's log tail (the last maxLogLines kept).
func (s *Store) AppendLog(ctx context.Context, id string, lines []string) error {
	a, err := s.ActionByID(ctx, id)
	if err != nil {
		return err
	}
	all := append(a.Log, lines...)
	if len(all) > maxLogLines {
		all = all[len(all)-maxLogLines:]
	}
	b, _ := json.Marshal(all)
	if _, err := s.db.ExecContext(ctx, `UPDATE actions SET log = ? WHERE id = ?`, string(b), id); err != nil {
		return fmt.Errorf("store: log of %s: %w", id, err)
	}
	return nil
}

// Result is how an action ended.
type Result struct {
	OK               bool
	Error            string
	SHA256           string
	Bytes            int64
	CompressedSHA256 string
	CompressedBytes  int64
}

// Finish closes an open action as done or failed. A successful action
// switches netboot off for its MAC in the same transaction. It returns
// ErrConflict if the action is not open.
func (s *Store) Finish(ctx context.Context, id string, r Result) (Action, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return Action{}, fmt.Errorf("store: finish %s: %w", id, err)
	}
	defer tx.Rollback()
	a, err := scanAction(tx.QueryRowContext(ctx, `SELECT `+actionColsA+` FROM actions a WHERE a.id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return Action{}, fmt.Errorf("store: action %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return Action{}, fmt.Errorf("store: finish %s: %w", id, err)
	}
	if !isOpen(a.State) {
		return a, fmt.Errorf("store: action %s is already %s: %w", id, a.State, ErrConflict)
	}
	state := contract.StateFailed
	if r.OK {
		state = contract.StateDone
	}
	now := s.now().UnixNano()
	_, err = tx.ExecContext(ctx, `UPDATE actions SET state = ?, error = ?, finished = ?,
		started = CASE WHEN started = 0 THEN ? ELSE started END,
		sha256 = CASE WHEN ? != '' THEN ? ELSE sha256 END,
		bytes = CASE WHEN ? != 0 THEN ? ELSE bytes END,
		compressed_sha256 = CASE WHEN ? != '' THEN ? ELSE compressed_sha256 END,
		compressed_bytes = CASE WHEN ? != 0 THEN ? ELSE compressed_bytes END
		WHERE id = ?`, state, r.Error, now, now, r.SHA256, r.SHA256, r.Bytes, r.Bytes,
		r.CompressedSHA256, r.CompressedSHA256, r.CompressedBytes, r.CompressedBytes, id)
	if err != nil {
		return Action{}, fmt.Errorf("store: finish %s: %w", id, err)
	}
	if r.OK {
		if _, err := tx.ExecContext(ctx, `UPDATE devices SET netboot = 0 WHERE mac = ?`, a.MAC); err != nil {
			return Action{}, fmt.Errorf("store: switch netboot off for %s: %w", a.MAC, err)
		}
	}
	a, err = scanAction(tx.QueryRowContext(ctx, `SELECT `+actionColsA+` FROM actions a WHERE a.id = ?`, id))
	if err != nil {
		return Action{}, fmt.Errorf("store: finish %s: %w", id, err)
	}
	if err := tx.Commit(); err != nil {
		return Action{}, fmt.Errorf("store: finish %s: %w", id, err)
	}
	if r.OK {
		s.mu.Lock()
		s.perMAC[a.MAC] = false
		s.mu.Unlock()
	}
	return a, nil
}

// Actions lists actions newest first, of one MAC or ("" ) of all.
func (s *Store) Actions(ctx context.Context, mac string, limit int) ([]Action, error) {
	if limit <= 0 || limit > 10000 {
		limit = 100
	}
	q := `SELECT ` + actionColsA + ` FROM actions a`
	args := []any{}
	if mac != "" {
		q += ` WHERE a.mac = ?`
		args = append(args, mac)
	}
	q += ` ORDER BY a.id DESC LIMIT ?`
	args = append(args, limit)
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("store: list actions: %w", err)
	}
	defer rows.Close()
	out := []Action{}
	for rows.Next() {
		a, err := scanAction(rows)
		if err != nil {
			return nil, fmt.Errorf("store: list actions: %w", err)
		}
		out = append(out, a)
	}
	return out, rows.Err()
}

// ---- backups ----

// Backup is a stored backup with its file name in the backups dir.
type Backup struct {
	contract.Backup
	File         string // base name under the backups dir
	StoredSHA256 string
}

// AddBackup records a completed backup file for an open backup action and
// links it to the action (which stays open until action-done).
func (s *Store) AddBackup(ctx context.Context, actionID string, b Backup) (Backup, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return b, fmt.Errorf("store: add backup: %w", err)
	}
	defer tx.Rollback()
	var state string
	if err := tx.QueryRowContext(ctx, `SELECT state FROM actions WHERE id = ?`, actionID).Scan(&state); err != nil {
		return b, fmt.Errorf("store: add backup for action %s: %w", actionID, err)
	}
	if !isOpen(state) {
		return b, fmt.Errorf("store: action %s is %s: %w", actionID, state, ErrConflict)
	}
	now := s.now()
	res, err := tx.ExecContext(ctx, `INSERT INTO backups (mac, serial, action_id, created, size, stored_size, compressed, sha256, stored_sha256, file)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`, b.MAC, b.Serial, actionID, now.UnixNano(), b.Size, b.StoredSize, b.Compressed, b.SHA256, b.StoredSHA256, b.File)
	if err != nil {
		return b, fmt.Errorf("store: add backup: %w", err)
	}
	id, _ := res.LastInsertId()
	if _, err := tx.ExecContext(ctx, `UPDATE actions SET backup_id = ?, bytes = ?, sha256 = ?, phase = 'uploaded' WHERE id = ?`, id, b.Size, b.SHA256, actionID); err != nil {
		return b, fmt.Errorf("store: link backup: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return b, fmt.Errorf("store: add backup: %w", err)
	}
	b.ID, b.ActionID, b.Created = strconv.FormatInt(id, 10), actionID, now.UTC()
	return b, nil
}

const backupCols = `id, mac, serial, action_id, created, size, stored_size, compressed, sha256, stored_sha256, file`

func scanBackup(r scanner) (Backup, error) {
	var b Backup
	var id, aid, created int64
	err := r.Scan(&id, &b.MAC, &b.Serial, &aid, &created, &b.Size, &b.StoredSize, &b.Compressed, &b.SHA256, &b.StoredSHA256, &b.File)
	b.ID, b.ActionID = strconv.FormatInt(id, 10), strconv.FormatInt(aid, 10)
	b.Created = time.Unix(0, created).UTC()
	b.Name = b.File
	return b, err
}

// Backups lists stored backups, newest first.
func (s *Store) Backups(ctx context.Context) ([]Backup, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+backupCols+` FROM backups ORDER BY id DESC`)
	if err != nil {
		return nil, fmt.Errorf("store: list backups: %w", err)
	}
	defer rows.Close()
	out := []Backup{}
	for rows.Next() {
		b, err := scanBackup(rows)
		if err != nil {
			return nil, fmt.Errorf("store: list backups: %w", err)
		}
		out = append(out, b)
	}
	return out, rows.Err()
}

// BackupByID returns one backup.
func (s *Store) BackupByID(ctx context.Context, id string) (Backup, error) {
	b, err := scanBackup(s.db.QueryRowContext(ctx, `SELECT `+backupCols+` FROM backups WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return b, fmt.Errorf("store: backup %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return b, fmt.Errorf("store: backup %s: %w", id, err)
	}
	return b, nil
}

// DeleteBackup removes a backup's record (the caller removes the file).
func (s *Store) DeleteBackup(ctx context.Context, id string) error {
	res, err := s.db.ExecContext(ctx, `DELETE FROM backups WHERE id = ?`, id)
	if err != nil {
		return fmt.Errorf("store: delete backup %s: %w", id, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("store: backup %s: %w", id, ErrNotFound)
	}
	return nil
}

// ---- image hash cache ----

// ImageHash returns the cached uncompressed size and sha256 of the image
// file at path, valid only for that exact size and mtime.
func (s *Store) ImageHash(ctx context.Context, path string, size int64, mtime time.Time) (rawSize int64, sha string, ok bool) {
	err := s.db.QueryRowContext(ctx, `SELECT raw_size, sha256 FROM image_hashes WHERE path = ? AND size = ? AND mtime = ?`,
		path, size, mtime.UnixNano()).Scan(&rawSize, &sha)
	return rawSize, sha, err == nil
}

// SaveImageHash caches an image's uncompressed size and sha256.
func (s *Store) SaveImageHash(ctx context.Context, path string, size int64, mtime time.Time, rawSize int64, sha string) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO image_hashes (path, size, mtime, raw_size, sha256) VALUES (?, ?, ?, ?, ?)
		ON CONFLICT(path) DO UPDATE SET size = excluded.size, mtime = excluded.mtime, raw_size = excluded.raw_size, sha256 = excluded.sha256`,
		path, size, mtime.UnixNano(), rawSize, sha)
	if err != nil {
		return fmt.Errorf("store: cache hash of %s: %w", path, err)
	}
	return nil
}

// ---- events ----

// PruneEvents deletes events older than before and all but the newest
// keep; it returns how many went (security item 4: nothing grows without
// bound).
func (s *Store) PruneEvents(ctx context.Context, before time.Time, keep int) (int64, error) {
	var n int64
	res, err := s.db.ExecContext(ctx, `DELETE FROM events WHERE time < ?`, before.UnixNano())
	if err != nil {
		return 0, fmt.Errorf("store: prune events: %w", err)
	}
	d, _ := res.RowsAffected()
	n += d
	if keep > 0 {
		res, err = s.db.ExecContext(ctx, `DELETE FROM events WHERE id <= (SELECT id FROM events ORDER BY id DESC LIMIT 1 OFFSET ?)`, keep)
		if err != nil {
			return n, fmt.Errorf("store: prune events: %w", err)
		}
		d, _ = res.RowsAffected()
		n += d
	}
	return n, nil
}

// EventCount is the number of stored events.
func (s *Store) EventCount(ctx context.Context) (int64, error) {
	var n int64
	err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM events`).Scan(&n)
	return n, err
}

// Emit stamps an event with an ID (and the time, if unset), appends it to
// the log and hands it to every subscriber.
func (s *Store) Emit(ctx context.Context, ev contract.Event) (contract.Event, error) {
	if ev.Time.IsZero() {
		ev.Time = s.now().UTC()
	}
	if ev.Level == "" {
		ev.Level = "info"
	}
	var fields string
	if len(ev.Fields) > 0 {
		b, err := json.Marshal(ev.Fields)
		if err != nil {
			return ev, fmt.Errorf("store: encode event fields: %w", err)
		}
		fields = string(b)
	}
	res, err := s.db.ExecContext(ctx, `INSERT INTO events (time, kind, level, mac, serial, message, fields) VALUES (?, ?, ?, ?, ?, ?, ?)`,
		ev.Time.UnixNano(), ev.Kind, ev.Level, ev.MAC, ev.Serial, ev.Message, fields)
	if err != nil {
		return ev, fmt.Errorf("store: append event %s: %w", ev.Kind, err)
	}
	ev.ID, _ = res.LastInsertId()
	if fields != "" {
		// Subscribers see the same JSON types a reader of the log gets.
		ev.Fields = nil
		json.Unmarshal([]byte(fields), &ev.Fields)
	}
	s.subsMu.Lock()
	for id, ch := range s.subs {
		select {
		case ch <- ev:
		default:
			// A subscriber that cannot keep up is cut off; an SSE client
			// reconnects with Last-Event-ID and replays from the log.
			close(ch)
			delete(s.subs, id)
		}
	}
	s.subsMu.Unlock()
	return ev, nil
}

// Subscribe returns a channel of every event emitted from now on, buffered
// to buf. The channel is closed by cancel, by Close, or when the subscriber
// falls more than buf events behind.
func (s *Store) Subscribe(buf int) (<-chan contract.Event, func()) {
	ch := make(chan contract.Event, buf)
	s.subsMu.Lock()
	id := s.nextSub
	s.nextSub++
	s.subs[id] = ch
	s.subsMu.Unlock()
	return ch, func() {
		s.subsMu.Lock()
		if c, ok := s.subs[id]; ok {
			close(c)
			delete(s.subs, id)
		}
		s.subsMu.Unlock()
	}
}

// Events lists logged events with ID > since, oldest first, at most limit.
// A negative since lists the newest limit events.
func (s *Store) Events(ctx context.Context, since int64, limit int) ([]contract.Event, error) {
	if limit <= 0 || limit > 10000 {
		limit = 500
	}
	var rows *sql.Rows
	var err error
	if since < 0 {
		rows, err = s.db.QueryContext(ctx, `SELECT * FROM (SELECT id, time, kind, level, mac, serial, message, fields FROM events ORDER BY id DESC LIMIT ?) ORDER BY id`, limit)
	} else {
		rows, err = s.db.QueryContext(ctx, `SELECT id, time, kind, level, mac, serial, message, fields FROM events WHERE id > ? ORDER BY id LIMIT ?`, since, limit)
	}
	if err != nil {
		return nil, fmt.Errorf("store: list events: %w", err)
	}
	defer rows.Close()
	out := []contract.Event{}
	for rows.Next() {
		var ev contract.Event
		var t int64
		var fields string
		if err := rows.Scan(&ev.ID, &t, &ev.Kind, &ev.Level, &ev.MAC, &ev.Serial, &ev.Message, &fields); err != nil {
			return nil, fmt.Errorf("store: list events: %w", err)
		}
		ev.Time = time.Unix(0, t).UTC()
		if fields != "" {
			json.Unmarshal([]byte(fields), &ev.Fields)
		}
		out = append(out, ev)
	}
	return out, rows.Err()
}

// BackupCount returns the number of stored backups.
func (s *Store) BackupCount(ctx context.Context) (int, error) {
	var n int
	err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM backups`).Scan(&n)
	return n, err
}
