package api

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/cm4bench/cm4bench/api/store"
	"github.com/cm4bench/cm4bench/internal/contract"
)

// DefaultActionLifetime is how long an action's token works: an action not
// finished by then is failed as expired.
const DefaultActionLifetime = 24 * time.Hour

func (s *Server) actionLifetime() time.Duration {
	if s.ActionLifetime <= 0 {
		return DefaultActionLifetime
	}
	return s.ActionLifetime
}

// backupTemp matches the temp file of a backup upload (atomicfile's
// ".<name>.tmp-*", where name holds "-a<action id>-").
var backupTemp = regexp.MustCompile(`^\..*-a([0-9]+)-.*\.tmp-`)

// recoverAfterCrash runs once before the first request: a server that was
// killed leaves temp files of uploads in flight, backup actions "running"
// whose upload can never complete, and stream records of closed actions.
// The temp files are removed (nothing half-written stays), each such
// backup is failed with the reason (its token dies with it), and stale
// records are dropped. Deploys are left running: the board resumes its
// download with a Range request.
func (s *Server) recoverAfterCrash(ctx context.Context) {
	var swept, failed int
	if entries, err := os.ReadDir(s.backupDir()); err == nil {
		for _, e := range entries {
			if !strings.HasPrefix(e.Name(), ".") || !strings.Contains(e.Name(), ".tmp-") {
				continue
			}
			if err := os.Remove(filepath.Join(s.backupDir(), e.Name())); err == nil {
				swept++
			}
			m := backupTemp.FindStringSubmatch(e.Name())
			if m == nil {
				continue
			}
			a, err := s.Store.ActionByID(ctx, m[1])
			if err != nil || a.Type != contract.ActionBackup || a.BackupID != "" ||
				(a.State != contract.StatePending && a.State != contract.StateRunning) {
				continue
			}
			s.failAction(ctx, a, "the server stopped while this backup was being uploaded; nothing was kept: request a new backup")
			failed++
		}
	}
	if s.Images != nil && s.Images.Dir != "" {
		if entries, err := os.ReadDir(s.Images.Dir); err == nil {
			for _, e := range entries {
				if strings.HasPrefix(e.Name(), ".") && strings.Contains(e.Name(), ".tmp-") {
					if os.Remove(filepath.Join(s.Images.Dir, e.Name())) == nil {
						swept++
					}
				}
			}
		}
	}
	if entries, err := os.ReadDir(s.cov.dir); err == nil {
		for _, e := range entries {
			id, ok := strings.CutSuffix(e.Name(), ".cov")
			if !ok {
				continue
			}
			if a, err := s.Store.ActionByID(ctx, id); err != nil || (a.State != contract.StatePending && a.State != contract.StateRunning) {
				s.cov.remove(id)
			}
		}
	}
	if swept > 0 || failed > 0 {
		s.log().Warn("recovered after an unclean stop", "temp_files_removed", swept, "backups_failed", failed)
		s.emit(ctx, contract.Event{Kind: contract.EventServerRecovered, Level: contract.LevelWarn,
			Message: fmt.Sprintf("the server was not stopped cleanly: removed %d unfinished file(s), failed %d interrupted backup(s)", swept, failed),
			Fields:  map[string]any{"temp_files_removed": swept, "backups_failed": failed}})
	}
}

// expire fails an open action older than ActionLifetime; its token stops
// working with it.
func (s *Server) expire(ctx context.Context, a store.Action) error {
	if a.Created.IsZero() || time.Since(a.Created) <= s.actionLifetime() {
		return nil
	}
	s.failAction(ctx, a, fmt.Sprintf("expired: not finished within %s of being requested", s.actionLifetime()))
	return httpErr(http.StatusGone, "action %s expired after %s; its token no longer works", a.ID, s.actionLifetime())
}
