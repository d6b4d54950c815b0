package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/cm4bench/cm4bench/internal/contract"
)

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
