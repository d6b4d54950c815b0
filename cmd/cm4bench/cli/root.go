// Package cli is the cobra command tree of cm4bench. It is deliberately thin:
// each command binds its flags into an options struct built inside its
// constructor and hands off to a run method, so the whole CLI runs in-process
// in tests through Context.Execute.
package cli

import (
	"context"
	"errors"
	"fmt"
	"github.com/cm4bench/cm4bench/netboot/initramfs/agentbin"
	"io"
	"os"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// Version is set at build time with -ldflags "-X .../cli.Version=v1.2.3".
var Version = "dev"

// Context carries the process environment into the command tree.
type Context struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	Args           []string
	// USB replaces libusb for the usbboot, eeprom and doctor commands
	// (tests and simulations); nil = libusb.
	USB *USBEnv
}

// Execute builds a fresh command tree and runs it.
func (c Context) Execute(ctx context.Context) error {
	root := c.rootCmd()
	if c.Stdin != nil {
		root.SetIn(c.Stdin)
	}
	if c.Stdout != nil {
		root.SetOut(c.Stdout)
	}
	if c.Stderr != nil {
		root.SetErr(c.Stderr)
	}
	root.SetArgs(c.Args)
	return root.ExecuteContext(ctx)
}

// ExitError carries a specific process exit status out of a command.
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string { return e.Err.Error() }
func (e *ExitError) Unwrap() error { return e.Err }

// ExitCode maps an error returned by Execute to a process exit status.
func ExitCode(err error) int {
	if err == nil {
		return 0
	}
	var ee *ExitError
	if errors.As(err, &ee) && ee.Code != 0 {
		return ee.Code
	}
	return 1
}

// RootCmd builds the whole command tree as the cm4bench binary runs it
// (with libusb).
func RootCmd() *cobra.Command { return Context{}.rootCmd() }

func (c Context) rootCmd() *cobra.Command {
	usb := usbAccess{env: c.USB}
	root := &cobra.Command{
		Use:   "cm4bench",
		Short: "Provision Raspberry Pi Compute Module 4 boards at a production bench",
		Long: `cm4bench provisions Raspberry Pi Compute Module 4 boards (and CM4-based devices such
as the Seeed reTerminal) from one workstation with a USB cable and an Ethernet switch.

  USB:      cm4bench usbboot        boot a CM4 held in RPIBOOT mode (mass storage,
                                    any boot directory, or the EEPROM updater)
  EEPROM:   cm4bench eeprom         read and edit SPI bootloader images byte-exact
                                    with rpi-eeprom-config, set BOOT_ORDER and flash
  Network:  cm4bench netboot serve  DHCP + TFTP + HTTP API and dashboard: netbooted
                                    boards register, the technician clicks Deploy or
                                    Backup, and netboot is switched off when done`,
		Example: `  cm4bench eeprom show pieeprom.bin
  cm4bench eeprom set-boot-order --image pieeprom.bin --recovery recovery.bin
  cm4bench usbboot --mode msd
  cm4bench netboot serve --iface eth1 --tftp-root /srv/tftp --data /var/lib/cm4bench`,
		SilenceErrors: true,
		SilenceUsage:  true,
		Version:       version(),
	}
	root.SetVersionTemplate("cm4bench {{.Version}}\n" + agentsLine() + "\n")
	root.PersistentFlags().Bool("json", false, "machine-readable JSON output (reports) and JSON logs (servers)")
	root.PersistentFlags().String("log-level", "info", "log level: debug, info, warn or error")
	root.AddGroup(
		&cobra.Group{ID: "usb", Title: "USB boot:"},
		&cobra.Group{ID: "eeprom", Title: "Bootloader EEPROM:"},
		&cobra.Group{ID: "net", Title: "Network provisioning:"},
		&cobra.Group{ID: "line", Title: "Production line:"},
		&cobra.Group{ID: "bench", Title: "Workstation:"},
	)
	for _, c := range []struct {
		group string
		cmd   *cobra.Command
	}{
		{"usb", newUSBBootCmd(usb)},
		{"usb", newFirmwareCmd()},
		{"eeprom", newEEPROMCmd(usb)},
		{"eeprom", newBootimgCmd()},
		{"eeprom", newSecureBootCmd(usb)},
		{"net", newNetbootCmd()},
		{"net", newDeviceCmd()},
		{"net", newImageCmd()},
		{"line", newRecipeCmd()},
		{"line", newRuleCmd()},
		{"line", newLedgerCmd()},
		{"line", newWebhookCmd()},
		{"net", newBackupCmd()},
		{"net", newSimCmd()},
		{"bench", newDoctorCmd(usb)},
		{"bench", newManCmd()},
		{"net", newTokenCmd()},
	} {
		c.cmd.GroupID = c.group
		root.AddCommand(c.cmd)
	}
	root.AddCommand(newVersionCmd())
	markUsageErrors(root)
	return root
}

// markUsageErrors makes every argument and flag error exit with status 2,
// as the documentation says usage errors do (cobra returns plain errors).
func markUsageErrors(c *cobra.Command) {
	c.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &ExitError{Code: 2, Err: err} })
	if args := c.Args; args != nil {
		c.Args = func(cmd *cobra.Command, a []string) error {
			if err := args(cmd, a); err != nil {
				return &ExitError{Code: 2, Err: err}
			}
			return nil
		}
	}
	for _, sub := range c.Commands() {
		markUsageErrors(sub)
	}
}

// agentsLine says whether this binary can build the netboot initramfs on
// its own: `go install` builds lack the embedded cm4agent.
func agentsLine() string {
	if agentbin.Embedded {
		return "cm4agent: embedded (arm64, amd64)"
	}
	return "cm4agent: not embedded (this is a plain `go install` build): netboot serve --prepare-tftp-root and netboot initramfs\n" +
		"  need --agent FILE; for a complete binary install the .deb (make deb) or build with `make build`"
}

func version() string {
	v := Version
	if bi, ok := debug.ReadBuildInfo(); ok && v == "dev" {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				v = "dev-" + s.Value[:12]
			}
		}
	}
	return v
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the cm4bench version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if wantJSON(cmd) {
				return writeJSON(cmd.OutOrStdout(), map[string]any{"version": version(), "agents_embedded": agentbin.Embedded})
			}
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "cm4bench %s\n%s\n", version(), agentsLine())
			return err
		},
	}
}

// isRoot reports whether the process runs with uid 0.
func isRoot() bool { return os.Geteuid() == 0 }
