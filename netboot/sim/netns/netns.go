// Package netns is the one helper for Linux network namespaces that
// cm4bench's simulation uses: enter a namespace from Go (Do), run a program
// inside one (Command), dial or listen from inside (DialContext, Listen).
// The sim bench (netboot/sim/simbench) and the test topologies
// (netboot/sim/nettest) build on it; it needs root and ip(8).
package netns

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// NS is one named network namespace (/run/netns/<Name>).
type NS struct {
	Name  string // name for ip netns exec
	Iface string // the namespace's link to the bench
}

// Do runs fn on a dedicated OS thread switched into the namespace. Sockets
// fn opens belong to the namespace for their whole life, whichever thread
// uses them later. The thread is discarded afterwards, never handed back to
// the scheduler, so the namespace cannot leak into unrelated goroutines.
// Goroutines fn starts run in the host namespace.
func (n *NS) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		f, err := os.Open("/run/netns/" + n.Name)
		if err != nil {
			errc <- fmt.Errorf("netns: open namespace %s: %w", n.Name, err)
			return
		}
		err = unix.Setns(int(f.Fd()), unix.CLONE_NEWNET)
		f.Close()
		if err != nil {
			errc <- fmt.Errorf("netns: enter namespace %s: %w", n.Name, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// Command returns a Cmd that runs name inside the namespace through
// `ip netns exec` (which execs the program, so the Cmd's pid is the
// program's). No parent-death signal is set: Linux ties it to the forking
// thread, and threads that entered a namespace (Do) exit on purpose, which
// would kill unrelated children; the caller reaps what it starts. The
// child gets its own process group, so a Ctrl-C at the terminal reaches
// only this process, which then tears the bench down in order.
func (n *NS) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return cmd
}

// DialContext connects from inside the namespace (use it as an
// http.Transport's DialContext to reach a server that listens only there).
func (n *NS) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// Listen opens a listener inside the namespace.
func (n *NS) Listen(network, addr string) (net.Listener, error) {
	var l net.Listener
	err := n.Do(func() (err error) { l, err = net.Listen(network, addr); return err })
	return l, err
}

// IP runs ip(8) with args and returns a clear error with its output.
func IP(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Namespaces lists the names under /run/netns that start with prefix.
func Namespaces(prefix string) ([]string, error) {
	ents, err := os.ReadDir("/run/netns")
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("netns: list namespaces: %w", err)
	}
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, e.Name())
		}
	}
	return out, nil
}
