// Command cm4bench provisions Raspberry Pi Compute Module 4 boards from a
// technician's workstation: USB boot (rpiboot), SPI EEPROM editing and
// flashing, and a network-boot provisioning server with a dashboard.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/cm4bench/cm4bench/cmd/cm4bench/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := cli.Context{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr, Args: os.Args[1:]}.Execute(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "cm4bench:", err)
		os.Exit(cli.ExitCode(err))
	}
}
