package cli

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"github.com/cm4bench/cm4bench/eeprom/recoverydir"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cm4bench/cm4bench/eeprom"
	"github.com/cm4bench/cm4bench/internal/repotest"
)

// eepromVector is the path of a file in ../shared/eeprom-vectors (seen from
// the repository root). A missing vector fails the test: CI has ../shared.
func eepromVector(t testing.TB, name string) string {
	t.Helper()
	return repotest.Shared(t, filepath.Join("eeprom-vectors", name))
}

func readFile(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// runCLI runs cm4bench in-process and returns stdout, stderr and the error.
func runCLI(t testing.TB, args ...string) (string, string, error) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	err := Context{Stdout: &stdout, Stderr: &stderr, Args: args}.Execute(context.Background())
	return stdout.String(), stderr.String(), err
}

// dirNames lists a directory, to prove no output (not even a temp file) was
// left behind.
func dirNames(t testing.TB, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

var eepromVectorNames = []string{"pieeprom-2026-05-17", "pieeprom-2023-01-11"}

func TestEEPROMUpstreamParity(t *testing.T) {
	for _, name := range eepromVectorNames {
		t.Run(name, func(t *testing.T) {
			img := eepromVector(t, name+".bin")
			f21 := readFile(t, eepromVector(t, name+".bootorder-f21.bin"))
			sig := readFile(t, eepromVector(t, name+".bootorder-f21.sig"))
			dir := t.TempDir()

			out, _, err := runCLI(t, "eeprom", "show", img)
			if err != nil {
				t.Fatal(err)
			}
			if want := readFile(t, eepromVector(t, name+".config.txt")); out != string(want) {
				t.Errorf("show = %q, want %q", out, want)
			}
			// show -o writes the same bytes and prints nothing
			if out, _, err := runCLI(t, "eeprom", "show", img, "-o", filepath.Join(dir, "boot.conf")); err != nil || out != "" {
				t.Fatalf("show -o: %q, %v", out, err)
			}
			if got, want := readFile(t, filepath.Join(dir, "boot.conf")), readFile(t, eepromVector(t, name+".config.txt")); !bytes.Equal(got, want) {
				t.Errorf("show -o wrote %q", got)
			}

			cfgOut := filepath.Join(dir, "config.bin")
			if _, _, err := runCLI(t, "eeprom", "config", img, "--apply", eepromVector(t, name+".bootorder-f21.conf.txt"), "--out", cfgOut); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(readFile(t, cfgOut), f21) {
				t.Error("config --apply output differs from rpi-eeprom-config's")
			}

			setOut := filepath.Join(dir, "set.bin")
			if _, _, err := runCLI(t, "eeprom", "set", img, "BOOT_ORDER=0xf21", "--out", setOut); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(readFile(t, setOut), f21) {
				t.Error("set BOOT_ORDER=0xf21 output differs from rpi-eeprom-config's")
			}

			out, _, err = runCLI(t, "eeprom", "digest", eepromVector(t, name+".bootorder-f21.bin"), "--timestamp", "1700000000")
			if err != nil || out != string(sig) {
				t.Errorf("digest = %q, %v; want %q", out, err, sig)
			}
			sigOut := filepath.Join(dir, "x.sig")
			if _, _, err := runCLI(t, "eeprom", "digest", setOut, "-o", sigOut, "--timestamp", "1700000000"); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(readFile(t, sigOut), sig) {
				t.Errorf("digest -o wrote %q, want %q", readFile(t, sigOut), sig)
			}

			// round trip through show and config --apply
			back := filepath.Join(dir, "back.bin")
			if _, _, err := runCLI(t, "eeprom", "config", cfgOut, "--apply", filepath.Join(dir, "boot.conf"), "--out", back); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(readFile(t, back), readFile(t, img)) {
				t.Error("applying the original config back did not restore the original image")
			}
		})
	}
}

func TestEEPROMDigestSourceDateEpoch(t *testing.T) {
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	name := "pieeprom-2023-01-11.bootorder-f21"
	out, _, err := runCLI(t, "eeprom", "digest", eepromVector(t, name+".bin"))
	if want := readFile(t, eepromVector(t, name+".sig")); err != nil || out != string(want) {
		t.Errorf("digest with SOURCE_DATE_EPOCH = %q, %v; want %q", out, err, want)
	}
	out, _, err = runCLI(t, "eeprom", "digest", eepromVector(t, name+".bin"), "--timestamp", "5", "--target-soc", "2711")
	if err != nil || !strings.HasSuffix(out, "\nts: 5\ntarget-soc: 2711\n") {
		t.Errorf("digest --timestamp 5 --target-soc 2711 = %q, %v", out, err)
	}
	t.Setenv("SOURCE_DATE_EPOCH", "yesterday")
	if _, _, err := runCLI(t, "eeprom", "digest", eepromVector(t, name+".bin")); err == nil || !strings.Contains(err.Error(), "SOURCE_DATE_EPOCH") {
		t.Errorf("bad SOURCE_DATE_EPOCH: %v", err)
	}
}

func TestEEPROMInfo(t *testing.T) {
	img := eepromVector(t, "pieeprom-2026-05-17.bootorder-f21.bin")
	out, _, err := runCLI(t, "eeprom", "info", img)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"524288 bytes (BCM2711)",
		"sha256:            9d1282b2d9d237558bd62503fc1e6737ec555d7468d9d5fdc0b65425220aa5ae",
		"2026/05/17 version 224877da, BUILD_TIMESTAMP=1779045198",
		"bootconf.txt:      96 bytes at 0x72e00, max 4076 (limit 0x7f000), free 3980",
		"BOOT_ORDER:        0xf21 (SD CARD/eMMC, NETWORK, RESTART)",
		"26 sections:",
		"0x072e00  0x55aaf11f  file          112  bootconf.txt",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("info output lacks %q:\n%s", want, out)
		}
	}
	out, _, err = runCLI(t, "eeprom", "info", "--json", img)
	if err != nil {
		t.Fatal(err)
	}
	var info eepromInfo
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("info --json: %v\n%s", err, out)
	}
	if info.SoC != 2711 || info.BootOrder != "0xf21" || len(info.Sections) != 26 || info.BootConf == nil ||
		info.BootConf.Free != 3980 || info.Sections[25].Name != "bootconf.txt" || info.Sections[0].Kind != "bootcode" ||
		info.Timestamp != nil || info.Build.Version != "224877da" {
		t.Errorf("info --json = %+v", info)
	}
	// A timestamped image reports it.
	dir := t.TempDir()
	ts := filepath.Join(dir, "ts.bin")
	if _, _, err := runCLI(t, "eeprom", "config", img, "--apply", eepromVector(t, "pieeprom-2026-05-17.bootorder-f21.conf.txt"), "--out", ts, "--timestamp", "1700000000"); err != nil {
		t.Fatal(err)
	}
	out, _, _ = runCLI(t, "eeprom", "info", ts)
	if !strings.Contains(out, "update timestamp:  1700000000 (2023-11-14T22:13:20Z)") {
		t.Errorf("info of a timestamped image:\n%s", out)
	}
	if got := readFile(t, ts)[eeprom.Size2711-8:]; !bytes.Equal(got, []byte{0xff, 0x0e, 0xac, 0x9a, 0x00, 0xf1, 0x53, 0x65}) {
		t.Errorf("--timestamp wrote %x", got)
	}
}

