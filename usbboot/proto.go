package usbboot

import (
	"encoding/binary"
	"fmt"
	"strings"
	"time"
)

// Wire constants (as upstream rpiboot, main.c).
const (
	// RequestSize is the length of a file-server request record.
	RequestSize = 260
	// MinRequestSize is the shortest request record accepted: the command
	// and one byte of name. Shorter reads than RequestSize are zero-filled,
	// as rpiboot (which takes the name with strlen) effectively does.
	MinRequestSize = 5
	// BootMessageSize is the length of the ROM boot message.
	BootMessageSize = 24
	// StatusSize is the length of the ROM's status reply.
	StatusSize = 4
	// MaxNameLen is the longest file name a request can carry.
	MaxNameLen = 255
	// BulkChunk is the largest single bulk OUT transfer the host issues.
	BulkChunk = 16 * 1024

	// Control request types and request number.
	ReqTypeOut uint8 = 0x40 // vendor, host to device, recipient device (SIZE)
	ReqTypeIn  uint8 = 0xC0 // vendor, device to host, recipient device (READ)
	ReqVendor  uint8 = 0x00

	// Timeouts of the reference host.
	SizeTimeout = 1 * time.Second
	ReadTimeout = 20 * time.Second
	BulkTimeout = 5 * time.Second
)

// Command is the first field of a file-server request.
type Command uint32

// File-server commands.
const (
	GetFileSize Command = 0
	ReadFile    Command = 1
	Done        Command = 2
)

func (c Command) String() string {
	switch c {
	case GetFileSize:
		return "GetFileSize"
	case ReadFile:
		return "ReadFile"
	case Done:
		return "Done"
	}
	return fmt.Sprintf("Command(%d)", uint32(c))
}

// Request is one 260-byte file-server request from the second stage.
type Request struct {
	Command Command
	Name    string // plain ASCII file name; "*KEY*VALUE" is metadata
}

// IsDone reports whether the request ends the session: command Done, or
// any command with an empty name (as upstream rpiboot, main.c).
func (r Request) IsDone() bool { return r.Command == Done || r.Name == "" }

// Metadata splits a "*KEY*VALUE" name. ok is false for ordinary names.
func (r Request) Metadata() (key, value string, ok bool) {
	if r.Command == Done || !strings.HasPrefix(r.Name, "*") {
		return "", "", false
	}
	rest := r.Name[1:]
	key, value, found := strings.Cut(rest, "*")
	if !found {
		return rest, "", true
	}
	return key, value, true
}

// ParseRequest decodes a request record. The record must be exactly
// RequestSize bytes, carry a known command and a NUL-terminated printable
// ASCII name.
func ParseRequest(b []byte) (Request, error) {
	if len(b) != RequestSize {
		return Request{}, fmt.Errorf("parse request: got %d bytes, want %d: %w", len(b), RequestSize, ErrProtocol)
	}
	cmd := Command(binary.LittleEndian.Uint32(b[0:4]))
	if cmd > Done {
		return Request{}, fmt.Errorf("parse request: unknown command %d: %w", uint32(cmd), ErrProtocol)
	}
	raw := b[4:]
	end := -1
	for i, c := range raw {
		if c == 0 {
			end = i
			break
		}
	}
	if end < 0 {
		return Request{}, fmt.Errorf("parse request: file name not NUL-terminated: %w", ErrProtocol)
	}
	for i, c := range raw[:end] {
		if c < 0x20 || c > 0x7e {
			return Request{}, fmt.Errorf("parse request: byte 0x%02x at name offset %d is not printable ASCII: %w", c, i, ErrProtocol)
		}
	}
	return Request{Command: cmd, Name: string(raw[:end])}, nil
}

// MarshalBinary encodes r as the 260-byte record a device sends.
func (r Request) MarshalBinary() ([]byte, error) {
	if len(r.Name) > MaxNameLen {
		return nil, fmt.Errorf("marshal request: name is %d bytes, max %d", len(r.Name), MaxNameLen)
	}
	b := make([]byte, RequestSize)
	binary.LittleEndian.PutUint32(b[0:4], uint32(r.Command))
	copy(b[4:], r.Name)
	return b, nil
}

// BootMessage builds the 24-byte ROM boot message: the little-endian
// length of the image that follows and a 20-byte signature (all zero except
// for 283x signed boot).
func BootMessage(length uint32, sig [20]byte) []byte {
	b := make([]byte, BootMessageSize)
	binary.LittleEndian.PutUint32(b[0:4], length)
	copy(b[4:], sig[:])
	return b
}

// ParseBootMessage is the ROM side of BootMessage.
func ParseBootMessage(b []byte) (length uint32, sig [20]byte, err error) {
	if len(b) != BootMessageSize {
		return 0, sig, fmt.Errorf("parse boot message: got %d bytes, want %d: %w", len(b), BootMessageSize, ErrProtocol)
	}
	copy(sig[:], b[4:])
	return binary.LittleEndian.Uint32(b[0:4]), sig, nil
}

// SizeFields splits a length over wValue (low 16 bits) and wIndex (high).
func SizeFields(n uint32) (val, idx uint16) { return uint16(n), uint16(n >> 16) }

// SizeFromFields joins wValue and wIndex back into a length.
func SizeFromFields(val, idx uint16) uint32 { return uint32(idx)<<16 | uint32(val) }
