package tftp_test

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"testing"

	"github.com/cm4bench/cm4bench/netboot/tftp"
)

// helperEnv makes the test binary a bare TFTP server (root and address in
// the variable, "ROOT ADDR"), so a benchmark can measure its CPU on its
// own, as it measures dnsmasq's.
const helperEnv = "CM4BENCH_TFTP_HELPER"

func TestMain(m *testing.M) {
	if v := os.Getenv(helperEnv); v != "" {
		var root, addr string
		if _, err := fmt.Sscan(v, &root, &addr); err != nil {
			fmt.Fprintf(os.Stderr, "%s=%q: want \"ROOT ADDR\": %v\n", helperEnv, v, err)
			os.Exit(2)
		}
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
		defer stop()
		if err := (&tftp.Server{Root: root, Addr: addr}).Serve(ctx); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		return
	}
	os.Exit(m.Run())
}
