package usbboottest

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"sync"

	"github.com/cm4bench/cm4bench/eeprom"
)

// OTP is a board's one-time-programmable memory as secure boot uses it.
// Bits can only be set: the key hash is written once and never changed,
// and a revoked devkey or a JTAG lock stays. It outlives a USB session, so
// a test keeps it to provision the same board again. Safe for concurrent
// use.
type OTP struct {
	mu           sync.Mutex
	keyHash      string // sha256 of pubkey.bin, lower-case hex; "" = unprogrammed
	devkey       bool   // development key revoked
	jtag         bool   // VideoCore JTAG locked
	writeProtect bool   // SPI status register regions set (not OTP, but kept with it)
	writes       int    // successful OTP programming operations
}

// KeyHash is the programmed customer key hash ("" when unprogrammed).
func (o *OTP) KeyHash() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.keyHash
}

// State reports the revoked devkey, the JTAG lock and the write-protect
// regions.
func (o *OTP) State() (devkeyRevoked, jtagLocked, writeProtect bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.devkey, o.jtag, o.writeProtect
}

// Writes is how many times OTP was programmed (a key hash, a revoke, a
// lock): a refused provision adds none.
func (o *OTP) Writes() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.writes
}

// Lock programs hash directly, for a board that arrives locked.
func (o *OTP) Lock(hash string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.keyHash == "" {
		o.keyHash, o.writes = strings.ToLower(hash), o.writes+1
	}
}

// recoveryOptions parses the config.txt recovery.bin reads: key=value
// lines, # comments.
func recoveryOptions(b []byte) map[string]string {
	out := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if k, v, ok := strings.Cut(line, "="); ok {
			out[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	return out
}

// imageKey is what a bootloader image carries for secure boot: the hash
// of its pubkey.bin, and whether its bootconf.sig signs its bootconf.txt
// with that key.
func imageKey(img []byte) (hash string, signed bool) {
	im, err := eeprom.Parse(img)
	if err != nil {
		return "", false
	}
	bin, err := im.File("pubkey.bin")
	if err != nil {
		return "", false
	}
	pub, err := eeprom.ParsePubKeyBin(bin)
	if err != nil {
		return "", false
	}
	s := sha256.Sum256(bin)
	hash = hex.EncodeToString(s[:])
	conf, err1 := im.BootConf()
	sig, err2 := im.File("bootconf.sig")
	return hash, err1 == nil && err2 == nil && eeprom.VerifyDigest(sig, sha256.Sum256(conf), pub) == nil
}

// secureOutcome is what recovery.bin does with OTP (modelled on usbboot's
// secure-boot-recovery README; the real order of checks is not published):
//   - a locked board flashes only an image whose pubkey.bin hashes to its
//     OTP key and whose config is signed with it ("Bad signature"
//     otherwise: EEPROM_UPDATE=fail);
//   - program_pubkey programs the image's key hash when the OTP is empty
//     and the image is signed with that key; the same key again is
//     success; another key is refused (fail), nothing written;
//   - revoke_devkey needs a programmed key; program_jtag_lock needs
//     revoke_devkey (it "has no effect" otherwise).
//
// It returns whether the flash may proceed and the SECURE_BOOT_PROVISION
// word ("" when program_pubkey was not asked).
func (o *OTP) secureOutcome(opts map[string]string, img []byte) (flash bool, provision string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	hash, signed := imageKey(img)
	flash = true
	if o.keyHash != "" && (!signed || hash != o.keyHash) {
		flash = false
	}
	if opts["program_pubkey"] == "1" {
		switch {
		case !signed:
			provision = "fail"
		case o.keyHash == "":
			o.keyHash, o.writes, provision = hash, o.writes+1, "success"
		case o.keyHash == hash:
			provision = "success"
		default:
			provision = "fail"
		}
	}
	if !flash || provision == "fail" {
		return flash && provision != "fail", provision
	}
	if opts["revoke_devkey"] == "1" && o.keyHash != "" && !o.devkey {
		o.devkey, o.writes = true, o.writes+1
	}
	if opts["program_jtag_lock"] == "1" && o.devkey && !o.jtag {
		o.jtag, o.writes = true, o.writes+1
	}
	if opts["eeprom_write_protect"] == "1" {
		o.writeProtect = true
	}
	return true, provision
}
