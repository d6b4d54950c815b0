package api

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cm4bench/cm4bench/api/store"
	"github.com/cm4bench/cm4bench/internal/atomicfile"
	"github.com/cm4bench/cm4bench/internal/contract"
	"github.com/gin-gonic/gin"
)

// DefaultSessionLifetime is how long a dashboard login lasts.
const DefaultSessionLifetime = 12 * time.Hour

// maxSessions bounds the sessions kept; the oldest goes first.
const maxSessions = 256

// sessions are the dashboard's logins: random ids kept on the server,
// never the admin token itself, ended by logout, by their lifetime, and
// all at once by a token rotation. They are saved (as sha256 of the id,
// 0600) in <data>/sessions.json, so a server restart keeps them.
type sessions struct {
	mu   sync.Mutex
	path string
	ids  map[string]time.Time // sha256(id) -> expiry
}

func sessionKey(id string) string {
	s := sha256.Sum256([]byte(id))
	return hex.EncodeToString(s[:])
}

// load reads the saved sessions (a missing or bad file: none).
func (ss *sessions) load(path string) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	ss.path = path
	ss.ids = map[string]time.Time{}
	if b, err := os.ReadFile(path); err == nil {
		json.Unmarshal(b, &ss.ids)
	}
	for k := range ss.ids {
		if len(k) != 64 || len(ss.ids) > maxSessions {
			delete(ss.ids, k)
		}
	}
}

// save writes the sessions; called with mu held.
func (ss *sessions) save() {
	if ss.path == "" {
		return
	}
	b, _ := json.Marshal(ss.ids)
	atomicfile.WriteFile(ss.path, b, 0o600)
}

func (ss *sessions) add(ttl time.Duration) string {
	b := make([]byte, 24)
	rand.Read(b)
	id := hex.EncodeToString(b)
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.ids == nil {
		ss.ids = map[string]time.Time{}
	}
	now := time.Now()
	for k, exp := range ss.ids {
		if now.After(exp) {
			delete(ss.ids, k)
		}
	}
	for len(ss.ids) >= maxSessions {
		var oldest string
		var at time.Time
		for k, exp := range ss.ids {
			if oldest == "" || exp.Before(at) {
				oldest, at = k, exp
			}
		}
		delete(ss.ids, oldest)
	}
	ss.ids[sessionKey(id)] = now.Add(ttl)
	ss.save()
	return id
}

func (ss *sessions) valid(id string) bool { return ss.check(id, false) }

// take reports whether id is live and ends it in the same step: a one-time
// code cannot be used twice by two requests racing each other.
func (ss *sessions) take(id string) bool { return ss.check(id, true) }

func (ss *sessions) check(id string, consume bool) bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	k := sessionKey(id)
	exp, ok := ss.ids[k]
	if ok && (consume || time.Now().After(exp)) {
		delete(ss.ids, k)
		ss.save()
	}
	return ok && !time.Now().After(exp)
}

func (ss *sessions) end(id string) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	delete(ss.ids, sessionKey(id))
	ss.save()
}

func (ss *sessions) endAll() {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	ss.ids = map[string]time.Time{}
	ss.save()
}

func (s *Server) sessionLifetime() time.Duration {
	if s.SessionLifetime <= 0 {
		return DefaultSessionLifetime
	}
	return s.SessionLifetime
}

// token is the current admin token (it changes on rotation).
func (s *Server) token() string {
	s.tokenMu.RLock()
	defer s.tokenMu.RUnlock()
	if s.rotated != "" {
		return s.rotated
	}
	return s.Token
}

