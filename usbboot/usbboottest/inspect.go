package usbboottest

import (
	"fmt"
	"strings"
)

// Transcript returns a copy of every recorded event.
func (b *Board) Transcript() []Record {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]Record(nil), b.transcript...)
}

// Violations lists protocol rules the host broke (empty when it behaved).
func (b *Board) Violations() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.violations...)
}

// Files lists every file the board asked for, in order, with what it got.
func (b *Board) Files() []FileRecord {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]FileRecord(nil), b.files...)
}

// Metadata lists the "*KEY*VALUE" names the board sent and were acknowledged.
func (b *Board) Metadata() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
	for i, st := range b.script {
		if i < b.stepIdx && strings.HasPrefix(st.req.Name, "*") {
			out = append(out, st.req.Name)
		}
	}
	return out
}

// State is a short description: "rom", "second-stage", "done",
// "mass-storage", "unplugged" or "halted: missing NAME".
func (b *Board) State() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.advance()
	return b.state
}

// ROMLoads counts the second-stage images the ROM accepted.
func (b *Board) ROMLoads() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.romLoads
}

// Unplug detaches the board for good (a technician pulls the cable).
func (b *Board) Unplug() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.next = nil
	b.state = "unplugged"
	b.detach("unplugged")
}

// String renders r as one transcript line: the setup packet or the bulk
// endpoint and lengths, without the wall time.
func (r Record) String() string {
	var s string
	switch r.Kind {
	case "control":
		s = fmt.Sprintf("control %02x %02x wValue=%04x wIndex=%04x wLength=%d -> %d", r.Setup.RequestType, r.Setup.Request,
			r.Setup.Value, r.Setup.Index, r.Setup.Length, r.N)
	case "bulk":
		s = fmt.Sprintf("bulk    ep=%02x len=%d -> %d", r.EP, r.Len, r.N)
	default:
		s = r.Kind
	}
	s = fmt.Sprintf("addr %-3d %s", r.Address, s)
	if r.Err != "" {
		s += " error: " + r.Err
	}
	if r.Note != "" {
		s += " (" + r.Note + ")"
	}
	return s
}
