package store

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/cm4bench/cm4bench/internal/contract"
)

type nullAction struct {
	id                                      sql.NullInt64
	mac, typ, image, state, phase, err      sql.NullString
	done, total, created, started, finished sql.NullInt64
	rate                                    sql.NullFloat64
	sha, csha, log, token, polledIP         sql.NullString
	bytes, cbytes, backup                   sql.NullInt64
	served                                  sql.NullBool
	recipe, rule, vals, files               sql.NullString
	recipeVersion                           sql.NullInt64
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
	out.Recipe, out.RecipeVersion, out.Rule = a.recipe.String, int(a.recipeVersion.Int64), a.rule.String
	if a.vals.String != "" {
		json.Unmarshal([]byte(a.vals.String), &out.Values)
		for i := range out.Values {
			out.Values[i].State = valueState(out.State, out.Values[i].State)
		}
	}
	if a.files.String != "" {
		json.Unmarshal([]byte(a.files.String), &out.Files)
	}
	return out
}

func scanAction(r scanner) (Action, error) {
	var a nullAction
	err := r.Scan(&a.id, &a.mac, &a.typ, &a.image, &a.state, &a.phase, &a.done, &a.total, &a.rate, &a.err, &a.created, &a.started, &a.finished,
		&a.sha, &a.bytes, &a.csha, &a.cbytes, &a.backup, &a.log, &a.token, &a.polledIP, &a.served,
		&a.recipe, &a.recipeVersion, &a.rule, &a.vals, &a.files)
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
	if typ != contract.ActionDeploy && typ != contract.ActionBackup && typ != contract.ActionIdentify {
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
	res, err := tx.ExecContext(ctx, `INSERT INTO actions (mac, type, image, state, created, token, operator) VALUES (?, ?, ?, ?, ?, ?, ?)`,
		mac, typ, image, contract.StatePending, now, newToken(), operatorFrom(ctx))
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
	s.outboxChanged()
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
	if err := s.releaseValues(ctx, tx, a.ID, false); err != nil {
		return nil, err
	}
	if err := s.appendLedger(ctx, tx, a.ID); err != nil {
		return nil, err
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
	ok, err := s.progress(ctx, id, phase, done, total, rate, nil)
	if err == nil && !ok {
		err = fmt.Errorf("store: action %s is not open: %w", id, ErrConflict)
	}
	return err
}

// ServerProgress records progress the server measured itself (the bytes
// it streamed). It is written after the fact, so it replaces only no phase
// or one of the server's own (serverPhases), never a phase the device has
// reported since: a device that moved on to "verify" stays there. It
// reports whether anything was recorded.
func (s *Store) ServerProgress(ctx context.Context, id, phase string, done, total int64, rate float64, serverPhases ...string) (bool, error) {
	return s.progress(ctx, id, phase, done, total, rate, append([]string{"", phase}, serverPhases...))
}

// progress updates an open action; with over set, only while its current
// phase is one of them. It reports whether the action was updated.
func (s *Store) progress(ctx context.Context, id, phase string, done, total int64, rate float64, over []string) (bool, error) {
	// phases keeps when each phase was first reported (the ledger's
	// durations).
	now := s.now().UnixNano()
	key := `$."` + strings.ReplaceAll(phase, `"`, "") + `"`
	q := `UPDATE actions SET phase = ?, done = ?, total = ?, rate = ?, state = 'running',
		started = CASE WHEN started = 0 THEN ? ELSE started END,
		phases = CASE WHEN json_extract(CASE WHEN phases = '' THEN '{}' ELSE phases END, ?) IS NULL
			THEN json_set(CASE WHEN phases = '' THEN '{}' ELSE phases END, ?, ?) ELSE phases END
		WHERE id = ? AND state IN ('pending', 'running')`
	args := []any{phase, done, total, rate, now, key, key, now, id}
	if over != nil {
		q += ` AND phase IN (?` + strings.Repeat(`, ?`, len(over)-1) + `)`
		for _, p := range over {
			args = append(args, p)
		}
	}
	res, err := s.db.ExecContext(ctx, q, args...)
	if err != nil {
		return false, fmt.Errorf("store: progress of %s: %w", id, err)
	}
	n, _ := res.RowsAffected()
	return n > 0, nil
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
	// Phases are the agent's seconds per phase (nil: not reported).
	Phases *contract.PhaseSeconds
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
		compressed_bytes = CASE WHEN ? != 0 THEN ? ELSE compressed_bytes END,
		done = CASE WHEN ? AND total > 0 THEN total ELSE done END
		WHERE id = ?`, state, r.Error, now, now, r.SHA256, r.SHA256, r.Bytes, r.Bytes,
		r.CompressedSHA256, r.CompressedSHA256, r.CompressedBytes, r.CompressedBytes, r.OK, id)
	if err != nil {
		return Action{}, fmt.Errorf("store: finish %s: %w", id, err)
	}
	if err := s.releaseValues(ctx, tx, id, r.OK); err != nil {
		return Action{}, err
	}
	if r.Phases != nil {
		pj, _ := json.Marshal(r.Phases)
		if _, err := tx.ExecContext(ctx, `UPDATE actions SET agent_phases = ? WHERE id = ?`, string(pj), id); err != nil {
			return Action{}, fmt.Errorf("store: finish %s: %w", id, err)
		}
	}
	if err := s.appendLedger(ctx, tx, id); err != nil {
		return Action{}, err
	}
	if r.OK && contract.EMMCAction(a.Type) { // the board boots its eMMC from now on
		if _, err := tx.ExecContext(ctx, `UPDATE devices SET netboot = 0 WHERE mac = ?`, a.MAC); err != nil {
			return Action{}, fmt.Errorf("store: switch netboot off for %s: %w", a.MAC, err)
		}
	}
	a, err = scanAction(tx.QueryRowContext(ctx, `SELECT `+actionColsA+` FROM actions a WHERE a.id = ?`, id))
	if err != nil {
		return Action{}, fmt.Errorf("store: finish %s: %w", id, err)
	}
	ev := contract.WebhookActionFailed
	if r.OK {
		ev = contract.WebhookActionDone
	}
	pub := a.Action
	pub.Log = nil
	if _, err := s.enqueueTx(ctx, tx, ev, pub); err != nil {
		return Action{}, err
	}
	if err := tx.Commit(); err != nil {
		return Action{}, fmt.Errorf("store: finish %s: %w", id, err)
	}
	s.outboxChanged()
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
