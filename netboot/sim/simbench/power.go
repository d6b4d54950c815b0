package simbench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/cm4bench/cm4bench/internal/contract"
)

// The simulated bench's power switch. The server in the bench namespace is
// started with --power-command running `cm4bench sim power-cycle --socket
// PATH MAC`, which asks the rig (the process that runs the simulated
// boards) over a unix socket in the bench directory. The socket is a file,
// so it is reachable across network namespaces; its answer is one line,
// "ok" or "error: <why>".

// PowerCommand is the --power-command that reaches the rig's socket.
func PowerCommand(cm4bench, socket string) (string, error) {
	for _, p := range []string{cm4bench, socket} {
		if strings.ContainsAny(p, "'\n") {
			return "", fmt.Errorf("simbench: power command: path %q has a quote or newline", p)
		}
	}
	return fmt.Sprintf(`'%s' sim power-cycle --socket '%s' "$1"`, cm4bench, socket), nil
}

// servePower answers power-cycle requests on ln until ctx ends.
func (r *Rig) servePower(ctx context.Context, ln net.Listener) {
	go func() { <-ctx.Done(); ln.Close() }()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			line, err := bufio.NewReader(c).ReadString('\n')
			if err != nil {
				return
			}
			if err := r.powerCycle(strings.TrimSpace(line)); err != nil {
				fmt.Fprintf(c, "error: %v\n", err)
				return
			}
			fmt.Fprintln(c, "ok")
		}()
	}
}

func (r *Rig) powerCycle(macText string) error {
	mac, err := contract.NormalizeMAC(macText)
	if err != nil {
		return err
	}
	for _, d := range r.Bench.Devices {
		if strings.EqualFold(d.Board.MAC.String(), mac) {
			d.PowerCycle()
			r.logger.Info("power-cycled by the server", "board", d.Index, "mac", mac)
			return nil
		}
	}
	return fmt.Errorf("no simulated board has MAC %s", mac)
}

// PowerCycleVia asks the rig listening on socket to power-cycle one board.
func PowerCycleVia(ctx context.Context, socket, mac string) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return fmt.Errorf("simbench: reach the simulated bench's power switch: %w", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintln(c, mac); err != nil {
		return fmt.Errorf("simbench: power-cycle %s: %w", mac, err)
	}
	ans, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return fmt.Errorf("simbench: power-cycle %s: no answer: %w", mac, err)
	}
	ans = strings.TrimSpace(ans)
	if ans != "ok" {
		return errors.New("simbench: power-cycle " + mac + ": " + strings.TrimPrefix(ans, "error: "))
	}
	return nil
}
