package api

import (
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/cm4bench/cm4bench/api/ledger"
	"github.com/cm4bench/cm4bench/api/store"
	"github.com/cm4bench/cm4bench/internal/contract"
)

// ledgerFilter reads ?since=&until= (RFC 3339 or a duration back from
// now, like 8h), ?recipe=, ?result=, ?serial=, ?limit=.
func ledgerFilter(c *gin.Context) (store.LedgerFilter, error) {
	var f store.LedgerFilter
	when := func(name string) (time.Time, error) {
		v := c.Query(name)
		if v == "" {
			return time.Time{}, nil
		}
		if d, err := time.ParseDuration(v); err == nil && d > 0 {
			return time.Now().Add(-d), nil
		}
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			return t, httpErr(http.StatusBadRequest, "%s=%q: want a time like 2026-12-03T08:00:00Z or a duration back from now like 8h", name, v)
		}
		return t, nil
	}
	var err error
	if f.Since, err = when("since"); err != nil {
		return f, err
	}
	if f.Until, err = when("until"); err != nil {
		return f, err
	}
	f.Recipe, f.Result, f.Serial = c.Query("recipe"), c.Query("result"), c.Query("serial")
	switch f.Result {
	case "", contract.StateDone, contract.StateFailed, contract.StateCancelled:
	default:
		return f, httpErr(http.StatusBadRequest, "result=%q: want done, failed or cancelled", f.Result)
	}
	if l := c.Query("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 0 {
			return f, httpErr(http.StatusBadRequest, "limit=%q: want a number", l)
		}
		f.Limit = n
	}
	return f, nil
}

// handleLedger streams ledger rows as JSON (an array), CSV or JSON lines
// (?format=), oldest first, with flat memory.
func (s *Server) handleLedger(c *gin.Context) error {
	f, err := ledgerFilter(c)
	if err != nil {
		return err
	}
	format := c.DefaultQuery("format", "json")
	ctx := c.Request.Context()
	switch format {
	case "csv", "jsonl":
		ctype := map[string]string{"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson"}[format]
		c.Header("Content-Type", ctype)
		c.Header("Content-Disposition", `attachment; filename="cm4bench-ledger.`+format+`"`)
		c.Status(http.StatusOK)
		w, err := ledger.NewWriter(c.Writer, format)
		if err != nil {
			return err
		}
		n := 0
		err = s.Store.Ledger(ctx, f, func(r contract.LedgerRow) error {
			if err := w.Write(r); err != nil {
				return err
			}
			if n++; n%1000 == 0 {
				w.Flush()
				c.Writer.Flush()
			}
			return nil
		})
		if ferr := w.Flush(); err == nil {
			err = ferr
		}
		if err != nil {
			s.log().Warn("ledger export cut", "err", err, "rows", n)
		}
		return nil // the status is sent; a cut stream ends short
	case "json":
		rows := []contract.LedgerRow{}
		if f.Limit == 0 || f.Limit > 10000 {
			f.Limit = 10000 // a page: the exports stream everything
		}
		if err := s.Store.Ledger(ctx, f, func(r contract.LedgerRow) error { rows = append(rows, r); return nil }); err != nil {
			return err
		}
		writeJSON(c.Writer, http.StatusOK, rows)
		return nil
	}
	return httpErr(http.StatusBadRequest, "format=%q: want json, csv or jsonl", format)
}

func (s *Server) handleLedgerRow(c *gin.Context) error {
	id, err := strconv.ParseInt(c.Param("id"), 10, 64)
	if err != nil {
		return httpErr(http.StatusBadRequest, "ledger row %q: want a number", c.Param("id"))
	}
	r, err := s.Store.LedgerRow(c.Request.Context(), id)
	if errors.Is(err, store.ErrNotFound) {
		return httpErr(http.StatusNotFound, "no ledger row %d", id)
	}
	if err != nil {
		return err
	}
	writeJSON(c.Writer, http.StatusOK, r)
	return nil
}