func TestEEPROMSetWarningsAndErrors(t *testing.T) {
	img := eepromVector(t, "pieeprom-2023-01-11.bin")
	dir := t.TempDir()
	out := filepath.Join(dir, "out.bin")
	stdout, stderr, err := runCLI(t, "eeprom", "set", img, "MY_KEY=1", "BOOT_UART=1", "--out", out)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stderr, "warning: MY_KEY is not a known bootloader key") || !strings.Contains(stdout, "wrote "+out) {
		t.Errorf("stdout %q stderr %q", stdout, stderr)
	}
	show, _, _ := runCLI(t, "eeprom", "show", out)
	if want := "[all]\nBOOT_UART=1\nWAKE_ON_GPIO=1\nPOWER_OFF_ON_HALT=0\n\nMY_KEY=1\n"; show != want {
		t.Errorf("config after set = %q, want %q", show, want)
	}
	os.Remove(out)
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"BOOT_ORDER=0x2f1"}, "RESTART (0xf) must be the last mode"},
		{[]string{"BOOT_ORDER=f21"}, "want hex such as 0xf21"},
		{[]string{"BOOT_UART"}, "want KEY=VALUE"},
		{[]string{"BOOT_UART=1", "BAD KEY=1"}, "only letters"},
	} {
		_, _, err := runCLI(t, append([]string{"eeprom", "set", img, "--out", out}, tt.args...)...)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("set %q = %v, want error containing %q", tt.args, err, tt.want)
		}
	}
	if _, _, err := runCLI(t, "eeprom", "set", img, "BOOT_UART=1"); err == nil || !strings.Contains(err.Error(), "--out") {
		t.Errorf("set without --out = %v", err)
	}
	if names := dirNames(t, dir); len(names) != 0 {
		t.Errorf("failed runs left files: %q", names)
	}
}

