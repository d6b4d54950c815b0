package eeprom

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"strings"
)

// Signed digests: rpi-eeprom-digest -k adds an "rsa2048: <hex>" line, the
// RSA-2048 PKCS#1 v1.5 signature over SHA-256 of the signed file, to the
// .sig text (sha256, ts). The bootloader checks it against the public key
// in its OTP (secure boot).

// ErrKey marks a key that cannot sign for the bootloader.
var ErrKey = errors.New("unusable key")

// CheckSigningKey requires an RSA-2048 key, the only kind the bootloader
// verifies.
func CheckSigningKey(pub crypto.PublicKey) (*rsa.PublicKey, error) {
	k, ok := pub.(*rsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("eeprom: the key is a %T, the bootloader verifies RSA-2048 only: %w", pub, ErrKey)
	}
	if n := k.N.BitLen(); n != 2048 {
		return nil, fmt.Errorf("eeprom: the key is RSA-%d, the bootloader verifies RSA-2048 only: %w", n, ErrKey)
	}
	return k, nil
}

// SignedDigest is Digest plus the rsa2048 line: sum is the SHA-256 of the
// signed file and signer holds the private key (an *rsa.PrivateKey, a
// PKCS#11 token, an external command). The signature is checked against
// want (the public key that will be in the OTP) before it is returned, so
// a signer holding another key fails here, not on the board.
func SignedDigest(sum [sha256.Size]byte, ts int64, targetSoC int, signer crypto.Signer, want *rsa.PublicKey) ([]byte, error) {
	pub, err := CheckSigningKey(signer.Public())
	if err != nil {
		return nil, err
	}
	if want != nil && !pub.Equal(want) {
		return nil, fmt.Errorf("eeprom: the public key does not match the signing key: %w", ErrKey)
	}
	sig, err := signer.Sign(rand.Reader, sum[:], crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("eeprom: sign: %w", err)
	}
	if err := rsa.VerifyPKCS1v15(pub, crypto.SHA256, sum[:], sig); err != nil {
		return nil, fmt.Errorf("eeprom: the signer's signature does not verify with its public key: %w", ErrKey)
	}
	out := FormatDigest(sum, ts, targetSoC)
	out = append(out, "rsa2048: "...)
	out = append(out, hex.EncodeToString(sig)...)
	return append(out, '\n'), nil
}

// VerifyDigest checks a .sig text against the SHA-256 of its file and,
// when pub is given, its rsa2048 line against pub (rpi-eeprom-digest -v).
func VerifyDigest(sig []byte, sum [sha256.Size]byte, pub *rsa.PublicKey) error {
	lines := strings.Split(strings.TrimRight(string(sig), "\n"), "\n")
	if len(lines) == 0 || strings.TrimSpace(lines[0]) != hex.EncodeToString(sum[:]) {
		return fmt.Errorf("eeprom: the .sig's sha256 %q is not the file's %x: %w", firstLine(lines), sum, ErrInvalid)
	}
	var rsaHex string
	for _, l := range lines[1:] {
		if v, ok := strings.CutPrefix(l, "rsa2048: "); ok {
			rsaHex = strings.TrimSpace(v)
		}
	}
	if pub == nil {
		return nil
	}
	if rsaHex == "" {
		return fmt.Errorf("eeprom: the .sig has no rsa2048 line: %w", ErrInvalid)
	}
	raw, err := hex.DecodeString(rsaHex)
	if err != nil {
		return fmt.Errorf("eeprom: the rsa2048 line is not hex: %w", ErrInvalid)
	}
	if err := rsa.VerifyPKCS1v15(pub, crypto.SHA256, sum[:], raw); err != nil {
		return fmt.Errorf("eeprom: the rsa2048 signature does not verify with this public key: %w", ErrInvalid)
	}
	return nil
}

func firstLine(l []string) string {
	if len(l) == 0 {
		return ""
	}
	return l[0]
}

// ParsePrivateKey reads an RSA private key in PEM (PKCS#1 or PKCS#8).
func ParsePrivateKey(pemBytes []byte) (*rsa.PrivateKey, error) {
	b, _ := pem.Decode(pemBytes)
	if b == nil {
		return nil, fmt.Errorf("eeprom: not a PEM key: %w", ErrKey)
	}
	if k, err := x509.ParsePKCS1PrivateKey(b.Bytes); err == nil {
		return k, nil
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("eeprom: %s is not a private key: %w", b.Type, ErrKey)
	}
	rk, ok := k.(*rsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("eeprom: the private key is a %T, want RSA-2048: %w", k, ErrKey)
	}
	return rk, nil
}

// ParsePublicKey reads an RSA public key in PEM (SubjectPublicKeyInfo or
// PKCS#1).
func ParsePublicKey(pemBytes []byte) (*rsa.PublicKey, error) {
	b, _ := pem.Decode(pemBytes)
	if b == nil {
		return nil, fmt.Errorf("eeprom: not a PEM key: %w", ErrKey)
	}
	if k, err := x509.ParsePKCS1PublicKey(b.Bytes); err == nil {
		return k, nil
	}
	k, err := x509.ParsePKIXPublicKey(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("eeprom: %s is not a public key: %w", b.Type, ErrKey)
	}
	return CheckSigningKey(k)
}

// PubKeyBin is the pubkey.bin the bootloader reads: the RSA modulus, 256
// bytes little-endian, then the exponent as 8 bytes little-endian.
func PubKeyBin(pub *rsa.PublicKey) ([]byte, error) {
	if _, err := CheckSigningKey(pub); err != nil {
		return nil, err
	}
	out := make([]byte, 264)
	n := pub.N.FillBytes(make([]byte, 256))
	for i := range n {
		out[i] = n[255-i]
	}
	binary.LittleEndian.PutUint64(out[256:], uint64(pub.E))
	return out, nil
}

// ParsePubKeyBin reads a pubkey.bin back (the inverse of PubKeyBin). An
// erased slot (all 0xFF) or a short file is ErrKey.
func ParsePubKeyBin(b []byte) (*rsa.PublicKey, error) {
	if len(b) != 264 {
		return nil, fmt.Errorf("eeprom: pubkey.bin is %d bytes, want 264: %w", len(b), ErrKey)
	}
	be := make([]byte, 256)
	for i := range be {
		be[i] = b[255-i]
	}
	e := binary.LittleEndian.Uint64(b[256:])
	if e < 3 || e > 1<<31-1 || e%2 == 0 {
		return nil, fmt.Errorf("eeprom: pubkey.bin exponent %d is not a usable RSA exponent (an erased slot?): %w", e, ErrKey)
	}
	pub := &rsa.PublicKey{N: new(big.Int).SetBytes(be), E: int(e)}
	return CheckSigningKey(pub)
}

// KeyHash is the sha256 of a public key's pubkey.bin, lower-case hex: the
// value secure boot programs into OTP and recovery.bin reports as
// CUSTOMER_KEY_HASH.
func KeyHash(pub *rsa.PublicKey) (string, error) {
	b, err := PubKeyBin(pub)
	if err != nil {
		return "", err
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:]), nil
}
