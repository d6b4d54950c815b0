// Package signer provides the signers of secure-boot files besides a PEM
// key: an external HSM wrapper command, with the interface upstream's
// rpi-eeprom-digest -H and rpi-sign-bootcode use (`CMD -a rsa2048-sha256
// FILE` prints the PKCS#1 v1.5 signature of FILE in hex).
package signer

import (
	"context"
	"crypto"
	"crypto/rsa"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"time"
)

// Command signs by running an HSM wrapper on a file.
type Command struct {
	Cmd  string         // the wrapper, run as /bin/sh -c 'CMD "$@"' with -a rsa2048-sha256 FILE
	File string         // the file to sign (the wrapper hashes it itself)
	Pub  *rsa.PublicKey // the key the wrapper signs with (for Public)
}

// Public is the wrapper's public key, as given.
func (c *Command) Public() crypto.PublicKey { return c.Pub }

// Sign runs the wrapper. digest is not passed on (the wrapper hashes the
// file); the caller verifies the signature against it.
func (c *Command) Sign(_ io.Reader, _ []byte, _ crypto.SignerOpts) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", c.Cmd+` "$@"`, "sign-command", "-a", "rsa2048-sha256", c.File)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("signer: %s failed: %w", c.Cmd, err)
	}
	sig, err := hex.DecodeString(strings.TrimSpace(string(out)))
	if err != nil || len(sig) != 256 {
		return nil, fmt.Errorf("signer: %s did not print a 256-byte signature in hex (%d bytes of output)", c.Cmd, len(out))
	}
	return sig, nil
}

// ForContent is c signing data instead of c.File: data is written to a
// private temporary file for the wrapper, removed by the returned func.
func (c *Command) ForContent(data []byte) (crypto.Signer, func(), error) {
	f, err := os.CreateTemp("", "cm4bench-sign-*")
	if err != nil {
		return nil, func() {}, fmt.Errorf("signer: %w", err)
	}
	done := func() { os.Remove(f.Name()) }
	if _, err := f.Write(data); err != nil {
		f.Close()
		done()
		return nil, func() {}, fmt.Errorf("signer: write %s: %w", f.Name(), err)
	}
	if err := f.Close(); err != nil {
		done()
		return nil, func() {}, fmt.Errorf("signer: write %s: %w", f.Name(), err)
	}
	cc := *c
	cc.File = f.Name()
	return &cc, done, nil
}

// ForFile is c signing the file at path.
func (c *Command) ForFile(path string) crypto.Signer {
	cc := *c
	cc.File = path
	return &cc
}