// TestEEPROMBadInputs: every refused input gives a clear error and leaves no
// output file (not even an empty or temporary one).
func TestEEPROMBadInputs(t *testing.T) {
	src := readFile(t, eepromVector(t, "pieeprom-2026-05-17.bin"))
	in := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(in, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	mod := func(f func([]byte)) []byte { b := bytes.Clone(src); f(b); return b }
	good := eepromVector(t, "pieeprom-2026-05-17.bin")
	big := bytes.Repeat([]byte("# filler\n"), 453)[:4077]
	for _, tt := range []struct {
		name  string
		image string
		conf  []byte
		want  string
	}{
		{"wrong size", write("short.bin", src[:100000]), nil, "image is 100000 bytes, want 524288 (BCM2711) or 2097152 (BCM2712)"},
		{"truncated", write("trunc.bin", src[:eeprom.Size2711-4096]), nil, "image is 520192 bytes"},
		{"bad magic", write("magic.bin", mod(func(b []byte) { b[0x45c88] = 0 })), nil, "section at 0x45c88: bad magic 0x00aaf44f"},
		{"no bootconf", write("nobc.bin", mod(func(b []byte) { copy(b[0x72e08:], "bootconf.bak") })), nil, "bootconf.txt not found"},
		{"config 4077 bytes", good, big, "bootconf.txt is 4077 bytes, the maximum is 4076 bytes"},
		{"missing image", filepath.Join(in, "nope.bin"), nil, "no such file"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out := t.TempDir()
			conf := tt.conf
			if conf == nil {
				conf = []byte("[all]\nBOOT_ORDER=0xf21\n")
			}
			confPath := filepath.Join(out, "..", filepath.Base(out)+".conf")
			if err := os.WriteFile(confPath, conf, 0o644); err != nil {
				t.Fatal(err)
			}
			for _, args := range [][]string{
				{"eeprom", "config", tt.image, "--apply", confPath, "--out", filepath.Join(out, "new.bin")},
				{"eeprom", "set", tt.image, "BOOT_ORDER=0xf21", "--out", filepath.Join(out, "new.bin")},
				{"eeprom", "set-boot-order", "--image", tt.image, "--recovery", eepromVector(t, "recovery.bin"), "--out-dir", filepath.Join(out, "rec"), "--no-flash"},
			} {
				if tt.conf != nil && args[1] != "config" {
					continue // only config --apply takes the big config
				}
				_, _, err := runCLI(t, args...)
				if err == nil || !strings.Contains(err.Error(), tt.want) {
					t.Errorf("%s = %v, want error containing %q", args[1], err, tt.want)
				}
			}
			if tt.conf == nil {
				if _, _, err := runCLI(t, "eeprom", "show", tt.image, "-o", filepath.Join(out, "x.conf")); err == nil || !strings.Contains(err.Error(), tt.want) {
					t.Errorf("show = %v, want error containing %q", err, tt.want)
				}
			}
			if names := dirNames(t, out); len(names) != 0 {
				t.Errorf("failed runs left output: %q", names)
			}
		})
	}
	// exactly 4076 bytes is accepted
	dir := t.TempDir()
	conf := filepath.Join(dir, "4076.conf")
	os.WriteFile(conf, big[:4076], 0o644)
	if _, _, err := runCLI(t, "eeprom", "config", good, "--apply", conf, "--out", filepath.Join(dir, "ok.bin")); err != nil {
		t.Fatalf("4076-byte config refused: %v", err)
	}
	if show, _, _ := runCLI(t, "eeprom", "show", filepath.Join(dir, "ok.bin")); show != string(big[:4076]) {
		t.Error("4076-byte config does not read back")
	}
}

