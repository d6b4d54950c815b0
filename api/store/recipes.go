package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strconv"

	"github.com/cm4bench/cm4bench/api/recipe"
	"github.com/cm4bench/cm4bench/internal/contract"
)

// Pool value states.
const (
	ValueFree      = "free"
	ValueAllocated = "allocated"
	ValueUsed      = "used"
	ValueRetired   = "retired"
)

// valueState is what became of a value given to an action in this state;
// policy is the pool's on_failure, recorded with the value.
func valueState(actionState, policy string) string {
	switch actionState {
	case contract.StatePending, contract.StateRunning:
		return ValueAllocated
	case contract.StateDone:
		return ValueUsed
	}
	if policy == recipe.OnFailureRetire {
		return ValueRetired
	}
	return ValueFree
}

// ErrPoolDry is returned when a pool has no value left for a board.
var ErrPoolDry = errors.New("the pool has no value left")

// PutRecipe stores a recipe. The first one of a name is version 1. The
// same content again changes nothing. A changed recipe replaces its latest
// version while no action has used it, and otherwise becomes a new version,
// so what a board got never changes. Its pools are brought in line: new
// list values are added, free values no longer listed removed, a counter
// keeps counting; a pool cannot change kind.
func (s *Store) PutRecipe(ctx context.Context, r recipe.Recipe) (recipe.Recipe, bool, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return r, false, fmt.Errorf("store: put recipe: %w", err)
	}
	defer tx.Rollback()
	latest, err := s.recipeTx(ctx, tx, r.Name, 0)
	switch {
	case errors.Is(err, ErrNotFound):
		r.Version = 1
	case err != nil:
		return r, false, err
	default:
		r.Version = latest.Version
		if reflect.DeepEqual(normal(latest), normal(r)) {
			return latest, false, nil
		}
		var used int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM actions WHERE recipe = ? AND recipe_version = ?`, r.Name, latest.Version).Scan(&used); err != nil {
			return r, false, fmt.Errorf("store: put recipe: %w", err)
		}
		if used > 0 {
			r.Version = latest.Version + 1
		}
	}
	spec, err := json.Marshal(r)
	if err != nil {
		return r, false, err
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO recipes (name, version, spec, created) VALUES (?, ?, ?, ?)
		ON CONFLICT(name, version) DO UPDATE SET spec = excluded.spec, created = excluded.created`, r.Name, r.Version, string(spec), s.now().UnixNano()); err != nil {
		return r, false, fmt.Errorf("store: put recipe: %w", err)
	}
	for _, p := range r.Pools {
		if err := s.syncPool(ctx, tx, r.Name, p); err != nil {
			return r, false, err
		}
	}
	if err := tx.Commit(); err != nil {
		return r, false, fmt.Errorf("store: put recipe: %w", err)
	}
	return r, true, nil
}

func normal(r recipe.Recipe) recipe.Recipe {
	b, _ := json.Marshal(r)
	var out recipe.Recipe
	json.Unmarshal(b, &out)
	return out
}

