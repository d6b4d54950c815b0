package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/cm4bench/cm4bench/api/recipe"
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

// Armed reports the bench-wide switch that lets auto rules start deploys.
func (s *Store) Armed(ctx context.Context) (bool, error) {
	v, err := s.setting(ctx, "armed")
	if err != nil {
		return false, fmt.Errorf("store: read armed: %w", err)
	}
	return v == "on", nil
}

// SetArmed sets the bench-wide armed switch.
func (s *Store) SetArmed(ctx context.Context, on bool) error {
	v := "off"
	if on {
		v = "on"
	}
	if err := s.putSetting(ctx, "armed", v); err != nil {
		return fmt.Errorf("store: set armed: %w", err)
	}
	return nil
}

// Rules returns the bench's ordered rule list.
func (s *Store) Rules(ctx context.Context) (recipe.RuleSet, error) {
	v, err := s.setting(ctx, "rules")
	if err != nil || v == "" {
		return recipe.RuleSet{}, err
	}
	var rs recipe.RuleSet
	if err := json.Unmarshal([]byte(v), &rs); err != nil {
		return rs, fmt.Errorf("store: rules: %w", err)
	}
	return rs, nil
}

// SetRules replaces the rule list.
func (s *Store) SetRules(ctx context.Context, rs recipe.RuleSet) error {
	b, err := json.Marshal(rs)
	if err != nil {
		return err
	}
	if err := s.putSetting(ctx, "rules", string(b)); err != nil {
		return fmt.Errorf("store: set rules: %w", err)
	}
	return nil
}
