package nettest_test

import (
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cm4bench/cm4bench/netboot/sim/nettest"
)

// TestTopologies builds both shapes and proves traffic flows from every
// client to the server: with real ping(8)-free UDP through NS.Do, and that
// the namespaces are gone after cleanup.
func TestTopologies(t *testing.T) {
	nettest.Require(t)
	for _, tt := range []struct {
		name    string
		clients int
	}{
		{"veth-pair", 1},
		{"bridge", 3},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var names []string
			t.Run("use", func(t *testing.T) {
				topo := nettest.New(t, nettest.Options{Prefix: "cbn", Clients: tt.clients, ClientAddrs: true})
				names = append(names, topo.Server.Name)
				if len(topo.Clients) != tt.clients {
					t.Fatalf("clients = %d, want %d", len(topo.Clients), tt.clients)
				}
				if (topo.Switch != nil) != (tt.clients > 1) {
					t.Fatalf("switch = %v for %d clients", topo.Switch, tt.clients)
				}
				// A UDP echo socket opened inside the server namespace.
				var srv *net.UDPConn
				if err := topo.Server.Do(func() error {
					var err error
					srv, err = net.ListenUDP("udp4", &net.UDPAddr{IP: topo.Server.Addr.Addr().AsSlice(), Port: 7777})
					return err
				}); err != nil {
					t.Fatal(err)
				}
				defer srv.Close()
				for i, c := range topo.Clients {
					names = append(names, c.Name)
					if !strings.HasPrefix(c.MAC.String(), "dc:a6:32:") {
						t.Errorf("client %d MAC %s: want a Pi OUI", i, c.MAC)
					}
					out := c.Run(t, "ip", "-br", "addr", "show", "dev", c.Iface)
					if !strings.Contains(out, c.Addr.String()) || !strings.Contains(out, "UP") {
						t.Errorf("client %d link: %q, want UP with %s", i, out, c.Addr)
					}
					var got string
					err := c.Do(func() error {
						conn, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(topo.Server.Addr.Addr(), 7777)))
						if err != nil {
							return err
						}
						defer conn.Close()
						if _, err := conn.Write([]byte(c.Name)); err != nil {
							return err
						}
						buf := make([]byte, 100)
						_ = srv.SetReadDeadline(time.Now().Add(5 * time.Second))
						n, from, err := srv.ReadFromUDP(buf)
						if err != nil {
							return err
						}
						if want := c.Addr.Addr(); from.AddrPort().Addr().Unmap() != want {
							t.Errorf("datagram from %s, want %s", from, want)
						}
						got = string(buf[:n])
						return nil
					})
					if err != nil {
						t.Fatalf("client %d -> server: %v", i, err)
					}
					if got != c.Name {
						t.Errorf("server got %q, want %q", got, c.Name)
					}
				}
			})
			for _, n := range names {
				if _, err := os.Stat("/run/netns/" + n); !os.IsNotExist(err) {
					t.Errorf("namespace %s still exists after cleanup (stat: %v)", n, err)
				}
			}
		})
	}
}
