//go:build !cgo

package pkcs11signer

import (
	"crypto"
	"errors"
)

// Open fails: PKCS#11 needs cgo (the module is a C library).
func Open(uri string) (crypto.Signer, func() error, error) {
	if _, err := ParseURI(uri); err != nil {
		return nil, nil, err
	}
	return nil, nil, errors.New("pkcs11: this cm4bench was built without cgo (CGO_ENABLED=0), so without PKCS#11: use a PEM key or --sign-command")
}
