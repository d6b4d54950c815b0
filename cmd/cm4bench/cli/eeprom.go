package cli

import (
	"context"
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/cm4bench/cm4bench/eeprom"
	"github.com/cm4bench/cm4bench/eeprom/pkcs11signer"
	"github.com/cm4bench/cm4bench/eeprom/signer"
	"github.com/cm4bench/cm4bench/internal/atomicfile"
	"github.com/spf13/cobra"
)

func newEEPROMCmd(usb usbAccess) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "eeprom",
		Short: "Read and edit Raspberry Pi bootloader EEPROM images, byte-exact with rpi-eeprom-config",
		Long: `The eeprom commands read and edit the SPI bootloader images of the Raspberry Pi 4 / CM4
(pieeprom-*.bin, 512 KiB, BCM2711) and Pi 5 / CM5 (2 MiB, BCM2712) without Python. Their output is
byte for byte what the upstream rpi-eeprom-config and rpi-eeprom-digest scripts produce.

A CM4 only network-boots when its bootloader config says so (BOOT_ORDER=0xf21: eMMC, then network,
then restart). set-boot-order writes a ready recovery directory that flashes such an image over USB.

Every output file is written atomically (temporary file, fsync, rename): a failed run leaves no
empty or partial file behind.`,
		Example: `  cm4bench eeprom show pieeprom.bin
  cm4bench eeprom info pieeprom.bin --json
  cm4bench eeprom set pieeprom.bin BOOT_ORDER=0xf21 BOOT_UART=1 --out pieeprom-new.bin
  cm4bench eeprom set-boot-order --image pieeprom.bin --recovery recovery.bin --out-dir recovery --no-flash`,
	}
	cmd.AddCommand(
		newEEPROMShowCmd(),
		newEEPROMInfoCmd(),
		newEEPROMConfigCmd(),
		newEEPROMSetCmd(),
		newEEPROMDigestCmd(),
		newEEPROMSetBootOrderCmd(usb),
	)
	return cmd
}

// readImageFile reads and parses a bootloader image, refusing files of the
// wrong size before reading them.
func readImageFile(path string) (*eeprom.Image, []byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, nil, fmt.Errorf("read image: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, nil, fmt.Errorf("read image %s: not a regular file", path)
	}
	if n := fi.Size(); n != eeprom.Size2711 && n != eeprom.Size2712 {
		return nil, nil, fmt.Errorf("%s: eeprom: image is %d bytes, want %d (BCM2711) or %d (BCM2712): %w",
			path, n, eeprom.Size2711, eeprom.Size2712, eeprom.ErrImageSize)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("read image: %w", err)
	}
	im, err := eeprom.Parse(data)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	return im, data, nil
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// ---- show ----

type eepromShowOptions struct {
	out string // write the config here instead of stdout
}

func newEEPROMShowCmd() *cobra.Command {
	opts := &eepromShowOptions{}
	cmd := &cobra.Command{
		Use:   "show IMAGE",
		Short: "Print the bootloader config (bootconf.txt) of an image",
		Long: `show prints the bootconf.txt embedded in IMAGE exactly as stored, byte for byte what
"rpi-eeprom-config IMAGE" prints. Nothing else is printed, so the output can be edited and
applied again with "cm4bench eeprom config --apply".`,
		Example: `  cm4bench eeprom show pieeprom-2026-05-17.bin
  cm4bench eeprom show pieeprom.bin -o boot.conf`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return opts.run(cmd.Context(), args[0], wantJSON(cmd), cmd.OutOrStdout())
		},
	}
	cmd.Flags().StringVarP(&opts.out, "out", "o", "", "write the config to `FILE` instead of stdout")
	return cmd
}

func (o *eepromShowOptions) run(_ context.Context, image string, asJSON bool, stdout io.Writer) error {
	im, _, err := readImageFile(image)
	if err != nil {
		return err
	}
	conf, err := im.BootConf()
	if err != nil {
		return fmt.Errorf("%s: %w", image, err)
	}
	if o.out != "" {
		if err := atomicfile.WriteFile(o.out, conf, 0o644); err != nil {
			return err
		}
	}
	switch {
	case asJSON:
		return writeJSON(stdout, map[string]any{"image": image, "config": string(conf), "size": len(conf)})
	case o.out == "":
		_, err = stdout.Write(conf)
		return err
	}
	return nil
}