// requireAdmin lets a request through only on an admin listener (loopback,
// or one serve names with --admin-listen), with the admin token as
// "Authorization: Bearer <token>" or a live session cookie; a write with the
// cookie must also come from the dashboard's own origin with a content type
// no cross-site form can send.
func (s *Server) requireAdmin(c *gin.Context) {
	if !s.adminListener(c.Request) {
		writeErr(c.Writer, http.StatusForbidden, "the technician API is not served on this address: use the dashboard on the bench PC (127.0.0.1) or the --admin-listen address")
		c.Abort()
		return
	}
	how := s.authorized(c.Request)
	if how == "" {
		c.Header("WWW-Authenticate", `Bearer realm="cm4bench"`)
		writeErr(c.Writer, http.StatusUnauthorized, "admin token required: send \"Authorization: Bearer <token>\" (the token is in <data>/admin-token) or log in")
		c.Abort()
		return
	}
	who := "admin token"
	if how == "cookie" {
		if err := sameOriginWrite(c.Request); err != nil {
			writeErr(c.Writer, http.StatusForbidden, err.Error())
			c.Abort()
			return
		}
		ck, _ := c.Request.Cookie(contract.CookieSession)
		sum := sha256.Sum256([]byte(ck.Value))
		who = "dashboard session " + hex.EncodeToString(sum[:4])
	}
	// The ledger records who started each job.
	c.Request = c.Request.WithContext(store.WithOperator(c.Request.Context(), who))
	c.Next()
}

// adminListener reports whether the request came in on an address the
// technician API is served on.
func (s *Server) adminListener(r *http.Request) bool {
	la, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	if !ok {
		return true // not from a listener (in-process handler tests)
	}
	ap, err := netip.ParseAddrPort(la.String())
	if err != nil {
		return false
	}
	if ap.Addr().Unmap().IsLoopback() || s.AdminAddrs == nil {
		return true
	}
	return s.AdminAddrs(ap)
}

// authorized says how the request proved itself: "bearer", "cookie" or "".
func (s *Server) authorized(r *http.Request) string {
	tok := s.token()
	if tok == "" {
		return "" // never open by accident
	}
	if h := r.Header.Get(contract.HeaderToken); h != "" {
		scheme, t, ok := strings.Cut(h, " ")
		if ok && strings.EqualFold(scheme, "Bearer") && tokenEqual(strings.TrimSpace(t), tok) {
			return "bearer"
		}
		return ""
	}
	if ck, err := r.Cookie(contract.CookieSession); err == nil && s.sessions.valid(ck.Value) {
		return "cookie"
	}
	return ""
}

// sameOriginWrite refuses a cookie-authenticated write from another origin
// (Origin must name this host when sent) or with a body type a cross-site
// HTML form could send without a preflight.
func sameOriginWrite(r *http.Request) error {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return nil
	}
	if o := r.Header.Get("Origin"); o != "" {
		if o != "http://"+r.Host && o != "https://"+r.Host {
			return fmt.Errorf("request from origin %s refused: the dashboard's session works only on its own pages", o)
		}
	}
	ct, _, _ := strings.Cut(r.Header.Get("Content-Type"), ";")
	switch strings.ToLower(strings.TrimSpace(ct)) {
	case "application/x-www-form-urlencoded", "multipart/form-data", "text/plain":
		return fmt.Errorf("content type %s refused for a session write: send JSON", ct)
	}
	return nil
}

// LoginLinkLifetime is how long a printed login link works.
const LoginLinkLifetime = 10 * time.Minute

// LoginLink returns base + "/?login=CODE": a link that logs a browser in
// once, within LoginLinkLifetime, without the admin token. The server
// prints it on start so the technician clicks instead of pasting; the code
// is random, kept only in memory (hashed), and used up by the first login.
func (s *Server) LoginLink(base string) string {
	return strings.TrimRight(base, "/") + "/?login=" + s.loginCodes.add(LoginLinkLifetime)
}

// useLoginCode reports whether code is a live login code, using it up.
func (s *Server) useLoginCode(code string) bool {
	return code != "" && s.loginCodes.take(code)
}

