package store

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/cm4bench/cm4bench/internal/contract"
)

// Outbox bounds.
const (
	MaxWebhooks        = 16
	outboxKeepDone     = 7 * 24 * time.Hour
	outboxMaxRows      = 200000
	DeliveryMaxAttempt = 25 // about a day of backoff, then "failed"
)

// AddWebhook stores an endpoint. An empty secret gets a random one.
func (s *Store) AddWebhook(ctx context.Context, url string, events []string, secret string) (contract.Webhook, error) {
	if secret == "" {
		var b [24]byte
		rand.Read(b[:])
		secret = hex.EncodeToString(b[:])
	}
	var n int
	if err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM webhooks`).Scan(&n); err != nil {
		return contract.Webhook{}, fmt.Errorf("store: webhooks: %w", err)
	}
	if n >= MaxWebhooks {
		return contract.Webhook{}, fmt.Errorf("store: at most %d webhooks: %w", MaxWebhooks, ErrConflict)
	}
	ev, _ := json.Marshal(events)
	now := s.now()
	res, err := s.db.ExecContext(ctx, `INSERT INTO webhooks (url, secret, events, created) VALUES (?, ?, ?, ?)`, url, secret, string(ev), now.UnixNano())
	if err != nil {
		return contract.Webhook{}, fmt.Errorf("store: add webhook: %w", err)
	}
	id, _ := res.LastInsertId()
	return contract.Webhook{ID: strconv.FormatInt(id, 10), URL: url, Events: events, Secret: secret, Created: now.UTC()}, nil
}

// Webhooks lists the endpoints (without their secrets).
func (s *Store) Webhooks(ctx context.Context) ([]contract.Webhook, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id, url, events, created FROM webhooks ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("store: webhooks: %w", err)
	}
	defer rows.Close()
	out := []contract.Webhook{}
	for rows.Next() {
		var w contract.Webhook
		var id, created int64
		var ev string
		if err := rows.Scan(&id, &w.URL, &ev, &created); err != nil {
			return nil, err
		}
		json.Unmarshal([]byte(ev), &w.Events)
		w.ID, w.Created = strconv.FormatInt(id, 10), time.Unix(0, created).UTC()
		out = append(out, w)
	}
	return out, rows.Err()
}

// DeleteWebhook removes an endpoint and its undelivered deliveries.
func (s *Store) DeleteWebhook(ctx context.Context, id string) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	res, err := tx.ExecContext(ctx, `DELETE FROM webhooks WHERE id = ?`, id)
	if err != nil {
		return fmt.Errorf("store: delete webhook: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("store: webhook %s: %w", id, ErrNotFound)
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM outbox WHERE webhook_id = ? AND state = 'pending'`, id); err != nil {
		return fmt.Errorf("store: delete webhook: %w", err)
	}
	return tx.Commit()
}

// enqueueTx queues one delivery of event per subscribed webhook, in the
// caller's transaction: the delivery exists exactly when the change that
// caused it was committed (a transactional outbox).
func (s *Store) enqueueTx(ctx context.Context, tx *sql.Tx, event string, data any) (int, error) {
	rows, err := tx.QueryContext(ctx, `SELECT id, events FROM webhooks`)
	if err != nil {
		return 0, fmt.Errorf("store: outbox: %w", err)
	}
	var ids []int64
	for rows.Next() {
		var id int64
		var ev string
		rows.Scan(&id, &ev)
		var events []string
		json.Unmarshal([]byte(ev), &events)
		if slices.Contains(events, event) {
			ids = append(ids, id)
		}
	}
	rows.Close()
	if len(ids) == 0 {
		return 0, nil
	}
	raw, err := json.Marshal(data)
	if err != nil {
		return 0, err
	}
	now := s.now()
	for _, wid := range ids {
		res, err := tx.ExecContext(ctx, `INSERT INTO outbox (webhook_id, event, body, next_at, created) VALUES (?, ?, '', ?, ?)`, wid, event, now.UnixNano(), now.UnixNano())
		if err != nil {
			return 0, fmt.Errorf("store: outbox: %w", err)
		}
		id, _ := res.LastInsertId()
		body, _ := json.Marshal(contract.WebhookPayload{Delivery: strconv.FormatInt(id, 10), Event: event, Time: now.UTC(), Data: raw})
		if _, err := tx.ExecContext(ctx, `UPDATE outbox SET body = ? WHERE id = ?`, body, id); err != nil {
			return 0, fmt.Errorf("store: outbox: %w", err)
		}
	}
	return len(ids), nil
}

// Enqueue queues event for every subscribed webhook (outside another
// change's transaction).
func (s *Store) Enqueue(ctx context.Context, event string, data any) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	n, err := s.enqueueTx(ctx, tx, event, data)
	if err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	if n > 0 {
		s.outboxChanged()
	}
	return nil
}

func (s *Store) outboxChanged() {
	if s.OnOutbox != nil {
		s.OnOutbox()
	}
}