func TestEEPROMSetBootOrder(t *testing.T) {
	recovery := eepromVector(t, "recovery.bin")
	for _, name := range eepromVectorNames {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "recovery")
			out, _, err := runCLI(t, "eeprom", "set-boot-order", "--image", eepromVector(t, name+".bin"), "--recovery", recovery,
				"--out-dir", dir, "--no-flash", "--timestamp", "1700000000", "--json")
			if err != nil {
				t.Fatal(err)
			}
			var rd recoverydir.Dir
			if err := json.Unmarshal([]byte(out), &rd); err != nil {
				t.Fatal(err)
			}
			f21 := readFile(t, eepromVector(t, name+".bootorder-f21.bin"))
			if !bytes.Equal(readFile(t, filepath.Join(dir, "pieeprom.bin")), f21) {
				t.Error("pieeprom.bin differs from upstream's BOOT_ORDER=0xf21 image")
			}
			if got, want := readFile(t, filepath.Join(dir, "pieeprom.sig")), readFile(t, eepromVector(t, name+".bootorder-f21.sig")); !bytes.Equal(got, want) {
				t.Errorf("pieeprom.sig = %q, want %q", got, want)
			}
			if !bytes.Equal(readFile(t, filepath.Join(dir, "bootcode4.bin")), readFile(t, recovery)) {
				t.Error("bootcode4.bin is not the recovery.bin given")
			}
			if got := string(readFile(t, filepath.Join(dir, "config.txt"))); strings.Contains(got, "\nrecovery_reboot=1") || strings.Contains(got, "\nuart_2ndstage=1") ||
				!strings.Contains(got, "\nrecovery_metadata=1\n") {
				t.Errorf("config.txt enables options it should not:\n%s", got)
			}
			if rd.ImageSHA256 != sha256Hex(f21) || rd.BootOrder != "0xf21" || len(rd.Files) != 4 || rd.Files[3].Name != "pieeprom.sig" {
				t.Errorf("report = %+v", rd)
			}
			if names := dirNames(t, dir); strings.Join(names, " ") != "bootcode4.bin config.txt pieeprom.bin pieeprom.sig" {
				t.Errorf("directory holds %q", names)
			}
			// running again into the same directory replaces it
			if _, _, err := runCLI(t, "eeprom", "set-boot-order", "0xf2", "--image", eepromVector(t, name+".bin"), "--recovery", recovery,
				"--out-dir", dir, "--no-flash", "--uart"); err != nil {
				t.Fatal(err)
			}
			show, _, _ := runCLI(t, "eeprom", "show", filepath.Join(dir, "pieeprom.bin"))
			if !strings.HasSuffix(show, "BOOT_ORDER=0xf2\n") {
				t.Errorf("second run config = %q", show)
			}
			if got := string(readFile(t, filepath.Join(dir, "config.txt"))); !strings.Contains(got, "\nuart_2ndstage=1\n") {
				t.Errorf("--uart config.txt:\n%s", got)
			}
		})
	}
}

