package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"time"

	"github.com/cm4bench/cm4bench/internal/contract"
)

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

// maxEventPage is the most events one Events call returns.
const maxEventPage = 10000

// Events lists logged events with ID > since, oldest first, at most limit
// (500 when limit is not positive, maxEventPage at most). A negative since
// lists the newest limit events.
func (s *Store) Events(ctx context.Context, since int64, limit int) ([]contract.Event, error) {
	switch {
	case limit <= 0:
		limit = 500
	case limit > maxEventPage:
		limit = maxEventPage // more than a page asks for the whole page, not the default
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