// OutboxItem is a due delivery with what it takes to send it.
type OutboxItem struct {
	ID, WebhookID, URL, Secret, Event string
	Body                              []byte
	Attempts                          int
}

// DueDeliveries returns up to limit pending deliveries whose time has
// come, oldest first.
func (s *Store) DueDeliveries(ctx context.Context, limit int) ([]OutboxItem, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT o.id, o.webhook_id, w.url, w.secret, o.event, o.body, o.attempts FROM outbox o
		JOIN webhooks w ON w.id = o.webhook_id WHERE o.state = 'pending' AND o.next_at <= ? ORDER BY o.id LIMIT ?`, s.now().UnixNano(), limit)
	if err != nil {
		return nil, fmt.Errorf("store: due deliveries: %w", err)
	}
	defer rows.Close()
	var out []OutboxItem
	for rows.Next() {
		var it OutboxItem
		var id, wid int64
		if err := rows.Scan(&id, &wid, &it.URL, &it.Secret, &it.Event, &it.Body, &it.Attempts); err != nil {
			return nil, err
		}
		it.ID, it.WebhookID = strconv.FormatInt(id, 10), strconv.FormatInt(wid, 10)
		out = append(out, it)
	}
	return out, rows.Err()
}

// NextDelivery is when the next pending delivery is due (zero: none).
func (s *Store) NextDelivery(ctx context.Context) (time.Time, error) {
	var n sql.NullInt64
	if err := s.db.QueryRowContext(ctx, `SELECT MIN(next_at) FROM outbox WHERE state = 'pending'`).Scan(&n); err != nil {
		return time.Time{}, err
	}
	if !n.Valid {
		return time.Time{}, nil
	}
	return time.Unix(0, n.Int64), nil
}

// MarkDelivered records a 2xx answer.
func (s *Store) MarkDelivered(ctx context.Context, id string) error {
	_, err := s.db.ExecContext(ctx, `UPDATE outbox SET state = 'delivered', attempts = attempts + 1, delivered = ?, last_error = '' WHERE id = ?`, s.now().UnixNano(), id)
	return err
}

// MarkRetry records a failed attempt: tried again at next, or given up
// ("failed") after DeliveryMaxAttempt attempts.
func (s *Store) MarkRetry(ctx context.Context, id, why string, next time.Time) error {
	if len(why) > 512 {
		why = why[:512]
	}
	_, err := s.db.ExecContext(ctx, `UPDATE outbox SET attempts = attempts + 1, last_error = ?, next_at = ?,
		state = CASE WHEN attempts + 1 >= ? THEN 'failed' ELSE 'pending' END WHERE id = ?`, why, next.UnixNano(), DeliveryMaxAttempt, id)
	return err
}

// Deliveries lists the newest deliveries (the dashboard's delivery log).
func (s *Store) Deliveries(ctx context.Context, limit int) ([]contract.Delivery, error) {
	if limit <= 0 || limit > 1000 {
		limit = 50
	}
	rows, err := s.db.QueryContext(ctx, `SELECT o.id, o.webhook_id, COALESCE(w.url, ''), o.event, o.state, o.attempts, o.last_error, o.created, o.next_at, o.delivered
		FROM outbox o LEFT JOIN webhooks w ON w.id = o.webhook_id ORDER BY o.id DESC LIMIT ?`, limit)
	if err != nil {
		return nil, fmt.Errorf("store: deliveries: %w", err)
	}
	defer rows.Close()
	out := []contract.Delivery{}
	for rows.Next() {
		var d contract.Delivery
		var id, wid, created, next, delivered int64
		if err := rows.Scan(&id, &wid, &d.URL, &d.Event, &d.State, &d.Attempts, &d.LastError, &created, &next, &delivered); err != nil {
			return nil, err
		}
		d.ID, d.WebhookID, d.Created = strconv.FormatInt(id, 10), strconv.FormatInt(wid, 10), time.Unix(0, created).UTC()
		if d.State == "pending" {
			t := time.Unix(0, next).UTC()
			d.NextAt = &t
		}
		if delivered > 0 {
			t := time.Unix(0, delivered).UTC()
			d.Delivered = &t
		}
		out = append(out, d)
	}
	return out, rows.Err()
}

// PruneOutbox drops delivered rows older than a week and, past the bound,
// the oldest finished ones: nothing grows without bound.
func (s *Store) PruneOutbox(ctx context.Context) error {
	if _, err := s.db.ExecContext(ctx, `DELETE FROM outbox WHERE state != 'pending' AND created < ?`, s.now().Add(-outboxKeepDone).UnixNano()); err != nil {
		return err
	}
	_, err := s.db.ExecContext(ctx, `DELETE FROM outbox WHERE state != 'pending' AND id <= (SELECT MAX(id) FROM outbox) - ?`, outboxMaxRows)
	return err
}
