package api_test

import (
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/cm4bench/cm4bench/internal/contract"
)

// TestBoardsBySerialAndSizeCheck: the technician may name a board by the
// serial on its label; a deploy that cannot fit the board's eMMC is refused
// before the board is asked (issue 14, items 2 and 4).
func TestBoardsBySerialAndSizeCheck(t *testing.T) {
	dir := t.TempDir()
	golden := filepath.Join(dir, "golden.img")
	makeImage(t, golden, 3<<20)
	b := startServer(t, dir, golden)
	register := func(mac, serial string, emmc int64) {
		t.Helper()
		body := `{"mac":"` + mac + `","ip":"127.0.0.1","facts":{"serial":"` + serial + `","emmc_bytes":` + strconv.FormatInt(emmc, 10) + `}}`
		if code, out := b.call("POST", contract.PathRegister, []byte(body), ""); code != 200 {
			t.Fatalf("register %s = %d %s", mac, code, out)
		}
	}
	register("dc:a6:32:00:90:01", "10000abc", 8<<30)
	register("dc:a6:32:00:90:02", "20000def", 1<<20) // 1 MiB: the 3 MiB image cannot fit
	register("dc:a6:32:00:90:03", "3000beef", 8<<30)
	register("dc:a6:32:00:90:04", "3000BEEF", 8<<30) // two boards claiming one serial

	for _, tc := range []struct {
		name, who, action string
		want              int
		wantMAC, wantText string
	}{
		{"by serial", "10000abc", contract.ActionBackup, 200, "dc:a6:32:00:90:01", ""},
		{"by serial, leading zeros as printed", "0000000010000abc", contract.ActionNone, 200, "dc:a6:32:00:90:01", ""},
		{"unknown serial", "deadbeef", contract.ActionBackup, 404, "", "no board with serial deadbeef"},
		{"ambiguous serial", "3000beef", contract.ActionBackup, 409, "", "name one by MAC"},
		{"image larger than the eMMC", "dc:a6:32:00:90:02", contract.ActionDeploy, 422, "", "choose a smaller image"},
		{"image that fits", "dc:a6:32:00:90:03", contract.ActionDeploy, 200, "dc:a6:32:00:90:03", ""},
		{"not a MAC nor a serial", "board-7", contract.ActionBackup, 400, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out := b.call("POST", "/api/v1/devices/"+tc.who+"/action", contract.SetActionRequest{Action: tc.action}, b.token)
			if code != tc.want || !strings.Contains(string(out), tc.wantMAC) || !strings.Contains(string(out), tc.wantText) {
				t.Fatalf("POST action for %s = %d %s, want %d with %q %q", tc.who, code, out, tc.want, tc.wantMAC, tc.wantText)
			}
		})
	}
	// The board given a deploy never polls: after two poll intervals the
	// server marks it as not network-booted (the dashboard and --wait say
	// to power-cycle it); a board without a job is never marked.
	b.waitFor("not_polling on the waiting board", func() bool {
		var d contract.Device
		b.admin("GET", "/api/v1/devices/dc:a6:32:00:90:03", nil, 200, &d)
		return d.NotPolling
	})
	var list []contract.Device
	b.admin("GET", "/api/v1/devices", nil, 200, &list)
	for _, d := range list {
		if d.NotPolling != (d.MAC == "dc:a6:32:00:90:03") {
			t.Errorf("%s: not_polling = %v", d.MAC, d.NotPolling)
		}
	}

	// Nothing was queued for the board the image does not fit.
	var d contract.Device
	b.admin("GET", "/api/v1/devices/dc:a6:32:00:90:02", nil, 200, &d)
	if d.Action != nil {
		t.Errorf("a refused deploy left an action: %+v", d.Action)
	}
}
