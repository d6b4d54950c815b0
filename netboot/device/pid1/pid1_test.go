package pid1

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

func TestParseCmdline(t *testing.T) {
	m := ParseCmdline(`console=ttyAMA0 quiet cm4bench.server=http://10.0.2.2:5000 dyndbg="file x +p" root=/dev/vda` + "\n")
	for k, v := range map[string]string{"console": "ttyAMA0", "quiet": "", "cm4bench.server": "http://10.0.2.2:5000", "dyndbg": "file x +p", "root": "/dev/vda"} {
		if got, ok := m[k]; !ok || got != v {
			t.Errorf("%s = %q (%v), want %q", k, got, ok, v)
		}
	}
}

func TestLoadConfig(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "cm4agent.json")
	os.WriteFile(p, []byte(`{"server":"http://a:1","modules":["x.ko"],"accept_zstd":true}`), 0o644)
	for _, tc := range []struct {
		name, path, cmdline string
		server, target      string
		noReboot            bool
		err                 string
	}{
		{"file", p, "console=ttyAMA0", "http://a:1", "/dev/mmcblk0", false, ""},
		{"cmdline wins", p, "cm4bench.server=http://b:2 cm4bench.target=/dev/vda cm4bench.reboot=0", "http://b:2", "/dev/vda", true, ""},
		{"no file", filepath.Join(dir, "none.json"), "", "", "/dev/mmcblk0", false, ""},
	} {
		c, err := LoadConfig(tc.path, tc.cmdline)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if c.Server != tc.server || c.Target != tc.target || c.NoReboot != tc.noReboot || c.TargetExplicit != (tc.target != "/dev/mmcblk0") {
			t.Errorf("%s: %+v", tc.name, c)
		}
	}
	bad := filepath.Join(dir, "bad.json")
	os.WriteFile(bad, []byte(`{"server":`), 0o644)
	if _, err := LoadConfig(bad, ""); err == nil || !strings.Contains(err.Error(), "bad.json") {
		t.Errorf("broken config: err %v", err)
	}
}

func TestServerFromDHCP(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mods   []dhcpv4.Modifier
		siaddr net.IP
		want   string
	}{
		{"option 66 address", []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptTFTPServerName("192.168.7.1"))}, nil, "http://192.168.7.1:5000"},
		{"option 66 URL", []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptTFTPServerName("http://bench:8080/"))}, nil, "http://bench:8080"},
		{"siaddr", nil, net.IPv4(10, 0, 0, 9), "http://10.0.0.9:5000"},
		{"none", nil, nil, ""},
	} {
		m, err := dhcpv4.New(tc.mods...)
		if err != nil {
			t.Fatal(err)
		}
		m.ServerIPAddr = tc.siaddr
		if got := ServerFromDHCP(m); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}

func FuzzParseCmdline(f *testing.F) {
	f.Add(`a=b c "d=e f" =g h=`)
	f.Add(`"`)
	f.Fuzz(func(t *testing.T, s string) {
		m := ParseCmdline(s)
		for k := range m {
			if strings.ContainsAny(k, " \t\n") && !strings.Contains(s, `"`) {
				t.Fatalf("key %q has a blank", k)
			}
		}
	})
}