func (s *Store) syncPool(ctx context.Context, tx *sql.Tx, rname string, p recipe.Pool) error {
	var kind string
	err := tx.QueryRowContext(ctx, `SELECT kind FROM pools WHERE recipe = ? AND name = ?`, rname, p.Name).Scan(&kind)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		if _, err := tx.ExecContext(ctx, `INSERT INTO pools (recipe, name, kind, next) VALUES (?, ?, ?, ?)`, rname, p.Name, p.Kind, p.Start); err != nil {
			return fmt.Errorf("store: pool %s: %w", p.Name, err)
		}
	case err != nil:
		return fmt.Errorf("store: pool %s: %w", p.Name, err)
	case kind != p.Kind:
		return fmt.Errorf("store: pool %q of recipe %s is a %s pool and cannot become a %s pool: give the new pool another name: %w", p.Name, rname, kind, p.Kind, ErrConflict)
	case p.Kind == recipe.PoolCounter:
		// A counter never goes back: a later start moves it on.
		if _, err := tx.ExecContext(ctx, `UPDATE pools SET next = MAX(next, ?) WHERE recipe = ? AND name = ?`, p.Start, rname, p.Name); err != nil {
			return fmt.Errorf("store: pool %s: %w", p.Name, err)
		}
	}
	now := s.now().UnixNano()
	switch p.Kind {
	case recipe.PoolList:
		keep := map[string]bool{}
		for _, v := range p.Values {
			keep[v] = true
		}
		if err := s.dropFree(ctx, tx, rname, p.Name, keep); err != nil {
			return err
		}
		for _, v := range p.Values {
			if _, err := tx.ExecContext(ctx, `INSERT INTO pool_values (recipe, pool, value, seq, changed)
				VALUES (?, ?, ?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM pool_values WHERE recipe = ? AND pool = ?), ?)
				ON CONFLICT DO NOTHING`, rname, p.Name, v, rname, p.Name, now); err != nil {
				return fmt.Errorf("store: pool %s value %s: %w", p.Name, v, err)
			}
		}
	case recipe.PoolFiles:
		keep := map[string]bool{}
		for k := range p.Files {
			keep[k] = true
		}
		if err := s.dropFree(ctx, tx, rname, p.Name, keep); err != nil {
			return err
		}
		for k, data := range p.Files {
			if _, err := tx.ExecContext(ctx, `INSERT INTO pool_values (recipe, pool, value, seq, data, changed)
				VALUES (?, ?, ?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM pool_values WHERE recipe = ? AND pool = ?), ?, ?)
				ON CONFLICT DO UPDATE SET data = excluded.data WHERE state = 'free'`, rname, p.Name, k, rname, p.Name, []byte(data), now); err != nil {
				return fmt.Errorf("store: pool %s file %s: %w", p.Name, k, err)
			}
		}
	}
	return nil
}

func (s *Store) dropFree(ctx context.Context, tx *sql.Tx, rname, pool string, keep map[string]bool) error {
	rows, err := tx.QueryContext(ctx, `SELECT value FROM pool_values WHERE recipe = ? AND pool = ? AND state = 'free'`, rname, pool)
	if err != nil {
		return fmt.Errorf("store: pool %s: %w", pool, err)
	}
	var drop []string
	for rows.Next() {
		var v string
		rows.Scan(&v)
		if !keep[v] {
			drop = append(drop, v)
		}
	}
	rows.Close()
	for _, v := range drop {
		if _, err := tx.ExecContext(ctx, `DELETE FROM pool_values WHERE recipe = ? AND pool = ? AND value = ? AND state = 'free'`, rname, pool, v); err != nil {
			return fmt.Errorf("store: pool %s: %w", pool, err)
		}
	}
	return nil
}

// Recipe returns one version of a recipe (0 = the latest), or ErrNotFound.
func (s *Store) Recipe(ctx context.Context, name string, version int) (recipe.Recipe, error) {
	return s.recipeTx(ctx, s.db, name, version)
}

type querier interface {
	QueryRowContext(ctx context.Context, q string, args ...any) *sql.Row
}

