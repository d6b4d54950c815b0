// Package emmcpace gives a file-backed target the speed of a real eMMC, for
// the bench twin: writes and reads are paced on one device timeline (an
// eMMC does one thing at a time), at the rates of the board being
// modelled. Discard and zeroing are free, as on an eMMC with TRIM.
package emmcpace

import (
	"sync"
	"time"

	"github.com/cm4bench/cm4bench/netboot/device/blockdev"
)

// Device is a blockdev.Device whose reads and writes take as long as on
// the modelled eMMC.
type Device struct {
	*blockdev.Device
	p *pacer
}

// Wrap paces d at writeMBps and readMBps (10^6 bytes per second; 0 leaves
// that direction unpaced).
func Wrap(d *blockdev.Device, writeMBps, readMBps float64) *Device {
	return &Device{Device: d, p: &pacer{write: perByte(writeMBps), read: perByte(readMBps)}}
}

func perByte(mbps float64) time.Duration {
	if mbps <= 0 {
		return 0
	}
	return time.Duration(float64(time.Second) / (mbps * 1e6) * 1024) // per KiB, to keep precision
}

// WriteAt writes, then waits until the modelled eMMC would have written p.
func (d *Device) WriteAt(p []byte, off int64) (int, error) {
	n, err := d.Device.WriteAt(p, off)
	d.p.wait(n, d.p.write)
	return n, err
}

// OpenDirectReader opens a read handle paced on the same timeline.
func (d *Device) OpenDirectReader() (blockdev.Reader, bool, error) {
	r, direct, err := d.Device.OpenDirectReader()
	if err != nil {
		return nil, false, err
	}
	return &reader{Reader: r, p: d.p}, direct, nil
}

type reader struct {
	blockdev.Reader
	p *pacer
}

func (r *reader) ReadAt(b []byte, off int64) (int, error) {
	n, err := r.Reader.ReadAt(b, off)
	r.p.wait(n, r.p.read)
	return n, err
}

// pacer is the device's timeline: each transfer books its time after the
// previous one, and the caller sleeps until its booking ends.
type pacer struct {
	write, read time.Duration // per KiB
	mu          sync.Mutex
	next        time.Time
}

func (p *pacer) wait(n int, perKiB time.Duration) {
	if perKiB == 0 || n <= 0 {
		return
	}
	p.mu.Lock()
	now := time.Now()
	if p.next.Before(now) {
		p.next = now
	}
	p.next = p.next.Add(time.Duration(float64(perKiB) * float64(n) / 1024))
	d := p.next.Sub(now)
	p.mu.Unlock()
	time.Sleep(d)
}