func TestEEPROMSetBootOrderRefusals(t *testing.T) {
	img := eepromVector(t, "pieeprom-2026-05-17.bin")
	recovery := eepromVector(t, "recovery.bin")
	base := t.TempDir()
	stray := filepath.Join(base, "stray")
	os.MkdirAll(stray, 0o755)
	os.WriteFile(filepath.Join(stray, "pieeprom.upd"), []byte("old"), 0o644)
	emptyRec := filepath.Join(base, "empty.bin")
	os.WriteFile(emptyRec, nil, 0o644)
	for _, tt := range []struct {
		name string
		args []string
		want string
		code int
	}{
		{"flash, no board", []string{"--image", img, "--recovery", recovery, "--timeout", "1ms"}, "no RPIBOOT device", 3},
		{"no image", []string{"--recovery", recovery, "--out-dir", filepath.Join(base, "b"), "--no-flash", "--cache", filepath.Join(base, "cache")}, "no --image FILE given", 1},
		{"no out dir", []string{"--image", img, "--recovery", recovery, "--no-flash"}, "--out-dir DIR is required", 1},
		{"no recovery", []string{"--image", img, "--out-dir", filepath.Join(base, "c"), "--no-flash", "--cache", filepath.Join(base, "cache")}, "recovery", 1},
		{"empty recovery", []string{"--image", img, "--recovery", emptyRec, "--out-dir", filepath.Join(base, "d"), "--no-flash"}, "recovery.bin is empty", 1},
		{"image as recovery", []string{"--image", img, "--recovery", img, "--out-dir", filepath.Join(base, "e"), "--no-flash"}, "is a bootloader image", 1},
		{"bad order", []string{"0x2f1", "--image", img, "--recovery", recovery, "--out-dir", filepath.Join(base, "f"), "--no-flash"}, "must be the last mode", 1},
		{"stray files", []string{"--image", img, "--recovery", recovery, "--out-dir", stray, "--no-flash"}, "holds other files (pieeprom.upd)", 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := runCLI(t, append([]string{"eeprom", "set-boot-order"}, tt.args...)...)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tt.want)
			}
			if got := ExitCode(err); got != tt.code {
				t.Errorf("exit code %d, want %d", got, tt.code)
			}
			var ee *ExitError
			if tt.code == 2 && !errors.As(err, &ee) {
				t.Error("not an ExitError")
			}
		})
	}
	if names := dirNames(t, base); strings.Join(names, " ") != "empty.bin stray" {
		t.Errorf("refused runs left %q", names)
	}
	if names := dirNames(t, stray); len(names) != 1 {
		t.Errorf("stray dir now holds %q", names)
	}
}

