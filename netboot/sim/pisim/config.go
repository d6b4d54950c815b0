package pisim

import (
	"bufio"
	"bytes"
	"strings"
)

// BootConfig is what start4.elf takes from config.txt for a CM4 network boot.
type BootConfig struct {
	Kernel        string   // kernel=; default kernel8.img (arm_64bit)
	Initramfs     string   // initramfs <file> [followkernel|<addr>]
	Cmdline       string   // cmdline=; default cmdline.txt
	DeviceTree    string   // device_tree=; default bcm2711-rpi-cm4.dtb
	Overlays      []string // dtoverlay=<name>[,params]
	AutoInitramfs bool     // auto_initramfs=1
}

// ParseConfigTxt reads config.txt the way start4.elf does for a CM4: lines
// of key=value, `initramfs` with a space, `#` comments, and conditional
// sections of which [all], [pi4], [cm4] and [board-type=0x14] apply (the
// others, such as [pi5] or [none], do not). Unknown keys are ignored, as
// the firmware ignores them. It never fails: a garbled line is skipped.
func ParseConfigTxt(b []byte) BootConfig {
	c := BootConfig{Kernel: "kernel8.img", Cmdline: "cmdline.txt", DeviceTree: "bcm2711-rpi-cm4.dtb"}
	applies := true
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 4096), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = strings.TrimSpace(line[:i])
		}
		if line == "" {
			continue
		}
		if strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]") {
			switch strings.ToLower(line[1 : len(line)-1]) {
			case "all", "pi4", "cm4", "board-type=0x14":
				applies = true
			default:
				applies = false
			}
			continue
		}
		if !applies {
			continue
		}
		if rest, ok := strings.CutPrefix(line, "initramfs "); ok {
			if f := strings.Fields(rest); len(f) > 0 {
				c.Initramfs = f[0]
			}
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		k, v = strings.TrimSpace(strings.ToLower(k)), strings.TrimSpace(v)
		switch k {
		case "kernel":
			if v != "" {
				c.Kernel = v
			}
		case "cmdline":
			if v != "" {
				c.Cmdline = v
			}
		case "device_tree":
			if v != "" {
				c.DeviceTree = v
			}
		case "dtoverlay":
			name, _, _ := strings.Cut(v, ",")
			if name = strings.TrimSpace(name); name != "" {
				c.Overlays = append(c.Overlays, name)
			}
		case "auto_initramfs":
			c.AutoInitramfs = v == "1"
		}
	}
	return c
}

// KernelArg returns the value of key=value on a kernel command line, or "".
func KernelArg(cmdline, key string) string {
	for _, f := range strings.Fields(cmdline) {
		if v, ok := strings.CutPrefix(f, key+"="); ok {
			return v
		}
	}
	return ""
}
