package cli

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cm4bench/cm4bench/internal/contract"
)

// TestUsageErrorsExit2: a wrong or missing argument or flag exits 2 with a
// plain message, as the help says; serve without --iface names the
// machine's interfaces and the demo (issue 14, item 8).
func TestUsageErrorsExit2(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"device", "show"}, []string{"accepts 1 arg"}},
		{[]string{"device", "list", "--bogus"}, []string{"unknown flag: --bogus"}},
		{[]string{"device", "deploy", "board-7"}, []string{"neither a MAC", "serial number"}},
		{[]string{"eeprom", "show"}, []string{"arg"}},
		{[]string{"netboot", "serve", "--data", "DATA"}, []string{"--iface", "this machine", "--demo"}},
		{[]string{"usbboot", "--timeout", "soon"}, []string{"invalid argument"}},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			for i, a := range tc.args {
				if a == "DATA" {
					tc.args[i] = t.TempDir()
				}
			}
			_, _, err := runCLI(t, tc.args...)
			if ExitCode(err) != 2 {
				t.Fatalf("exit %d (%v), want 2", ExitCode(err), err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("message %q lacks %q", err, w)
				}
			}
		})
	}
}

// TestWaitLabel: the --wait bar names the board and its phase, or counts
// boards per state, instead of "1 board(s)".
func TestWaitLabel(t *testing.T) {
	for _, tc := range []struct {
		acts []contract.Action
		want string
	}{
		{[]contract.Action{{MAC: "dc:a6:32:01:02:03", State: contract.StateRunning, Phase: "write"}}, "dc:a6:32:01:02:03 write"},
		{[]contract.Action{{MAC: "dc:a6:32:01:02:03", State: contract.StatePending}}, "dc:a6:32:01:02:03 queued"},
		{[]contract.Action{{MAC: "dc:a6:32:01:02:03", State: contract.StateDone}}, "dc:a6:32:01:02:03 done"},
		{[]contract.Action{
			{MAC: "a", State: contract.StateRunning, Phase: "write"},
			{MAC: "b", State: contract.StateRunning, Phase: "write"},
			{MAC: "c", State: contract.StatePending},
			{MAC: "d", State: contract.StateDone},
		}, "4 boards: 1 done, 1 queued, 2 write"},
	} {
		if got := waitLabel(tc.acts); got != tc.want {
			t.Errorf("waitLabel = %q, want %q", got, tc.want)
		}
	}
}

// TestWaitNumbers: the --wait bar's rate is the agents' own, so a bar
// started while 2.8 GB were already written does not read 2.8 GB/s.
func TestWaitNumbers(t *testing.T) {
	for _, tc := range []struct {
		acts []contract.Action
		want string
	}{
		{[]contract.Action{{State: contract.StatePending}}, ""},
		{[]contract.Action{{State: contract.StateRunning, Done: 2_800_000_000, Total: 3_000_000_000, Rate: 40e6}}, "2800.0 of 3000.0 MB · 40.0 MB/s · 5s left"},
		{[]contract.Action{{State: contract.StateRunning, Done: 1e6, Total: 4e6}}, "1.0 of 4.0 MB"},
		{[]contract.Action{
			{State: contract.StateRunning, Done: 10e6, Total: 100e6, Rate: 30e6},
			{State: contract.StateDone, Done: 100e6, Total: 100e6, Rate: 99e6},
			{State: contract.StateRunning, Done: 30e6, Total: 100e6, Rate: 30e6},
		}, "140.0 of 300.0 MB · 60.0 MB/s · 3s left"},
	} {
		if got := waitNumbers(tc.acts); got != tc.want {
			t.Errorf("waitNumbers = %q, want %q", got, tc.want)
		}
	}
}

// TestServeBusyPort: with the HTTP port taken, serve fails with a plain
// message naming the address and prints no admin token or login link for
// a server that never ran (issue 14, item 8).
func TestServeBusyPort(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	data := t.TempDir()
	out, _, err := runCLI(t, "netboot", "serve", "--no-dhcp", "--no-tftp", "--http", ln.Addr().String(), "--data", data)
	if err == nil || !strings.Contains(err.Error(), ln.Addr().String()) || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("serve on a busy port: %v, want an error naming %s in use", err, ln.Addr())
	}
	tok, _ := os.ReadFile(filepath.Join(data, contract.FileAdminToken))
	if strings.Contains(out, "admin token") || strings.Contains(out, "login") || (len(tok) > 0 && strings.Contains(out, strings.TrimSpace(string(tok)))) {
		t.Errorf("serve that never ran printed %q", out)
	}
}

// TestManPages: one page per command, and man itself renders them.
func TestManPages(t *testing.T) {
	dir := t.TempDir()
	if _, _, err := runCLI(t, "man", "--dir", dir); err != nil {
		t.Fatal(err)
	}
	for _, page := range []string{"cm4bench.1", "cm4bench-usbboot.1", "cm4bench-netboot-serve.1", "cm4bench-recipe-apply.1", "cm4bench-eeprom-digest.1"} {
		if _, err := os.Stat(filepath.Join(dir, page)); err != nil {
			t.Errorf("no %s: %v", page, err)
		}
	}
	cmd := exec.Command("man", "-l", "-P", "cat", filepath.Join(dir, "cm4bench-eeprom-digest.1"))
	cmd.Env = append(os.Environ(), "MANWIDTH=100", "LANG=C.UTF-8")
	out, err := cmd.Output()
	if err != nil || !strings.Contains(string(out), "rsa2048") || !strings.Contains(string(out), "SYNOPSIS") {
		t.Errorf("man -l cm4bench-eeprom-digest.1: %v\n%s", err, out)
	}
	if _, _, err := runCLI(t, "man"); ExitCode(err) != 2 {
		t.Errorf("man without --dir: exit %d", ExitCode(err))
	}
}