func (s *Store) recipeTx(ctx context.Context, q querier, name string, version int) (recipe.Recipe, error) {
	var spec string
	var err error
	if version > 0 {
		err = q.QueryRowContext(ctx, `SELECT spec FROM recipes WHERE name = ? AND version = ?`, name, version).Scan(&spec)
	} else {
		err = q.QueryRowContext(ctx, `SELECT spec FROM recipes WHERE name = ? ORDER BY version DESC LIMIT 1`, name).Scan(&spec)
	}
	if errors.Is(err, sql.ErrNoRows) {
		return recipe.Recipe{}, fmt.Errorf("store: no recipe %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return recipe.Recipe{}, fmt.Errorf("store: read recipe %s: %w", name, err)
	}
	var r recipe.Recipe
	if err := json.Unmarshal([]byte(spec), &r); err != nil {
		return r, fmt.Errorf("store: recipe %s: %w", name, err)
	}
	return r, nil
}

// Recipes lists the latest version of every recipe, by name.
func (s *Store) Recipes(ctx context.Context) ([]recipe.Recipe, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT r.spec FROM recipes r
		WHERE r.version = (SELECT MAX(version) FROM recipes WHERE name = r.name) ORDER BY r.name`)
	if err != nil {
		return nil, fmt.Errorf("store: list recipes: %w", err)
	}
	defer rows.Close()
	out := []recipe.Recipe{}
	for rows.Next() {
		var spec string
		if err := rows.Scan(&spec); err != nil {
			return nil, err
		}
		var r recipe.Recipe
		if err := json.Unmarshal([]byte(spec), &r); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// PoolCounts reports the pools of a recipe.
func (s *Store) PoolCounts(ctx context.Context, rname string) ([]contract.PoolState, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT name, kind, next FROM pools WHERE recipe = ? ORDER BY name`, rname)
	if err != nil {
		return nil, fmt.Errorf("store: pools: %w", err)
	}
	var out []contract.PoolState
	for rows.Next() {
		pc := contract.PoolState{Recipe: rname, States: map[string]int{}}
		rows.Scan(&pc.Pool, &pc.Kind, &pc.Next)
		if pc.Kind != recipe.PoolCounter {
			pc.Next = 0
		}
		out = append(out, pc)
	}
	rows.Close()
	for i := range out {
		r, err := s.db.QueryContext(ctx, `SELECT state, COUNT(*) FROM pool_values WHERE recipe = ? AND pool = ? GROUP BY state`, rname, out[i].Pool)
		if err != nil {
			return nil, err
		}
		for r.Next() {
			var st string
			var n int
			r.Scan(&st, &n)
			out[i].States[st] = n
		}
		r.Close()
	}
	return out, nil
}

// RecipeAction is a deploy of a recipe: Render renders the files with the
// values the pools hand out in the same transaction.
type RecipeAction struct {
	MAC    string
	Rule   string
	Recipe recipe.Recipe
	Render func(recipe.Values) (*contract.Customise, error)
}

// SetRecipeAction gives a board a deploy of a recipe version, with its
// per-device files rendered and its pool values allocated, in one
// transaction: a render that fails (a template, a dry pool) leaves nothing
// allocated and no action, and no value is ever given to two actions.
func (s *Store) SetRecipeAction(ctx context.Context, ra RecipeAction) (created Action, cancelled *Action, err error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return Action{}, nil, fmt.Errorf("store: recipe action: %w", err)
	}
	defer tx.Rollback()
	cancelled, err = s.cancelOpen(ctx, tx, ra.MAC, "replaced by a new action")
	if err != nil {
		return Action{}, nil, err
	}
	now := s.now().UnixNano()
	res, err := tx.ExecContext(ctx, `INSERT INTO actions (mac, type, image, state, created, token, recipe, recipe_version, rule, operator)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`, ra.MAC, contract.ActionDeploy, ra.Recipe.Image, contract.StatePending, now, newToken(),
		ra.Recipe.Name, ra.Recipe.Version, ra.Rule, operatorFrom(ctx))
	if err != nil {
		return Action{}, nil, fmt.Errorf("store: insert action: %w", err)
	}
	id, _ := res.LastInsertId()
	al := &allocator{s: s, ctx: ctx, tx: tx, recipe: ra.Recipe, mac: ra.MAC, action: id}
	cust, err := ra.Render(al)
	if err != nil {
		return Action{}, nil, err
	}
	cj, _ := json.Marshal(cust)
	var hashes []contract.FileHash
	for _, f := range cust.Files {
		hashes = append(hashes, contract.FileHash{Path: f.Path, SHA256: f.SHA256})
	}
	fj, _ := json.Marshal(hashes)
	vj, _ := json.Marshal(al.got)
	if _, err := tx.ExecContext(ctx, `UPDATE actions SET customise = ?, files = ?, vals = ? WHERE id = ?`, string(cj), string(fj), string(vj), id); err != nil {
		return Action{}, nil, fmt.Errorf("store: record the rendered files: %w", err)
	}
	if _, err := tx.ExecContext(ctx, `UPDATE devices SET last_action = ? WHERE mac = ?`, id, ra.MAC); err != nil {
		return Action{}, nil, fmt.Errorf("store: link action: %w", err)
	}
	created, err = scanAction(tx.QueryRowContext(ctx, `SELECT `+actionColsA+` FROM actions a WHERE a.id = ?`, id))
	if err != nil {
		return Action{}, nil, fmt.Errorf("store: read action: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return Action{}, nil, fmt.Errorf("store: recipe action: %w", err)
	}
	return created, cancelled, nil
}