// Secure-boot signing from the CLI: --key gives upstream's bootconf.sig
// byte for byte; an HSM wrapper (the real openssl behind upstream's -H
// interface) gives the same bytes; --verify checks it; a wrong or small
// key exits 2 and writes nothing.
func TestEEPROMDigestSigned(t *testing.T) {
	sb := func(n string) string { return repotest.Shared(t, filepath.Join("secure-boot-vectors", n)) }
	want, _ := os.ReadFile(sb("bootconf.sig"))
	dir := t.TempDir()
	out := filepath.Join(dir, "bootconf.sig")
	if _, _, err := runCLI(t, "eeprom", "digest", sb("bootconf.txt"), "--key", sb("private.pem"), "--pubkey", sb("public.pem"), "--timestamp", "1614092425", "-o", out); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(out); string(got) != string(want) {
		t.Errorf("--key:\n%s\nwant upstream's:\n%s", got, want)
	}
	wrapper := filepath.Join(dir, "hsm-wrapper")
	os.WriteFile(wrapper, []byte("#!/bin/sh\n# upstream's HSM wrapper interface: -a rsa2048-sha256 FILE -> hex signature\n[ \"$1\" = -a ] && [ \"$2\" = rsa2048-sha256 ] || exit 2\nopenssl dgst -sign "+sb("private.pem")+" -sha256 \"$3\" | od -An -v -tx1 | tr -d ' \\n'\n"), 0o755)
	out2 := filepath.Join(dir, "hsm.sig")
	if _, _, err := runCLI(t, "eeprom", "digest", sb("bootconf.txt"), "--sign-command", wrapper, "--pubkey", sb("public.pem"), "--timestamp", "1614092425", "-o", out2); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(out2); string(got) != string(want) {
		t.Errorf("--sign-command:\n%s\nwant upstream's:\n%s", got, want)
	}
	if o, _, err := runCLI(t, "eeprom", "digest", sb("bootconf.txt"), "--verify", sb("bootconf.sig"), "--key", sb("public.pem")); err != nil || !strings.Contains(o, "signature verifies") {
		t.Errorf("--verify: %q %v", o, err)
	}
	other := filepath.Join(dir, "other.pem")
	small := filepath.Join(dir, "small.pem")
	for _, k := range []struct{ path, bits string }{{other, "2048"}, {small, "1024"}} {
		if o, err := exec.Command("openssl", "genrsa", "-out", k.path, k.bits).CombinedOutput(); err != nil {
			t.Fatalf("openssl genrsa: %v %s", err, o)
		}
	}
	otherPub := filepath.Join(dir, "other.pub")
	exec.Command("openssl", "rsa", "-in", other, "-pubout", "-out", otherPub).Run()
	if _, _, err := runCLI(t, "eeprom", "digest", sb("bootconf.txt"), "--verify", sb("bootconf.sig"), "--key", otherPub); err == nil || !strings.Contains(err.Error(), "does not verify") {
		t.Errorf("--verify with another key: %v", err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--key", small}, "RSA-1024"},
		{[]string{"--key", sb("private.pem"), "--pubkey", otherPub}, "does not match"},
		{[]string{"--sign-command", wrapper}, "needs --pubkey"},
	} {
		bad := filepath.Join(dir, "bad.sig")
		_, _, err := runCLI(t, append([]string{"eeprom", "digest", sb("bootconf.txt"), "-o", bad}, tc.args...)...)
		if ExitCode(err) != 2 || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: exit %d %v, want 2 with %q", tc.args, ExitCode(err), err, tc.want)
		}
		if _, err := os.Stat(bad); err == nil {
			t.Errorf("%v wrote a .sig", tc.args)
		}
	}
}

// The signed loopback through the CLI, as upstream's test does it with
// rpi-eeprom-config --config --digest --pubkey; --extract gives the files
// back; a digest of another config, or a key of another pair, is refused
// and no image is written.
func TestEEPROMConfigSigned(t *testing.T) {
	sb := func(n string) string { return repotest.Shared(t, filepath.Join("secure-boot-vectors", n)) }
	dir := t.TempDir()
	out := filepath.Join(dir, "signed.bin")
	if _, _, err := runCLI(t, "eeprom", "config", sb("pieeprom-signed.bin"), "--apply", sb("bootconf.txt"), "--digest", sb("bootconf.sig"), "--pubkey", sb("public.pem"), "--out", out); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(out)
	want, _ := os.ReadFile(sb("pieeprom-signed.bin"))
	if string(got) != string(want) {
		t.Fatal("the signed loopback is not upstream's pieeprom-signed.bin byte for byte")
	}
	ex := filepath.Join(dir, "extract")
	if _, _, err := runCLI(t, "eeprom", "config", out, "--extract", ex); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"bootconf.txt", "bootconf.sig"} {
		a, _ := os.ReadFile(filepath.Join(ex, n))
		b, _ := os.ReadFile(sb(n))
		if string(a) != string(b) {
			t.Errorf("extracted %s differs", n)
		}
	}
	other := filepath.Join(dir, "other.pem")
	exec.Command("openssl", "genrsa", "-out", other, "2048").Run()
	exec.Command("openssl", "rsa", "-in", other, "-pubout", "-out", other+".pub").Run()
	conf2 := filepath.Join(dir, "other.txt")
	os.WriteFile(conf2, []byte("[all]\nBOOT_ORDER=0xf21\n"), 0o644)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--apply", conf2, "--digest", sb("bootconf.sig"), "--pubkey", sb("public.pem")}, "does not sign this config"},
		{[]string{"--apply", sb("bootconf.txt"), "--digest", sb("bootconf.sig"), "--pubkey", other + ".pub"}, "does not verify"},
		{[]string{"--digest", sb("bootconf.sig")}, "need --apply"},
	} {
		bad := filepath.Join(dir, "bad.bin")
		_, _, err := runCLI(t, append([]string{"eeprom", "config", sb("pieeprom-signed.bin"), "--out", bad}, tc.args...)...)
		if ExitCode(err) != 2 || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: exit %d %v, want 2 with %q", tc.args, ExitCode(err), err, tc.want)
		}
		if _, err := os.Stat(bad); err == nil {
			t.Errorf("%v wrote an image", tc.args)
		}
	}
}

