package agent

import (
	"bytes"
	"context"
	"os"
	"testing"

	"github.com/cm4bench/cm4bench/netboot/device/blockdev"
)

// BenchmarkPipeline measures Deploy alone (stream from memory, no network)
// per format, with and without the read-back verification, into a fresh
// sparse file: where the time of a deploy goes.
func BenchmarkPipeline(b *testing.B) {
	const size = 128 << 20
	img := makeImage(size, 30, 9)
	for _, format := range []string{FormatRaw, FormatZstd, FormatGzip} {
		stream := compress(b, format, img)
		for _, verify := range []bool{false, true} {
			name := format + map[bool]string{false: "/write", true: "/write+verify"}[verify]
			b.Run(name, func(b *testing.B) {
				b.SetBytes(size)
				for b.Loop() {
					disk := newDisk(b, size, false)
					dev, err := blockdev.Open(disk, true, true)
					if err != nil {
						b.Fatal(err)
					}
					if _, err := Deploy(context.Background(), dev, ReaderStream(bytes.NewReader(stream)), DeployOptions{Size: size, NoVerify: !verify}); err != nil {
						b.Fatal(err)
					}
					dev.Close()
					os.Remove(disk)
				}
			})
		}
	}
}