// Customisation returns what a recipe deploy's agent must write, or nil.
func (s *Store) Customisation(ctx context.Context, id string) (*contract.Customise, error) {
	var cj string
	if err := s.db.QueryRowContext(ctx, `SELECT customise FROM actions WHERE id = ?`, id).Scan(&cj); err != nil {
		return nil, fmt.Errorf("store: customisation of %s: %w", id, err)
	}
	if cj == "" {
		return nil, nil
	}
	var c contract.Customise
	if err := json.Unmarshal([]byte(cj), &c); err != nil {
		return nil, fmt.Errorf("store: customisation of %s: %w", id, err)
	}
	return &c, nil
}

// allocator hands out pool values inside SetRecipeAction's transaction.
type allocator struct {
	s      *Store
	ctx    context.Context
	tx     *sql.Tx
	recipe recipe.Recipe
	mac    string
	action int64
	got    []contract.PoolValue
}

func (a *allocator) policy(pool string) string {
	for _, p := range a.recipe.Pools {
		if p.Name == pool {
			return p.OnFailure
		}
	}
	return ""
}

func (a *allocator) take(pool, value string) error {
	res, err := a.tx.ExecContext(a.ctx, `UPDATE pool_values SET state = 'allocated', mac = ?, action_id = ?, changed = ?
		WHERE recipe = ? AND pool = ? AND value = ? AND state = 'free'`, a.mac, a.action, a.s.now().UnixNano(), a.recipe.Name, pool, value)
	if err != nil {
		return fmt.Errorf("store: pool %s: %w", pool, err)
	}
	if n, _ := res.RowsAffected(); n != 1 {
		return fmt.Errorf("store: pool %s: value %s is taken: %w", pool, value, ErrConflict)
	}
	pol := a.policy(pool)
	if pol == "" {
		pol = recipe.OnFailureReturn
	}
	a.got = append(a.got, contract.PoolValue{Pool: pool, Value: value, State: pol})
	return nil
}

// Next gives the next free value of a counter or list pool.
func (a *allocator) Next(pool string) (string, error) {
	var kind string
	var p recipe.Pool
	for _, q := range a.recipe.Pools {
		if q.Name == pool {
			p = q
		}
	}
	if err := a.tx.QueryRowContext(a.ctx, `SELECT kind FROM pools WHERE recipe = ? AND name = ?`, a.recipe.Name, pool).Scan(&kind); err != nil {
		return "", fmt.Errorf("store: pool %s of recipe %s: %w", pool, a.recipe.Name, err)
	}
	if kind == recipe.PoolCounter {
		// Returned values first, then new numbers (skipping any taken).
		var v string
		err := a.tx.QueryRowContext(a.ctx, `SELECT value FROM pool_values WHERE recipe = ? AND pool = ? AND state = 'free' ORDER BY seq LIMIT 1`, a.recipe.Name, pool).Scan(&v)
		if err == nil {
			return v, a.take(pool, v)
		}
		for range 1000 {
			var n int64
			if err := a.tx.QueryRowContext(a.ctx, `UPDATE pools SET next = next + 1 WHERE recipe = ? AND name = ? RETURNING next - 1`, a.recipe.Name, pool).Scan(&n); err != nil {
				return "", fmt.Errorf("store: counter %s: %w", pool, err)
			}
			v := fmt.Sprintf(p.Format, n)
			res, err := a.tx.ExecContext(a.ctx, `INSERT INTO pool_values (recipe, pool, value, seq, changed) VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`,
				a.recipe.Name, pool, v, n, a.s.now().UnixNano())
			if err != nil {
				return "", fmt.Errorf("store: counter %s: %w", pool, err)
			}
			if k, _ := res.RowsAffected(); k == 1 {
				return v, a.take(pool, v)
			}
		}
		return "", fmt.Errorf("store: counter %s: 1000 numbers in a row are taken", pool)
	}
	var v string
	err := a.tx.QueryRowContext(a.ctx, `SELECT value FROM pool_values WHERE recipe = ? AND pool = ? AND state = 'free' ORDER BY seq LIMIT 1`, a.recipe.Name, pool).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return "", fmt.Errorf("pool %q of recipe %s has no value left: add values and apply the recipe again: %w", pool, a.recipe.Name, ErrPoolDry)
	}
	if err != nil {
		return "", fmt.Errorf("store: pool %s: %w", pool, err)
	}
	return v, a.take(pool, v)
}

