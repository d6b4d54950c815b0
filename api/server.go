// Package api is the HTTP side of `cm4bench netboot serve`: the device API
// that netbooted boards (the original curl+dd provisioning-client.sh, or
// cm4agent) register, poll and report through; the image and backup
// streams; and the technician API (token-protected JSON, SSE events,
// OpenAPI document, Prometheus metrics) behind the dashboard and the CLI.
//
//	st, _ := store.Open(ctx, filepath.Join(data, "cm4bench.db"))
//	tok, _, _ := api.LoadOrCreateToken(data)
//	srv := &api.Server{Store: st, Images: lib, DataDir: data, Token: tok}
//	ln, _ := net.Listen("tcp", "127.0.0.1:5000")
//	err := srv.Serve(ctx, ln) // returns nil once ctx is done
package api

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/cm4bench/cm4bench/api/images"
	"github.com/cm4bench/cm4bench/api/store"
	"github.com/cm4bench/cm4bench/api/ui"
	"github.com/cm4bench/cm4bench/api/webhook"
	"github.com/cm4bench/cm4bench/internal/contract"
	"github.com/gin-gonic/gin"
	"golang.org/x/sync/errgroup"
)

// PowerCycler cuts and restores a board's power (internal/powerswitch).
type PowerCycler interface {
	PowerCycle(ctx context.Context, mac, serial string) error
}

// Defaults for the zero-valued Server fields.
const (
	DefaultPollInterval = 5 * time.Second
	DefaultMaxJSON      = 64 << 10
	// DefaultUploadIdle is how long a backup upload may send nothing
	// before it is failed.
	DefaultUploadIdle = 30 * time.Second
	// DefaultMinUploadRate is the slowest backup upload accepted (bytes/s).
	DefaultMinUploadRate = 16 << 10
	// DefaultBodyTimeout bounds a JSON body read.
	DefaultBodyTimeout = 10 * time.Second
	// DefaultMaxConnsPerIP bounds one address's open connections.
	DefaultMaxConnsPerIP = 64
)

