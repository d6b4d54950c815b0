package api

import (
	"bytes"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net"
	"net/http"
	"net/url"
	"strings"

	"github.com/cm4bench/cm4bench/api/images"
	"github.com/cm4bench/cm4bench/api/store"
	"github.com/cm4bench/cm4bench/internal/contract"
	"github.com/gin-gonic/gin"
)

// HTTPError is an error with the status and the message the client gets.
// Err (the cause) is logged, never sent.
type HTTPError struct {
	Code int
	Msg  string
	Err  error
}

func (e *HTTPError) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%d %s: %v", e.Code, e.Msg, e.Err)
	}
	return fmt.Sprintf("%d %s", e.Code, e.Msg)
}

func (e *HTTPError) Unwrap() error { return e.Err }

func httpErr(code int, format string, args ...any) *HTTPError {
	return &HTTPError{Code: code, Msg: fmt.Sprintf(format, args...)}
}

// statusOf maps an error to an HTTP status and a client message.
func statusOf(err error) (int, string) {
	var he *HTTPError
	switch {
	case errors.As(err, &he):
		return he.Code, he.Msg
	case errors.Is(err, store.ErrNotFound), errors.Is(err, images.ErrNotFound):
		return http.StatusNotFound, err.Error()
	case errors.Is(err, store.ErrConflict), errors.Is(err, images.ErrExists), errors.Is(err, images.ErrIsDefault):
		return http.StatusConflict, err.Error()
	case errors.Is(err, images.ErrBadName):
		return http.StatusBadRequest, err.Error()
	}
	return http.StatusInternalServerError, "internal error (see the server log)"
}

func writeErr(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(contract.APIError{Error: msg})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

// fail answers err and logs it (server errors at error level).
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	code, msg := statusOf(err)
	if code >= 500 {
		s.log().Error("request failed", "method", r.Method, "path", r.URL.Path, "status", code, "err", err)
	} else {
		s.log().Debug("request refused", "method", r.Method, "path", r.URL.Path, "status", code, "err", err)
	}
	writeErr(w, code, msg)
}

// wrap adapts an error-returning handler to gin.
func (s *Server) wrap(h func(c *gin.Context) error) gin.HandlerFunc {
	return func(c *gin.Context) {
		if err := h(c); err != nil {
			s.fail(c.Writer, c.Request, err)
		}
	}
}

func (s *Server) recoverMiddleware() gin.HandlerFunc {
	return func(c *gin.Context) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				s.log().Error("handler panic", "path", c.Request.URL.Path, "panic", fmt.Sprint(v))
				if !c.Writer.Written() {
					writeErr(c.Writer, http.StatusInternalServerError, "internal error (see the server log)")
				}
				c.Abort()
			}
		}()
		c.Next()
	}
}

// readBody reads a small request body, refusing more than max bytes.
func readBody(r *http.Request, max int64) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r.Body, max+1))
	if err != nil {
		return nil, httpErr(http.StatusBadRequest, "reading request body: %v", err)
	}
	if int64(len(b)) > max {
		return nil, httpErr(http.StatusRequestEntityTooLarge, "request body larger than %d bytes", max)
	}
	return b, nil
}

// decodeFlexible fills dst from a JSON body or from form fields (url-encoded
// or multipart, as curl -d / -F send them), then from the query string for
// fields still empty. The shell client may send JSON without a JSON
// Content-Type, so a body that starts with '{' is JSON whatever the header.
// fields maps form names to the string pointers in dst.
func decodeFlexible(r *http.Request, max int64, dst any, fields map[string]*string) error {
	body, err := readBody(r, max)
	if err != nil {
		return err
	}
	trimmed := bytes.TrimSpace(body)
	ct, params, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	switch {
	case len(trimmed) > 0 && trimmed[0] == '{':
		dec := json.NewDecoder(bytes.NewReader(trimmed))
		if err := dec.Decode(dst); err != nil {
			return httpErr(http.StatusBadRequest, "malformed JSON body: %v", err)
		}
	case ct == "multipart/form-data":
		if params["boundary"] == "" {
			return httpErr(http.StatusBadRequest, "multipart body without boundary")
		}
		mr := multipart.NewReader(bytes.NewReader(body), params["boundary"])
		form, err := mr.ReadForm(max)
		if err != nil {
			return httpErr(http.StatusBadRequest, "malformed multipart body: %v", err)
		}
		defer form.RemoveAll()
		for k, p := range fields {
			if v := form.Value[k]; len(v) > 0 {
				*p = v[0]
			}
		}
	case len(trimmed) > 0:
		vals, err := url.ParseQuery(string(trimmed))
		if err != nil {
			return httpErr(http.StatusBadRequest, "malformed form body: %v", err)
		}
		for k, p := range fields {
			if v := vals.Get(k); v != "" {
				*p = v
			}
		}
	}
	q := r.URL.Query()
	for k, p := range fields {
		if *p == "" {
			*p = q.Get(k)
		}
	}
	return nil
}

// decodeJSON decodes a technician JSON body strictly.
func (s *Server) decodeJSON(r *http.Request, dst any) error {
	return decodeStrictJSON(r, s.maxJSON(), dst)
}

// remoteIP is the peer address of the connection (proxies are not
// trusted: the bench network is flat).
func remoteIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// baseURL is the bench-side address the device reached: the Host it asked
// for, else the local address of its connection.
func baseURL(r *http.Request) string {
	host := r.Host
	if host == "" {
		if la, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
			host = la.String()
		}
	}
	return "http://" + host
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func tokenEqual(a, b string) bool {
	return len(a) == len(b) && subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}

func normMAC(s string) (string, error) {
	if strings.TrimSpace(s) == "" {
		return "", httpErr(http.StatusBadRequest, "missing mac")
	}
	m, err := contract.NormalizeMAC(s)
	if err != nil {
		return "", httpErr(http.StatusBadRequest, "%v", err)
	}
	return m, nil
}
