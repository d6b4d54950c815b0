package api

import (
	"net/http"
	"strings"

	"github.com/cm4bench/cm4bench/api/wire"
	"github.com/gin-gonic/gin"
)

// requireAdmin lets a request through only with the admin token, as
// "Authorization: Bearer <token>" or the session cookie set by login.
func (s *Server) requireAdmin(c *gin.Context) {
	if s.authorized(c.Request) {
		c.Next()
		return
	}
	c.Header("WWW-Authenticate", `Bearer realm="cm4bench"`)
	writeErr(c.Writer, http.StatusUnauthorized, "admin token required: send \"Authorization: Bearer <token>\" (the token is in <data>/admin-token) or log in")
	c.Abort()
}

func (s *Server) authorized(r *http.Request) bool {
	if s.Token == "" {
		return false // never open by accident
	}
	if h := r.Header.Get(wire.HeaderToken); h != "" {
		scheme, tok, ok := strings.Cut(h, " ")
		return ok && strings.EqualFold(scheme, "Bearer") && tokenEqual(strings.TrimSpace(tok), s.Token)
	}
	if ck, err := r.Cookie(wire.CookieSession); err == nil {
		return tokenEqual(ck.Value, s.Token)
	}
	return false
}

func (s *Server) handleLogin(c *gin.Context) error {
	var req wire.LoginRequest
	if err := s.decodeJSON(c.Request, &req); err != nil {
		return err
	}
	if !tokenEqual(strings.TrimSpace(req.Token), s.Token) || s.Token == "" {
		return httpErr(http.StatusUnauthorized, "wrong admin token")
	}
	http.SetCookie(c.Writer, &http.Cookie{
		Name: wire.CookieSession, Value: s.Token, Path: "/",
		HttpOnly: true, SameSite: http.SameSiteStrictMode, MaxAge: 30 * 24 * 3600,
	})
	writeJSON(c.Writer, http.StatusOK, map[string]string{"status": "logged in"})
	return nil
}

func (s *Server) handleLogout(c *gin.Context) {
	http.SetCookie(c.Writer, &http.Cookie{Name: wire.CookieSession, Value: "", Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode, MaxAge: -1})
	writeJSON(c.Writer, http.StatusOK, map[string]string{"status": "logged out"})
}
