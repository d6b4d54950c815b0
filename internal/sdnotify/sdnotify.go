// Package sdnotify tells systemd that a Type=notify service is ready, by
// sending "READY=1" to the datagram socket named in $NOTIFY_SOCKET (the
// sd_notify(3) protocol, without libsystemd).
package sdnotify

import (
	"fmt"
	"net"
	"os"
)

// Send sends state (for example "READY=1" or "STOPPING=1") to the socket
// in $NOTIFY_SOCKET. It reports false, and no error, when the variable is
// unset: the process is not run by systemd with Type=notify. A name
// starting with "@" is an abstract socket.
func Send(state string) (bool, error) {
	name := os.Getenv("NOTIFY_SOCKET")
	if name == "" {
		return false, nil
	}
	addr := &net.UnixAddr{Name: name, Net: "unixgram"}
	if name[0] == '@' {
		addr.Name = "\x00" + name[1:]
	}
	conn, err := net.DialUnix("unixgram", nil, addr)
	if err != nil {
		return false, fmt.Errorf("sdnotify: dial %s: %w", name, err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(state)); err != nil {
		return false, fmt.Errorf("sdnotify: send %q: %w", state, err)
	}
	return true, nil
}

// Ready is Send("READY=1").
func Ready() (bool, error) { return Send("READY=1") }
