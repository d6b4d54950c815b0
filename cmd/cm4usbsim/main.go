// Command cm4usbsim serves simulated Raspberry Pi boards in RPIBOOT mode to
// programs linked against the libusb-1.0 stand-in built from
// usbboot/libusbfake/c. It is a test tool and never part of a release.
//
//	cm4usbsim --socket /tmp/usb.sock --scenario recovery --boards 2 --transcript usb.jsonl &
//	CM4USBSIM_SOCKET=/tmp/usb.sock LD_LIBRARY_PATH=build/libusbfake cm4bench usbboot list
//
// Every board is a usbboottest.Board (the project's simulated CM4) on its own
// port path, 1-1.1, 1-1.2, ..., running on the real clock. The transcript
// (JSON lines) records every setup packet and bulk length the host program
// sent (--transcript-format text for people); --report writes what each board received (files with sha256,
// metadata, protocol violations) when the simulator stops (SIGINT/SIGTERM).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/cm4bench/cm4bench/usbboot/libusbfake"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "cm4usbsim:", err)
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("cm4usbsim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		socket     = fs.String("socket", "", "Unix socket to serve (the clients' CM4USBSIM_SOCKET); required")
		scenario   = fs.String("scenario", "msd", "MODE[,FAULT[=AT]]... or a fault name; see below")
		boards     = fs.Int("boards", 1, "number of boards, on port paths 1-1.1, 1-1.2, ...")
		soc        = fs.String("soc", "2711", "chip: 2711 (CM4), 2712 (CM5) or 2710 (BCM2835/7)")
		twoIfaces  = fs.Bool("two-interfaces", false, "vendor interface second, on EP 0x03 (some 2837 boards)")
		transcript = fs.String("transcript", "", "write the USB transcript to this file")
		format     = fs.String("transcript-format", "jsonl", "transcript format: jsonl (one libusbfake.Record per line) or text")
		report     = fs.String("report", "", "write a JSON report of every board to this file on exit")
		verbose    = fs.Bool("v", false, "log diagnostics to stderr")
	)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: cm4usbsim --socket PATH [flags]\n\nflags:\n")
		fs.PrintDefaults()
		fmt.Fprintf(stderr, "\n%s", scenarioHelp)
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *socket == "" {
		return errors.New("--socket is required")
	}
	if *boards < 1 || *boards > 99 {
		return fmt.Errorf("--boards %d: want 1 to 99", *boards)
	}
	sc, err := parseScenario(*scenario)
	if err != nil {
		return err
	}
	sim, err := newSim(sc, *boards, *soc, *twoIfaces)
	if err != nil {
		return err
	}
	var log *slog.Logger
	if *verbose {
		log = slog.New(slog.NewTextHandler(stderr, nil))
	}
	srv := &libusbfake.Server{Path: *socket, Devices: sim.devices(), Logger: log}
	if *format != "jsonl" && *format != "text" {
		return fmt.Errorf("--transcript-format %q: want jsonl or text", *format)
	}
	if *transcript != "" {
		f, err := os.Create(*transcript)
		if err != nil {
			return fmt.Errorf("transcript: %w", err)
		}
		defer f.Close()
		if *format == "text" {
			srv.OnRecord = func(r libusbfake.Record) { fmt.Fprintln(f, formatRecord(r)) }
		} else {
			srv.Transcript = f
		}
	}
	ready := make(chan struct{})
	srv.Ready = ready
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ctx) }()
	select {
	case <-ready:
		fmt.Fprintf(stdout, "cm4usbsim: serving %d %s board(s), scenario %s, on %s\n", *boards, *soc, *scenario, *socket)
	case err := <-errc:
		return err
	}
	err = <-errc
	if *report != "" {
		if rerr := sim.writeReport(*report); rerr != nil && err == nil {
			err = rerr
		}
	}
	return err
}
