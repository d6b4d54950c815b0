package dhcp

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/cm4bench/cm4bench/internal/atomicfile"
)

// ErrPoolExhausted is returned (wrapped) when no address is free for a new
// client and no expired lease can be reclaimed.
var ErrPoolExhausted = errors.New("address pool exhausted")

// Lease is one client's binding. A MAC keeps its address across expiry and
// server restarts; the address is reclaimed for another MAC only when the
// pool is otherwise full and this lease has expired.
type Lease struct {
	MAC    string     `json:"mac"` // lowercase colon form
	IP     netip.Addr `json:"ip"`
	Expiry time.Time  `json:"expiry"`
	Pi     bool       `json:"pi,omitempty"`     // the client was recognised as a Raspberry Pi
	Serial string     `json:"serial,omitempty"` // from option 97, when the Pi sent one
	Bound  bool       `json:"bound"`            // ACKed at least once (only bound leases are saved)
}

// leaseFileVersion is written into the lease file so a future format change
// can be detected instead of misread.
const leaseFileVersion = 1

type leaseFile struct {
	Version int     `json:"version"`
	Leases  []Lease `json:"leases"`
}

// pool is the lease table. All methods are safe for concurrent use.
type pool struct {
	mu       sync.Mutex
	first    netip.Addr
	last     netip.Addr
	server   netip.Addr
	byMAC    map[string]*Lease
	byIP     map[netip.Addr]*Lease
	declined map[netip.Addr]time.Time // address -> until when it is not handed out
	cursor   netip.Addr               // where the next free-address scan starts
	dirty    bool
}

func newPool(first, last, server netip.Addr) *pool {
	return &pool{
		first: first, last: last, server: server,
		byMAC:    map[string]*Lease{},
		byIP:     map[netip.Addr]*Lease{},
		declined: map[netip.Addr]time.Time{},
	}
}

func (p *pool) inRange(a netip.Addr) bool {
	return a.Is4() && a.Compare(p.first) >= 0 && a.Compare(p.last) <= 0 && a != p.server
}

// macForIP returns the MAC holding ip.
func (p *pool) macForIP(ip netip.Addr) (net.HardwareAddr, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	l, ok := p.byIP[ip.Unmap()]
	if !ok {
		return nil, false
	}
	mac, err := net.ParseMAC(l.MAC)
	return mac, err == nil
}

// offer picks the address for mac (its own, then want, then the first free
// one, then the oldest expired lease of another MAC) and holds it until
// hold. It returns the lease.
func (p *pool) offer(mac net.HardwareAddr, want netip.Addr, now time.Time, hold time.Duration) (Lease, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	key := mac.String()
	if l, ok := p.byMAC[key]; ok {
		if until, bad := p.declined[l.IP]; !bad || now.After(until) {
			if l.Expiry.Before(now.Add(hold)) {
				l.Expiry = now.Add(hold)
			}
			return *l, nil
		}
		// The client declined its address (someone else uses it): move it.
		p.drop(l)
	}
	ip, ok := p.free(want, now)
	if !ok {
		return Lease{}, fmt.Errorf("dhcp: offer for %s: %w (%s-%s)", key, ErrPoolExhausted, p.first, p.last)
	}
	if old, taken := p.byIP[ip]; taken {
		p.drop(old) // reclaiming an expired lease of another MAC
	}
	l := &Lease{MAC: key, IP: ip, Expiry: now.Add(hold)}
	p.byMAC[key] = l
	p.byIP[ip] = l
	return *l, nil
}

func (p *pool) usable(a netip.Addr, now time.Time) bool {
	if !p.inRange(a) {
		return false
	}
	if _, taken := p.byIP[a]; taken {
		return false
	}
	if until, bad := p.declined[a]; bad && now.Before(until) {
		return false
	}
	return true
}

func (p *pool) free(want netip.Addr, now time.Time) (netip.Addr, bool) {
	if want.IsValid() && p.usable(want, now) {
		return want, true
	}
	// Scan from just after the last address handed out, wrapping around, so
	// filling a large pool does not rescan the taken part every time.
	start := p.cursor
	if !start.IsValid() || !p.inRange(start) {
		start = p.first
	}
	for a := start; a.IsValid() && a.Compare(p.last) <= 0; a = a.Next() {
		if p.usable(a, now) {
			p.cursor = a.Next()
			return a, true
		}
	}
	for a := p.first; a.IsValid() && a.Less(start); a = a.Next() {
		if p.usable(a, now) {
			p.cursor = a.Next()
			return a, true
		}
	}
	// Reclaim the longest-expired lease.
	var victim *Lease
	for _, l := range p.byIP {
		if l.Expiry.Before(now) && (victim == nil || l.Expiry.Before(victim.Expiry)) {
			victim = l
		}
	}
	if victim == nil {
		return netip.Addr{}, false
	}
	return victim.IP, true
}

