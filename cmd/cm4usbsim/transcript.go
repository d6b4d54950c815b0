package main

import (
	"encoding/binary"
	"fmt"
	"strings"

	"github.com/cm4bench/cm4bench/usbboot/libusbfake"
)

// formatRecord renders one transcript record as a line of text, naming the
// RPIBOOT primitives (as upstream rpiboot, main.c): SIZE for the vendor OUT control,
// READ for the vendor IN control (with the decoded file request), and the
// standard GET_DESCRIPTOR.
//
//	5424ms 1-1.1 addr 3   ctrl c0 00 0104 0000 260   20000ms READ(260) = GetFileSize "config.txt"
func formatRecord(r libusbfake.Record) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "%7dms %-7s addr %-3d ", r.MS, r.Port, r.Addr)
	if r.By != "" {
		sb.WriteString(r.By + ": ")
	}
	switch r.Kind {
	case "control":
		rt, rq, v, i, l := deref(r.RequestType), deref(r.Request), deref(r.Value), deref(r.Index), deref(r.Length)
		fmt.Fprintf(&sb, "ctrl %02x %02x %04x %04x %-5d %5dms ", rt, rq, v, i, l, r.TimeoutMS)
		n := uint32(i)<<16 | uint32(v)
		switch {
		case rt == 0x40 && rq == 0:
			fmt.Fprintf(&sb, "SIZE(%d)", n)
		case rt == 0xc0 && rq == 0:
			fmt.Fprintf(&sb, "READ(%d)", n)
			switch {
			case n == 4 && len(r.In) == 4:
				fmt.Fprintf(&sb, " = status %d", binary.LittleEndian.Uint32(r.In))
			case n == 260 && len(r.In) == 260:
				fmt.Fprintf(&sb, " = %s", request(r.In))
			}
		case rt == 0x80 && rq == 6:
			fmt.Fprintf(&sb, "GET_DESCRIPTOR(%s) -> %d bytes", descName(v), r.Actual)
		}
	case "bulk":
		fmt.Fprintf(&sb, "bulk ep %02x len %d", deref(r.Endpoint), deref(r.Len))
		if r.Result != "ok" {
			fmt.Fprintf(&sb, " (%d sent)", r.Actual)
		}
	default:
		sb.WriteString(r.Kind)
		if r.Arg != nil {
			fmt.Fprintf(&sb, " %d", *r.Arg)
		}
	}
	if r.Result != "ok" && r.Result != "" {
		fmt.Fprintf(&sb, " -> %s", r.Result)
		if r.DurMS > 0 {
			fmt.Fprintf(&sb, " after %dms", r.DurMS)
		}
	}
	if r.Note != "" {
		fmt.Fprintf(&sb, " [%s]", r.Note)
	}
	return sb.String()
}

func deref[T any](p *T) T {
	var z T
	if p == nil {
		return z
	}
	return *p
}

func descName(v uint16) string {
	switch v >> 8 {
	case 1:
		return "device"
	case 2:
		return "config"
	case 3:
		return fmt.Sprintf("string %d", uint8(v))
	}
	return fmt.Sprintf("type %d", v>>8)
}

// request decodes a 260-byte file-server request for display.
func request(b []byte) string {
	cmd := binary.LittleEndian.Uint32(b)
	name := b[4:]
	if i := strings.IndexByte(string(name), 0); i >= 0 {
		name = name[:i]
	}
	names := []string{"GetFileSize", "ReadFile", "Done"}
	c := fmt.Sprintf("command %d", cmd)
	if cmd < uint32(len(names)) {
		c = names[cmd]
	}
	return fmt.Sprintf("%s %q", c, name)
}
