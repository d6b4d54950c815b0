package cli

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/cm4bench/cm4bench/firmware"
)

// firmwareMirror serves the real files of ../shared at their catalogue URL
// paths; corrupt flips a byte of every body. It counts requests.
func firmwareMirror(t *testing.T, corrupt bool) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	cat, err := firmware.Default()
	if err != nil {
		t.Fatal(err)
	}
	fixtures := map[string]string{
		"usbboot/firmware/bootfiles.bin":                           "../firmware-fixtures/bootfiles.bin",
		"usbboot/recovery/config.txt":                              "../firmware-fixtures/recovery-config.txt",
		"usbboot/recovery/boot.conf":                               "../firmware-fixtures/recovery-boot.conf",
		"rpi-eeprom/firmware-2711/latest/recovery.bin":             "recovery.bin",
		"rpi-eeprom/firmware-2711/default/pieeprom-2026-05-17.bin": "pieeprom-2026-05-17.bin",
	}
	files := map[string][]byte{}
	for id, rel := range fixtures {
		f, err := cat.File(id)
		if err != nil {
			t.Fatal(err)
		}
		u, _ := url.Parse(f.URL)
		files[u.Path] = readFile(t, eepromVector(t, rel))
	}
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		b, ok := files[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		if corrupt {
			b = bytes.Clone(b)
			b[0] ^= 0xFF
		}
		w.Write(b)
	}))
	t.Cleanup(srv.Close)
	return srv, &n
}

func TestFirmwareFetchListVerifyDir(t *testing.T) {
	srv, requests := firmwareMirror(t, false)
	cache := t.TempDir()
	out, _, err := runCLI(t, "firmware", "fetch", "recovery", "bootfiles", "--cache", cache, "--mirror", srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "recovery: ") || strings.Count(out, "  ok\n") != 5 {
		t.Errorf("fetch output:\n%s", out)
	}
	fetched := requests.Load()
	if fetched != 5 {
		t.Errorf("%d requests, want 5", fetched)
	}

	out, _, err = runCLI(t, "firmware", "list", "--json", "--cache", cache)
	if err != nil {
		t.Fatal(err)
	}
	var reports []firmwareSetReport
	if err := json.Unmarshal([]byte(out), &reports); err != nil {
		t.Fatal(err)
	}
	states := map[string]string{}
	for _, r := range reports {
		for _, f := range r.Files {
			states[r.Set+"/"+f.Name] = f.State
		}
	}
	for k, want := range map[string]string{
		"recovery/bootcode4.bin":  "ok",
		"bootfiles/bootfiles.bin": "ok",
		"msd/start4.elf":          "missing",
		"netboot/start4.elf":      "unpinned",
		"eeprom/recovery.bin":     "ok", // same blob as recovery/bootcode4.bin
	} {
		if states[k] != want {
			t.Errorf("list: %s is %q, want %q", k, states[k], want)
		}
	}

	// dir: a verified directory under the served names, offline
	out, _, err = runCLI(t, "firmware", "dir", "recovery", "--offline", "--cache", cache)
	if err != nil {
		t.Fatal(err)
	}
	dir := strings.TrimSpace(out)
	if !bytes.Equal(readFile(t, filepath.Join(dir, "bootcode4.bin")), readFile(t, eepromVector(t, "recovery.bin"))) {
		t.Error("dir recovery: bootcode4.bin is not recovery.bin")
	}
	if _, _, err := runCLI(t, "firmware", "dir", "msd", "--offline", "--cache", cache); err == nil || !strings.Contains(err.Error(), "not in the firmware cache") {
		t.Errorf("dir msd --offline = %v", err)
	}

	// set-boot-order takes recovery.bin from the cache when --recovery is omitted
	rec := filepath.Join(t.TempDir(), "rec")
	if _, _, err := runCLI(t, "eeprom", "set-boot-order", "--image", eepromVector(t, "pieeprom-2026-05-17.bin"), "--out-dir", rec, "--no-flash", "--cache", cache); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(readFile(t, filepath.Join(rec, "bootcode4.bin")), readFile(t, eepromVector(t, "recovery.bin"))) {
		t.Error("set-boot-order did not use the cached recovery.bin")
	}
	// and the default image too, when --image is omitted
	rec2 := filepath.Join(t.TempDir(), "rec")
	if _, _, err := runCLI(t, "eeprom", "set-boot-order", "--out-dir", rec2, "--no-flash", "--cache", cache, "--timestamp", "1700000000"); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(readFile(t, filepath.Join(rec2, "pieeprom.bin")), readFile(t, eepromVector(t, "pieeprom-2026-05-17.bootorder-f21.bin"))) ||
		!bytes.Equal(readFile(t, filepath.Join(rec2, "pieeprom.sig")), readFile(t, eepromVector(t, "pieeprom-2026-05-17.bootorder-f21.sig"))) {
		t.Error("set-boot-order from the cached default image differs from upstream's 0xf21 image")
	}

	// verify: all good, then a damaged blob is reported (exit 1) and removed
	if _, _, err := runCLI(t, "firmware", "verify", "recovery", "--cache", cache); err != nil {
		t.Fatalf("verify: %v", err)
	}
	blob := filepath.Join(cache, "sha256", "c7f8c089fd8e31a5ce09c083893926895097041a6268e9350948520c98ca5360")
	os.Chmod(blob, 0o644)
	os.WriteFile(blob, []byte("recovery_reboot=1\n"), 0o644)
	out, _, err = runCLI(t, "firmware", "verify", "--cache", cache)
	if err == nil || ExitCode(err) != 1 || !strings.Contains(err.Error(), "damaged and removed: recovery/config.txt") {
		t.Errorf("verify of a damaged cache = %v\n%s", err, out)
	}
	if _, err := os.Stat(blob); !os.IsNotExist(err) {
		t.Error("damaged blob still cached")
	}
	if _, _, err := runCLI(t, "firmware", "verify", "msd", "--cache", cache); err == nil || !strings.Contains(err.Error(), "not cached: msd/") {
		t.Errorf("verify of an incomplete set = %v", err)
	}
	if requests.Load() != fetched {
		t.Errorf("list/dir/verify made %d requests", requests.Load()-fetched)
	}
}