// ---- info ----

type eepromInfoOptions struct{}

// eepromInfo is the --json report of eeprom info.
type eepromInfo struct {
	Image     string               `json:"image"`
	Size      int                  `json:"size"`
	SoC       int                  `json:"soc"`
	SHA256    string               `json:"sha256"`
	Build     eeprom.BuildInfo     `json:"build"`
	BootConf  *eeprom.BootConfSlot `json:"bootconf,omitempty"`
	BootOrder string               `json:"boot_order,omitempty"`
	Modes     []string             `json:"boot_modes,omitempty"`
	Timestamp *uint32              `json:"update_timestamp,omitempty"`
	Sections  []infoSection        `json:"sections"`
	Warnings  []string             `json:"warnings,omitempty"`
}

type infoSection struct {
	Offset int    `json:"offset"`
	Magic  string `json:"magic"`
	Kind   string `json:"kind"`
	Length int    `json:"length"`
	Name   string `json:"name,omitempty"`
}

func newEEPROMInfoCmd() *cobra.Command {
	opts := &eepromInfoOptions{}
	return &cobra.Command{
		Use:   "info IMAGE",
		Short: "List the sections of an image, its config size and free space",
		Long: `info walks the section chain of IMAGE and prints every section (offset, magic, kind,
length, file name), the build version, where bootconf.txt sits, how large it is and how much it may
grow, the effective BOOT_ORDER, and the update timestamp. With --json the same as one JSON object.

The config's free space depends on the release: bootconf.txt may grow up to 4076 bytes, or less
when it sits close to the reserved last 4 KiB (the 2025-07 releases allowed only 1512 bytes).`,
		Example: `  cm4bench eeprom info pieeprom-2026-05-17.bin
  cm4bench eeprom info pieeprom.bin --json | jq .bootconf.free`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return opts.run(cmd.Context(), args[0], wantJSON(cmd), cmd.OutOrStdout())
		},
	}
}

func (o *eepromInfoOptions) run(_ context.Context, image string, asJSON bool, stdout io.Writer) error {
	im, data, err := readImageFile(image)
	if err != nil {
		return err
	}
	info := eepromInfo{Image: image, Size: im.Size(), SoC: im.SoC(), SHA256: sha256Hex(data), Build: im.BuildInfo()}
	for _, s := range im.Sections() {
		info.Sections = append(info.Sections, infoSection{
			Offset: s.Offset, Magic: fmt.Sprintf("0x%08x", uint32(s.Magic)), Kind: s.Magic.String(), Length: s.Length, Name: s.Name,
		})
	}
	if slot, err := im.BootConfSlot(); err == nil {
		info.BootConf = &slot
	} else {
		info.Warnings = append(info.Warnings, err.Error())
	}
	if conf, err := im.BootConf(); err == nil {
		if v, ok := eeprom.ParseConfig(conf).Get("BOOT_ORDER"); ok {
			info.BootOrder = v
			if modes, err := eeprom.BootModes(v); err == nil {
				info.Modes = modes
			} else {
				info.Warnings = append(info.Warnings, err.Error())
			}
		}
	}
	if ts, ok := im.Timestamp(); ok {
		info.Timestamp = &ts
	}
	if asJSON {
		return writeJSON(stdout, info)
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "image:\t%s\n", image)
	fmt.Fprintf(tw, "size:\t%d bytes (BCM%d)\n", info.Size, info.SoC)
	fmt.Fprintf(tw, "sha256:\t%s\n", info.SHA256)
	if b := info.Build; b.Timestamp != 0 || b.Version != "" {
		fmt.Fprintf(tw, "build:\t%s version %s, BUILD_TIMESTAMP=%d\n", or(b.Date, "-"), or(b.Version, "-"), b.Timestamp)
	}
	if s := info.BootConf; s != nil {
		fmt.Fprintf(tw, "bootconf.txt:\t%d bytes at 0x%x, max %d (limit 0x%x), free %d\n", s.Size, s.Offset, s.Max, s.Limit, s.Free)
	}
	if info.BootOrder != "" {
		fmt.Fprintf(tw, "BOOT_ORDER:\t%s (%s)\n", info.BootOrder, strings.Join(info.Modes, ", "))
	} else {
		fmt.Fprintf(tw, "BOOT_ORDER:\tnot set (bootloader default 0xf41: SD CARD/eMMC, USB-MSD, RESTART)\n")
	}
	if info.Timestamp != nil {
		fmt.Fprintf(tw, "update timestamp:\t%d (%s)\n", *info.Timestamp, time.Unix(int64(*info.Timestamp), 0).UTC().Format(time.RFC3339))
	} else {
		fmt.Fprintf(tw, "update timestamp:\tnot set\n")
	}
	for _, w := range info.Warnings {
		fmt.Fprintf(tw, "warning:\t%s\n", w)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "\n%d sections:\n", len(info.Sections))
	tw = tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "  OFFSET\tMAGIC\tKIND\tLENGTH\tNAME\n")
	for _, s := range info.Sections {
		fmt.Fprintf(tw, "  0x%06x\t%s\t%s\t%7d\t%s\n", s.Offset, s.Magic, s.Kind, s.Length, s.Name)
	}
	return tw.Flush()
}

