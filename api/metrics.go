package api

import (
	"context"
	"net/http"
	"time"

	"github.com/cm4bench/cm4bench/api/store"
	"github.com/cm4bench/cm4bench/internal/contract"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics is the server's own Prometheus registry (no global registry).
type metrics struct {
	reg           *prometheus.Registry
	bytesServed   byteCounter
	bytesReceived byteCounter
	actionSeconds *prometheus.HistogramVec
	events        *prometheus.CounterVec
	tftpBytes     prometheus.Counter
}

type byteCounter struct{ c prometheus.Counter }

// Add counts n bytes.
func (b byteCounter) Add(n int64) { b.c.Add(float64(n)) }

func newMetrics(s *Server) *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	served := prometheus.NewCounter(prometheus.CounterOpts{Name: "cm4bench_image_bytes_served_total", Help: "Image bytes sent to devices."})
	recv := prometheus.NewCounter(prometheus.CounterOpts{Name: "cm4bench_backup_bytes_received_total", Help: "Backup bytes received from devices."})
	m.bytesServed, m.bytesReceived = byteCounter{served}, byteCounter{recv}
	m.actionSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "cm4bench_action_duration_seconds", Help: "Duration of finished actions from first poll to action-done, by type and final state.",
		Buckets: []float64{5, 15, 30, 60, 120, 300, 600, 1200, 2400, 3600},
	}, []string{"type", "state"})
	m.events = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "cm4bench_events_total", Help: "Events by kind (dhcp.*, tftp.*, device.*, action.*, ...) since start.",
	}, []string{"kind"})
	m.tftpBytes = prometheus.NewCounter(prometheus.CounterOpts{Name: "cm4bench_tftp_bytes_total", Help: "Bytes of TFTP transfers reported in tftp.* events."})
	m.reg.MustRegister(served, recv, m.actionSeconds, m.events, m.tftpBytes, newDeviceCollector(s.Store), newFiguresCollector(s),
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

func (m *metrics) actionFinished(a contract.Action) {
	if a.Started == nil || a.Finished == nil {
		return
	}
	m.actionSeconds.WithLabelValues(a.Type, a.State).Observe(a.Finished.Sub(*a.Started).Seconds())
}

// follow counts the event stream (including the DHCP and TFTP servers'
// events) until ctx ends.
func (m *metrics) follow(ctx context.Context, st *store.Store) {
	for ctx.Err() == nil {
		ch, cancel := st.Subscribe(4096)
		for open := true; open; {
			select {
			case <-ctx.Done():
				cancel()
				return
			case ev, ok := <-ch:
				if !ok {
					open = false
					break
				}
				m.events.WithLabelValues(ev.Kind).Inc()
				if len(ev.Kind) > 5 && ev.Kind[:5] == "tftp." {
					if b, ok := ev.Fields["bytes"].(float64); ok && b > 0 {
						m.tftpBytes.Add(b)
					}
				}
			}
		}
		cancel()
		select { // the store closed or we fell behind: resubscribe
		case <-ctx.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// deviceCollector reports devices by state. The counts are computed at
// most every deviceCountEvery, whatever the scrape rate, so scrapes cannot
// make the server scan every device over and over (security item 13).
type deviceCollector struct {
	st    *store.Store
	desc  *prometheus.Desc
	cache cachedValue[map[string]int]
}

const deviceCountEvery = 10 * time.Second

func newDeviceCollector(st *store.Store) *deviceCollector {
	return &deviceCollector{st: st, desc: prometheus.NewDesc("cm4bench_devices", "Devices by state.", []string{"state"}, nil)}
}

func (d *deviceCollector) Describe(ch chan<- *prometheus.Desc) { ch <- d.desc }

func (d *deviceCollector) Collect(ch chan<- prometheus.Metric) {
	counts, err := d.cache.get(deviceCountEvery, d.count)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(d.desc, err)
		return
	}
	for s, n := range counts {
		ch <- prometheus.MustNewConstMetric(d.desc, prometheus.GaugeValue, float64(n), s)
	}
}

func (d *deviceCollector) count() (map[string]int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	devs, err := d.st.Devices(ctx)
	if err != nil {
		return nil, err
	}
	counts := map[string]int{}
	for _, s := range []string{contract.DeviceIdle, contract.DevicePending, contract.DeviceRunning, contract.DeviceDone, contract.DeviceFailed, contract.DeviceOffline} {
		counts[s] = 0
	}
	for _, dv := range devs {
		counts[dv.State]++
	}
	return counts, nil
}
