package agent

import (
	"bytes"
	"context"
	"os"
	"testing"

	"github.com/cm4bench/cm4bench/netboot/device/blockdev"
)

func fuzzDeploy(t *testing.T, b []byte) {
	disk := newDisk(t, 2<<20, false)
	dev, err := blockdev.Open(disk, true, true)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	res, err := Deploy(context.Background(), dev, ReaderStream(bytes.NewReader(b)), DeployOptions{})
	if err != nil {
		return
	}
	got, _ := os.ReadFile(disk)
	if res.Format == FormatRaw && !bytes.Equal(got[:len(b)], b) {
		t.Fatalf("raw stream of %d bytes not written as is", len(b))
	}
	if !res.Verified || sum(got[:res.Bytes]) != res.SHA256 {
		t.Fatalf("result %+v does not match the disk", res)
	}
}