func (p *pool) drop(l *Lease) {
	delete(p.byMAC, l.MAC)
	delete(p.byIP, l.IP)
	if l.Bound {
		p.dirty = true
	}
}

// bind confirms mac's lease on ip (an ACK). It fails when ip belongs to
// another MAC or is not ours to give. It returns the lease and whether the
// saved table changed.
func (p *pool) bind(mac net.HardwareAddr, ip netip.Addr, now time.Time, d time.Duration, pi bool, serial string) (Lease, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	key := mac.String()
	l, ok := p.byMAC[key]
	if ok && l.IP != ip {
		return Lease{}, fmt.Errorf("dhcp: request from %s for %s: its address is %s", key, ip, l.IP)
	}
	if !ok {
		// INIT-REBOOT from a client we do not know (e.g. lease file lost):
		// grant the address if it is free.
		if !p.usable(ip, now) {
			return Lease{}, fmt.Errorf("dhcp: request from %s for %s: address not available", key, ip)
		}
		l = &Lease{MAC: key, IP: ip}
		p.byMAC[key] = l
		p.byIP[ip] = l
	}
	if !l.Bound || l.Pi != pi || (serial != "" && l.Serial != serial) {
		p.dirty = true
	}
	l.Bound = true
	l.Pi = l.Pi || pi
	if serial != "" {
		l.Serial = serial
	}
	l.Expiry = now.Add(d)
	return *l, nil
}

// release ends mac's lease now but keeps the address reserved for it.
func (p *pool) release(mac net.HardwareAddr, now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if l, ok := p.byMAC[mac.String()]; ok {
		l.Expiry = now
		p.dirty = true
	}
}

// decline marks ip as in use by someone else for a while.
func (p *pool) decline(mac net.HardwareAddr, ip netip.Addr, now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.declined[ip] = now.Add(10 * time.Minute)
	if l, ok := p.byMAC[mac.String()]; ok && l.IP == ip {
		p.drop(l)
	}
}

// known reports whether mac has (or had) an offer or a lease.
func (p *pool) known(mac net.HardwareAddr) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, ok := p.byMAC[mac.String()]
	return ok
}

// isPi reports whether an earlier packet from mac was recognised as a Pi
// (the Pi's REQUEST lacks option 60, and may lack option 97).
func (p *pool) isPi(mac net.HardwareAddr) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	l, ok := p.byMAC[mac.String()]
	return ok && l.Pi
}

// markPi remembers that mac is a Pi.
func (p *pool) markPi(mac net.HardwareAddr) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if l, ok := p.byMAC[mac.String()]; ok {
		l.Pi = true
	}
}

// leases returns a copy of every lease, sorted by address.
func (p *pool) leases() []Lease {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]Lease, 0, len(p.byIP))
	for _, l := range p.byIP {
		out = append(out, *l)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].IP.Less(out[j].IP) })
	return out
}

// load reads a lease file; a missing file is an empty table. Leases outside
// the current range are dropped (the range may have changed).
func (p *pool) load(path string) error {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("dhcp: read leases: %w", err)
	}
	var f leaseFile
	if err := json.Unmarshal(b, &f); err != nil {
		return fmt.Errorf("dhcp: parse leases %s: %w", path, err)
	}
	if f.Version != leaseFileVersion {
		return fmt.Errorf("dhcp: parse leases %s: version %d, want %d", path, f.Version, leaseFileVersion)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, l := range f.Leases {
		mac, err := net.ParseMAC(l.MAC)
		if err != nil || !p.inRange(l.IP) {
			continue
		}
		l.MAC = mac.String()
		l.Bound = true
		if _, dup := p.byIP[l.IP]; dup {
			continue
		}
		if _, dup := p.byMAC[l.MAC]; dup {
			continue
		}
		lc := l
		p.byMAC[l.MAC] = &lc
		p.byIP[l.IP] = &lc
	}
	return nil
}

// save writes the bound leases atomically when the table changed.
func (p *pool) save(path string) error {
	p.mu.Lock()
	if !p.dirty {
		p.mu.Unlock()
		return nil
	}
	f := leaseFile{Version: leaseFileVersion}
	for _, l := range p.byIP {
		if l.Bound {
			f.Leases = append(f.Leases, *l)
		}
	}
	p.dirty = false
	p.mu.Unlock()
	sort.Slice(f.Leases, func(i, j int) bool { return f.Leases[i].IP.Less(f.Leases[j].IP) })
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return fmt.Errorf("dhcp: save leases: %w", err)
	}
	if err := atomicfile.WriteFile(path, append(b, '\n'), 0o600); err != nil {
		p.mu.Lock()
		p.dirty = true
		p.mu.Unlock()
		return fmt.Errorf("dhcp: save leases: %w", err)
	}
	return nil
}
