// Package webhook delivers the bench's events to a factory's endpoints
// (MES, ERP) from a persistent outbox: at least once, with retries and
// backoff, signed with HMAC-SHA256, surviving restarts. Provisioning only
// ever inserts into the outbox; the network is this package's business, so
// a dead endpoint never slows a board.
//
// Every delivery is a POST of a contract.WebhookPayload with the headers
// X-Cm4bench-Event, X-Cm4bench-Delivery (the same on every retry: the
// receiver deduplicates by it) and X-Cm4bench-Signature: "sha256=" + the
// hex HMAC-SHA256 of the raw body with the webhook's secret. To check it:
//
//	mac := hmac.New(sha256.New, []byte(secret))
//	mac.Write(body)
//	ok := hmac.Equal([]byte(r.Header.Get("X-Cm4bench-Signature")),
//		[]byte("sha256="+hex.EncodeToString(mac.Sum(nil))))
//
// or, in a shell: printf %s "$BODY" | openssl dgst -sha256 -hmac "$SECRET".
package webhook

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cm4bench/cm4bench/api/store"
	"github.com/cm4bench/cm4bench/internal/contract"
)

// Sign is the X-Cm4bench-Signature value of body.
func Sign(secret string, body []byte) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// Verify checks a signature header against body, in constant time.
func Verify(secret string, body []byte, header string) bool {
	return hmac.Equal([]byte(header), []byte(Sign(secret, body)))
}

// CheckRequest refuses a webhook that cannot work: a URL that does not
// parse or is not http(s) with a host, or an unknown event.
func CheckRequest(req contract.WebhookRequest) error {
	u, err := url.Parse(req.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil {
		return fmt.Errorf("webhook URL %q: want http(s)://HOST[:PORT]/PATH, without user:password", req.URL)
	}
	if len(req.Events) == 0 {
		return fmt.Errorf("webhook: name at least one event: %s", strings.Join(contract.WebhookEvents(), ", "))
	}
	for _, e := range req.Events {
		if !slices.Contains(contract.WebhookEvents(), e) {
			return fmt.Errorf("webhook event %q: want one of %s", e, strings.Join(contract.WebhookEvents(), ", "))
		}
	}
	if len(req.Secret) > 256 {
		return fmt.Errorf("webhook secret: at most 256 characters")
	}
	return nil
}

// Outbox is what the deliverer needs of the store.
type Outbox interface {
	DueDeliveries(ctx context.Context, limit int) ([]store.OutboxItem, error)
	NextDelivery(ctx context.Context) (time.Time, error)
	MarkDelivered(ctx context.Context, id string) error
	MarkRetry(ctx context.Context, id, why string, next time.Time) error
	PruneOutbox(ctx context.Context) error
}

// Deliverer sends due deliveries until its context ends.
type Deliverer struct {
	Outbox Outbox
	// Client sends the POSTs; nil = 10 s timeout, no redirects followed.
	Client *http.Client
	Logger *slog.Logger
	// Backoff is the wait after a failed attempt n (1-based); nil = 1 s
	// doubling to 10 min.
	Backoff func(n int) time.Duration

	once sync.Once
	wake chan struct{}
}

// Wake asks for a look at the outbox now (something was queued).
func (d *Deliverer) Wake() {
	d.init()
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

func (d *Deliverer) init() {
	d.once.Do(func() {
		d.wake = make(chan struct{}, 1)
		if d.Client == nil {
			d.Client = &http.Client{Timeout: 10 * time.Second,
				CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		}
		if d.Logger == nil {
			d.Logger = slog.New(slog.DiscardHandler)
		}
		if d.Backoff == nil {
			d.Backoff = func(n int) time.Duration {
				if n > 10 {
					return 10 * time.Minute
				}
				return min(10*time.Minute, time.Second<<(n-1))
			}
		}
	})
}

// Serve delivers until ctx ends. Endpoints are served side by side, each
// in order, so a slow one holds up only its own deliveries.
func (d *Deliverer) Serve(ctx context.Context) error {
	d.init()
	prune := time.NewTicker(time.Hour)
	defer prune.Stop()
	d.Outbox.PruneOutbox(ctx)
	for {
		due, err := d.Outbox.DueDeliveries(ctx, 256)
		if err != nil && ctx.Err() == nil {
			d.Logger.Warn("webhook outbox", "err", err)
		}
		byHook := map[string][]store.OutboxItem{}
		for _, it := range due {
			byHook[it.WebhookID] = append(byHook[it.WebhookID], it)
		}
		var wg sync.WaitGroup
		for _, items := range byHook {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for _, it := range items {
					if !d.send(ctx, it) {
						return // keep this endpoint's order: the rest waits for the retry
					}
				}
			}()
		}
		wg.Wait()
		wait := time.Minute
		if next, err := d.Outbox.NextDelivery(ctx); err == nil && !next.IsZero() {
			wait = max(10*time.Millisecond, time.Until(next))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-d.wake:
		case <-prune.C:
			d.Outbox.PruneOutbox(ctx)
		case <-time.After(wait):
		}
	}
}

// send makes one attempt; it reports whether the delivery went through.
func (d *Deliverer) send(ctx context.Context, it store.OutboxItem) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, it.URL, bytes.NewReader(it.Body))
	if err != nil {
		d.retry(ctx, it, err.Error())
		return false
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "cm4bench-webhook")
	req.Header.Set(contract.HeaderWebhookEvent, it.Event)
	req.Header.Set(contract.HeaderWebhookDelivery, it.ID)
	req.Header.Set(contract.HeaderWebhookSignature, Sign(it.Secret, it.Body))
	resp, err := d.Client.Do(req)
	if err != nil {
		if ctx.Err() == nil {
			d.retry(ctx, it, err.Error())
		}
		return false
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		d.retry(ctx, it, "the endpoint answered "+resp.Status)
		return false
	}
	if err := d.Outbox.MarkDelivered(context.WithoutCancel(ctx), it.ID); err != nil {
		d.Logger.Warn("webhook: record delivery", "id", it.ID, "err", err)
	}
	return true
}

func (d *Deliverer) retry(ctx context.Context, it store.OutboxItem, why string) {
	next := time.Now().Add(d.Backoff(it.Attempts + 1))
	d.Logger.Info("webhook delivery failed; will retry", "id", it.ID, "event", it.Event, "url", it.URL, "attempt", it.Attempts+1, "err", why)
	if err := d.Outbox.MarkRetry(context.WithoutCancel(ctx), it.ID, why, next); err != nil {
		d.Logger.Warn("webhook: record retry", "id", it.ID, "err", err)
	}
}
