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
	"database/sql"
	"errors"
	"fmt"
	"os"
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
	// Station names this bench in the ledger (serve --station); set it
	// before use.
	Station string
	// OnOutbox, if set, is called after a transaction queued webhook
	// deliveries (the deliverer wakes up).
	OnOutbox func()

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
	// 3: recipes (versioned), their pools and the values handed out, and
	// which recipe, rule and values a deploy had.
	`CREATE TABLE recipes (
		name TEXT NOT NULL,
		version INTEGER NOT NULL,
		spec TEXT NOT NULL,
		created INTEGER NOT NULL,
		PRIMARY KEY (name, version)
	);
	CREATE TABLE pools (
		recipe TEXT NOT NULL,
		name TEXT NOT NULL,
		kind TEXT NOT NULL,
		next INTEGER NOT NULL DEFAULT 0,
		PRIMARY KEY (recipe, name)
	);
	CREATE TABLE pool_values (
		recipe TEXT NOT NULL,
		pool TEXT NOT NULL,
		value TEXT NOT NULL,
		seq INTEGER NOT NULL,
		data BLOB,
		state TEXT NOT NULL DEFAULT 'free',
		mac TEXT NOT NULL DEFAULT '',
		action_id INTEGER NOT NULL DEFAULT 0,
		changed INTEGER NOT NULL DEFAULT 0,
		PRIMARY KEY (recipe, pool, value)
	);
	CREATE INDEX pool_values_free ON pool_values (recipe, pool, state, seq);
	CREATE INDEX pool_values_action ON pool_values (action_id);
	ALTER TABLE actions ADD COLUMN recipe TEXT NOT NULL DEFAULT '';
	ALTER TABLE actions ADD COLUMN recipe_version INTEGER NOT NULL DEFAULT 0;
	ALTER TABLE actions ADD COLUMN rule TEXT NOT NULL DEFAULT '';
	ALTER TABLE actions ADD COLUMN vals TEXT NOT NULL DEFAULT '';
	ALTER TABLE actions ADD COLUMN files TEXT NOT NULL DEFAULT '';
	ALTER TABLE actions ADD COLUMN customise TEXT NOT NULL DEFAULT '';`,
	// 4: the ledger (one row per provisioning, never rewritten), who started
	// each job and when each phase began.
	`ALTER TABLE actions ADD COLUMN operator TEXT NOT NULL DEFAULT '';
	ALTER TABLE actions ADD COLUMN phases TEXT NOT NULL DEFAULT '';
	ALTER TABLE actions ADD COLUMN agent_phases TEXT NOT NULL DEFAULT '';
	CREATE TABLE ledger (
		id INTEGER PRIMARY KEY AUTOINCREMENT,
		time INTEGER NOT NULL,
		action_id INTEGER NOT NULL UNIQUE,
		mac TEXT NOT NULL,
		serial TEXT NOT NULL,
		recipe TEXT NOT NULL,
		result TEXT NOT NULL,
		row TEXT NOT NULL
	);
	CREATE INDEX ledger_time ON ledger (time);
	CREATE INDEX ledger_serial ON ledger (serial);
	CREATE INDEX ledger_recipe ON ledger (recipe, time);`,
	// 5: webhooks and their persistent outbox.
	`CREATE TABLE webhooks (
		id INTEGER PRIMARY KEY AUTOINCREMENT,
		url TEXT NOT NULL,
		secret TEXT NOT NULL,
		events TEXT NOT NULL,
		created INTEGER NOT NULL
	);
	CREATE TABLE outbox (
		id INTEGER PRIMARY KEY AUTOINCREMENT,
		webhook_id INTEGER NOT NULL,
		event TEXT NOT NULL,
		body BLOB NOT NULL,
		state TEXT NOT NULL DEFAULT 'pending',
		attempts INTEGER NOT NULL DEFAULT 0,
		next_at INTEGER NOT NULL,
		last_error TEXT NOT NULL DEFAULT '',
		created INTEGER NOT NULL,
		delivered INTEGER NOT NULL DEFAULT 0
	);
	CREATE INDEX outbox_due ON outbox (state, next_at);`,
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
