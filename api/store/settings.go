package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
)

// setting reads one bench setting; a missing key is "".
func (s *Store) setting(ctx context.Context, key string) (string, error) {
	var v string
	err := s.db.QueryRowContext(ctx, `SELECT value FROM settings WHERE key = ?`, key).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	return v, err
}

func (s *Store) putSetting(ctx context.Context, key, value string) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value`, key, value)
	return err
}

// DefaultImage is the image the technician chose as the bench default
// ("" = none chosen: the server's --image).
func (s *Store) DefaultImage(ctx context.Context) (string, error) {
	v, err := s.setting(ctx, "default_image")
	if err != nil {
		return "", fmt.Errorf("store: read default image: %w", err)
	}
	return v, nil
}

// SetDefaultImage records the bench default image ("" = back to --image).
func (s *Store) SetDefaultImage(ctx context.Context, name string) error {
	if err := s.putSetting(ctx, "default_image", name); err != nil {
		return fmt.Errorf("store: set default image: %w", err)
	}
	return nil
}