// ---- config ----

type eepromConfigOptions struct {
	apply     string        // new bootconf.txt to write into the image
	out       string        // output image (with --apply) or config file
	timestamp timestampFlag // unset: leave the timestamp slot alone
	digest    string        // bootconf.sig to store (secure boot)
	pubkey    string        // public key PEM to store as pubkey.bin
	cacert    string        // cacert.der to store (HTTP boot over TLS)
	extract   string        // a folder to write bootconf.txt, bootconf.sig and pubkey.bin into
	bootcode  string        // customer-countersigned bootcode.bin (2712 secure boot)
	bootsys   string        // customer-countersigned bootsys (2712 secure boot)
}

func newEEPROMConfigCmd() *cobra.Command {
	opts := &eepromConfigOptions{}
	cmd := &cobra.Command{
		Use:   "config IMAGE --apply CONF --out OUT",
		Short: "Replace the bootloader config of an image (rpi-eeprom-config --config)",
		Long: `config --apply CONF --out OUT writes a copy of IMAGE whose bootconf.txt is the file CONF,
byte for byte what "rpi-eeprom-config --config CONF --out OUT IMAGE" writes. CONF is taken verbatim
(line endings included). Writing back the config "show" printed gives an identical image.

CONF may hold up to 4076 bytes, less when the image leaves less room before its reserved last
4 KiB ("cm4bench eeprom info" shows the free space). Unlike upstream, which lets the config's last
4 bytes spill into the reserved sector, cm4bench refuses a config that does not fit entirely.

Without --apply, config writes the current config to --out (or stdout), as upstream does.
--timestamp N also stores N as the update timestamp (rpi-eeprom-config --timestamp).

Secure boot (rpi-eeprom-config --digest/--pubkey): --digest SIG stores the config's signed digest
(cm4bench eeprom digest CONF --key private.pem) as bootconf.sig and --pubkey PEM stores the
RSA-2048 public key as pubkey.bin; --cacertder DER stores cacert.der for HTTPS boot. The digest
must be of CONF, and its rsa2048 line must verify with --pubkey: a mismatch is refused before
anything is written. --bootcode FILE and --bootsys FILE (BCM2712, CM5, only, as upstream) replace
the second-stage bootcode and the bootsys firmware with customer-countersigned copies; a 2711
image is refused. --extract DIR writes bootconf.txt, bootconf.sig, pubkey.bin, cacert.der and,
on a 2712 image, bootcode.bin and bootsys out.`,
		Example: `  cm4bench eeprom show pieeprom.bin > boot.conf
  $EDITOR boot.conf
  cm4bench eeprom config pieeprom.bin --apply boot.conf --out pieeprom-new.bin
  cm4bench eeprom digest boot.conf --key private.pem --pubkey public.pem -o boot.conf.sig
  cm4bench eeprom config pieeprom.bin --apply boot.conf --digest boot.conf.sig --pubkey public.pem --out pieeprom-signed.bin
  cm4bench eeprom config pieeprom-signed.bin --extract signed/`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return opts.run(cmd.Context(), args[0], wantJSON(cmd), cmd.OutOrStdout())
		},
	}
	cmd.Flags().StringVar(&opts.apply, "apply", "", "bootconf.txt `FILE` to write into the image")
	cmd.Flags().StringVarP(&opts.out, "out", "o", "", "output `FILE` (the new image with --apply)")
	cmd.Flags().Var(&opts.timestamp, "timestamp", "also set the update timestamp to `UNIX` seconds (base 10, as rpi-eeprom-config)")
	cmd.Flags().StringVar(&opts.digest, "digest", "", "signed digest `SIG` of the config to store as bootconf.sig (secure boot)")
	cmd.Flags().StringVar(&opts.pubkey, "pubkey", "", "RSA-2048 public key `PEM` to store as pubkey.bin (secure boot)")
	cmd.Flags().StringVar(&opts.cacert, "cacertder", "", "`DER` certificate to store as cacert.der (HTTPS boot)")
	cmd.Flags().StringVar(&opts.extract, "extract", "", "write bootconf.txt, bootconf.sig and pubkey.bin into `DIR`")
	cmd.Flags().StringVar(&opts.bootcode, "bootcode", "", "customer-signed bootcode.bin `FILE` to store (BCM2712 secure boot only)")
	cmd.Flags().StringVar(&opts.bootsys, "bootsys", "", "customer-signed bootsys `FILE` to store (BCM2712 secure boot only)")
	return cmd
}

