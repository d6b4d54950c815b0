package usbboottest

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/cm4bench/cm4bench/usbboot"
)

// BootcodeName is the second-stage file this board's ROM loads.
func (b *Board) BootcodeName() string {
	switch b.cfg.SoC {
	case usbboot.SoC2711:
		return "bootcode4.bin"
	case usbboot.SoC2712:
		return "bootcode5.bin"
	}
	return "bootcode.bin"
}

func (b *Board) buildScript() []step {
	gfs := func(name string, readIt, required bool) step {
		return step{req: usbboot.Request{Command: usbboot.GetFileSize, Name: name}, readIt: readIt, required: required}
	}
	var s []step
	if b.cfg.ScriptOnly {
		return nil
	}
	ddr := func() {
		n := 9
		if b.cfg.SoC == usbboot.SoC2712 {
			n = 4
		}
		s = append(s, gfs("mcb.bin", true, true))
		for i := range n {
			s = append(s, gfs(fmt.Sprintf("memsys%02d.bin", i), true, true))
		}
		s = append(s, gfs("bootmain", true, true))
	}
	switch {
	case b.cfg.SoC == usbboot.SoC2835:
		s = append(s, gfs("autoboot.txt", true, false), gfs("config.txt", true, false),
			gfs("recovery.elf", true, false), gfs("start.elf", true, true), gfs("fixup.dat", true, false))
	case b.cfg.Mode == ModeMSD:
		s = append(s, gfs("config.txt", true, false), gfs("pieeprom.sig", false, false),
			gfs("start4.elf", true, true), gfs("fixup4.dat", true, false))
	case b.cfg.Mode == ModeGadget:
		ddr()
		s = append(s, gfs("config.txt", true, false), gfs("boot.img", true, true))
	case b.cfg.Mode == ModeRecovery:
		if b.cfg.RecoveryDDR {
			ddr()
		}
		// Without image files recovery.bin flashes nothing but still reports
		// its metadata (usbboot #735, EEPROM_UPDATE=none: inferred).
		if b.cfg.SoC == usbboot.SoC2712 {
			// CM5 (usbboot#386): config.txt, pieeprom.bin asked twice, the
			// .sig, then the image read.
			s = append(s, gfs("config.txt", true, false), gfs("pieeprom.bin", false, false), gfs("pieeprom.bin", false, false),
				gfs("pieeprom.sig", true, false), gfs("pieeprom.bin", true, false))
		} else {
			s = append(s, gfs("config.txt", true, false), gfs("pieeprom.sig", true, false), gfs("pieeprom.bin", true, false))
		}
		// metadata steps are appended when the script runs out (read)
	}
	return s
}

func (b *Board) metadataSteps() []step {
	update := "success"
	sum := b.eepromSum
	switch {
	case b.eepromSum == "":
		update = "none" // no image served: nothing flashed
	case b.sigHash != b.eepromSum:
		update = "fail" // recovery.bin checks the image against pieeprom.sig
	}
	if _, ok := b.hasFault(FaultFlashFails, ""); ok {
		update = "fail"
	}
	opts := recoveryOptions(b.recConf)
	provision := ""
	if b.eepromImg != nil && update == "success" {
		var flash bool
		flash, provision = b.cfg.OTP.secureOutcome(opts, b.eepromImg)
		if !flash {
			update = "fail" // "Bad signature": nothing written
		}
	} else if opts["program_pubkey"] == "1" {
		provision = "fail"
	}
	if b.cfg.HashStamped && b.eepromImg != nil {
		if ts, ok := usbboot.SigTimestamp(b.sigText); ok {
			if st, err := usbboot.StampedSHA256(b.eepromImg, ts); err == nil {
				sum = st
			}
		}
	}
	if _, ok := b.hasFault(FaultWrongHash, ""); ok {
		s := sha256.Sum256([]byte("not the image"))
		sum = hex.EncodeToString(s[:])
	}
	mac := "d8:3a:dd:" + b.cfg.Serial[2:4] + ":" + b.cfg.Serial[4:6] + ":" + b.cfg.Serial[6:8]
	// Which builds always report CUSTOMER_KEY_HASH is not known (HARDWARE.md):
	// the model reports it once the key is programmed or asked for.
	keyHash := b.cfg.OTP.KeyHash()
	reportKey := keyHash != "" || opts["program_pubkey"] == "1"
	if keyHash == "" {
		keyHash = strings.Repeat("0", 64)
	}
	if _, ok := b.hasFault(FaultWrongKeyHash, ""); ok {
		s := sha256.Sum256([]byte("another customer's key"))
		keyHash, reportKey = hex.EncodeToString(s[:]), true
	}
	_, jtag, _ := b.cfg.OTP.State()
	jtagWord := "0"
	if jtag {
		jtagWord = "1"
	}
	kv := [][2]string{
		{"MAC_ADDR", mac}, {"USER_SERIAL_NUM", b.cfg.Serial}, {"USER_BOARDREV", "c03141"},
		{"BOOT_ROM", "0000c8b0"}, {"JTAG_LOCKED", jtagWord},
	}
	if reportKey {
		kv = append(kv, [2]string{"CUSTOMER_KEY_HASH", keyHash})
	}
	kv = append(kv, [2]string{"EEPROM_UPDATE", update})
	if provision != "" {
		kv = append(kv, [2]string{"SECURE_BOOT_PROVISION", provision})
	}
	if sum != "" {
		kv = append(kv, [2]string{"EEPROM_HASH", sum})
	}
	var s []step
	for _, p := range kv {
		s = append(s, step{req: usbboot.Request{Command: usbboot.GetFileSize, Name: "*" + p[0] + "*" + p[1]}})
	}
	return s
}

func (b *Board) doneStep() step {
	if b.cfg.DoneName != "" {
		return step{req: usbboot.Request{Command: usbboot.Done, Name: b.cfg.DoneName}}
	}
	return step{req: usbboot.Request{Command: usbboot.GetFileSize, Name: ""}}
}
