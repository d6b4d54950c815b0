package pkcs11signer_test

import (
	"testing"

	"github.com/cm4bench/cm4bench/eeprom/pkcs11signer"
)

func TestURI(t *testing.T) {
	t.Setenv("CM4BENCH_PKCS11_PIN", "")
	for _, tc := range []struct {
		uri  string
		ok   bool
		want pkcs11signer.URI
	}{
		{"pkcs11:token=a;object=k;pin-value=1", true, pkcs11signer.URI{Token: "a", Object: "k", PIN: "1"}},
		{"pkcs11:token=my%20hsm;id=%01?pin-value=9&module-path=/x.so", true, pkcs11signer.URI{Token: "my hsm", ID: "\x01", PIN: "9", Module: "/x.so"}},
		{"pkcs11:object=k;pin-value=1", false, pkcs11signer.URI{}},
		{"pkcs11:token=a;object=k", false, pkcs11signer.URI{}},
		{"file:key.pem", false, pkcs11signer.URI{}},
	} {
		got, err := pkcs11signer.ParseURI(tc.uri)
		if (err == nil) != tc.ok || (tc.ok && got != tc.want) {
			t.Errorf("%s: %+v %v", tc.uri, got, err)
		}
	}
}

func FuzzParseURI(f *testing.F) {
	f.Add("pkcs11:token=a;object=k;pin-value=1")
	f.Fuzz(func(t *testing.T, s string) { pkcs11signer.ParseURI(s) })
}
