// Package pkcs11signer signs secure-boot files with a key that never
// leaves a PKCS#11 token (an HSM, a smart card, SoftHSM), named by an
// RFC 7512 URI: pkcs11:token=LABEL;object=KEYLABEL (or id=%01) with the PIN
// in pin-value=, in $CM4BENCH_PKCS11_PIN, or in pin-source=FILE. It is the
// one cgo package of the signing path (ThalesGroup/crypto11 over
// miekg/pkcs11, which dlopens the module).
package pkcs11signer

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
)

// Modules are where a PKCS#11 module is looked for when the URI names none
// (module-path=): SoftHSM2 and OpenSC on Debian.
var Modules = []string{
	"/usr/lib/softhsm/libsofthsm2.so",
	"/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so",
	"/usr/lib/aarch64-linux-gnu/opensc-pkcs11.so",
}

// URI is a parsed pkcs11: URI.
type URI struct {
	Token, Object, ID, PIN, Module string
}

// IsURI reports whether s names a PKCS#11 key.
func IsURI(s string) bool { return strings.HasPrefix(s, "pkcs11:") }

// ParseURI reads the attributes cm4bench uses from an RFC 7512 URI.
func ParseURI(s string) (URI, error) {
	var u URI
	rest, ok := strings.CutPrefix(s, "pkcs11:")
	if !ok {
		return u, fmt.Errorf("pkcs11: %q is not a pkcs11: URI", s)
	}
	path, query, _ := strings.Cut(rest, "?")
	attrs := strings.Split(path, ";")
	if query != "" {
		attrs = append(attrs, strings.Split(query, "&")...)
	}
	for _, a := range attrs {
		if a == "" {
			continue
		}
		k, v, ok := strings.Cut(a, "=")
		if !ok {
			return u, fmt.Errorf("pkcs11: attribute %q has no value", a)
		}
		val, err := url.PathUnescape(v)
		if err != nil {
			return u, fmt.Errorf("pkcs11: attribute %s: %w", k, err)
		}
		switch k {
		case "token":
			u.Token = val
		case "object":
			u.Object = val
		case "id":
			u.ID = val
		case "pin-value":
			u.PIN = val
		case "pin-source":
			b, err := os.ReadFile(strings.TrimPrefix(val, "file:"))
			if err != nil {
				return u, fmt.Errorf("pkcs11: pin-source: %w", err)
			}
			u.PIN = strings.TrimSpace(string(b))
		case "module-path":
			u.Module = val
		}
	}
	if u.Token == "" || (u.Object == "" && u.ID == "") {
		return u, fmt.Errorf("pkcs11: %q: name the token= and the key's object= or id=", s)
	}
	if u.PIN == "" {
		u.PIN = os.Getenv("CM4BENCH_PKCS11_PIN")
	}
	if u.PIN == "" {
		return u, errors.New("pkcs11: no PIN: give pin-value= or pin-source= in the URI, or set CM4BENCH_PKCS11_PIN")
	}
	return u, nil
}