// Server is the cm4bench HTTP server. Set the fields, then call Serve (or
// use Handler with your own http.Server). Do not change fields after the
// first request.
type Server struct {
	// Store is the bench database; required.
	Store *store.Store
	// Images is the image library; required (may be empty).
	Images *images.Library
	// DataDir is where backups are written (<DataDir>/backups); required.
	DataDir string
	// Token is the admin token technician requests must present; required.
	Token string
	// CompressBackups stores raw backup uploads zstd-compressed.
	CompressBackups bool
	// PollInterval is what register tells devices; 0 = DefaultPollInterval.
	PollInterval time.Duration
	// MaxJSON bounds device and technician JSON bodies; 0 = DefaultMaxJSON.
	MaxJSON int64
	// Version is shown by /api/v1/status.
	Version string
	// MACForIP, if set, says which MAC holds a DHCP lease for an address.
	// Register and poll from an address leased to a different MAC are then
	// refused, so a board cannot act as another one. Addresses it does not
	// know (no lease: static, NAT, loopback) are not refused.
	MACForIP func(netip.Addr) (net.HardwareAddr, bool)
	// RequireLease refuses every device request (register, poll, progress,
	// log, action-done, image and backup streams) from an address MACForIP
	// knows no lease for: with our DHCP server on the bench, a board is the
	// address it was leased. Benches without our DHCP (--no-dhcp, --proxy)
	// cannot check this and rely on the MAC, the first poll's address and
	// the action token.
	RequireLease bool
	// Rivals, if set, reports other DHCP servers seen on the link.
	Rivals func() []string
	// Shift is the line figures' longer window besides the last hour; 0 =
	// DefaultShift.
	Shift time.Duration
	// WebhookBackoff is the wait after failed delivery attempt n; nil =
	// 1 s doubling to 10 min (tests shorten it).
	WebhookBackoff func(n int) time.Duration
	// Power, if set, power-cycles a board (serve --power-command); the
	// dashboard then offers Power-cycle on each card.
	Power PowerCycler
	// DiskReserve is the free space a backup upload never eats into; 0 =
	// DefaultDiskReserve, < 0 = none (the disk may fill up).
	DiskReserve int64
	// SessionLifetime is how long a dashboard login lasts; 0 =
	// DefaultSessionLifetime.
	SessionLifetime time.Duration
	// AdminAddrs, when set, says which non-loopback listener addresses
	// serve the technician API (serve --admin-listen); loopback always
	// does. nil: every listener (embedders and tests).
	AdminAddrs func(netip.AddrPort) bool
	// AllowedHosts are host names (besides IP literals and "localhost")
	// the server answers to in the Host header; any other name is refused,
	// so a DNS-rebinding page cannot reach the API through 127.0.0.1.
	AllowedHosts []string
	// EventMaxAge and EventMaxCount bound the event log (pruned every
	// PruneEvery); 0 = DefaultEventMaxAge, DefaultEventMaxCount, 1 min.
	EventMaxAge   time.Duration
	EventMaxCount int
	PruneEvery    time.Duration
	// ActionLifetime is how long an action's token works before the action
	// is failed as expired; 0 = DefaultActionLifetime.
	ActionLifetime time.Duration
	// MinUploadRate fails a backup upload that, over a window of UploadIdle,
	// sends less than this many bytes a second; 0 = DefaultMinUploadRate,
	// < 0 = no minimum.
	MinUploadRate int64
	// BodyTimeout bounds the reading of a JSON request body (a client that
	// sends half a body and stops is cut off); 0 = DefaultBodyTimeout.
	BodyTimeout time.Duration
	// MaxConnsPerIP bounds the open connections from one address; more are
	// closed at once. 0 = DefaultMaxConnsPerIP.
	MaxConnsPerIP int
	// UploadIdle fails a backup upload that sends no data for this long, so
	// a board whose link went down mid-backup is failed in seconds rather
	// than when TCP gives up minutes later; 0 = DefaultUploadIdle.
	UploadIdle time.Duration
	// UI serves the dashboard at / and /ui/; nil = the embedded api/ui dashboard.
	UI http.Handler
	// Logger receives request errors and lifecycle messages; nil = silent.
	Logger *slog.Logger

	once       sync.Once
	recovery   sync.Once
	pruning    sync.Once
	delivering sync.Once
	hooks      *webhook.Deliverer
	cov        *coverageBook
	sparse     sparseMaps // data extents of raw images, for the sparse stream
	refused    refusals   // why a board's auto rule could not start
	handler    http.Handler
	engine     *gin.Engine
	metrics    *metrics
	progress   chan progressReport
	started    time.Time

	addrMu sync.Mutex
	addrs  []string

	sessions   sessions
	loginCodes sessions // one-time codes of the printed login links (memory only)
	tokenMu    sync.RWMutex
	rotated    string // the admin token after a rotation

	deviceLimit rateLimiter

	uploadMu  sync.Mutex
	uploading map[string]bool // backup actions with an upload in progress
}

// LoadOrCreateToken reads the admin token from <dir>/admin-token, creating
// it (random, mode 0600) if absent. created is true when it was new, so the
// caller can print it once.
func LoadOrCreateToken(dir string) (token string, created bool, err error) {
	p := filepath.Join(dir, contract.FileAdminToken)
	b, err := os.ReadFile(p)
	if err == nil {
		tok := string(trimSpace(b))
		if len(tok) < 16 {
			return "", false, fmt.Errorf("api: admin token in %s is too short (%d chars); delete it to make a new one", p, len(tok))
		}
		return tok, false, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", false, fmt.Errorf("api: read admin token: %w", err)
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return "", false, fmt.Errorf("api: create data dir: %w", err)
	}
	tok := randomHex(24)
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", false, fmt.Errorf("api: create admin token: %w", err)
	}
	if _, err := f.WriteString(tok + "\n"); err != nil {
		f.Close()
		os.Remove(p)
		return "", false, fmt.Errorf("api: write admin token: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(p)
		return "", false, fmt.Errorf("api: sync admin token: %w", err)
	}
	if err := f.Close(); err != nil {
		return "", false, fmt.Errorf("api: close admin token: %w", err)
	}
	return tok, true, nil
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r' || b[len(b)-1] == ' ') {
		b = b[:len(b)-1]
	}
	return b
}

func (s *Server) log() *slog.Logger {
	if s.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Logger
}

