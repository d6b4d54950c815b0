package api

import (
	"context"
	"net/http"
	"sync"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cm4bench/cm4bench/api/ledger"
	"github.com/cm4bench/cm4bench/api/store"
	"github.com/cm4bench/cm4bench/internal/contract"
)

// DefaultShift is the shift the line figures cover besides the last hour.
const DefaultShift = 8 * time.Hour

func (s *Server) shift() time.Duration { return positiveOr(s.Shift, DefaultShift) }

// LineFigures are the line's figures over the last hour and the shift:
// the bench's first, then each recipe's.
type LineFigures struct {
	Hour  []ledger.Figures `json:"hour"`
	Shift []ledger.Figures `json:"shift"`
}

// figures computes the line figures from one streamed pass over the
// ledger rows of the longer window, each row counted in every window it
// falls into.
func (s *Server) figures(ctx context.Context) (LineFigures, error) {
	now := time.Now()
	hourSince, shiftSince := now.Add(-time.Hour), now.Add(-s.shift())
	hour := ledger.NewSummary("hour", hourSince, 1)
	sh := ledger.NewSummary("shift", shiftSince, s.shift().Hours())
	since := shiftSince
	if hourSince.Before(since) {
		since = hourSince
	}
	err := s.Store.Ledger(ctx, store.LedgerFilter{Since: since}, func(r contract.LedgerRow) error {
		if !r.Time.Before(shiftSince) {
			sh.Add(r)
		}
		if !r.Time.Before(hourSince) {
			hour.Add(r)
		}
		return nil
	})
	if err != nil {
		return LineFigures{}, err
	}
	return LineFigures{Hour: hour.Figures(), Shift: sh.Figures()}, nil
}

func (s *Server) handleFigures(c *gin.Context) error {
	f, err := s.figures(c.Request.Context())
	if err != nil {
		return err
	}
	writeJSON(c.Writer, http.StatusOK, f)
	return nil
}

// figuresCollector exports the line figures to Prometheus, computed at
// most every 10 s.
type figuresCollector struct {
	s               *Server
	bph, fpy, phase *prometheus.Desc
	cache           cachedValue[LineFigures]
}

func newFiguresCollector(s *Server) *figuresCollector {
	l := []string{"recipe", "window"}
	return &figuresCollector{s: s,
		bph:   prometheus.NewDesc("cm4bench_boards_per_hour", "Boards provisioned (done) per hour over the window; recipe \"\" is the whole bench.", l, nil),
		fpy:   prometheus.NewDesc("cm4bench_first_pass_yield", "Fraction of boards whose first provisioning in the window was done.", l, nil),
		phase: prometheus.NewDesc("cm4bench_phase_seconds", "Median and 95th percentile seconds per phase of done provisionings.", append(l, "phase", "quantile"), nil),
	}
}

func (f *figuresCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- f.bph
	ch <- f.fpy
	ch <- f.phase
}

func (f *figuresCollector) Collect(ch chan<- prometheus.Metric) {
	lf, err := f.cache.get(10*time.Second, func() (LineFigures, error) { return f.s.figures(context.Background()) })
	if err != nil {
		return
	}
	for _, set := range [][]ledger.Figures{lf.Hour, lf.Shift} {
		for _, x := range set {
			ch <- prometheus.MustNewConstMetric(f.bph, prometheus.GaugeValue, x.BoardsPerHour, x.Recipe, x.Window)
			ch <- prometheus.MustNewConstMetric(f.fpy, prometheus.GaugeValue, x.FirstPass, x.Recipe, x.Window)
			for name, q := range x.Phases {
				ch <- prometheus.MustNewConstMetric(f.phase, prometheus.GaugeValue, q.P50, x.Recipe, x.Window, name, "0.5")
				ch <- prometheus.MustNewConstMetric(f.phase, prometheus.GaugeValue, q.P95, x.Recipe, x.Window, name, "0.95")
			}
		}
	}
}

// cachedValue recomputes a value at most every `every`, whatever the
// scrape rate (security item 13: scrapes cannot make the server scan over
// and over).
type cachedValue[T any] struct {
	mu  sync.Mutex
	at  time.Time
	ok  bool
	val T
	err error
}

func (c *cachedValue[T]) get(every time.Duration, compute func() (T, error)) (T, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.ok || time.Since(c.at) >= every {
		c.val, c.err = compute()
		c.at, c.ok = time.Now(), true
	}
	return c.val, c.err
}
