package libusbfake_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"
)

// BenchmarkShimBulk16K measures what one 16 KiB bulk OUT transfer (the
// rpiboot chunk) costs through the stand-in library, socket and server,
// with libusb's synchronous call and with the asynchronous submit +
// handle_events path gousb uses. There is no peer: real libusb needs real
// hardware. It shows the shim is far faster than a USB 2.0 bus (~40 MB/s).
func BenchmarkShimBulk16K(b *testing.B) {
	const chunks = 256 // 4 MiB per program run
	artifacts(b)       // build outside the timed part
	for _, mode := range []string{"bulk", "async"} {
		b.Run(mode, func(b *testing.B) {
			dev := &testDevice{attached: true, address: 9}
			socket, _ := startServer(b, dev)
			args := []string{"1-2.4", "claim:1"}
			for range chunks {
				args = append(args, fmt.Sprintf("%s:3:4000:3e8", mode))
			}
			b.ResetTimer()
			start := time.Now()
			for range b.N {
				out := probe(b, context.Background(), socket, args...)
				if strings.Count(out, "16384") != chunks {
					b.Fatalf("probe output:\n%s", out)
				}
			}
			el := time.Since(start)
			b.ReportMetric(float64(b.N*chunks*16384)/el.Seconds()/1e6, "MB/s")
			b.ReportMetric(float64(el.Microseconds())/float64(b.N*chunks), "µs/chunk")
		})
	}
}