// extractFiles writes an image's config, signature and key files out.
func (o *eepromConfigOptions) extractFiles(image string, asJSON bool, stdout io.Writer) error {
	im, _, err := readImageFile(image)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(o.extract, 0o755); err != nil {
		return err
	}
	var wrote []string
	names := []string{eeprom.BootConfName, "bootconf.sig", "pubkey.bin", "cacert.der"}
	if im.SoC() == 2712 {
		names = append(names, "bootcode.bin", eeprom.BootsysName)
	}
	for _, name := range names {
		var b []byte
		var err error
		if name == "bootcode.bin" {
			s := im.Sections()[0]
			b = im.Bytes()[s.Offset+8 : s.End()]
		} else {
			b, err = im.File(name)
		}
		if errors.Is(err, eeprom.ErrNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		p := filepath.Join(o.extract, name)
		if err := atomicfile.WriteFile(p, b, 0o644); err != nil {
			return err
		}
		wrote = append(wrote, p)
	}
	if asJSON {
		return writeJSON(stdout, map[string]any{"image": image, "files": wrote})
	}
	for _, p := range wrote {
		fmt.Fprintln(stdout, p)
	}
	return nil
}

// secureFiles stores the signed digest, public key and CA certificate,
// after checking that the digest is of this config and verifies with the
// key: a mismatch would brick the update on a locked board.
func (o *eepromConfigOptions) secureFiles(im *eeprom.Image, conf []byte) error {
	var pub *rsa.PublicKey
	if o.pubkey != "" {
		b, err := os.ReadFile(o.pubkey)
		if err != nil {
			return err
		}
		if pub, err = eeprom.ParsePublicKey(b); err != nil {
			return &ExitError{Code: 2, Err: fmt.Errorf("eeprom config: --pubkey %s: %w", o.pubkey, err)}
		}
		pk, _ := eeprom.PubKeyBin(pub)
		if err := im.SetFile("pubkey.bin", pk); err != nil {
			return fmt.Errorf("eeprom config: store pubkey.bin: %w", err)
		}
	}
	if o.digest != "" {
		sig, err := os.ReadFile(o.digest)
		if err != nil {
			return err
		}
		if err := eeprom.VerifyDigest(sig, sha256.Sum256(conf), pub); err != nil {
			return &ExitError{Code: 2, Err: fmt.Errorf("eeprom config: --digest %s does not sign this config with this key: %w", o.digest, err)}
		}
		if err := im.SetFile("bootconf.sig", sig); err != nil {
			return fmt.Errorf("eeprom config: store bootconf.sig: %w", err)
		}
	}
	for _, f := range []struct{ path, name string }{{o.bootcode, "bootcode.bin"}, {o.bootsys, eeprom.BootsysName}} {
		if f.path == "" {
			continue
		}
		if im.SoC() != 2712 {
			return &ExitError{Code: 2, Err: fmt.Errorf("eeprom config: --%s is for BCM2712 (CM5) images only, this is a BCM%d image",
				strings.TrimSuffix(f.name, ".bin"), im.SoC())}
		}
		b, err := os.ReadFile(f.path)
		if err != nil {
			return err
		}
		if f.name == "bootcode.bin" {
			err = im.SetBootcode(b)
		} else {
			err = im.SetFile(f.name, b)
		}
		if err != nil {
			return fmt.Errorf("eeprom config: store %s: %w", f.name, err)
		}
	}
	if o.cacert != "" {
		der, err := os.ReadFile(o.cacert)
		if err != nil {
			return err
		}
		if _, err := x509.ParseCertificate(der); err != nil {
			return &ExitError{Code: 2, Err: fmt.Errorf("eeprom config: --cacertder %s is not a DER certificate: %w", o.cacert, err)}
		}
		if err := im.SetFile("cacert.der", der); err != nil {
			return fmt.Errorf("eeprom config: store cacert.der: %w", err)
		}
	}
	return nil
}

func (o *eepromConfigOptions) run(ctx context.Context, image string, asJSON bool, stdout io.Writer) error {
	if o.extract != "" {
		return o.extractFiles(image, asJSON, stdout)
	}
	if o.apply == "" && (o.digest != "" || o.pubkey != "" || o.cacert != "" || o.bootcode != "" || o.bootsys != "") {
		return &ExitError{Code: 2, Err: errors.New("eeprom config: --digest, --pubkey, --cacertder, --bootcode and --bootsys need --apply CONF (the config the digest signs)")}
	}
	if o.apply == "" {
		if o.timestamp.set {
			return errors.New("eeprom config: --timestamp needs --apply")
		}
		return (&eepromShowOptions{out: o.out}).run(ctx, image, asJSON, stdout)
	}
	if o.out == "" {
		return errors.New("eeprom config: --apply needs --out FILE (the new image is binary)")
	}
	im, _, err := readImageFile(image)
	if err != nil {
		return err
	}
	conf, err := os.ReadFile(o.apply)
	if err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	if err := im.SetBootConf(conf); err != nil {
		return fmt.Errorf("apply %s to %s: %w", o.apply, image, err)
	}
	if err := o.secureFiles(im, conf); err != nil {
		return err
	}
	if err := setTimestamp(im, o.timestamp); err != nil {
		return err
	}
	return writeImage(im, o.out, asJSON, stdout, nil)
}

func setTimestamp(im *eeprom.Image, ts timestampFlag) error {
	if !ts.set {
		return nil
	}
	return im.SetTimestamp(ts.v)
}

// timestampFlag is a --timestamp value: parsed in base 10 exactly as
// upstream's tools do (eeprom.ParseTimestamp), and "was it given" is kept
// apart from the value (0 is a valid timestamp).
type timestampFlag struct {
	set bool
	v   uint32
}

func (f *timestampFlag) String() string {
	if !f.set {
		return ""
	}
	return strconv.FormatUint(uint64(f.v), 10)
}

func (f *timestampFlag) Set(s string) error {
	v, err := eeprom.ParseTimestamp(s)
	if err != nil {
		return err
	}
	f.set, f.v = true, v
	return nil
}

func (f *timestampFlag) Type() string { return "UNIX" }

// writeImage writes the edited image atomically and reports it.
func writeImage(im *eeprom.Image, out string, asJSON bool, stdout io.Writer, warnings []string) error {
	data := im.Bytes()
	if err := atomicfile.WriteFile(out, data, 0o644); err != nil {
		return err
	}
	slot, _ := im.BootConfSlot()
	conf, _ := im.BootConf()
	if asJSON {
		return writeJSON(stdout, map[string]any{
			"out": out, "sha256": sha256Hex(data), "config": string(conf), "bootconf": slot, "warnings": warnings,
		})
	}
	_, err := fmt.Fprintf(stdout, "wrote %s: bootconf.txt %d bytes, %d free, sha256 %s\n", out, slot.Size, slot.Free, sha256Hex(data))
	return err
}

// ---- set ----

type eepromSetOptions struct {
	out       string
	timestamp timestampFlag
}

func newEEPROMSetCmd() *cobra.Command {
	opts := &eepromSetOptions{}
	cmd := &cobra.Command{
		Use:   "set IMAGE KEY=VALUE... --out OUT",
		Short: "Set bootloader config keys in an image",
		Long: `set writes a copy of IMAGE with each KEY set to VALUE in its bootconf.txt. A key that is
already set for all boards (outside conditional sections such as [cm4] or [gpio8=0]) gets the new
value where it stands; otherwise KEY=VALUE is added at the end of the [all] block. Every other
line and comment is kept as written.

BOOT_ORDER is checked: 0x followed by 1 to 8 hex digits, each a known boot mode (1 SD/eMMC,
2 network, 3 RPIBOOT, 4 USB-MSD, 5 BCM-USB-MSD, 6 NVMe, 7 HTTP, e STOP, f RESTART), with f or e
only as the last (leftmost) digit. Unknown keys are kept with a warning on stderr.`,
		Example: `  cm4bench eeprom set pieeprom.bin BOOT_ORDER=0xf21 --out pieeprom-netboot.bin
  cm4bench eeprom set pieeprom.bin BOOT_UART=1 TFTP_PREFIX=2 --out pieeprom.bin`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return opts.run(cmd.Context(), args, wantJSON(cmd), cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	cmd.Flags().StringVarP(&opts.out, "out", "o", "", "output image `FILE` (required; may equal IMAGE)")
	cmd.Flags().Var(&opts.timestamp, "timestamp", "also set the update timestamp to `UNIX` seconds (base 10, as rpi-eeprom-config)")
	return cmd
}

func (o *eepromSetOptions) run(_ context.Context, args []string, asJSON bool, stdout, stderr io.Writer) error {
	if o.out == "" {
		return errors.New("eeprom set: --out FILE is required")
	}
	image, pairs := args[0], args[1:]
	im, _, err := readImageFile(image)
	if err != nil {
		return err
	}
	conf, err := im.BootConf()
	if err != nil {
		return fmt.Errorf("%s: %w", image, err)
	}
	c := eeprom.ParseConfig(conf)
	var warnings []string
	for _, kv := range pairs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return fmt.Errorf("eeprom set: argument %q: want KEY=VALUE", kv)
		}
		w, err := c.Set(k, v)
		if err != nil {
			return fmt.Errorf("eeprom set %s: %w", kv, err)
		}
		warnings = append(warnings, w...)
	}
	if err := im.SetBootConf(c.Bytes()); err != nil {
		return fmt.Errorf("eeprom set: %s: %w", image, err)
	}
	if err := setTimestamp(im, o.timestamp); err != nil {
		return err
	}
	if !asJSON {
		for _, w := range warnings {
			fmt.Fprintf(stderr, "warning: %s\n", w)
		}
	}
	return writeImage(im, o.out, asJSON, stdout, warnings)
}

// ---- digest ----

type eepromDigestOptions struct {
	out         string
	timestamp   timestampFlag // unset: $SOURCE_DATE_EPOCH, else now
	targetSoC   int
	key         string // private PEM: add the rsa2048 line (with --verify: the public PEM)
	pubkey      string // the public key the signature must verify with
	signCommand string // HSM wrapper instead of --key
	verify      string // a .sig to check instead of writing one
}

func newEEPROMDigestCmd() *cobra.Command {
	opts := &eepromDigestOptions{}
	cmd := &cobra.Command{
		Use:   "digest IMAGE [-o SIG]",
		Short: "Write the .sig file of an image (rpi-eeprom-digest)",
		Long: `digest prints (or writes to -o) the signature file recovery.bin and the bootloader check
before flashing: the SHA-256 of the whole file in lowercase hex, then "ts: N", the same text as
rpi-eeprom-digest. N is --timestamp, else $SOURCE_DATE_EPOCH, else the current time; pass
--timestamp for a reproducible file. --target-soc 2711|2712 adds the "target-soc:" line that
rpi-eeprom-update -c writes.

Secure boot: --key private.pem adds the "rsa2048:" line, the RSA-2048 PKCS#1 v1.5 signature over
SHA-256 of the file (rpi-eeprom-digest -k); --sign-command CMD has an HSM wrapper make it instead
(CMD -a rsa2048-sha256 FILE prints the signature in hex, upstream's -H interface) and needs
--pubkey. --key pkcs11:token=LABEL;object=KEY signs on a PKCS#11 token (an HSM, SoftHSM), the
PIN in pin-value=, pin-source=FILE or $CM4BENCH_PKCS11_PIN, the module found or given as
module-path=. With --pubkey the signature must verify with that key, so a wrong key fails here and
not on the board. --verify SIG --key public.pem checks a .sig (rpi-eeprom-digest -v).`,
		Example: `  cm4bench eeprom digest pieeprom.bin -o pieeprom.sig
  cm4bench eeprom digest pieeprom.bin --timestamp 1700000000
  cm4bench eeprom digest boot.conf --key private.pem --pubkey public.pem -o boot.conf.sig
  cm4bench eeprom digest boot.img --sign-command hsm-wrapper --pubkey public.pem -o boot.sig
  cm4bench eeprom digest boot.img --verify boot.sig --key public.pem`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return opts.run(cmd.Context(), args[0], wantJSON(cmd), cmd.OutOrStdout())
		},
	}
	cmd.Flags().StringVarP(&opts.out, "out", "o", "", "write the signature to `FILE` instead of stdout")
	cmd.Flags().Var(&opts.timestamp, "timestamp", "the ts: value in `UNIX` seconds, base 10 (default $SOURCE_DATE_EPOCH or now)")
	cmd.Flags().IntVar(&opts.targetSoC, "target-soc", 0, "add a target-soc line: 2711 or 2712")
	cmd.Flags().StringVarP(&opts.key, "key", "k", "", "RSA-2048 private key `PEM` that signs, or a PKCS#11 URI pkcs11:token=T;object=K (with --verify: the public key)")
	cmd.Flags().StringVar(&opts.pubkey, "pubkey", "", "public key `PEM` the signature must verify with")
	cmd.Flags().StringVar(&opts.signCommand, "sign-command", "", "HSM wrapper `CMD` that signs instead of --key")
	cmd.Flags().StringVar(&opts.verify, "verify", "", "check this .sig `FILE` against IMAGE instead of writing one")
	cmd.MarkFlagsMutuallyExclusive("key", "sign-command")
	return cmd
}

