package recoverydir

import (
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"

	"github.com/cm4bench/cm4bench/eeprom"
	"github.com/cm4bench/cm4bench/usbboot"
)

// SecureBootMinBuild is the oldest bootloader build (BUILD_TIMESTAMP) that
// supports secure boot; usbboot's update-pieeprom.sh refuses older ones.
const SecureBootMinBuild = 1632136573

// Secure turns a recovery directory into the secure-boot one of usbboot's
// secure-boot-recovery: the config gains SIGNED_BOOT=1 and is signed
// (bootconf.sig), the public key goes into the image (pubkey.bin), and
// config.txt carries the OTP options recovery.bin acts on.
type Secure struct {
	Signer    crypto.Signer  // the private key: a PEM key, a PKCS#11 token or an HSM command
	PublicKey *rsa.PublicKey // the key whose hash goes into OTP; must be the signer's
	OTP       OTPOptions
	// Bootcode and Bootsys are customer-countersigned BCM2712 firmware
	// (rpi-eeprom-config --bootcode/--bootsys); nil leaves the image's.
	Bootcode, Bootsys []byte
}

// OTPOptions are the config.txt options that change the chip for good
// (eeprom_write_protect only sets the flash's status register, but it is
// asked for with the others).
type OTPOptions struct {
	ProgramPubkey bool `json:"program_pubkey"`       // write sha256(pubkey.bin) to OTP: secure boot on
	RevokeDevkey  bool `json:"revoke_devkey"`        // revoke the ROM development key
	JTAGLock      bool `json:"program_jtag_lock"`    // disable VideoCore JTAG (needs revoke_devkey)
	WriteProtect  bool `json:"eeprom_write_protect"` // set the SPI flash write-protect regions (/WP low)
}

// Irreversible lists the options set that write OTP.
func (o OTPOptions) Irreversible() []string {
	var out []string
	for _, x := range []struct {
		on   bool
		name string
	}{{o.ProgramPubkey, "program_pubkey"}, {o.RevokeDevkey, "revoke_devkey"}, {o.JTAGLock, "program_jtag_lock"}} {
		if x.on {
			out = append(out, x.name)
		}
	}
	return out
}

// SecureDir is what a secure-boot recovery directory asks of each board.
type SecureDir struct {
	KeyHash string     `json:"customer_key_hash"` // sha256 of pubkey.bin: CUSTOMER_KEY_HASH after provisioning
	OTP     OTPOptions `json:"otp"`
}

// ErrWrongKey marks a board locked to another key, or one that reports a
// key hash that is not ours.
var ErrWrongKey = errors.New("board reports another customer key")

// check refuses what would fail on the board: a key that is not RSA-2048,
// a public key that is not the signer's, a bootloader too old for secure
// boot, options that have no effect, 2712 firmware on a 2711 image.
func (s *Secure) check(im *eeprom.Image) (warnings []string, err error) {
	if s.Signer == nil || s.PublicKey == nil {
		return nil, errors.New("recovery dir: secure boot needs a signing key and its public key")
	}
	signerPub, err := eeprom.CheckSigningKey(s.Signer.Public())
	if err != nil {
		return nil, fmt.Errorf("recovery dir: signing key: %w", err)
	}
	if _, err := eeprom.CheckSigningKey(s.PublicKey); err != nil {
		return nil, fmt.Errorf("recovery dir: public key: %w", err)
	}
	if !signerPub.Equal(s.PublicKey) {
		return nil, fmt.Errorf("recovery dir: the public key does not match the signing key: %w", eeprom.ErrKey)
	}
	switch bi := im.BuildInfo(); {
	case bi.Timestamp == 0:
		warnings = append(warnings, "the image has no BUILD_TIMESTAMP: cannot check that it supports secure boot (builds from 2021-09-20 on do)")
	case bi.Timestamp < SecureBootMinBuild:
		return nil, fmt.Errorf("recovery dir: the image was built at %d, before secure boot support (%d): use a newer pieeprom", bi.Timestamp, SecureBootMinBuild)
	}
	if s.OTP.JTAGLock && !s.OTP.RevokeDevkey {
		return nil, errors.New("recovery dir: program_jtag_lock has no effect without revoke_devkey (usbboot secure-boot-recovery): add --revoke-devkey")
	}
	if (s.OTP.RevokeDevkey || s.OTP.JTAGLock) && !s.OTP.ProgramPubkey {
		warnings = append(warnings, "revoke_devkey/program_jtag_lock without program_pubkey: recovery.bin only applies them to a board whose key is already programmed")
	}
	if (s.Bootcode != nil || s.Bootsys != nil) && im.SoC() != 2712 {
		return nil, fmt.Errorf("recovery dir: --bootcode/--bootsys are BCM2712 (CM5) firmware, this is a BCM%d image", im.SoC())
	}
	return warnings, nil
}

