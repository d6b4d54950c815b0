package cli

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cm4bench/cm4bench/eeprom"
	"github.com/cm4bench/cm4bench/eeprom/eepromtest"
	"github.com/cm4bench/cm4bench/eeprom/recoverydir"
	"github.com/cm4bench/cm4bench/internal/repotest"
	"github.com/cm4bench/cm4bench/usbboot/usbboottest"
)

// writeKey writes a fresh RSA key pair of bits as PEM files.
func writeKey(t *testing.T, bits int) (private, public string) {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	private, public = filepath.Join(dir, "private.pem"), filepath.Join(dir, "public.pem")
	pub, _ := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err := os.WriteFile(private, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(public, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o644); err != nil {
		t.Fatal(err)
	}
	return private, public
}

func keyHashOf(t *testing.T, publicPEM string) string {
	t.Helper()
	pub, err := eeprom.ParsePublicKey(readFile(t, publicPEM))
	if err != nil {
		t.Fatal(err)
	}
	h, err := eeprom.KeyHash(pub)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// The simulated 4-board provision: every board is flashed in parallel,
// its OTP holds our key hash, and a second provision with another key is
// refused by every board with nothing written. A board that reports
// another key hash is failed.
func TestSecureBootProvisionFourBoards(t *testing.T) {
	sb := func(n string) string { return repotest.Shared(t, filepath.Join("secure-boot-vectors", n)) }
	img, recovery := eepromVector(t, "pieeprom-2026-05-17.bin"), eepromVector(t, "recovery.bin")
	otps := make([]*usbboottest.OTP, 4)
	var cfgs []usbboottest.BoardConfig
	for i := range otps {
		otps[i] = &usbboottest.OTP{}
		cfgs = append(cfgs, usbboottest.BoardConfig{Port: "1-1." + string(rune('1'+i)), Mode: usbboottest.ModeRecovery, OTP: otps[i]})
	}
	base := []string{"secure-boot", "provision", "--image", img, "--recovery", recovery, "--timestamp", "1700000000",
		"--program-pubkey", "--revoke-devkey", "--program-jtag-lock", "--eeprom-write-protect", "--confirm-otp", "--json"}

	s := newSimBench(t, cfgs...)
	out := filepath.Join(t.TempDir(), "sb")
	stdout, stderr, err := s.run(t, t.Context(), append(base, "--key", sb("private.pem"), "--pubkey", sb("public.pem"), "--out-dir", out)...)
	if err != nil {
		t.Fatalf("provision: %v\n%s%s", err, stdout, stderr)
	}
	want := keyHashOf(t, sb("public.pem"))
	for i, o := range otps {
		dev, jtag, wp := o.State()
		if o.KeyHash() != want || !dev || !jtag || !wp {
			t.Errorf("board %d: OTP key %q (want %s), devkey revoked %v, JTAG locked %v, write-protect %v", i, o.KeyHash(), want, dev, jtag, wp)
		}
		if got := s.boards[i].ROMLoads(); got != 1 {
			t.Errorf("board %d booted %d times", i, got)
		}
	}
	// what was served: a signed config with SIGNED_BOOT=1 and our key, the OTP lines
	im, err := eeprom.Parse(readFile(t, filepath.Join(out, "pieeprom.bin")))
	if err != nil {
		t.Fatal(err)
	}
	conf, _ := im.BootConf()
	sig, _ := im.File("bootconf.sig")
	pub, _ := eeprom.ParsePublicKey(readFile(t, sb("public.pem")))
	if err := eeprom.VerifyDigest(sig, sha256Sum(conf), pub); err != nil || !strings.Contains(string(conf), "SIGNED_BOOT=1") || !strings.Contains(string(conf), "BOOT_ORDER=0xf21") {
		t.Errorf("served config %q: signature %v", conf, err)
	}
	cfgTxt := string(readFile(t, filepath.Join(out, "config.txt")))
	for _, l := range []string{"\nprogram_pubkey=1\n", "\nrevoke_devkey=1\n", "\nprogram_jtag_lock=1\n", "\neeprom_write_protect=1\n", "\nrecovery_metadata=1\n"} {
		if !strings.Contains(cfgTxt, l) {
			t.Errorf("config.txt lacks %q:\n%s", l, cfgTxt)
		}
	}

	// the same chips again, another key: refused by all four, OTP untouched
	writes := otps[0].Writes()
	priv2, pub2 := writeKey(t, 2048)
	s2 := newSimBench(t, cfgs...)
	stdout, stderr, err = s2.run(t, t.Context(), append(base, "--key", priv2, "--pubkey", pub2)...)
	if ExitCode(err) != exitUSBFailed {
		t.Fatalf("second key: exit %d (%v), want %d\n%s%s", ExitCode(err), err, exitUSBFailed, stdout, stderr)
	}
	if n := strings.Count(stdout+stderr+err.Error(), "another customer key"); n < 4 {
		t.Errorf("%d boards said they hold another customer key:\n%s%s%v", n, stdout, stderr, err)
	}
	for i, o := range otps {
		if o.KeyHash() != want || o.Writes() != writes {
			t.Errorf("board %d: OTP changed by the refused provision: %q, %d writes", i, o.KeyHash(), o.Writes())
		}
	}

	// a board reporting another key hash than the one it was given is failed
	s3 := newSimBench(t, usbboottest.BoardConfig{Port: "1-2", Mode: usbboottest.ModeRecovery,
		Faults: []usbboottest.Fault{{Kind: usbboottest.FaultWrongKeyHash}}})
	_, _, err = s3.run(t, t.Context(), append(base, "--key", sb("private.pem"))...)
	if ExitCode(err) != exitUSBFailed || !strings.Contains(err.Error(), "CUSTOMER_KEY_HASH") {
		t.Fatalf("wrong key hash: exit %d: %v", ExitCode(err), err)
	}
}

func sha256Sum(b []byte) [32]byte { return sha256.Sum256(b) }

// Refusals: each is a plain error, exit 2 where it is the caller's input,
// and nothing is served or written.
func TestSecureBootProvisionRefusals(t *testing.T) {
	sb := func(n string) string { return repotest.Shared(t, filepath.Join("secure-boot-vectors", n)) }
	img, recovery := eepromVector(t, "pieeprom-2026-05-17.bin"), eepromVector(t, "recovery.bin")
	small, _ := writeKey(t, 1024)
	_, otherPub := writeKey(t, 2048)
	cm5 := filepath.Join(t.TempDir(), "cm5.bin")
	if err := os.WriteFile(cm5, eepromtest.Image2712("[all]\nBOOT_ORDER=0xf461\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	code := filepath.Join(t.TempDir(), "bootcode.bin")
	os.WriteFile(code, []byte("countersigned"), 0o644)
	for _, tt := range []struct {
		name  string
		args  []string
		stdin string
		code  int
		want  string
	}{
		{"no --confirm-otp", []string{"--key", sb("private.pem"), "--program-pubkey"}, "", 2, "--confirm-otp"},
		{"serial typed wrong", []string{"--key", sb("private.pem"), "--program-pubkey", "--serial", "af04b2da"}, "af04b2db\n", 2, "not confirmed"},
		{"no serial typed", []string{"--key", sb("private.pem"), "--revoke-devkey", "--serial", "af04b2da"}, "", 2, "not confirmed"},
		{"RSA-1024 key", []string{"--key", small, "--confirm-otp", "--program-pubkey"}, "", 2, "RSA-1024"},
		{"public key of another pair", []string{"--key", sb("private.pem"), "--pubkey", otherPub}, "", 2, "does not match"},
		{"jtag lock without revoke", []string{"--key", sb("private.pem"), "--program-jtag-lock", "--confirm-otp"}, "", 1, "revoke_devkey"},
		{"CM5 image, CM4 recovery.bin", []string{"--key", sb("private.pem"), "--image", cm5}, "", 1, "built for BCM2711"},
		{"2712 bootcode on a CM4 image", []string{"--key", sb("private.pem"), "--bootcode", code}, "", 1, "BCM2712"},
		{"no key", nil, "", 2, "no signing key"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := newSimBench(t, usbboottest.BoardConfig{Port: "1-1.1", Serial: "af04b2da", Mode: usbboottest.ModeRecovery})
			out := filepath.Join(t.TempDir(), "sb")
			args := append([]string{"secure-boot", "provision", "--image", img, "--recovery", recovery, "--out-dir", out, "--timeout", "5s"}, tt.args...)
			var so, se bytes.Buffer
			err := Context{Stdout: &so, Stderr: &se, Stdin: strings.NewReader(tt.stdin), Args: args, USB: &USBEnv{Bus: s.bus, Clock: s.clk}}.Execute(context.Background())
			if ExitCode(err) != tt.code || err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("exit %d (%v), want %d and %q\n%s%s", ExitCode(err), err, tt.code, tt.want, so.String(), se.String())
			}
			if _, serr := os.Stat(filepath.Join(out, "pieeprom.sig")); serr == nil {
				t.Error("a refused provision left a complete recovery set")
			}
			if s.boards[0].ROMLoads() != 0 {
				t.Error("a refused provision served a board")
			}
		})
	}
}

// --dry-run serves nothing and prints every file with its hash, the key
// hash and the OTP lines; typing the serial at the prompt is a
// confirmation.
func TestSecureBootDryRunAndPrompt(t *testing.T) {
	sb := func(n string) string { return repotest.Shared(t, filepath.Join("secure-boot-vectors", n)) }
	img, recovery := eepromVector(t, "pieeprom-2026-05-17.bin"), eepromVector(t, "recovery.bin")
	s := newSimBench(t, usbboottest.BoardConfig{Port: "1-1.1", Serial: "af04b2da", Mode: usbboottest.ModeRecovery})
	out := filepath.Join(t.TempDir(), "sb")
	stdout, _, err := s.run(t, t.Context(), "secure-boot", "provision", "--image", img, "--recovery", recovery, "--key", sb("private.pem"),
		"--program-pubkey", "--dry-run", "--out-dir", out, "--timestamp", "1700000000", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var plan struct {
		DryRun   bool            `json:"dry_run"`
		Recovery recoverydir.Dir `json:"recovery"`
		Config   string          `json:"config_txt"`
		OTP      []string        `json:"otp"`
	}
	if err := json.Unmarshal([]byte(stdout), &plan); err != nil {
		t.Fatal(err, stdout)
	}
	if !plan.DryRun || plan.Recovery.Secure == nil || plan.Recovery.Secure.KeyHash != keyHashOf(t, sb("public.pem")) ||
		!strings.Contains(plan.Config, "\nprogram_pubkey=1\n") || strings.Join(plan.OTP, ",") != "program_pubkey" || len(plan.Recovery.Files) != 4 {
		t.Errorf("plan = %+v", plan)
	}
	for _, f := range plan.Recovery.Files {
		if got := sha256Hex(readFile(t, f.Path)); got != f.SHA256 {
			t.Errorf("%s: plan says sha256 %s, file has %s", f.Name, f.SHA256, got)
		}
	}
	if s.boards[0].ROMLoads() != 0 {
		t.Fatal("--dry-run served a board")
	}
	// an HSM wrapper (--sign-command) signs the same bytes: PKCS#1 v1.5 is
	// deterministic, so the set is identical
	wrapper := filepath.Join(t.TempDir(), "hsm-wrapper")
	os.WriteFile(wrapper, []byte("#!/bin/sh\n[ \"$1\" = -a ] && [ \"$2\" = rsa2048-sha256 ] || exit 2\nopenssl dgst -sign "+sb("private.pem")+" -sha256 \"$3\" | od -An -v -tx1 | tr -d ' \\n'\n"), 0o755)
	out2 := filepath.Join(t.TempDir(), "sb")
	if _, _, err := s.run(t, t.Context(), "secure-boot", "provision", "--image", img, "--recovery", recovery, "--sign-command", wrapper, "--pubkey", sb("public.pem"),
		"--program-pubkey", "--dry-run", "--out-dir", out2, "--timestamp", "1700000000"); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(readFile(t, filepath.Join(out, "pieeprom.bin")), readFile(t, filepath.Join(out2, "pieeprom.bin"))) {
		t.Error("--sign-command built another pieeprom.bin than --key with the same key")
	}
	// the serial typed at the prompt confirms: the board is provisioned
	var so, se bytes.Buffer
	err = Context{Stdout: &so, Stderr: &se, Stdin: strings.NewReader("AF04B2DA\n"), USB: &USBEnv{Bus: s.bus, Clock: s.clk},
		Args: []string{"secure-boot", "provision", "--image", img, "--recovery", recovery, "--key", sb("private.pem"), "--program-pubkey", "--serial", "af04b2da"}}.Execute(t.Context())
	if err != nil {
		t.Fatalf("%v\n%s%s", err, so.String(), se.String())
	}
	if !strings.Contains(se.String(), "Type the serial of the board to burn (af04b2da)") || s.boards[0].Config().OTP.KeyHash() == "" {
		t.Errorf("prompt or provision missing:\n%s", se.String())
	}
	// an empty firmware cache and no --image: the error names this command
	_, _, err = runCLI(t, "secure-boot", "provision", "--key", sb("private.pem"), "--cache", t.TempDir(), "--dry-run", "--out-dir", t.TempDir())
	if err == nil || !strings.HasPrefix(err.Error(), "secure-boot provision: no --image FILE given") {
		t.Errorf("no image: %v", err)
	}
}

// eeprom config --bootcode/--bootsys store CM5 countersigned firmware and
// --extract gives it back; a CM4 image refuses them with exit 2.
func TestEEPROMConfigBootcodeBootsys(t *testing.T) {
	dir := t.TempDir()
	cm5, conf := filepath.Join(dir, "cm5.bin"), filepath.Join(dir, "boot.conf")
	os.WriteFile(cm5, eepromtest.Image2712("[all]\nBOOT_ORDER=0xf461\n"), 0o644)
	os.WriteFile(conf, []byte("[all]\nBOOT_ORDER=0xf461\nSIGNED_BOOT=1\n"), 0o644)
	code, sys := filepath.Join(dir, "bootcode.bin"), filepath.Join(dir, "bootsys")
	os.WriteFile(code, bytes.Repeat([]byte("C"), 4000), 0o644)
	os.WriteFile(sys, bytes.Repeat([]byte("S"), 70000), 0o644)
	out := filepath.Join(dir, "out.bin")
	if _, _, err := runCLI(t, "eeprom", "config", cm5, "--apply", conf, "--bootcode", code, "--bootsys", sys, "--out", out); err != nil {
		t.Fatal(err)
	}
	x := filepath.Join(dir, "x")
	if _, _, err := runCLI(t, "eeprom", "config", out, "--extract", x); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"bootcode.bin": code, "bootsys": sys, "bootconf.txt": conf} {
		if !bytes.Equal(readFile(t, filepath.Join(x, name)), readFile(t, want)) {
			t.Errorf("extracted %s differs from what was stored", name)
		}
	}
	_, _, err := runCLI(t, "eeprom", "config", eepromVector(t, "pieeprom-2026-05-17.bin"), "--apply", conf, "--bootcode", code, "--out", filepath.Join(dir, "cm4.bin"))
	if ExitCode(err) != 2 || !strings.Contains(err.Error(), "BCM2712") {
		t.Fatalf("CM4 image with --bootcode: exit %d: %v", ExitCode(err), err)
	}
	if _, err := os.Stat(filepath.Join(dir, "cm4.bin")); err == nil {
		t.Error("refused edit wrote its output")
	}
}