// sign makes the .sig with the rsa2048 line.
func (o *eepromDigestOptions) sign(image string, sum [sha256.Size]byte, ts int64) ([]byte, error) {
	s, want, done, err := o.signer("eeprom digest", image)
	if err != nil {
		return nil, err
	}
	defer done()
	sig, err := eeprom.SignedDigest(sum, ts, o.targetSoC, s, want)
	if err != nil {
		return nil, &ExitError{Code: 2, Err: fmt.Errorf("eeprom digest: %w", err)}
	}
	return sig, nil
}

// signer opens the signing key of --key (a PEM file or a PKCS#11 URI) or
// --sign-command (signing file), and the --pubkey it must match (nil when
// not given). done releases a token.
func (o *eepromDigestOptions) signer(step, file string) (s crypto.Signer, want *rsa.PublicKey, done func(), err error) {
	done = func() {}
	if o.pubkey != "" {
		b, err := os.ReadFile(o.pubkey)
		if err != nil {
			return nil, nil, done, fmt.Errorf("%s: %w", step, err)
		}
		if want, err = eeprom.ParsePublicKey(b); err != nil {
			return nil, nil, done, &ExitError{Code: 2, Err: fmt.Errorf("%s: --pubkey %s: %w", step, o.pubkey, err)}
		}
	}
	switch {
	case o.signCommand != "":
		if want == nil {
			return nil, nil, done, &ExitError{Code: 2, Err: fmt.Errorf("%s: --sign-command needs --pubkey, the key the command signs with", step)}
		}
		return &signer.Command{Cmd: o.signCommand, File: file, Pub: want}, want, done, nil
	case pkcs11signer.IsURI(o.key):
		k, closeToken, err := pkcs11signer.Open(o.key)
		if err != nil {
			return nil, nil, done, fmt.Errorf("%s: %w", step, err)
		}
		return k, want, func() { closeToken() }, nil
	case o.key == "":
		return nil, nil, done, &ExitError{Code: 2, Err: fmt.Errorf("%s: no signing key: give --key PEM, --key pkcs11:URI or --sign-command CMD", step)}
	}
	b, err := os.ReadFile(o.key)
	if err != nil {
		return nil, nil, done, fmt.Errorf("%s: %w", step, err)
	}
	k, err := eeprom.ParsePrivateKey(b)
	if err != nil {
		return nil, nil, done, &ExitError{Code: 2, Err: fmt.Errorf("%s: --key %s: %w", step, o.key, err)}
	}
	return k, want, done, nil
}