// contentSigner is a signer that signs a file, not a digest (an HSM
// wrapper hashes the file itself): it is handed the bytes first.
type contentSigner interface {
	ForContent(data []byte) (crypto.Signer, func(), error)
}

// sign stores the signed config, its signature and the public key (and
// the 2712 firmware) in im, as update-pieeprom.sh -k does.
func (s *Secure) sign(im *eeprom.Image, conf []byte, ts int64) (SecureDir, error) {
	sd := SecureDir{OTP: s.OTP}
	sg := s.Signer
	if cs, ok := sg.(contentSigner); ok {
		var done func()
		var err error
		if sg, done, err = cs.ForContent(conf); err != nil {
			return sd, fmt.Errorf("recovery dir: sign bootconf.txt: %w", err)
		}
		defer done()
	}
	sig, err := eeprom.SignedDigest(sha256.Sum256(conf), ts, 0, sg, s.PublicKey)
	if err != nil {
		return sd, fmt.Errorf("recovery dir: sign bootconf.txt: %w", err)
	}
	pk, err := eeprom.PubKeyBin(s.PublicKey)
	if err != nil {
		return sd, err
	}
	if sd.KeyHash, err = eeprom.KeyHash(s.PublicKey); err != nil {
		return sd, err
	}
	if err := im.SetFile("pubkey.bin", pk); err != nil {
		return sd, fmt.Errorf("recovery dir: store pubkey.bin: %w", err)
	}
	if err := im.SetFile("bootconf.sig", sig); err != nil {
		return sd, fmt.Errorf("recovery dir: store bootconf.sig: %w", err)
	}
	if s.Bootcode != nil {
		if err := im.SetBootcode(s.Bootcode); err != nil {
			return sd, fmt.Errorf("recovery dir: store bootcode: %w", err)
		}
	}
	if s.Bootsys != nil {
		if err := im.SetFile(eeprom.BootsysName, s.Bootsys); err != nil {
			return sd, fmt.Errorf("recovery dir: store bootsys: %w", err)
		}
	}
	return sd, nil
}

// SecureConfig is config.txt for a secure-boot recovery directory: the
// set-boot-order options plus one line per OTP option asked for.
func SecureConfig(uart bool, o OTPOptions) []byte {
	var b strings.Builder
	b.Write(Config(uart))
	b.WriteString("# Secure boot, written by cm4bench secure-boot provision. Options marked OTP change the chip for good.\n")
	line := func(on bool, text string) {
		if on {
			b.WriteString(text)
		}
	}
	line(o.ProgramPubkey, "# OTP: store the sha256 of the image's pubkey.bin; from then on the config and boot.img must be signed with this key.\nprogram_pubkey=1\n")
	line(o.RevokeDevkey, "# OTP: revoke the ROM development key (no downgrade to bootloaders without secure boot).\nrevoke_devkey=1\n")
	line(o.JTAGLock, "# OTP: disable VideoCore JTAG for good.\nprogram_jtag_lock=1\n")
	line(o.WriteProtect, "# Set the SPI flash write-protect regions (effective while /WP is held low).\neeprom_write_protect=1\n")
	return []byte(b.String())
}

// verifySecure checks the secure-boot metadata: with program_pubkey the
// board must report our key hash and SECURE_BOOT_PROVISION=success; any
// board that reports a programmed key other than ours is failed.
func (d Dir) verifySecure(r usbboot.Result) error {
	if d.Secure == nil {
		return nil
	}
	h, hasHash := r.Metadata.Get("CUSTOMER_KEY_HASH")
	h = strings.ToLower(strings.TrimSpace(h))
	programmed := hasHash && strings.Trim(h, "0") != ""
	if programmed && h != d.Secure.KeyHash {
		return fmt.Errorf("%w: CUSTOMER_KEY_HASH %s, ours is %s (a board locked to another key cannot take this one)", ErrWrongKey, h, d.Secure.KeyHash)
	}
	if !d.Secure.OTP.ProgramPubkey {
		return nil
	}
	if !hasHash {
		return fmt.Errorf("%w: recovery.bin reported no CUSTOMER_KEY_HASH (too old for secure boot, or metadata off?)", ErrNotConfirmed)
	}
	if !programmed {
		return fmt.Errorf("%w: CUSTOMER_KEY_HASH is still unprogrammed after program_pubkey", ErrNotConfirmed)
	}
	if v, _ := r.Metadata.Get("SECURE_BOOT_PROVISION"); v != "success" {
		if v == "" {
			v = "nothing"
		}
		return fmt.Errorf("%w: SECURE_BOOT_PROVISION reported %s, want success", ErrNotConfirmed, v)
	}
	return nil
}
