package simbench

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/cm4bench/cm4bench/api/client"
	"github.com/cm4bench/cm4bench/netboot/sim/netns"
)

// Client returns a client of the technician API (api/client, the one the
// CLI uses) that reaches base from inside ns.
func Client(ns *netns.NS, base, token string) *client.Client {
	tr := &http.Transport{
		DialContext:         ns.DialContext,
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     30 * time.Second,
	}
	return &client.Client{BaseURL: strings.TrimRight(base, "/"), Token: token, Source: "the sim bench",
		HTTP: &http.Client{Transport: tr, Timeout: 30 * time.Second}}
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
