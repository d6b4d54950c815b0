package cli

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/cm4bench/cm4bench/eeprom"
	"github.com/cm4bench/cm4bench/internal/atomicfile"
	"github.com/cm4bench/cm4bench/netboot/bootfs"
)

type bootimgOptions struct {
	out  string
	sign eepromDigestOptions // --key/--sign-command/--pubkey/--timestamp, as eeprom digest
}

func newBootimgCmd() *cobra.Command {
	o := &bootimgOptions{}
	cmd := &cobra.Command{
		Use:   "bootimg",
		Short: "Build the signed boot.img a secure-boot bootloader loads",
	}
	build := &cobra.Command{
		Use:   "build DIR -o boot.img",
		Short: "Pack DIR into a FAT16 boot.img and sign it as boot.sig",
		Long: `build packs every file under DIR (the firmware, kernel, initramfs, device trees, config.txt,
cmdline.txt, overlays/) into boot.img: a FAT16 filesystem image with no partition table, the
ramdisk a bootloader in secure-boot mode loads whole, checks against boot.sig, and boots from.
The same files give the same bytes (fixed volume id and times).

boot.sig is written beside it (or --sig): the sha256, "ts:", and with --key (a PEM or a PKCS#11
URI) or --sign-command the "rsa2048:" signature, exactly as "cm4bench eeprom digest" writes it.
A locked board boots only a boot.img whose boot.sig verifies with the key in its OTP.`,
		Example: `  cm4bench bootimg build netboot-files/ -o boot.img --key private.pem --pubkey public.pem
  cm4bench bootimg build netboot-files/ -o boot.img --key 'pkcs11:token=line;object=sb' --pubkey public.pem`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.out == "" {
				return &ExitError{Code: 2, Err: errors.New("bootimg build: name the image with -o boot.img")}
			}
			return o.run(cmd.Context(), args[0], wantJSON(cmd), cmd.OutOrStdout())
		},
	}
	build.Flags().StringVarP(&o.out, "out", "o", "", "the boot image `FILE` (boot.sig is written beside it)")
	build.Flags().StringVar(&o.sign.out, "sig", "", "the signature `FILE` (default: boot.sig beside -o)")
	build.Flags().StringVarP(&o.sign.key, "key", "k", "", "RSA-2048 private key `PEM` or PKCS#11 URI that signs")
	build.Flags().StringVar(&o.sign.pubkey, "pubkey", "", "public key `PEM` the signature must verify with")
	build.Flags().StringVar(&o.sign.signCommand, "sign-command", "", "HSM wrapper `CMD` that signs instead of --key")
	build.Flags().Var(&o.sign.timestamp, "timestamp", "the ts: value in `UNIX` seconds (default $SOURCE_DATE_EPOCH or now)")
	build.MarkFlagsMutuallyExclusive("key", "sign-command")
	cmd.AddCommand(build)
	return cmd
}

func (o *bootimgOptions) run(_ context.Context, dir string, asJSON bool, stdout io.Writer) error {
	files, err := bootfs.CollectDir(dir, nil)
	if err != nil {
		return fmt.Errorf("bootimg build: %w", err)
	}
	if len(files) == 0 {
		return &ExitError{Code: 2, Err: fmt.Errorf("bootimg build: %s holds no files", dir)}
	}
	tmp := o.out + ".partial"
	size, err := bootfs.BuildRamdisk(tmp, files)
	if err != nil {
		os.Remove(tmp)
		return &ExitError{Code: 2, Err: fmt.Errorf("bootimg build: %w", err)}
	}
	defer os.Remove(tmp)
	img, err := os.ReadFile(tmp)
	if err != nil {
		return err
	}
	sum := sha256.Sum256(img)
	ts, err := digestTimestamp(o.sign.timestamp)
	if err != nil {
		return err
	}
	sig := eeprom.FormatDigest(sum, ts, 0)
	if o.sign.key != "" || o.sign.signCommand != "" {
		if sig, err = o.sign.sign(tmp, sum, ts); err != nil {
			return err
		}
	}
	sigPath := o.sign.out
	if sigPath == "" {
		sigPath = filepath.Join(filepath.Dir(o.out), "boot.sig")
	}
	// The signature first, then the image: a cut run never leaves an
	// image whose signature is missing or stale looking complete.
	if err := atomicfile.WriteFile(sigPath, sig, 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, o.out); err != nil {
		return err
	}
	if asJSON {
		return writeJSON(stdout, map[string]any{"image": o.out, "sig": sigPath, "files": len(files), "bytes": size, "signed": o.sign.key != "" || o.sign.signCommand != ""})
	}
	_, err = fmt.Fprintf(stdout, "%s: %d files in %d bytes (FAT16); %s written\n", o.out, len(files), size, sigPath)
	return err
}
