package eeprom_test

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/hex"
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

// pubkey.bin read back from upstream's signed image is the PEM key, and
// its hash is what CUSTOMER_KEY_HASH reports.
func TestParsePubKeyBin(t *testing.T) {
	im, err := eeprom.Parse(vector(t, "pieeprom-signed.bin"))
	if err != nil {
		t.Fatal(err)
	}
	bin, _ := im.File("pubkey.bin")
	pub, _ := eeprom.ParsePublicKey(vector(t, "public.pem"))
	for _, tt := range []struct {
		name string
		in   []byte
		ok   bool
	}{
		{"upstream's pubkey.bin", bin, true},
		{"erased slot", bytes.Repeat([]byte{0xFF}, 264), false},
		{"short", bin[:200], false},
		{"even exponent", append(bytes.Clone(bin[:256]), 4, 0, 0, 0, 0, 0, 0, 0), false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := eeprom.ParsePubKeyBin(tt.in)
			if !tt.ok {
				if err == nil || !errors.Is(err, eeprom.ErrKey) {
					t.Fatalf("accepted: %v", err)
				}
				return
			}
			if err != nil || !got.Equal(pub) {
				t.Fatalf("ParsePubKeyBin = %v, %v; want public.pem", got, err)
			}
			h, _ := eeprom.KeyHash(pub)
			if s := sha256.Sum256(bin); h != hex.EncodeToString(s[:]) {
				t.Fatalf("KeyHash %s is not sha256(pubkey.bin)", h)
			}
		})
	}
}

func FuzzParsePubKeyBin(f *testing.F) {
	f.Add(bytes.Repeat([]byte{0xFF}, 264))
	f.Add(append(bytes.Repeat([]byte{0x01}, 256), 1, 0, 1, 0, 0, 0, 0, 0))
	f.Fuzz(func(t *testing.T, b []byte) {
		pub, err := eeprom.ParsePubKeyBin(b)
		if err != nil {
			return
		}
		back, err := eeprom.PubKeyBin(pub)
		if err != nil || !bytes.Equal(back, b) {
			t.Fatalf("round trip: %v", err)
		}
	})
}
