package api

import (
	"errors"
	"net/http"

	"github.com/gin-gonic/gin"

	"github.com/cm4bench/cm4bench/api/store"
	"github.com/cm4bench/cm4bench/api/webhook"
	"github.com/cm4bench/cm4bench/internal/contract"
)

func (s *Server) handleWebhooks(c *gin.Context) error {
	hs, err := s.Store.Webhooks(c.Request.Context())
	if err != nil {
		return err
	}
	writeJSON(c.Writer, http.StatusOK, hs)
	return nil
}

// handleAddWebhook checks the endpoint before saving it and answers with
// its secret (shown this once).
func (s *Server) handleAddWebhook(c *gin.Context) error {
	var req contract.WebhookRequest
	if err := s.decodeJSON(c.Request, &req); err != nil {
		return err
	}
	if err := webhook.CheckRequest(req); err != nil {
		return httpErr(http.StatusBadRequest, "%v", err)
	}
	h, err := s.Store.AddWebhook(c.Request.Context(), req.URL, req.Events, req.Secret)
	if errors.Is(err, store.ErrConflict) {
		return httpErr(http.StatusConflict, "%v", err)
	}
	if err != nil {
		return err
	}
	writeJSON(c.Writer, http.StatusCreated, h)
	return nil
}

func (s *Server) handleDeleteWebhook(c *gin.Context) error {
	err := s.Store.DeleteWebhook(c.Request.Context(), c.Param("id"))
	if errors.Is(err, store.ErrNotFound) {
		return httpErr(http.StatusNotFound, "no webhook %s", c.Param("id"))
	}
	if err != nil {
		return err
	}
	writeJSON(c.Writer, http.StatusOK, map[string]string{"status": "removed", "id": c.Param("id")})
	return nil
}

func (s *Server) handleDeliveries(c *gin.Context) error {
	n, err := queryInt(c, "limit", 50)
	if err != nil {
		return err
	}
	ds, err := s.Store.Deliveries(c.Request.Context(), int(n))
	if err != nil {
		return err
	}
	writeJSON(c.Writer, http.StatusOK, ds)
	return nil
}
