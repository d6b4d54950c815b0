//go:build cgo

package pkcs11signer

import (
	"crypto"
	"errors"
	"fmt"
	"os"

	"github.com/ThalesGroup/crypto11"
)

// Open finds the key the URI names and returns it as a crypto.Signer; the
// close func ends the session.
func Open(uri string) (crypto.Signer, func() error, error) {
	u, err := ParseURI(uri)
	if err != nil {
		return nil, nil, err
	}
	module := u.Module
	if module == "" {
		for _, m := range Modules {
			if _, err := os.Stat(m); err == nil {
				module = m
				break
			}
		}
	}
	if module == "" {
		return nil, nil, errors.New("pkcs11: no PKCS#11 module found: give module-path= in the URI")
	}
	ctx, err := crypto11.Configure(&crypto11.Config{Path: module, TokenLabel: u.Token, Pin: u.PIN})
	if err != nil {
		return nil, nil, fmt.Errorf("pkcs11: open token %q with %s: %w", u.Token, module, err)
	}
	var id, label []byte
	if u.ID != "" {
		id = []byte(u.ID)
	}
	if u.Object != "" {
		label = []byte(u.Object)
	}
	s, err := ctx.FindKeyPair(id, label)
	if err != nil {
		ctx.Close()
		return nil, nil, fmt.Errorf("pkcs11: find key %q on token %q: %w", u.Object+u.ID, u.Token, err)
	}
	if s == nil {
		ctx.Close()
		return nil, nil, fmt.Errorf("pkcs11: no key pair %q on token %q (the public key object must be on the token too)", u.Object+u.ID, u.Token)
	}
	return s, ctx.Close, nil
}