// check verifies a .sig against the image (and its rsa2048 line against
// --key, a public key).
func (o *eepromDigestOptions) check(image string, sum [sha256.Size]byte, asJSON bool, stdout io.Writer) error {
	sig, err := os.ReadFile(o.verify)
	if err != nil {
		return fmt.Errorf("eeprom digest --verify: %w", err)
	}
	var pub *rsa.PublicKey
	if k := or(o.key, o.pubkey); k != "" {
		b, err := os.ReadFile(k)
		if err != nil {
			return fmt.Errorf("eeprom digest --verify: %w", err)
		}
		if pub, err = eeprom.ParsePublicKey(b); err != nil {
			return &ExitError{Code: 2, Err: fmt.Errorf("eeprom digest --verify: %s: %w", k, err)}
		}
	}
	if err := eeprom.VerifyDigest(sig, sum, pub); err != nil {
		return fmt.Errorf("eeprom digest --verify %s: %w", o.verify, err)
	}
	if asJSON {
		return writeJSON(stdout, map[string]any{"image": image, "sig": o.verify, "verified": true, "signature_checked": pub != nil})
	}
	what := "sha256 matches"
	if pub != nil {
		what = "sha256 matches and the rsa2048 signature verifies"
	}
	_, err = fmt.Fprintf(stdout, "%s: %s (%s)\n", o.verify, what, image)
	return err
}