func (s *Server) handleLogin(c *gin.Context) error {
	var req contract.LoginRequest
	if err := s.decodeJSON(c.Request, &req); err != nil {
		return err
	}
	tok := s.token()
	switch {
	case req.Code != "":
		if !s.useLoginCode(strings.TrimSpace(req.Code)) {
			s.emit(c.Request.Context(), contract.Event{Kind: contract.EventAuthFailed, Level: contract.LevelWarn,
				Message: "used or expired login link from " + remoteIP(c.Request), Fields: map[string]any{"ip": remoteIP(c.Request)}})
			return httpErr(http.StatusUnauthorized, "this login link was already used or has expired")
		}
	case tok == "" || !tokenEqual(strings.TrimSpace(req.Token), tok):
		s.emit(c.Request.Context(), contract.Event{Kind: contract.EventAuthFailed, Level: contract.LevelWarn,
			Message: "failed login from " + remoteIP(c.Request), Fields: map[string]any{"ip": remoteIP(c.Request)}})
		return httpErr(http.StatusUnauthorized, "wrong admin token")
	}
	id := s.sessions.add(s.sessionLifetime())
	http.SetCookie(c.Writer, &http.Cookie{
		Name: contract.CookieSession, Value: id, Path: "/",
		HttpOnly: true, SameSite: http.SameSiteStrictMode, MaxAge: int(s.sessionLifetime().Seconds()),
	})
	s.emit(c.Request.Context(), contract.Event{Kind: contract.EventAuthLogin, Message: "technician logged in from " + remoteIP(c.Request),
		Fields: map[string]any{"ip": remoteIP(c.Request)}})
	writeJSON(c.Writer, http.StatusOK, map[string]string{"status": "logged in"})
	return nil
}

func (s *Server) handleLogout(c *gin.Context) {
	if ck, err := c.Request.Cookie(contract.CookieSession); err == nil {
		s.sessions.end(ck.Value)
	}
	http.SetCookie(c.Writer, &http.Cookie{Name: contract.CookieSession, Value: "", Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode, MaxAge: -1})
	writeJSON(c.Writer, http.StatusOK, map[string]string{"status": "logged out"})
}

// handleRotateToken makes a new admin token, writes it to
// <data>/admin-token and ends every session.
func (s *Server) handleRotateToken(c *gin.Context) error {
	tok, err := RotateToken(s.DataDir)
	if err != nil {
		return err
	}
	s.tokenMu.Lock()
	s.rotated = tok
	s.tokenMu.Unlock()
	s.sessions.endAll()
	s.emit(c.Request.Context(), contract.Event{Kind: contract.EventAuthRotated, Level: contract.LevelWarn, Message: "admin token rotated: every session ended"})
	writeJSON(c.Writer, http.StatusOK, map[string]string{"token": tok})
	return nil
}

// RotateToken writes a new random admin token to <dir>/admin-token (0600,
// atomically) and returns it.
func RotateToken(dir string) (string, error) {
	tok := randomHex(24)
	if err := atomicfile.WriteFile(filepath.Join(dir, contract.FileAdminToken), []byte(tok+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("api: rotate admin token: %w", err)
	}
	return tok, nil
}

// adminOnly serves a route (metrics) only on an admin listener.
func (s *Server) adminOnly(c *gin.Context) {
	if !s.adminListener(c.Request) {
		writeErr(c.Writer, http.StatusForbidden, "not served on this address: use 127.0.0.1 or the --admin-listen address")
		c.Abort()
		return
	}
	c.Next()
}

// hostGuard refuses a request whose Host header names a host this server
// is not: only IP literals, "localhost" and AllowedHosts pass. A page on
// a rebound DNS name (evil.example resolving to 127.0.0.1) sends its own
// name and is refused.
func (s *Server) hostGuard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host := r.Host
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		host = strings.Trim(host, "[]")
		named := slices.ContainsFunc(s.AllowedHosts, func(h string) bool { return strings.EqualFold(h, host) })
		if _, err := netip.ParseAddr(host); err == nil || host == "" || strings.EqualFold(host, "localhost") || named {
			next.ServeHTTP(w, r)
			return
		}
		writeErr(w, http.StatusMisdirectedRequest, "host "+host+" is not this server's: use its IP address (DNS-rebinding guard)")
	})
}
