// Package facts reads what the agent reports about its board at register:
// serial, revision and model (from /proc/cpuinfo and the device tree), the
// Ethernet MACs, the eMMC size, CID and CSD, the bootloader version and the
// SoC temperature. The proc and sys roots are fields so tests can point them
// at a fake tree.
package facts

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/cm4bench/cm4bench/internal/contract"
)

// Reader gathers facts from a proc and a sys tree.
type Reader struct {
	Proc string // proc root; "" = /proc
	Sys  string // sys root; "" = /sys
	// Disk is the block device name of the eMMC under /sys/block (for
	// example "mmcblk0"); "" = mmcblk0.
	Disk string
}

func (r Reader) proc(p ...string) string {
	root := r.Proc
	if root == "" {
		root = "/proc"
	}
	return filepath.Join(append([]string{root}, p...)...)
}

func (r Reader) sys(p ...string) string {
	root := r.Sys
	if root == "" {
		root = "/sys"
	}
	return filepath.Join(append([]string{root}, p...)...)
}

// Read gathers every fact it can; missing sources leave fields empty.
func (r Reader) Read() *contract.Facts {
	f := &contract.Facts{}
	cpu := ParseCPUInfo(readString(r.proc("cpuinfo")))
	f.Serial = NormalizeSerial(cpu["Serial"])
	f.Revision = strings.ToLower(cpu["Revision"])
	f.Model = cpu["Model"]
	if s := dtString(r.proc("device-tree", "serial-number")); f.Serial == "" && s != "" {
		f.Serial = NormalizeSerial(s)
	}
	if m := dtString(r.proc("device-tree", "model")); m != "" {
		f.Model = m
	}
	if b, err := os.ReadFile(r.proc("device-tree", "system", "linux,revision")); err == nil && len(b) == 4 && f.Revision == "" {
		f.Revision = fmt.Sprintf("%x", binary.BigEndian.Uint32(b))
	}
	f.MACs = r.macs()
	disk := r.Disk
	if disk == "" {
		disk = "mmcblk0"
	}
	if s := readString(r.sys("block", disk, "size")); s != "" {
		if n, err := strconv.ParseInt(s, 10, 64); err == nil {
			f.EMMCBytes = n * 512
		}
	}
	f.EMMCCID = readString(r.sys("block", disk, "device", "cid"))
	f.EMMCCSD = readString(r.sys("block", disk, "device", "csd"))
	f.Bootloader = r.bootloader()
	if b, err := os.ReadFile(r.proc("device-tree", "chosen", "bootloader", "signed")); err == nil && len(b) == 4 {
		v := binary.BigEndian.Uint32(b)
		f.SignedBoot = &v
	}
	if s := readString(r.sys("class", "thermal", "thermal_zone0", "temp")); s != "" {
		if n, err := strconv.Atoi(s); err == nil {
			f.TempMilliC = n
		}
	}
	return f
}

// bootloader reads the version the Pi firmware publishes in the device tree:
// chosen/bootloader/version (a git hash string) and build-timestamp (a
// big-endian u32 of Unix seconds).
func (r Reader) bootloader() string {
	v := dtString(r.proc("device-tree", "chosen", "bootloader", "version"))
	var ts string
	if b, err := os.ReadFile(r.proc("device-tree", "chosen", "bootloader", "build-timestamp")); err == nil && len(b) == 4 {
		ts = time.Unix(int64(binary.BigEndian.Uint32(b)), 0).UTC().Format("2006-01-02T15:04:05Z")
	}
	switch {
	case v != "" && ts != "":
		return v + " (" + ts + ")"
	case v != "":
		return v
	}
	return ts
}

func (r Reader) macs() []string {
	ents, err := os.ReadDir(r.sys("class", "net"))
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range ents {
		if e.Name() == "lo" {
			continue
		}
		if t := readString(r.sys("class", "net", e.Name(), "type")); t != "" && t != "1" {
			continue // not ARPHRD_ETHER
		}
		mac := strings.ToLower(readString(r.sys("class", "net", e.Name(), "address")))
		if mac == "" || mac == "00:00:00:00:00:00" {
			continue
		}
		out = append(out, mac)
	}
	sort.Strings(out)
	return out
}

// ParseCPUInfo parses "Key : value" lines of /proc/cpuinfo; for repeated
// keys (one block per core) the first value wins.
func ParseCPUInfo(s string) map[string]string {
	m := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if _, seen := m[k]; !seen && k != "" {
			m[k] = v
		}
	}
	return m
}

// NormalizeSerial turns "10000000abcdef12" or "ABCDEF12" into the 8 hex
// digits the Pi firmware uses ("abcdef12"). Other strings are returned
// lower-cased and trimmed.
func NormalizeSerial(s string) string {
	s = strings.ToLower(strings.TrimSpace(s))
	if len(s) > 8 {
		if _, err := strconv.ParseUint(s, 16, 64); err == nil {
			s = s[len(s)-8:]
		}
	}
	return s
}

func readString(p string) string {
	b, err := os.ReadFile(p)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(bytes.TrimRight(b, "\x00")))
}

func dtString(p string) string {
	b, err := os.ReadFile(p)
	if err != nil {
		return ""
	}
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return strings.TrimSpace(string(b))
}
