package emmcpace

import (
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/cm4bench/cm4bench/netboot/device/blockdev"
)

// Writing 8 MB at 40 MB/s and reading 9 MB at 90 MB/s share one timeline:
// at least 0.2 s + 0.1 s together, although they run at once.
func TestPace(t *testing.T) {
	p := filepath.Join(t.TempDir(), "emmc.img")
	os.WriteFile(p, make([]byte, 16<<20), 0o644)
	bd, err := blockdev.Open(p, true, true)
	if err != nil {
		t.Fatal(err)
	}
	defer bd.Close()
	d := Wrap(bd, 40, 90)
	r, _, err := d.OpenDirectReader()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	buf := blockdev.AlignedBuffer(1 << 20)
	const rd = 1000000 - 1000000%4096
	start := time.Now()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for i := range 8 {
			if _, err := d.WriteAt(buf[:1e6], int64(i)<<20); err != nil {
				t.Error(err)
			}
		}
	}()
	go func() {
		defer wg.Done()
		for i := range 9 {
			if _, err := blockdev.ReadFullAt(r, buf[:rd], int64(i)<<20); err != nil {
				t.Error(err)
			}
		}
	}()
	wg.Wait()
	got := time.Since(start)
	want := 8e6/40e6 + 9*float64(rd)/90e6
	// the pace is a floor; a loaded machine only adds to it
	if got < time.Duration(want*0.95*float64(time.Second)) || got > time.Duration((want+3)*float64(time.Second)) {
		t.Errorf("took %s, want at least %.2f s (and not far more)", got, want)
	}
	if _, err := Wrap(bd, 0, 0).WriteAt(buf[:4096], 0); err != nil {
		t.Error(err)
	}
}
