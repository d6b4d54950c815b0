package pisim

import (
	"bytes"
	"context"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"

	"github.com/cm4bench/cm4bench/eeprom"
	"github.com/cm4bench/cm4bench/netboot/bootfs"
)

// ErrBadSignature is a signed-boot board refusing boot.img: its boot.sig is
// missing, is not of this boot.img, or does not verify with the key in the
// board's OTP.
var ErrBadSignature = errors.New("boot.img signature check failed")

// Locked is a board whose OTP holds the hash of a customer key (secure
// boot): its bootloader loads only boot.img, checks it against boot.sig
// with that key, and boots from the ramdisk inside. The public key itself
// comes from the EEPROM's pubkey.bin, whose hash the ROM checked against
// the OTP; the simulation is handed the key directly.
type Locked struct {
	Key *rsa.PublicKey
}

// limitWriter fails once more than n bytes are written (a boot.img larger
// than the board's memory for it).
type limitWriter struct {
	buf bytes.Buffer
	n   int
}

func (w *limitWriter) Write(p []byte) (int, error) {
	if w.buf.Len()+len(p) > w.n {
		return 0, fmt.Errorf("more than %d bytes", w.n)
	}
	return w.buf.Write(p)
}

// loadSigned is the signed-boot network load (modelled on Raspberry Pi's
// secure-boot documentation; the exact request order of a locked board is
// a HARDWARE.md question): the prefix probe on boot.img, boot.sig, then
// boot.img whole into memory, both checked before anything inside is used;
// then config.txt, cmdline.txt, the initramfs and the kernel come from the
// ramdisk, not from TFTP.
func (b *Bootloader) loadSigned(ctx context.Context, c *tftpClient, prefix string, out *Outcome) error {
	do := func(name string, probe bool, w io.Writer) error {
		_, err := out.fetch(ctx, c, name, probe, w)
		return err
	}
	if prefix != "" {
		if err := do(prefix+"boot.img", true, io.Discard); errors.Is(err, ErrNotFound) {
			prefix = ""
		} else if err != nil {
			return err
		}
	}
	out.Prefix = prefix
	if len(prefix) > 0 {
		out.Prefix = prefix[:len(prefix)-1]
	}
	sig := &limitWriter{n: 4096}
	if err := do(prefix+"boot.sig", false, sig); err != nil {
		if errors.Is(err, ErrNotFound) {
			return fmt.Errorf("%w: no %sboot.sig", ErrBadSignature, prefix)
		}
		return err
	}
	img := &limitWriter{n: bootfs.MaxRamdiskBytes}
	if err := do(prefix+"boot.img", false, img); err != nil {
		if errors.Is(err, ErrNotFound) {
			return fmt.Errorf("%w: %sboot.img", ErrFirmwareNotFound, prefix)
		}
		return err
	}
	sum := sha256.Sum256(img.buf.Bytes())
	if err := eeprom.VerifyDigest(sig.buf.Bytes(), sum, b.Locked.Key); err != nil {
		return fmt.Errorf("%w: %w", ErrBadSignature, err)
	}
	read := func(name string) ([]byte, error) { return bootfs.ReadRamdisk(img.buf.Bytes(), name) }
	cfg, err := read("config.txt")
	if err != nil {
		return fmt.Errorf("%w: %w", ErrFirmwareNotFound, err)
	}
	out.Config = ParseConfigTxt(cfg)
	for _, f := range []string{"start4.elf", "fixup4.dat"} {
		if _, err := read(f); err != nil {
			return fmt.Errorf("%w: %w", ErrFirmwareNotFound, err)
		}
	}
	if out.Config.Initramfs != "" {
		if _, err := read(out.Config.Initramfs); err != nil {
			return fmt.Errorf("%w: %w", ErrFirmwareNotFound, err)
		}
	}
	if cmd, err := read(out.Config.Cmdline); err == nil {
		out.Cmdline = string(bytes.TrimSpace(cmd))
	}
	k, err := read(out.Config.Kernel)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrFirmwareNotFound, err)
	}
	ks := sha256.Sum256(k)
	out.KernelSHA = hex.EncodeToString(ks[:])
	out.Signed = true
	return nil
}
