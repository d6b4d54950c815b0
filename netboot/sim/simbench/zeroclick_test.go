package simbench_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cm4bench/cm4bench/api/client"
	"github.com/cm4bench/cm4bench/internal/contract"
	"github.com/cm4bench/cm4bench/netboot/bootfs/bootfstest"
	"github.com/cm4bench/cm4bench/netboot/sim/simbench"
)

// Zero-click on the simulated bench: 8 boards power on and match two
// recipes by rule (serial ...c400-c403 line A, c404-c407 line B). The test
// only arms the bench. Each board is deployed, gets its own hostname from a
// counter and a serial number from a CSV pool, verifies, and reboots into
// its eMMC; mtools read the files back from every board's eMMC, fsck.fat
// finds the boot partition clean, the rest of the eMMC is the golden image
// byte for byte, and no value went to two boards, although the server was
// killed (SIGKILL) and restarted in the middle.
func TestZeroClickTwoRecipes(t *testing.T) {
	dir := t.TempDir()
	golden := filepath.Join(dir, "golden.img")
	size, err := bootfstest.Make(golden, bootfstest.Disk{BootMiB: 40, FAT: 32, RootMiB: 8, Seed: 42})
	if err != nil {
		t.Fatal(err)
	}
	gb, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	gsum := sha256.Sum256(gb)
	var csvA, csvB strings.Builder
	csvA.WriteString("serial,batch\n")
	csvB.WriteString("serial\n")
	for i := range 6 {
		fmt.Fprintf(&csvA, "A-SN-%04d,7\n", i+1)
		fmt.Fprintf(&csvB, "B-SN-%04d\n", i+1)
	}
	os.WriteFile(filepath.Join(dir, "a.csv"), []byte(csvA.String()), 0o644)
	os.WriteFile(filepath.Join(dir, "b.csv"), []byte(csvB.String()), 0o644)
	recipe := func(name, csv string) string {
		return fmt.Sprintf(`name: %s
image: golden-%s.img
sha256: %s
after: reboot
pools:
  - name: hostnames
    kind: counter
    format: %s-%%03d
    start: 1
  - name: serials
    kind: list
    on_failure: retire
    csv: %s
    column: serial
files:
  - path: user-data
    template: |
      #cloud-config
      hostname: {{ pool "hostnames" }}
  - path: serial.txt
    template: "{{ pool \"serials\" }}\n"
  - path: board.txt
    template: "{{ .Serial }} {{ .MAC }} {{ .Recipe }} v{{ .Version }}\n"
`, name, "SUFFIX", hex.EncodeToString(gsum[:]), name, csv)
	}
	// The rig names its image golden-cm4.img when it makes one; ours is
	// passed as is, so the recipes name its base name.
	base := filepath.Base(golden)
	recipes := filepath.Join(dir, "line.yaml")
	y := strings.ReplaceAll(recipe("line-a", "a.csv")+"---\n"+recipe("line-b", "b.csv"), "golden-SUFFIX.img", base)
	os.WriteFile(recipes, []byte(y), 0o644)
	rules := filepath.Join(dir, "rules.yaml")
	os.WriteFile(rules, []byte(`rules:
  - name: line-a-slots
    recipe: line-a
    mode: auto
    match: {serial_pattern: '.*c40[0-3]'}
  - name: line-b-slots
    recipe: line-b
    mode: auto
    match: {serial_pattern: '.*c40[4-7]'}
`), 0o644)

	r := testRig(t, simbench.RigConfig{Devices: 8, Image: golden, EMMCBytes: 64 << 20,
		ServerArgs: []string{"--recipes", recipes, "--rules", rules}})
	waitRegistered(t, r, 2*time.Minute)
	ctx := context.Background()
	c := r.Client()
	for _, d := range r.Bench.Devices {
		if dev, err := c.Device(ctx, d.Board.MAC.String()); err != nil || dev.Action != nil {
			t.Fatalf("before arming, %s has an action: %+v %v", d.Board.MAC, dev.Action, err)
		}
	}
	// The one API call: arm the bench.
	if err := c.SetArmed(ctx, true); err != nil {
		t.Fatal(err)
	}
	// Kill the server once two boards are done and the others are not.
	waitFor(t, 3*time.Minute, "two boards done", func() (bool, string) {
		acts, err := c.Actions(ctx, "", 100)
		if err != nil {
			return false, err.Error()
		}
		n := 0
		for _, a := range acts {
			if a.State == contract.StateDone {
				n++
			}
		}
		return n >= 2, fmt.Sprintf("%d done", n)
	})
	r.KillServer()
	if err := r.StartServer(ctx); err != nil {
		t.Fatal(err)
	}
	c = r.Client()
	waitFor(t, 5*time.Minute, "all 8 boards booted from eMMC", func() (bool, string) {
		var states []string
		all := true
		for _, d := range r.Bench.Devices {
			s := d.Status()
			states = append(states, s.State)
			all = all && s.State == simbench.StateEMMC
		}
		return all, strings.Join(states, " ")
	})

	hostnames, serials := map[string]string{}, map[string]string{}
	for _, d := range r.Bench.Devices {
		mac := d.Board.MAC.String()
		dev, err := c.Device(ctx, mac)
		if err != nil {
			t.Fatal(err)
		}
		var done *contract.Action
		for i := range dev.Actions {
			if dev.Actions[i].State == contract.StateDone && done == nil {
				done = &dev.Actions[i]
			}
		}
		line := "line-a"
		if strings.HasSuffix(d.Board.SerialString(), "4") || strings.HasSuffix(d.Board.SerialString(), "5") ||
			strings.HasSuffix(d.Board.SerialString(), "6") || strings.HasSuffix(d.Board.SerialString(), "7") {
			line = "line-b"
		}
		if done == nil || done.Recipe != line || done.Rule != line+"-slots" {
			t.Errorf("%s (serial %s): done action %+v, want %s by rule %s-slots", mac, d.Board.SerialString(), done, line, line)
			continue
		}
		img := d.EMMC()
		read := func(name string) string {
			out, err := exec.Command("mtype", "-i", img+"@@"+strconv.Itoa(4<<20), "::"+name).Output()
			if err != nil {
				t.Errorf("%s: mtype %s: %v", mac, name, err)
			}
			return string(out)
		}
		ud, sn, bd := read("user-data"), strings.TrimSpace(read("serial.txt")), read("board.txt")
		host := strings.TrimPrefix(strings.Split(ud, "\n")[1], "hostname: ")
		if !strings.HasPrefix(host, line+"-") || !strings.HasPrefix(sn, strings.ToUpper(line[5:])+"-SN-") {
			t.Errorf("%s: hostname %q, serial %q, want %s values", mac, host, sn, line)
		}
		if bd != fmt.Sprintf("%s %s %s v1\n", d.Board.SerialString(), mac, line) {
			t.Errorf("%s: board.txt %q", mac, bd)
		}
		if who, dup := hostnames[host]; dup {
			t.Errorf("hostname %s on %s and %s", host, who, mac)
		}
		if who, dup := serials[sn]; dup {
			t.Errorf("serial %s on %s and %s", sn, who, mac)
		}
		hostnames[host], serials[sn] = mac, mac
		for _, v := range done.Values {
			if v.State != "used" {
				t.Errorf("%s: value %+v not used", mac, v)
			}
		}
		// The boot partition is clean, the rest is the golden image.
		part := filepath.Join(t.TempDir(), "boot.img")
		if err := bootfstest.Extract(img, part, 4<<20, 40<<20); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("fsck.fat", "-n", part).CombinedOutput(); err != nil || bytes.Contains(out, []byte("orrect")) || bytes.Contains(out, []byte("wrong")) {
			t.Errorf("%s: fsck.fat -n: %v\n%s", mac, err, out)
		}
		eb, err := os.ReadFile(img)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(eb[:4<<20], gb[:4<<20]) || !bytes.Equal(eb[44<<20:size], gb[44<<20:]) {
			t.Errorf("%s: the eMMC outside the boot partition differs from the golden image", mac)
		}
	}
	if len(hostnames) != 8 || len(serials) != 8 {
		t.Errorf("%d hostnames and %d serials for 8 boards", len(hostnames), len(serials))
	}
	// The store agrees: every value given once, 4 used per recipe and pool.
	for _, line := range []string{"line-a", "line-b"} {
		rows, err := c.RecipeValues(ctx, line)
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]bool{}
		used := 0
		for _, v := range rows {
			if seen[v.Pool+"="+v.Value] {
				t.Errorf("%s: %s=%s recorded twice", line, v.Pool, v.Value)
			}
			seen[v.Pool+"="+v.Value] = true
			if v.State == "used" {
				used++
			}
		}
		if used != 8 {
			t.Errorf("%s: %d values used, want 8 (4 boards x hostname and serial): %+v", line, used, rows)
		}
	}

	// The ledger: one row per board, every field filled, read back by
	// Python's csv module from the CSV export.
	csvPath := filepath.Join(dir, "ledger.csv")
	f, err := os.Create(csvPath)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.ExportLedger(ctx, client.LedgerQuery{}, "csv", f); err != nil {
		t.Fatal(err)
	}
	f.Close()
	var want []string
	for _, d := range r.Bench.Devices {
		want = append(want, d.Board.MAC.String()+","+d.Board.SerialString())
	}
	check := `
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1], newline="")))
want = dict(x.split(",") for x in sys.argv[2:])
errors = []
if len(rows) != len(want):
    errors.append("%d rows for %d boards" % (len(rows), len(want)))
for r in rows:
    for k, v in r.items():
        if v == "" and k != "error":
            errors.append("row %s: %s is empty" % (r["id"], k))
    if want.get(r["mac"]) != r["serial"]:
        errors.append("row %s: mac %s serial %s" % (r["id"], r["mac"], r["serial"]))
    if r["result"] != "done" or r["operator"] != "rule %s (zero-click)" % r["rule"]:
        errors.append("row %s: result %s operator %s" % (r["id"], r["result"], r["operator"]))
    for k in ("netboot_s", "write_s", "verify_s", "customise_s", "total_s"):
        if float(r[k]) <= 0:
            errors.append("row %s: %s = %s" % (r["id"], k, r[k]))
    if len(r["files"].split(";")) != 3 or "hostnames=" not in r["values"] or "serials=" not in r["values"]:
        errors.append("row %s: files %s values %s" % (r["id"], r["files"], r["values"]))
print("\n".join(errors))
sys.exit(1 if errors else 0)
`
	out, err := exec.Command("python3", append([]string{"-c", check, csvPath}, want...)...).CombinedOutput()
	if err != nil {
		b, _ := os.ReadFile(csvPath)
		t.Errorf("ledger CSV checked by Python: %v\n%s\n%s", err, out, b)
	}
}
