package eeprom_test

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/cm4bench/cm4bench/eeprom"
	"github.com/cm4bench/cm4bench/internal/repotest"
)

func vector(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(repotest.Shared(t, "secure-boot-vectors/"+name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Upstream's signed-boot test vector: the same key, file and timestamp
// give bootconf.sig byte for byte, and it verifies with public.pem.
func TestSignedDigestMatchesUpstream(t *testing.T) {
	key, err := eeprom.ParsePrivateKey(vector(t, "private.pem"))
	if err != nil {
		t.Fatal(err)
	}
	pub, err := eeprom.ParsePublicKey(vector(t, "public.pem"))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(vector(t, "bootconf.txt"))
	got, err := eeprom.SignedDigest(sum, 1614092425, 0, key, pub)
	if err != nil {
		t.Fatal(err)
	}
	if want := vector(t, "bootconf.sig"); string(got) != string(want) {
		t.Fatalf("signed digest:\n%s\nwant upstream's:\n%s", got, want)
	}
	if err := eeprom.VerifyDigest(got, sum, pub); err != nil {
		t.Errorf("verify: %v", err)
	}
	bad := []byte(strings.Replace(string(got), "rsa2048: 28", "rsa2048: 29", 1))
	if err := eeprom.VerifyDigest(bad, sum, pub); err == nil {
		t.Error("a changed signature verified")
	}
	other := sha256.Sum256([]byte("another config"))
	if err := eeprom.VerifyDigest(got, other, pub); err == nil {
		t.Error("the .sig of another file verified")
	}
}

func TestSigningKeyRefused(t *testing.T) {
	key, _ := eeprom.ParsePrivateKey(vector(t, "private.pem"))
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	other, _ := rsa.GenerateKey(rand.Reader, 2048)
	sum := sha256.Sum256([]byte("x"))
	for _, tc := range []struct {
		name   string
		signer *rsa.PrivateKey
		want   *rsa.PublicKey
		msg    string
	}{
		{"RSA-1024", small, nil, "RSA-1024"},
		{"public key of another pair", key, &other.PublicKey, "does not match"},
	} {
		if _, err := eeprom.SignedDigest(sum, 1, 0, tc.signer, tc.want); !errors.Is(err, eeprom.ErrKey) || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
	if _, err := eeprom.ParsePrivateKey([]byte("not a key")); !errors.Is(err, eeprom.ErrKey) {
		t.Errorf("garbage key: %v", err)
	}
}

// Upstream's signed loopback: rpi-eeprom-config --config bootconf.txt
// --digest bootconf.sig --pubkey public.pem on pieeprom-signed.bin gives
// back the same bytes; so must we, and pubkey.bin must be the key.
func TestSignedImageLoopback(t *testing.T) {
	img := vector(t, "pieeprom-signed.bin")
	im, err := eeprom.Parse(img)
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := eeprom.ParsePublicKey(vector(t, "public.pem"))
	pk, err := eeprom.PubKeyBin(pub)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := im.File("pubkey.bin"); string(got) != string(pk) {
		t.Fatalf("pubkey.bin of the public key differs from upstream's")
	}
	if err := im.SetBootConf(vector(t, "bootconf.txt")); err != nil {
		t.Fatal(err)
	}
	if err := im.SetFile("bootconf.sig", vector(t, "bootconf.sig")); err != nil {
		t.Fatal(err)
	}
	if err := im.SetFile("pubkey.bin", pk); err != nil {
		t.Fatal(err)
	}
	if got := im.Bytes(); string(got) != string(img) {
		t.Fatal("the signed loopback changed the image")
	}
	if err := im.SetFile("nope.bin", []byte("x")); !errors.Is(err, eeprom.ErrNotFound) {
		t.Errorf("SetFile of a missing section: %v", err)
	}
}