// Keyed gives the file of a files pool for key (the board's serial). A
// board provisioned again gets its own file again.
func (a *allocator) Keyed(pool, key string) (string, error) {
	var data []byte
	var state, mac string
	err := a.tx.QueryRowContext(a.ctx, `SELECT data, state, mac FROM pool_values WHERE recipe = ? AND pool = ? AND value = ?`, a.recipe.Name, pool, key).Scan(&data, &state, &mac)
	if errors.Is(err, sql.ErrNoRows) {
		return "", fmt.Errorf("pool %q of recipe %s has no file for serial %s: add it and apply the recipe again: %w", pool, a.recipe.Name, key, ErrPoolDry)
	}
	if err != nil {
		return "", fmt.Errorf("store: pool %s: %w", pool, err)
	}
	if state != ValueFree {
		if mac != a.mac {
			return "", fmt.Errorf("pool %q: the file for serial %s went to %s: %w", pool, key, mac, ErrConflict)
		}
		// The same board again: it keeps its file.
		if _, err := a.tx.ExecContext(a.ctx, `UPDATE pool_values SET state = 'free' WHERE recipe = ? AND pool = ? AND value = ?`, a.recipe.Name, pool, key); err != nil {
			return "", err
		}
	}
	return string(data), a.take(pool, key)
}

// releaseValues settles the values of an action that ended: used when it
// succeeded, else returned to the pool or retired as the pool says.
func (s *Store) releaseValues(ctx context.Context, tx *sql.Tx, id string, ok bool) error {
	var vj string
	if err := tx.QueryRowContext(ctx, `SELECT vals FROM actions WHERE id = ?`, id).Scan(&vj); err != nil || vj == "" {
		return nil
	}
	var vals []contract.PoolValue
	json.Unmarshal([]byte(vj), &vals)
	aid, _ := strconv.ParseInt(id, 10, 64)
	now := s.now().UnixNano()
	for _, v := range vals {
		var q string
		switch {
		case ok:
			q = `UPDATE pool_values SET state = 'used', changed = ? WHERE action_id = ? AND pool = ? AND value = ?`
		case v.State == recipe.OnFailureRetire:
			q = `UPDATE pool_values SET state = 'retired', changed = ? WHERE action_id = ? AND pool = ? AND value = ?`
		default:
			q = `UPDATE pool_values SET state = 'free', mac = '', action_id = 0, changed = ? WHERE action_id = ? AND pool = ? AND value = ?`
		}
		if _, err := tx.ExecContext(ctx, q, now, aid, v.Pool, v.Value); err != nil {
			return fmt.Errorf("store: settle %s of pool %s: %w", v.Value, v.Pool, err)
		}
	}
	return nil
}

// PoolValues lists who got what from a recipe's pools, in allocation order
// (the history the records issue builds on).
func (s *Store) PoolValues(ctx context.Context, rname string) ([]contract.PoolRecord, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT pool, value, state, mac, action_id, changed FROM pool_values
		WHERE recipe = ? AND state != 'free' ORDER BY pool, seq`, rname)
	if err != nil {
		return nil, fmt.Errorf("store: pool values: %w", err)
	}
	defer rows.Close()
	var out []contract.PoolRecord
	for rows.Next() {
		var r contract.PoolRecord
		var aid, changed int64
		if err := rows.Scan(&r.Pool, &r.Value, &r.State, &r.MAC, &aid, &changed); err != nil {
			return nil, err
		}
		r.ActionID = strconv.FormatInt(aid, 10)
		out = append(out, r)
	}
	return out, rows.Err()
}