func TestFirmwareFetchRefusesBadChecksum(t *testing.T) {
	srv, _ := firmwareMirror(t, true)
	cache := t.TempDir()
	_, _, err := runCLI(t, "firmware", "fetch", "recovery", "--cache", cache, "--mirror", srv.URL)
	if err == nil || !strings.Contains(err.Error(), "sha256 mismatch") {
		t.Fatalf("fetch from a corrupting mirror = %v", err)
	}
	for _, sub := range []string{"sha256", "tmp"} {
		if es, _ := os.ReadDir(filepath.Join(cache, sub)); len(es) != 0 {
			t.Errorf("%s/ holds %d entries after a refused fetch", sub, len(es))
		}
	}
	// and set-boot-order refuses to fall back to an unverified recovery.bin
	_, _, err = runCLI(t, "eeprom", "set-boot-order", "--image", eepromVector(t, "pieeprom-2026-05-17.bin"),
		"--out-dir", filepath.Join(t.TempDir(), "rec"), "--no-flash", "--cache", cache)
	if err == nil || !strings.Contains(err.Error(), "firmware fetch recovery") {
		t.Errorf("set-boot-order without a cached recovery.bin = %v", err)
	}
}

func TestFirmwareFetchFrom(t *testing.T) {
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "renamed-updater"), readFile(t, eepromVector(t, "recovery.bin")), 0o644)
	os.WriteFile(filepath.Join(src, "x.txt"), readFile(t, eepromVector(t, "../firmware-fixtures/recovery-config.txt")), 0o644)
	os.WriteFile(filepath.Join(src, "b.conf"), readFile(t, eepromVector(t, "../firmware-fixtures/recovery-boot.conf")), 0o644)
	cache := t.TempDir()
	// the image is missing: the recovery set is incomplete, and nothing is downloaded
	out, _, err := runCLI(t, "firmware", "fetch", "recovery", "--from", src, "--cache", cache, "--mirror", "http://127.0.0.1:1")
	if err == nil || !strings.Contains(err.Error(), "pieeprom-2026-05-17.bin") || !strings.Contains(out, "imported 3 verified files") {
		t.Fatalf("fetch --from without the image = %v\n%s", err, out)
	}
	os.WriteFile(filepath.Join(src, "img"), readFile(t, eepromVector(t, "pieeprom-2026-05-17.bin")), 0o644)
	out, _, err = runCLI(t, "firmware", "fetch", "recovery", "--from", src, "--cache", cache, "--json")
	if err != nil {
		t.Fatal(err)
	}
	var rep struct {
		Imported []string            `json:"imported"`
		Sets     []firmwareSetReport `json:"sets"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Imported) != 4 || !strings.Contains(strings.Join(rep.Imported, " "), "rpi-eeprom/firmware-2711/default/pieeprom-2026-05-17.bin") {
		t.Errorf("imported %q, want the 4 recovery files", rep.Imported)
	}
	for _, f := range rep.Sets[0].Files {
		if f.State != "ok" {
			t.Errorf("%s: %s", f.Name, f.State)
		}
	}
}
