package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/cm4bench/cm4bench/eeprom"
	"github.com/cm4bench/cm4bench/eeprom/recoverydir"
	"github.com/spf13/cobra"
)

// secureProvisionOptions are the flags of "secure-boot provision": those
// of set-boot-order (image, recovery.bin, bootfiles, board selection,
// flashing), the signing key, the OTP options and their guards.
type secureProvisionOptions struct {
	setBootOrderOptions
	Order      string                 // --boot-order
	Key        eepromDigestOptions    // --key, --pubkey, --sign-command
	OTP        recoverydir.OTPOptions // --program-pubkey, --revoke-devkey, --program-jtag-lock, --eeprom-write-protect
	ConfirmOTP bool                   // --confirm-otp
	DryRun     bool                   // --dry-run
	Bootcode   string                 // --bootcode (2712)
	Bootsys    string                 // --bootsys (2712)
}

func newSecureBootCmd(usb usbAccess) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "secure-boot",
		Short: "Lock boards to your key: signed bootloader and OTP key provisioning over USB",
		Long: `secure-boot provisions Raspberry Pi secure boot on boards in RPIBOOT mode, in parallel.

WARNING: the OTP options change the chip for good. A board whose OTP holds your key hash boots
only a bootloader config and boot.img signed with your private key, for the rest of its life.
Lose the key and the board cannot be updated again. Try the signed bootloader first without
--program-pubkey (SIGNED_BOOT=1 alone can still be undone over USB), netboot a signed boot.img,
and only then burn the key.`,
	}
	cmd.AddCommand(newSecureProvisionCmd(usb))
	return cmd
}