func (s *Server) pollInterval() time.Duration { return positiveOr(s.PollInterval, DefaultPollInterval) }

func (s *Server) maxJSON() int64 { return positiveOr(s.MaxJSON, DefaultMaxJSON) }

// Handler returns the server's HTTP handler (built once).
func (s *Server) Handler() http.Handler {
	s.once.Do(s.build)
	return s.handler
}

// AddAddress records a base URL the server is reachable at (shown by
// /api/v1/status).
func (s *Server) AddAddress(u string) {
	s.addrMu.Lock()
	s.addrs = append(s.addrs, u)
	s.addrMu.Unlock()
}

func (s *Server) addresses() []string {
	s.addrMu.Lock()
	defer s.addrMu.Unlock()
	return append([]string{}, s.addrs...)
}

func (s *Server) build() {
	s.started = time.Now().UTC()
	s.cov = newCoverageBook(filepath.Join(s.DataDir, "streams"))
	s.sessions.load(filepath.Join(s.DataDir, "sessions.json"))
	s.metrics = newMetrics(s)
	s.progress = make(chan progressReport, 256)
	s.hooks = &webhook.Deliverer{Outbox: s.Store, Logger: s.log(), Backoff: s.WebhookBackoff}
	s.Store.OnOutbox = s.hooks.Wake
	// gin's mode is a package setting of gin; release mode only silences its
	// route-table printout.
	if gin.Mode() != gin.ReleaseMode {
		gin.SetMode(gin.ReleaseMode) // once per process in practice: later servers find it set
	}
	g := gin.New()
	g.Use(s.recoverMiddleware())
	g.HandleMethodNotAllowed = true
	g.NoRoute(func(c *gin.Context) {
		writeErr(c.Writer, http.StatusNotFound, "no such endpoint: "+c.Request.Method+" "+c.Request.URL.Path)
	})
	g.NoMethod(func(c *gin.Context) {
		writeErr(c.Writer, http.StatusMethodNotAllowed, "method "+c.Request.Method+" not allowed on "+c.Request.URL.Path)
	})

	// Device API: no admin token; per-action tokens guard the streams.
	g.POST(contract.PathRegister, s.limitDevice, s.wrap(s.handleRegister))
	g.GET(contract.PathPoll, s.limitDevice, s.wrap(s.handlePoll))
	g.POST(contract.PathActionDone, s.limitDevice, s.wrap(s.handleActionDone))
	g.POST(contract.PathProgress, s.limitDevice, s.wrap(s.handleProgress))
	g.POST(contract.PathLog, s.limitDevice, s.wrap(s.handleLog))
	g.GET(contract.PathOpenAPI, s.handleOpenAPI)
	g.GET(contract.PathMetrics, s.adminOnly, gin.WrapH(s.metrics.handler()))

	// Technician API.
	g.POST(contract.PathLogin, s.wrap(s.handleLogin))
	g.POST(contract.PathLogout, s.handleLogout)
	t := g.Group("", s.requireAdmin)
	t.GET(contract.PathEvents, s.wrap(s.handleSSE))
	v := t.Group(contract.PathAPIv1)
	v.GET("/status", s.wrap(s.handleStatus))
	t.POST(contract.PathRotate, s.wrap(s.handleRotateToken))
	v.GET("/devices", s.wrap(s.handleDevices))
	v.GET("/devices/:mac", s.wrap(s.handleDevice))
	v.POST("/devices/:mac/action", s.wrap(s.handleSetAction))
	v.PUT("/devices/:mac/image", s.wrap(s.handleSetDeviceImage))
	v.POST("/devices/:mac/power-cycle", s.wrap(s.handlePowerCycle))
	v.PUT("/devices/:mac/netboot", s.wrap(s.handleSetDeviceNetboot))
	v.GET("/devices/:mac/netboot", s.wrap(s.handleGetDeviceNetboot))
	v.POST("/actions", s.wrap(s.handleBulkAction))
	v.GET("/actions", s.wrap(s.handleActions))
	v.GET("/actions/:id/:format", s.wrap(s.handleLabelFile))
	v.POST("/actions/:id/label/print", s.wrap(s.handlePrintLabel))
	v.GET("/netboot", s.wrap(s.handleGetNetboot))
	v.PUT("/netboot", s.wrap(s.handleSetNetboot))
	v.GET("/images", s.wrap(s.handleImages))
	v.POST("/images", s.wrap(s.handleAddImage))
	v.DELETE("/images/:name", s.wrap(s.handleRemoveImage))
	v.PUT("/images/default", s.wrap(s.handleSetDefaultImage))
	v.GET("/backups", s.wrap(s.handleBackups))
	v.GET("/backups/:id/download", s.wrap(s.handleBackupDownload))
	v.DELETE("/backups/:id", s.wrap(s.handleDeleteBackup))
	v.GET("/events", s.wrap(s.handleEvents))
	v.GET("/recipes", s.wrap(s.handleRecipes))
	v.PUT("/recipes", s.wrap(s.handlePutRecipes))
	v.GET("/recipes/:name", s.wrap(s.handleRecipe))
	v.GET("/recipes/:name/values", s.wrap(s.handleRecipeValues))
	v.GET("/rules", s.wrap(s.handleRules))
	v.PUT("/rules", s.wrap(s.handlePutRules))
	v.GET("/webhooks", s.wrap(s.handleWebhooks))
	v.POST("/webhooks", s.wrap(s.handleAddWebhook))
	v.DELETE("/webhooks/:id", s.wrap(s.handleDeleteWebhook))
	v.GET("/webhooks/deliveries", s.wrap(s.handleDeliveries))
	v.GET("/figures", s.wrap(s.handleFigures))
	v.GET("/ledger", s.wrap(s.handleLedger))
	v.GET("/ledger/:id", s.wrap(s.handleLedgerRow))
	v.GET("/armed", s.wrap(s.handleArmed))
	v.PUT("/armed", s.wrap(s.handleSetArmed))

	dash := s.UI
	if dash == nil {
		dash = ui.Handler()
	}
	g.GET("/", gin.WrapH(dash))
	g.GET("/ui/*path", gin.WrapH(dash))

	// The image and backup streams bypass gin: they are the hot path and
	// need the plain ResponseWriter (sendfile) and the raw body.
	mux := http.NewServeMux()
	mux.HandleFunc(routeImageGet, s.handleImage)
	mux.HandleFunc(routeImageHead, s.handleImage)
	mux.HandleFunc(routeBackupPut, s.handleBackupUpload)
	mux.HandleFunc(routeBackupPost, s.handleBackupUpload)
	mux.Handle("/", s.bodyDeadline(g))
	s.handler = s.hostGuard(mux)
	s.engine = g
}

