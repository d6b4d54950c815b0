package dhcp_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"

	"github.com/cm4bench/cm4bench/netboot/dhcp"
	"github.com/cm4bench/cm4bench/netboot/sim/nettest"
)

const (
	benchLeases  = 200
	benchWorkers = 4 // concurrent clients, each with its own raw socket
)

// BenchmarkDHCPvsDnsmasq measures DISCOVER-to-ACK latency (a full DORA by
// a Go nclient4 client impersonating a Pi, one fresh MAC per lease) for 200
// leases from cm4bench and from dnsmasq (pxe-service "Raspberry Pi Boot",
// the same pool) in the same run, and prints median and p99 with ratios.
// dnsmasq runs twice: as configured in the wild (it pings a new address
// before offering it) and with --no-ping.
func BenchmarkDHCPvsDnsmasq(b *testing.B) {
	nettest.Require(b)
	nettest.RequireTool(b, "dnsmasq")
	topo := nettest.New(b, nettest.Options{Prefix: "cbn"})
	srvNS, c := topo.Server, topo.Clients[0]

	type result struct {
		name     string
		lat      []time.Duration
		failures int
	}
	var results []result
	for i := 0; i < b.N; i++ {
		results = results[:0]
		// cm4bench
		srv := &dhcp.Server{
			Iface:        nettest.ServerIface,
			Range:        [2]netip.Addr{netip.MustParseAddr("10.42.0.10"), netip.MustParseAddr("10.42.0.250")},
			LeaseFile:    filepath.Join(b.TempDir(), "leases.json"),
			RivalTimeout: 200 * time.Millisecond,
		}
		stop := serve(b, srvNS, srv)
		lat, fails := dora(b, c, 0x10)
		results = append(results, result{"cm4bench", lat, fails})
		if err := stop(); err != nil {
			b.Fatal(err)
		}
		for _, ping := range []bool{true, false} {
			dir := b.TempDir()
			args := []string{"-k", "--conf-file=/dev/null", "--port=0", "--interface=" + srvNS.Iface, "--bind-interfaces",
				"--dhcp-range=10.42.0.10,10.42.0.250,1h", "--dhcp-leasefile=" + filepath.Join(dir, "leases"),
				"--pxe-service=0,Raspberry Pi Boot", "--user=root", "--dhcp-authoritative",
				"--pid-file=" + filepath.Join(dir, "pid"), "--log-facility=" + filepath.Join(dir, "log")}
			name := "dnsmasq"
			if !ping {
				args = append(args, "--no-ping")
				name = "dnsmasq --no-ping"
			}
			cmd, _ := srvNS.Start(b, "dnsmasq", args...)
			waitDHCP(b, c)
			base := byte(0x20)
			if !ping {
				base = 0x30
			}
			lat, fails := dora(b, c, base)
			results = append(results, result{name, lat, fails})
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	}
	b.StopTimer()
	ours := results[0]
	var sb strings.Builder
	fmt.Fprintf(&sb, "\nDHCP DISCOVER-to-ACK latency, %d leases (new MACs), %d concurrent nclient4 clients over veth\n", benchLeases, benchWorkers)
	fmt.Fprintf(&sb, "%-18s %10s %10s %10s %10s %6s %6s %12s %12s\n", "server", "median", "p90", "p99", "max", ">1s", "failed", "median ratio", "p99 ratio")
	for _, r := range results {
		slow := 0
		for _, d := range r.lat {
			if d > time.Second {
				slow++
			}
		}
		fmt.Fprintf(&sb, "%-18s %10s %10s %10s %10s %6d %6d %11.1fx %11.1fx\n", r.name, pct(r.lat, 50).Round(time.Microsecond),
			pct(r.lat, 90).Round(time.Microsecond), pct(r.lat, 99).Round(time.Microsecond), pct(r.lat, 100).Round(time.Microsecond), slow, r.failures,
			float64(pct(r.lat, 50))/float64(pct(ours.lat, 50)), float64(pct(r.lat, 99))/float64(pct(ours.lat, 99)))
		key := strings.ReplaceAll(strings.ReplaceAll(r.name, " ", ""), "--", "-")
		b.ReportMetric(float64(pct(r.lat, 50).Microseconds()), "median-us-"+key)
		b.ReportMetric(float64(pct(r.lat, 99).Microseconds()), "p99-us-"+key)
	}
	fmt.Fprintf(&sb, "(ratio = that server's latency / cm4bench's: >1 means cm4bench is faster)\n")
	fmt.Print(sb.String())
	if ours.failures != 0 {
		b.Errorf("cm4bench failed %d of %d leases", ours.failures, benchLeases)
	}
}

// waitDHCP waits until a server answers a DISCOVER (dnsmasq starts
// asynchronously).
func waitDHCP(b *testing.B, c *nettest.NS) {
	b.Helper()
	err := c.Do(func() error {
		cl, err := nclient4.New(c.Iface, nclient4.WithTimeout(time.Second), nclient4.WithRetry(10),
			nclient4.WithHWAddr(net.HardwareAddr{0x02, 0, 0, 0, 0xff, 0xff}))
		if err != nil {
			return err
		}
		defer cl.Close()
		_, err = cl.DiscoverOffer(context.Background(), dhcpv4.WithBroadcast(true))
		return err
	})
	if err != nil {
		b.Fatalf("no DHCP server answers: %v", err)
	}
}

// dora leases benchLeases fresh MACs (02:00:00:base:i) with benchWorkers
// concurrent clients and returns each DORA's latency. nclient4 only accepts
// replies whose chaddr is its own MAC, so every lease gets its own client
// (raw socket opened inside the client namespace, outside the timing).
func dora(b *testing.B, c *nettest.NS, base byte) ([]time.Duration, int) {
	b.Helper()
	var (
		mu    sync.Mutex
		lat   []time.Duration
		fails int
		wg    sync.WaitGroup
	)
	next := make(chan int)
	for w := 0; w < benchWorkers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				mac := net.HardwareAddr{0x02, 0x00, 0x00, base, byte(i >> 8), byte(i)}
				var cl *nclient4.Client
				if err := c.Do(func() error {
					var err error
					cl, err = nclient4.New(c.Iface, nclient4.WithHWAddr(mac), nclient4.WithTimeout(3*time.Second), nclient4.WithRetry(3))
					return err
				}); err != nil {
					b.Error(err)
					return
				}
				mods := append(piModifiers(), dhcpv4.WithBroadcast(true))
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				start := time.Now()
				_, err := cl.Request(ctx, mods...)
				d := time.Since(start)
				cancel()
				cl.Close()
				mu.Lock()
				if err != nil {
					fails++
				} else {
					lat = append(lat, d)
				}
				mu.Unlock()
			}
		}()
	}
	for i := 0; i < benchLeases; i++ {
		next <- i
	}
	close(next)
	wg.Wait()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	return lat, fails
}

func pct(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := (len(sorted)*p + 99) / 100
	if i > 0 {
		i--
	}
	return sorted[i]
}

// BenchmarkReply measures the decide step alone (no sockets): a Pi's
// DISCOVER and REQUEST for a new MAC, including the lease table update.
func BenchmarkReply(b *testing.B) {
	s := &dhcp.Server{
		Addr:  netip.MustParsePrefix("10.42.0.1/16"),
		Range: [2]netip.Addr{netip.MustParseAddr("10.42.0.10"), netip.MustParseAddr("10.42.255.250")},
	}
	mods := piModifiers()
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		mac := net.HardwareAddr{0xdc, 0xa6, 0x32, byte(i >> 16), byte(i >> 8), byte(i)}
		d, err := dhcpv4.NewDiscovery(mac, mods...)
		if err != nil {
			b.Fatal(err)
		}
		offer, err := s.Reply(d)
		if err != nil || offer == nil {
			b.Fatalf("offer: %v %v", offer, err)
		}
		req, err := dhcpv4.NewRequestFromOffer(offer)
		if err != nil {
			b.Fatal(err)
		}
		ack, err := s.Reply(req)
		if err != nil || ack == nil {
			b.Fatalf("ack: %v %v", ack, err)
		}
	}
}