func newSecureProvisionCmd(usb usbAccess) *cobra.Command {
	o := &secureProvisionOptions{}
	o.command = "secure-boot provision"
	cmd := &cobra.Command{
		Use:   "provision --key KEY [--program-pubkey ...] (--dry-run | --confirm-otp | --serial S...)",
		Short: "Flash a signed bootloader and program the key hash into OTP, over USB",
		Long: `provision builds the secure-boot recovery set and flashes it to every selected board at once:

  pieeprom.bin   IMAGE with BOOT_ORDER (--boot-order, default 0xf21) and SIGNED_BOOT=1 in its
                 config, the config signed with your key (bootconf.sig) and your public key
                 stored as pubkey.bin, as usbboot's secure-boot-recovery "update-pieeprom.sh -k"
                 builds it; on a CM5 (2 MiB image) also --bootcode/--bootsys, your countersigned
                 firmware
  pieeprom.sig   its sha256 and timestamp
  config.txt     recovery.bin's options: metadata on, and one line per OTP option asked for
  bootcode4.bin  recovery.bin for the image's SoC (bootcode5.bin on CM5); SDRAM files as for
                 set-boot-order

The OTP options are each their own flag, and none is on by default:
  --program-pubkey        write the sha256 of pubkey.bin into OTP: secure boot is on for good
  --revoke-devkey         revoke the ROM development key (no downgrade to an old bootloader)
  --program-jtag-lock     disable VideoCore JTAG (needs --revoke-devkey)
  --eeprom-write-protect  set the SPI flash write-protect regions (effective with /WP held low)

Nothing that writes OTP is served without --confirm-otp, or, on a terminal session, without the
technician typing the serial of every board given with --serial. --dry-run writes the set
(--out-dir, or a temporary directory) and prints exactly what each board would receive, and
serves nothing.

The signing key is --key private.pem, --key pkcs11:token=T;object=K (an HSM or SoftHSM), or
--sign-command CMD with --pubkey (an HSM wrapper, as rpi-eeprom-digest -H). With --pubkey the
key must match it. The key must be RSA-2048, and the image a bootloader from 2021-09 or later.

A board counts as provisioned when recovery.bin reports EEPROM_UPDATE=success with the image's
EEPROM_HASH and, with --program-pubkey, CUSTOMER_KEY_HASH equal to the sha256 of our pubkey.bin
and SECURE_BOOT_PROVISION=success. A board that reports another key hash is failed: it is locked
to someone else's key and takes nothing signed with ours. Exit status as for usbboot.`,
		Example: `  cm4bench secure-boot provision --key private.pem --image pieeprom.bin --dry-run --program-pubkey --out-dir sb
  cm4bench secure-boot provision --key private.pem --image pieeprom.bin                 # signed config only: reversible
  cm4bench secure-boot provision --key private.pem --program-pubkey --revoke-devkey --confirm-otp
  cm4bench secure-boot provision --key 'pkcs11:token=line;object=sb' --program-pubkey --serial af04b2da`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.run(cmd.Context(), wantJSON(cmd), cmd.InOrStdin(), cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Image, "image", "", "bootloader image `FILE` to start from (default: pieeprom-2026-05-17.bin from the firmware cache)")
	f.StringVar(&o.Recovery, "recovery", "", "recovery.bin `FILE` for the image's SoC (default: the firmware cache)")
	f.StringVar(&o.BootFiles, "bootfiles", "", "usbboot's bootfiles.bin `FILE`, for mcb.bin/memsys*.bin/bootmain (default: the firmware cache, if it holds it)")
	f.StringVar(&o.OutDir, "out-dir", "", "write the recovery set to `DIR` (default: a temporary directory)")
	f.Var(&o.Timestamp, "timestamp", "ts: of the .sig files in `UNIX` seconds, base 10 (default $SOURCE_DATE_EPOCH or now)")
	f.BoolVar(&o.UART, "uart", false, "have recovery.bin log on the UART (GPIO14/15, 115200 baud)")
	f.StringVar(&o.Cache, "cache", "", "firmware cache `DIR` for the default image, recovery.bin and bootfiles.bin")
	f.StringVar(&o.Order, "boot-order", defaultBootOrder, "BOOT_ORDER to set in the signed config")
	f.StringVarP(&o.Key.key, "key", "k", "", "RSA-2048 private key `PEM`, or a PKCS#11 URI pkcs11:token=T;object=K, that signs")
	f.StringVar(&o.Key.pubkey, "pubkey", "", "the public key `PEM` that goes into the image and OTP (must match the signing key)")
	f.StringVar(&o.Key.signCommand, "sign-command", "", "HSM wrapper `CMD` that signs instead of --key (needs --pubkey)")
	f.BoolVar(&o.OTP.ProgramPubkey, "program-pubkey", false, "OTP, irreversible: program the key hash (program_pubkey=1)")
	f.BoolVar(&o.OTP.RevokeDevkey, "revoke-devkey", false, "OTP, irreversible: revoke the ROM development key (revoke_devkey=1)")
	f.BoolVar(&o.OTP.JTAGLock, "program-jtag-lock", false, "OTP, irreversible: disable VideoCore JTAG (program_jtag_lock=1)")
	f.BoolVar(&o.OTP.WriteProtect, "eeprom-write-protect", false, "set the SPI flash write-protect regions (eeprom_write_protect=1)")
	f.BoolVar(&o.ConfirmOTP, "confirm-otp", false, "confirm the OTP options for every selected board (irreversible)")
	f.BoolVar(&o.DryRun, "dry-run", false, "write the set and print what each board would receive; serve nothing")
	f.StringVar(&o.Bootcode, "bootcode", "", "customer-countersigned bootcode.bin `FILE` (BCM2712 only)")
	f.StringVar(&o.Bootsys, "bootsys", "", "customer-countersigned bootsys `FILE` (BCM2712 only)")
	cmd.MarkFlagsMutuallyExclusive("key", "sign-command")
	cmd.MarkFlagsMutuallyExclusive("dry-run", "confirm-otp")
	o.usbServeFlags.bind(cmd)
	o.usb = usb
	o.usbServeFlags.bindFlash(cmd)
	return cmd
}

// confirm guards the OTP options: --confirm-otp, or the serial of every
// --serial board typed back. It runs before anything is written.
func (o *secureProvisionOptions) confirm(stdin io.Reader, stderr io.Writer) error {
	burn := o.OTP.Irreversible()
	if len(burn) == 0 || o.DryRun || o.ConfirmOTP {
		return nil
	}
	what := strings.Join(burn, ", ")
	if len(o.Serials) == 0 {
		return &ExitError{Code: 2, Err: fmt.Errorf("secure-boot provision: %s change the chip for good: pass --confirm-otp, or select the boards with --serial S and type each serial when asked (--dry-run shows what they would receive)", what)}
	}
	fmt.Fprintf(stderr, "%s change the chip for good (no undo).\n", what)
	in := bufio.NewScanner(stdin)
	for _, s := range o.Serials {
		fmt.Fprintf(stderr, "Type the serial of the board to burn (%s): ", s)
		if !in.Scan() {
			return &ExitError{Code: 2, Err: fmt.Errorf("secure-boot provision: not confirmed: no serial typed for %s", s)}
		}
		if got := strings.TrimSpace(in.Text()); !strings.EqualFold(got, s) {
			return &ExitError{Code: 2, Err: fmt.Errorf("secure-boot provision: not confirmed: typed %q for board %s", got, s)}
		}
	}
	return nil
}

func (o *secureProvisionOptions) run(ctx context.Context, asJSON bool, stdin io.Reader, stdout, stderr io.Writer) error {
	if err := o.confirm(stdin, stderr); err != nil {
		return err
	}
	spec, err := o.spec(ctx, o.Order)
	if err != nil {
		return err
	}
	s, want, done, err := o.Key.signer("secure-boot provision", "")
	if err != nil {
		return err
	}
	defer done()
	if want == nil {
		if want, err = eeprom.CheckSigningKey(s.Public()); err != nil {
			return &ExitError{Code: 2, Err: fmt.Errorf("secure-boot provision: signing key: %w", err)}
		}
	}
	spec.Secure = &recoverydir.Secure{Signer: s, PublicKey: want, OTP: o.OTP}
	for _, x := range []struct {
		path string
		dst  *[]byte
	}{{o.Bootcode, &spec.Secure.Bootcode}, {o.Bootsys, &spec.Secure.Bootsys}} {
		if x.path == "" {
			continue
		}
		if *x.dst, err = os.ReadFile(x.path); err != nil {
			return fmt.Errorf("secure-boot provision: %w", err)
		}
	}
	if !o.DryRun {
		// Fail before writing anything when there is no USB to flash over.
		if err := o.usbServeFlags.preflight(ctx); err != nil {
			return err
		}
	}
	dir := o.OutDir
	if dir == "" {
		tmp, err := os.MkdirTemp("", "cm4bench-secure-boot-")
		if err != nil {
			return fmt.Errorf("secure-boot provision: %w", err)
		}
		defer os.RemoveAll(tmp)
		dir = tmp
	}
	rd, err := recoverydir.Build(spec, dir)
	if err != nil {
		if errors.Is(err, eeprom.ErrKey) {
			return &ExitError{Code: 2, Err: fmt.Errorf("secure-boot provision: %w", err)}
		}
		return fmt.Errorf("secure-boot provision: %w", err)
	}
	if o.DryRun {
		return o.printPlan(rd, asJSON, stdout, stderr)
	}
	if !asJSON {
		for _, w := range rd.Warnings {
			fmt.Fprintf(stderr, "warning: %s\n", w)
		}
		burn := "no OTP changes"
		if b := o.OTP.Irreversible(); len(b) > 0 {
			burn = "OTP: " + strings.Join(b, ", ")
		}
		fmt.Fprintf(stderr, "provisioning key %s (%s), pieeprom.bin sha256 %s: waiting for BCM%d boards in RPIBOOT mode\n",
			rd.Secure.KeyHash, burn, rd.ImageSHA256, rd.SoC)
	}
	_, err = flashRecoveryDir(ctx, &o.usbServeFlags, rd, stdout, stderr)
	return err
}

// printPlan is --dry-run's report: who would get what.
func (o *secureProvisionOptions) printPlan(rd recoverydir.Dir, asJSON bool, stdout, stderr io.Writer) error {
	conf, err := os.ReadFile(filepath.Join(rd.Dir, "config.txt"))
	if err != nil {
		return fmt.Errorf("secure-boot provision: %w", err)
	}
	boards := "every board in RPIBOOT mode"
	if len(o.Serials) > 0 || len(o.Ports) > 0 {
		boards = "boards " + strings.Join(append(append([]string(nil), o.Serials...), o.Ports...), ", ")
	}
	if asJSON {
		return writeJSON(stdout, map[string]any{"dry_run": true, "boards": boards, "recovery": rd, "config_txt": string(conf),
			"otp": o.OTP.Irreversible()})
	}
	for _, w := range rd.Warnings {
		fmt.Fprintf(stderr, "warning: %s\n", w)
	}
	fmt.Fprintf(stdout, "dry run: nothing is served. %s would receive (%s):\n", boards, rd.Dir)
	for _, f := range rd.Files {
		fmt.Fprintf(stdout, "  %-14s %7d  sha256 %s\n", f.Name, f.Size, f.SHA256)
	}
	fmt.Fprintf(stdout, "key hash (CUSTOMER_KEY_HASH once programmed): %s\n", rd.Secure.KeyHash)
	if b := o.OTP.Irreversible(); len(b) > 0 {
		fmt.Fprintf(stdout, "OTP, irreversible: %s\n", strings.Join(b, ", "))
	} else {
		fmt.Fprintln(stdout, "OTP: nothing (a signed config only; it can be flashed over again)")
	}
	fmt.Fprintf(stdout, "config.txt:\n%s", conf)
	return nil
}