// bootimg build: fsck.fat and mtype read boot.img back, and openssl (what
// rpi-eeprom-digest -v runs) verifies boot.sig's rsa2048 signature of it
// with the public key; the same files and timestamp give the same bytes.
func TestBootimgBuildSigned(t *testing.T) {
	sb := func(n string) string { return repotest.Shared(t, filepath.Join("secure-boot-vectors", n)) }
	dir := t.TempDir()
	src := filepath.Join(dir, "files")
	os.MkdirAll(filepath.Join(src, "overlays"), 0o755)
	os.WriteFile(filepath.Join(src, "config.txt"), []byte("[all]\nkernel=kernel8.img\n"), 0o644)
	os.WriteFile(filepath.Join(src, "cmdline.txt"), []byte("console=serial0,115200\n"), 0o644)
	os.WriteFile(filepath.Join(src, "kernel8.img"), bytes.Repeat([]byte("K"), 1<<20), 0o644)
	os.WriteFile(filepath.Join(src, "overlays", "dwc2.dtbo"), []byte("dtbo"), 0o644)
	build := func(out string) []byte {
		t.Helper()
		if _, _, err := runCLI(t, "bootimg", "build", src, "-o", out, "--key", sb("private.pem"), "--pubkey", sb("public.pem"), "--timestamp", "1700000000"); err != nil {
			t.Fatal(err)
		}
		b, _ := os.ReadFile(out)
		return b
	}
	img := filepath.Join(dir, "boot.img")
	first := build(img)
	os.Mkdir(filepath.Join(dir, "again"), 0o755)
	if again := build(filepath.Join(dir, "again", "boot.img")); !bytes.Equal(first, again) {
		t.Error("boot.img is not reproducible")
	}
	if o, err := exec.Command("fsck.fat", "-n", img).CombinedOutput(); err != nil {
		t.Errorf("fsck.fat -n boot.img: %v %s", err, o)
	}
	if o, err := exec.Command("mtype", "-i", img, "::config.txt").Output(); err != nil || string(o) != "[all]\nkernel=kernel8.img\n" {
		t.Errorf("mtype config.txt: %q %v", o, err)
	}
	sig, _ := os.ReadFile(filepath.Join(dir, "boot.sig"))
	var hexSig string
	for _, l := range strings.Split(string(sig), "\n") {
		if v, ok := strings.CutPrefix(l, "rsa2048: "); ok {
			hexSig = v
		}
	}
	raw, err := hex.DecodeString(hexSig)
	if err != nil || len(raw) != 256 {
		t.Fatalf("boot.sig: %q", sig)
	}
	sigBin := filepath.Join(dir, "sig.bin")
	os.WriteFile(sigBin, raw, 0o644)
	if o, err := exec.Command("openssl", "dgst", "-sha256", "-verify", sb("public.pem"), "-signature", sigBin, img).CombinedOutput(); err != nil || !strings.Contains(string(o), "Verified OK") {
		t.Errorf("openssl verify of boot.sig: %v %s", err, o)
	}
	os.MkdirAll(filepath.Join(dir, "empty"), 0o755)
	if _, _, err := runCLI(t, "bootimg", "build", filepath.Join(dir, "empty"), "-o", filepath.Join(dir, "e.img")); ExitCode(err) != 2 {
		t.Errorf("an empty folder: exit %d", ExitCode(err))
	}
}
