package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/cm4bench/cm4bench/internal/contract"
)

type operatorKey struct{}

// WithOperator marks ctx with who starts the jobs created under it (a
// dashboard session, the admin token, a zero-click rule): the ledger
// records it.
func WithOperator(ctx context.Context, who string) context.Context {
	return context.WithValue(ctx, operatorKey{}, who)
}

func operatorFrom(ctx context.Context) string {
	if s, ok := ctx.Value(operatorKey{}).(string); ok && s != "" {
		return s
	}
	return "unknown"
}

// appendLedger writes the ledger row of a deploy that just ended, in the
// transaction that ended it: a row exists exactly when the job ended.
func (s *Store) appendLedger(ctx context.Context, tx *sql.Tx, id string) error {
	a, err := scanAction(tx.QueryRowContext(ctx, `SELECT `+actionColsA+` FROM actions a WHERE a.id = ?`, id))
	if err != nil {
		return fmt.Errorf("store: ledger: read action %s: %w", id, err)
	}
	if a.Type != contract.ActionDeploy {
		return nil
	}
	var op, phasesJSON, agentJSON, facts, ip string
	if err := tx.QueryRowContext(ctx, `SELECT a.operator, a.phases, a.agent_phases, COALESCE(d.facts, ''), COALESCE(d.ip, '') FROM actions a
		LEFT JOIN devices d ON d.mac = a.mac WHERE a.id = ?`, id).Scan(&op, &phasesJSON, &agentJSON, &facts, &ip); err != nil {
		return fmt.Errorf("store: ledger: %w", err)
	}
	row := contract.LedgerRow{Time: s.now().UTC(), Station: s.Station, Slot: a.PolledIP, Operator: op, MAC: a.MAC,
		ActionID: a.ID, Recipe: a.Recipe, RecipeVersion: a.RecipeVersion, Rule: a.Rule, Image: a.Image, ImageSHA256: a.SHA256,
		Values: a.Values, Files: a.Files, WireBytes: a.CompressedBytes, WrittenBytes: a.Bytes, Result: a.State, Error: a.Error}
	if row.Slot == "" {
		row.Slot = ip
	}
	if row.Station == "" {
		row.Station, _ = os.Hostname()
	}
	// The image's sha256: pinned by the recipe, else what a successful
	// deploy wrote (the server checked it against the image); a failed
	// plain deploy's reported hash is not the image's.
	row.ImageSHA256 = ""
	if a.Recipe != "" {
		if r, err := s.recipeTx(ctx, tx, a.Recipe, a.RecipeVersion); err == nil {
			row.ImageSHA256 = r.SHA256
		}
	} else if a.State == contract.StateDone {
		row.ImageSHA256 = a.SHA256
	}
	if a.Finished != nil {
		row.Time = a.Finished.UTC()
	}
	if row.WireBytes == 0 {
		row.WireBytes = row.WrittenBytes // a raw image goes over the wire as is
	}
	var f contract.Facts
	if facts != "" && json.Unmarshal([]byte(facts), &f) == nil {
		row.Serial, row.Model, row.Revision, row.Bootloader = f.Serial, f.Model, f.Revision, f.Bootloader
		row.EMMCBytes, row.EMMCCID, row.EMMCCSD, row.MACs = f.EMMCBytes, f.EMMCCID, f.EMMCCSD, f.MACs
	}
	if len(row.MACs) == 0 {
		row.MACs = []string{a.MAC}
	}
	if row.Values == nil {
		row.Values = []contract.PoolValue{}
	}
	if row.Files == nil {
		row.Files = []contract.FileHash{}
	}
	row.Started = a.Created.UTC()
	if a.Started != nil {
		row.Started = a.Started.UTC()
	}
	row.Seconds = s.phaseSeconds(ctx, tx, a, phasesJSON, row.Time)
	// The agent's own clock is exact for its phases; progress reports
	// (about once a second) miss the short ones.
	var ag contract.PhaseSeconds
	if agentJSON != "" && json.Unmarshal([]byte(agentJSON), &ag) == nil {
		if ag.Write > 0 {
			row.Seconds.Write = ag.Write
		}
		if ag.Verify > 0 {
			row.Seconds.Verify = ag.Verify
		}
		if ag.Customise > 0 {
			row.Seconds.Customise = ag.Customise
		}
	}
	b, err := json.Marshal(row)
	if err != nil {
		return err
	}
	res, err := tx.ExecContext(ctx, `INSERT INTO ledger (time, action_id, mac, serial, recipe, result, row) VALUES (?, ?, ?, ?, ?, ?, ?)`,
		row.Time.UnixNano(), a.ID, a.MAC, row.Serial, a.Recipe, row.Result, string(b))
	if err != nil {
		return fmt.Errorf("store: ledger: %w", err)
	}
	row.ID, _ = res.LastInsertId()
	_, err = s.enqueueTx(ctx, tx, contract.WebhookLedgerRow, row)
	return err
}

