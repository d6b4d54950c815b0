//go:build cgo

package pkcs11signer_test

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cm4bench/cm4bench/eeprom"
	"github.com/cm4bench/cm4bench/eeprom/pkcs11signer"
	"github.com/cm4bench/cm4bench/internal/repotest"
)

// softToken makes a SoftHSM2 token in a temporary folder (its own
// SOFTHSM2_CONF) holding upstream's test key pair, and returns its URI.
func softToken(t *testing.T) string {
	t.Helper()
	for _, p := range []string{"softhsm2-util", "pkcs11-tool", "openssl"} {
		if _, err := exec.LookPath(p); err != nil {
			t.Fatalf("%s is missing: scripts/deps.sh installs softhsm2 and opensc", p)
		}
	}
	dir := t.TempDir()
	os.Mkdir(filepath.Join(dir, "tokens"), 0o700)
	conf := filepath.Join(dir, "softhsm2.conf")
	os.WriteFile(conf, []byte("directories.tokendir = "+filepath.Join(dir, "tokens")+"\nobjectstore.backend = file\nlog.level = ERROR\n"), 0o600)
	t.Setenv("SOFTHSM2_CONF", conf)
	run := func(name string, args ...string) string {
		t.Helper()
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
		return string(out)
	}
	run("softhsm2-util", "--init-token", "--free", "--label", "cm4bench", "--so-pin", "1234", "--pin", "5678")
	p8 := filepath.Join(dir, "key.p8")
	run("openssl", "pkcs8", "-topk8", "-nocrypt", "-in", repotest.Shared(t, "secure-boot-vectors/private.pem"), "-out", p8)
	run("softhsm2-util", "--import", p8, "--token", "cm4bench", "--label", "sbkey", "--id", "01", "--pin", "5678")
	return "pkcs11:token=cm4bench;object=sbkey;pin-value=5678"
}

// The token signs bootconf.txt into upstream's bootconf.sig byte for
// byte, and pkcs11-tool (OpenSC) signing with the same token agrees.
func TestTokenSignsAsUpstream(t *testing.T) {
	uri := softToken(t)
	s, closeToken, err := pkcs11signer.Open(uri)
	if err != nil {
		t.Fatal(err)
	}
	defer closeToken()
	conf, _ := os.ReadFile(repotest.Shared(t, "secure-boot-vectors/bootconf.txt"))
	want, _ := os.ReadFile(repotest.Shared(t, "secure-boot-vectors/bootconf.sig"))
	pubPEM, _ := os.ReadFile(repotest.Shared(t, "secure-boot-vectors/public.pem"))
	pub, _ := eeprom.ParsePublicKey(pubPEM)
	got, err := eeprom.SignedDigest(sha256.Sum256(conf), 1614092425, 0, s, pub)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(want) {
		t.Fatalf("token signature:\n%s\nwant upstream's:\n%s", got, want)
	}
	module := ""
	for _, m := range pkcs11signer.Modules {
		if _, err := os.Stat(m); err == nil {
			module = m
			break
		}
	}
	out := filepath.Join(t.TempDir(), "sig.bin")
	if o, err := exec.Command("pkcs11-tool", "--module", module, "--token-label", "cm4bench", "--pin", "5678", "--sign", "--mechanism", "SHA256-RSA-PKCS",
		"--label", "sbkey", "--input-file", repotest.Shared(t, "secure-boot-vectors/bootconf.txt"), "--output-file", out).CombinedOutput(); err != nil {
		t.Fatalf("pkcs11-tool: %v %s", err, o)
	}
	ref, _ := os.ReadFile(out)
	if !strings.Contains(string(got), "rsa2048: "+hex.EncodeToString(ref)+"\n") {
		t.Errorf("pkcs11-tool signed %x, cm4bench %s", ref, got)
	}
}