// The routes served outside gin (see build).
const (
	routeImageGet   = "GET " + contract.PathImage + "/{id}"
	routeImageHead  = "HEAD " + contract.PathImage + "/{id}"
	routeBackupPut  = "PUT " + contract.PathBackup + "/{id}"
	routeBackupPost = "POST " + contract.PathBackup + "/{id}"
)

// Serve serves HTTP on ln until ctx is done, then shuts down gracefully
// (open streams get a few seconds) and returns nil. The metrics collector
// runs alongside.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	h := s.Handler()
	s.recovery.Do(func() { s.recoverAfterCrash(ctx) })
	ln = &limitListener{Listener: ln, max: s.maxConnsPerIP(), per: map[string]int{}, log: s.log()}
	hs := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		BaseContext:       func(net.Listener) context.Context { return ctx },
		ErrorLog:          slog.NewLogLogger(s.log().Handler(), slog.LevelWarn),
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		s.metrics.follow(gctx, s.Store)
		return nil
	})
	g.Go(func() error {
		s.writeProgress(gctx)
		return nil
	})
	s.pruning.Do(func() { go s.pruneEvents(ctx) })
	s.delivering.Do(func() { go s.hooks.Serve(ctx) })
	g.Go(func() error {
		<-gctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := hs.Shutdown(sctx); err != nil {
			hs.Close()
		}
		return nil
	})
	g.Go(func() error {
		s.log().Info("http api listening", "addr", ln.Addr().String())
		err := hs.Serve(ln)
		if errors.Is(err, http.ErrServerClosed) || ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("api: serve %s: %w", ln.Addr(), err)
	})
	return g.Wait()
}