// phaseSeconds works out the durations: the netboot from the board's first
// DHCP packet before its last register, the rest from when the job was
// picked up and each phase the agent reported first began.
func (s *Store) phaseSeconds(ctx context.Context, tx *sql.Tx, a Action, phasesJSON string, end time.Time) contract.PhaseSeconds {
	var ps contract.PhaseSeconds
	phases := map[string]int64{}
	if phasesJSON != "" {
		json.Unmarshal([]byte(phasesJSON), &phases)
	}
	at := func(p string) time.Time {
		if n, ok := phases[p]; ok {
			return time.Unix(0, n)
		}
		return time.Time{}
	}
	sec := func(from, to time.Time) float64 {
		if from.IsZero() || to.IsZero() || to.Before(from) {
			return 0
		}
		return to.Sub(from).Seconds()
	}
	picked := a.Created
	if a.Started != nil {
		picked = *a.Started
	}
	var reg, dhcp int64
	tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(time), 0) FROM events WHERE mac = ? AND kind = ? AND time <= ?`,
		a.MAC, contract.EventDeviceRegister, picked.UnixNano()).Scan(&reg)
	if reg > 0 {
		tx.QueryRowContext(ctx, `SELECT COALESCE(MIN(time), 0) FROM events WHERE mac = ? AND kind LIKE 'dhcp.%' AND time BETWEEN ? AND ?`,
			a.MAC, reg-int64(10*time.Minute), reg).Scan(&dhcp)
	}
	regT, dhcpT := time.Unix(0, reg), time.Unix(0, dhcp)
	if reg > 0 {
		// A job queued before the board registered waits from the register.
		ps.Register = sec(maxTime(regT, a.Created), picked)
	}
	if dhcp > 0 {
		ps.Netboot = sec(dhcpT, regT)
	}
	verify, customise := at("verify"), at("customise")
	writeEnd := firstNonZero(verify, customise, end)
	ps.Write = sec(picked, writeEnd)
	if !verify.IsZero() {
		ps.Verify = sec(verify, firstNonZero(customise, end))
	}
	if !customise.IsZero() {
		ps.Customise = sec(customise, end)
	}
	start := picked
	if dhcp > 0 {
		start = dhcpT
	} else if reg > 0 {
		start = regT
	}
	ps.Total = sec(start, end)
	return ps
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func firstNonZero(ts ...time.Time) time.Time {
	for _, t := range ts {
		if !t.IsZero() {
			return t
		}
	}
	return time.Time{}
}

// LedgerFilter selects ledger rows; zero fields select everything.
type LedgerFilter struct {
	Since, Until time.Time
	Recipe       string
	Result       string
	Serial       string
	Limit        int // 0 = no limit
}

// Ledger calls fn for each matching row, oldest first, streaming from the
// database (memory stays flat whatever the number of rows). fn's error
// stops the walk and is returned.
func (s *Store) Ledger(ctx context.Context, f LedgerFilter, fn func(contract.LedgerRow) error) error {
	q := `SELECT id, row FROM ledger WHERE 1 = 1`
	var args []any
	if !f.Since.IsZero() {
		q += ` AND time >= ?`
		args = append(args, f.Since.UnixNano())
	}
	if !f.Until.IsZero() {
		q += ` AND time < ?`
		args = append(args, f.Until.UnixNano())
	}
	if f.Recipe != "" {
		q += ` AND recipe = ?`
		args = append(args, f.Recipe)
	}
	if f.Result != "" {
		q += ` AND result = ?`
		args = append(args, f.Result)
	}
	if f.Serial != "" {
		q += ` AND serial = ?`
		args = append(args, strings.ToLower(f.Serial))
	}
	q += ` ORDER BY id`
	if f.Limit > 0 {
		q += ` LIMIT ` + strconv.Itoa(f.Limit)
	}
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return fmt.Errorf("store: ledger: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		r, err := scanLedgerRow(rows)
		if err != nil {
			return err
		}
		if err := fn(r); err != nil {
			return err
		}
	}
	return rows.Err()
}

// scanLedgerRow decodes an (id, row) result.
func scanLedgerRow(sc scanner) (contract.LedgerRow, error) {
	var id int64
	var raw string
	if err := sc.Scan(&id, &raw); err != nil {
		return contract.LedgerRow{}, err
	}
	var r contract.LedgerRow
	if err := json.Unmarshal([]byte(raw), &r); err != nil {
		return r, fmt.Errorf("store: ledger row %d: %w", id, err)
	}
	r.ID = id
	return r, nil
}

func (s *Store) ledgerRowWhere(ctx context.Context, where string, arg any, what string) (contract.LedgerRow, error) {
	r, err := scanLedgerRow(s.db.QueryRowContext(ctx, `SELECT id, row FROM ledger WHERE `+where+` = ?`, arg))
	if errors.Is(err, sql.ErrNoRows) {
		return r, fmt.Errorf("store: no ledger row for %s: %w", what, ErrNotFound)
	}
	if err != nil {
		return r, fmt.Errorf("store: ledger row for %s: %w", what, err)
	}
	return r, nil
}

// LedgerRow returns one row by id, or ErrNotFound.
func (s *Store) LedgerRow(ctx context.Context, id int64) (contract.LedgerRow, error) {
	return s.ledgerRowWhere(ctx, "id", id, fmt.Sprintf("id %d", id))
}

// LedgerRowByAction returns the ledger row of a job, or ErrNotFound.
func (s *Store) LedgerRowByAction(ctx context.Context, actionID string) (contract.LedgerRow, error) {
	return s.ledgerRowWhere(ctx, "action_id", actionID, "action "+actionID)
}
