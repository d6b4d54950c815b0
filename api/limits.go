package api

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/cm4bench/cm4bench/internal/tokenbucket"
)

// positiveOr is v, or def when v is zero or negative: the zero value of a
// Server limit means its default.
func positiveOr[T int | int64 | time.Duration](v, def T) T {
	if v <= 0 {
		return def
	}
	return v
}

func (s *Server) minUploadRate() int64 {
	switch {
	case s.MinUploadRate < 0:
		return 0
	case s.MinUploadRate == 0:
		return DefaultMinUploadRate
	}
	return s.MinUploadRate
}

func (s *Server) bodyTimeout() time.Duration { return positiveOr(s.BodyTimeout, DefaultBodyTimeout) }

func (s *Server) maxConnsPerIP() int { return positiveOr(s.MaxConnsPerIP, DefaultMaxConnsPerIP) }

// bodyDeadline bounds the reading of a request body on the JSON routes
// (the image upload streams at its own pace; the image and backup streams
// are not behind it).
func (s *Server) bodyDeadline(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet || r.Method == http.MethodHead || r.URL.Path == "/api/v1/images" {
			next.ServeHTTP(w, r)
			return
		}
		// Left in place after the handler: a body not read to its end then
		// cannot hold the connection either; the next request on it gets
		// the header deadline net/http sets anew.
		_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(s.bodyTimeout()))
		next.ServeHTTP(w, r)
	})
}

// limitListener closes, at once, a connection from an address that already
// has max open (security item 6: 800 half-sent bodies from one machine held
// 823 goroutines).
type limitListener struct {
	net.Listener
	max int
	log *slog.Logger

	mu     sync.Mutex
	per    map[string]int
	warned map[string]time.Time
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ip := c.RemoteAddr().String()
		if h, _, err := net.SplitHostPort(ip); err == nil {
			ip = h
		}
		l.mu.Lock()
		if l.per[ip] >= l.max {
			if l.warned == nil {
				l.warned = map[string]time.Time{}
			}
			warn := time.Since(l.warned[ip]) > time.Minute
			if warn {
				l.warned[ip] = time.Now()
			}
			l.mu.Unlock()
			c.Close()
			if warn {
				l.log.Warn("too many connections from one address: refusing more", "ip", ip, "max", l.max)
			}
			continue
		}
		l.per[ip]++
		l.mu.Unlock()
		return &limitConn{Conn: c, l: l, ip: ip}, nil
	}
}

type limitConn struct {
	net.Conn
	l    *limitListener
	ip   string
	once sync.Once
}

func (c *limitConn) Close() error {
	c.once.Do(func() {
		c.l.mu.Lock()
		if c.l.per[c.ip]--; c.l.per[c.ip] <= 0 {
			delete(c.l.per, c.ip)
		}
		c.l.mu.Unlock()
	})
	return c.Conn.Close()
}

// ReadFrom keeps sendfile for image streams (net/http uses it when the
// connection is an io.ReaderFrom).
func (c *limitConn) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := c.Conn.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(c.Conn, r)
}

// Event retention defaults.
const (
	DefaultEventMaxAge   = 30 * 24 * time.Hour
	DefaultEventMaxCount = 200000
	eventPruneEvery      = time.Minute
)

// pruneEvents keeps the event log within EventMaxAge and EventMaxCount,
// once at start and then every minute, until ctx ends.
func (s *Server) pruneEvents(ctx context.Context) {
	age, keep := s.EventMaxAge, s.EventMaxCount
	if age <= 0 {
		age = DefaultEventMaxAge
	}
	if keep <= 0 {
		keep = DefaultEventMaxCount
	}
	every := s.PruneEvery
	if every <= 0 {
		every = eventPruneEvery
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if n, err := s.Store.PruneEvents(ctx, time.Now().Add(-age), keep); err != nil && ctx.Err() == nil {
			s.log().Error("pruning events", "err", err)
		} else if n > 0 {
			s.log().Debug("events pruned", "deleted", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Device request rate limit: per source address, a token bucket.
const (
	deviceRate  = 20.0 // requests per second
	deviceBurst = 60.0
	maxBuckets  = 4096
)

// rateLimiter bounds device requests per address (security item 4: one
// client posting logs as fast as it could grew the database by 11 MB/s).
type rateLimiter struct {
	mu sync.Mutex
	b  map[string]*tokenbucket.Bucket
}

func (rl *rateLimiter) allow(ip string, now time.Time) bool {
	rl.mu.Lock()
	defer rl.mu.Unlock()
	if rl.b == nil {
		rl.b = map[string]*tokenbucket.Bucket{}
	}
	bk := rl.b[ip]
	if bk == nil {
		if len(rl.b) >= maxBuckets {
			for k, v := range rl.b { // drop buckets idle long enough to be full again
				if v.Full(now) {
					delete(rl.b, k)
				}
			}
			if len(rl.b) >= maxBuckets {
				return false
			}
		}
		bk = &tokenbucket.Bucket{Rate: deviceRate, Burst: deviceBurst}
		rl.b[ip] = bk
	}
	return bk.Allow(now)
}

// limitDevice refuses device requests beyond the per-address rate.
func (s *Server) limitDevice(c *gin.Context) {
	if !s.deviceLimit.allow(remoteIP(c.Request), time.Now()) {
		c.Header("Retry-After", "1")
		writeErr(c.Writer, http.StatusTooManyRequests, "too many requests from "+remoteIP(c.Request)+": slow down")
		c.Abort()
		return
	}
	c.Next()
}