func digestTimestamp(flag timestampFlag) (int64, error) {
	if flag.set {
		return int64(flag.v), nil
	}
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		ts, err := eeprom.ParseTimestamp(s)
		if err != nil {
			return 0, fmt.Errorf("eeprom digest: SOURCE_DATE_EPOCH=%q is not a unix time: %w", s, err)
		}
		return int64(ts), nil
	}
	return time.Now().Unix(), nil
}

func (o *eepromDigestOptions) run(_ context.Context, image string, asJSON bool, stdout io.Writer) error {
	if o.targetSoC != 0 && o.targetSoC != 2711 && o.targetSoC != 2712 {
		return fmt.Errorf("eeprom digest: --target-soc %d: want 2711 or 2712", o.targetSoC)
	}
	ts, err := digestTimestamp(o.timestamp)
	if err != nil {
		return err
	}
	f, err := os.Open(image)
	if err != nil {
		return fmt.Errorf("read image: %w", err)
	}
	h := sha256.New()
	_, err = io.Copy(h, f)
	f.Close()
	if err != nil {
		return fmt.Errorf("read image %s: %w", image, err)
	}
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	if o.verify != "" {
		return o.check(image, sum, asJSON, stdout)
	}
	sig := eeprom.FormatDigest(sum, ts, o.targetSoC)
	if o.key != "" || o.signCommand != "" {
		if sig, err = o.sign(image, sum, ts); err != nil {
			return err
		}
	}
	if o.out != "" {
		if err := atomicfile.WriteFile(o.out, sig, 0o644); err != nil {
			return err
		}
	}
	switch {
	case asJSON:
		return writeJSON(stdout, map[string]any{"image": image, "sha256": hex.EncodeToString(sum[:]), "ts": ts, "sig": string(sig), "out": o.out})
	case o.out == "":
		_, err = stdout.Write(sig)
		return err
	}
	return nil
}
