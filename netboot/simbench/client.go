package simbench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/cm4bench/cm4bench/internal/contract"
)

// Client is the technician's side of the server's JSON API (the calls the
// dashboard makes), used by the load and fault runs.
type Client struct {
	Base  string       // e.g. http://10.61.0.1:5000
	Token string       // admin token
	HTTP  *http.Client // default: one that dials inside the bench namespace
}

// NewClient returns a Client that reaches base from inside ns.
func NewClient(ns *NS, base, token string) *Client {
	tr := &http.Transport{
		DialContext:         ns.DialContext,
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     30 * time.Second,
	}
	return &Client{Base: strings.TrimRight(base, "/"), Token: token, HTTP: &http.Client{Transport: tr, Timeout: 30 * time.Second}}
}

// Do sends a technician request and decodes a 2xx JSON answer into out
// (nil = discard). A non-2xx answer is an error carrying the server's text.
func (c *Client) Do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.Base+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 32<<20))
	if err != nil {
		return fmt.Errorf("%s %s: read answer: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		var ae contract.APIError
		if json.Unmarshal(b, &ae) == nil && ae.Error != "" {
			return &HTTPError{Status: resp.StatusCode, Msg: ae.Error}
		}
		return &HTTPError{Status: resp.StatusCode, Msg: strings.TrimSpace(string(b))}
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
		}
	}
	return nil
}

// HTTPError is a non-2xx answer.
type HTTPError struct {
	Status int
	Msg    string
}

func (e *HTTPError) Error() string { return fmt.Sprintf("HTTP %d: %s", e.Status, e.Msg) }

// Devices lists the registered devices.
func (c *Client) Devices(ctx context.Context) ([]contract.Device, error) {
	var d []contract.Device
	return d, c.Do(ctx, http.MethodGet, "/api/v1/devices", nil, &d)
}

// Device returns one device with its recent actions.
func (c *Client) Device(ctx context.Context, mac string) (contract.Device, error) {
	var d contract.Device
	return d, c.Do(ctx, http.MethodGet, "/api/v1/devices/"+url.PathEscape(mac), nil, &d)
}

// SetAction asks for a deploy, a backup or none (cancel) on one device.
func (c *Client) SetAction(ctx context.Context, mac, action, image string) (contract.Action, error) {
	var a contract.Action
	in := map[string]string{"action": action}
	if image != "" {
		in["image"] = image
	}
	return a, c.Do(ctx, http.MethodPost, "/api/v1/devices/"+url.PathEscape(mac)+"/action", in, &a)
}

// SetNetboot switches netboot for one device.
func (c *Client) SetNetboot(ctx context.Context, mac string, on bool) error {
	return c.Do(ctx, http.MethodPut, "/api/v1/devices/"+url.PathEscape(mac)+"/netboot", map[string]bool{"enabled": on}, nil)
}

// Actions returns the action history (newest first), for one MAC or all.
func (c *Client) Actions(ctx context.Context, mac string, limit int) ([]contract.Action, error) {
	q := url.Values{}
	if mac != "" {
		q.Set("mac", mac)
	}
	if limit > 0 {
		q.Set("limit", fmt.Sprint(limit))
	}
	var a []contract.Action
	return a, c.Do(ctx, http.MethodGet, "/api/v1/actions?"+q.Encode(), nil, &a)
}

// Events returns events after since.
func (c *Client) Events(ctx context.Context, since int64, limit int) ([]contract.Event, error) {
	var e []contract.Event
	return e, c.Do(ctx, http.MethodGet, fmt.Sprintf("/api/v1/events?since=%d&limit=%d", since, limit), nil, &e)
}

// Backups lists stored backups.
func (c *Client) Backups(ctx context.Context) ([]contract.Backup, error) {
	var b []contract.Backup
	return b, c.Do(ctx, http.MethodGet, "/api/v1/backups", nil, &b)
}

// Forward accepts connections on ln (for example 127.0.0.1:5000 in the host
// namespace) and splices each to a connection from dial (for example to the
// server inside the bench namespace), until ctx ends. It is how the host
// reaches a dashboard that lives in the bench namespace.
func Forward(ctx context.Context, ln net.Listener, dial func(ctx context.Context) (net.Conn, error)) error {
	go func() { <-ctx.Done(); ln.Close() }()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("simbench: forward: accept: %w", err)
		}
		go func() {
			defer c.Close()
			dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			up, err := dial(dctx)
			cancel()
			if err != nil {
				return
			}
			defer up.Close()
			stop := context.AfterFunc(ctx, func() { c.Close(); up.Close() })
			defer stop()
			done := make(chan struct{}, 2)
			cp := func(dst, src net.Conn) {
				io.Copy(dst, src)
				if tc, ok := dst.(interface{ CloseWrite() error }); ok {
					tc.CloseWrite()
				}
				done <- struct{}{}
			}
			go cp(up, c)
			go cp(c, up)
			<-done
			<-done
		}()
	}
}
