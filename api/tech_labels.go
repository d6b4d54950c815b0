package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/cm4bench/cm4bench/api/label"
	"github.com/cm4bench/cm4bench/api/store"
	"github.com/cm4bench/cm4bench/internal/contract"
)

// jobLabel is a finished job's label: its recipe's spec, rendered over its
// ledger row.
func (s *Server) jobLabel(ctx context.Context, actionID string) (*label.Spec, contract.LedgerRow, label.Rendered, error) {
	row, err := s.Store.LedgerRowByAction(ctx, actionID)
	if errors.Is(err, store.ErrNotFound) {
		return nil, row, label.Rendered{}, httpErr(http.StatusNotFound, "job %s has no ledger row: it has not ended, or is not a deploy", actionID)
	}
	if err != nil {
		return nil, row, label.Rendered{}, err
	}
	if row.Recipe == "" {
		return nil, row, label.Rendered{}, httpErr(http.StatusNotFound, "job %s deployed a plain image: labels come with a recipe", actionID)
	}
	r, err := s.Store.Recipe(ctx, row.Recipe, row.RecipeVersion)
	if err != nil {
		return nil, row, label.Rendered{}, err
	}
	if r.Label == nil {
		return nil, row, label.Rendered{}, httpErr(http.StatusNotFound, "recipe %s v%d has no label", r.Name, r.Version)
	}
	rd, err := r.Label.Render(row)
	if err != nil {
		return nil, row, rd, httpErr(http.StatusUnprocessableEntity, "the label of recipe %s does not render for job %s: %v", r.Name, actionID, err)
	}
	return r.Label, row, rd, nil
}

func (s *Server) handleLabelFile(c *gin.Context) error {
	spec, row, rd, err := s.jobLabel(c.Request.Context(), c.Param("id"))
	if err != nil {
		return err
	}
	var b []byte
	var ctype string
	switch c.Param("format") {
	case "label.png":
		ctype = "image/png"
		b, err = label.PNG(spec, rd, 203) // a label printer's 8 dots/mm
	case "label.pdf":
		ctype = "application/pdf"
		b, err = label.PDF(spec, rd)
	default:
		return httpErr(http.StatusNotFound, "want label.pdf or label.png")
	}
	if err != nil {
		return err
	}
	c.Header("Content-Disposition", fmt.Sprintf(`inline; filename="label-%s.%s"`, row.Serial, map[string]string{"image/png": "png", "application/pdf": "pdf"}[ctype]))
	c.Data(http.StatusOK, ctype, b)
	return nil
}

// printLabel renders and prints a job's label; a failure is an event and
// an error, never a change to the board's state.
func (s *Server) printLabel(ctx context.Context, actionID string) error {
	spec, row, rd, err := s.jobLabel(ctx, actionID)
	if err != nil {
		return err
	}
	if spec.Printer == "" {
		return httpErr(http.StatusUnprocessableEntity, "recipe %s's label names no printer (printer: cups:QUEUE or tcp:HOST:9100)", row.Recipe)
	}
	pdf, err := label.PDF(spec, rd)
	if err == nil {
		err = label.Print(ctx, spec.Printer, "cm4bench label "+row.Serial, spec.WidthMM, spec.HeightMM, pdf)
	}
	if err != nil {
		s.emit(ctx, contract.Event{Kind: contract.EventLabelPrinted, Level: contract.LevelWarn, MAC: row.MAC, Serial: row.Serial,
			Message: "label not printed (the board is provisioned): " + err.Error(), Fields: map[string]any{"action_id": actionID, "printer": spec.Printer}})
		return &HTTPError{Code: http.StatusBadGateway, Msg: "the label did not print; the board itself is provisioned: " + err.Error(), Err: err}
	}
	s.emit(ctx, contract.Event{Kind: contract.EventLabelPrinted, MAC: row.MAC, Serial: row.Serial,
		Message: "label printed on " + spec.Printer, Fields: map[string]any{"action_id": actionID, "printer": spec.Printer}})
	return nil
}

func (s *Server) handlePrintLabel(c *gin.Context) error {
	if err := s.printLabel(c.Request.Context(), c.Param("id")); err != nil {
		return err
	}
	writeJSON(c.Writer, http.StatusOK, map[string]string{"status": "printed", "action_id": c.Param("id")})
	return nil
}

// autoPrint prints the label of a recipe deploy that just succeeded when
// its recipe says print: auto, in the background: the board's result is
// already recorded, and a printer never holds it up.
func (s *Server) autoPrint(a contract.Action) {
	if a.Recipe == "" || a.State != contract.StateDone {
		return
	}
	r, err := s.Store.Recipe(context.Background(), a.Recipe, a.RecipeVersion)
	if err != nil || r.Label == nil || r.Label.Print != "auto" {
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		s.printLabel(ctx, a.ID)
	}()
}
