package tftp

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// TFTP opcodes (RFC 1350, RFC 2347).
const (
	opRRQ   = 1
	opWRQ   = 2
	opDATA  = 3
	opACK   = 4
	opERROR = 5
	opOACK  = 6
)

// TFTP error codes sent to clients (RFC 1350).
const (
	codeUndefined    = 0
	codeNotFound     = 1
	codeAccess       = 2
	codeIllegalOp    = 4
	maxRequestBytes  = 512 // RFC 1350 packets fit in 512 bytes; options stay well under it
	minBlockSize     = 8   // RFC 2348
	maxBlockSizeWire = 65464
)

// request is a parsed RRQ or WRQ.
type request struct {
	op   uint16
	name string
	mode string // lower case: "octet" or "netascii" ("mail" is refused)
	opts []option
}

// option is one request option, name lower-cased, in the client's order.
type option struct{ name, value string }

var errMalformed = errors.New("malformed request")

// parseRequest decodes an RRQ or WRQ: opcode, then NUL-terminated filename,
// mode, and option name/value pairs (RFC 2347). Anything else is an error
// naming what is wrong.
func parseRequest(b []byte) (request, error) {
	if len(b) < 2 {
		return request{}, fmt.Errorf("%w: %d bytes", errMalformed, len(b))
	}
	if len(b) > maxRequestBytes {
		return request{}, fmt.Errorf("%w: %d bytes, more than %d", errMalformed, len(b), maxRequestBytes)
	}
	r := request{op: binary.BigEndian.Uint16(b)}
	if r.op != opRRQ && r.op != opWRQ {
		return request{}, fmt.Errorf("%w: opcode %d is not a request", errMalformed, r.op)
	}
	fields := bytes.Split(b[2:], []byte{0})
	// A well-formed packet ends with NUL, so the last field is empty.
	if len(fields) < 3 || len(fields[len(fields)-1]) != 0 {
		return request{}, fmt.Errorf("%w: filename and mode must each end with a NUL byte", errMalformed)
	}
	fields = fields[:len(fields)-1]
	if len(fields[0]) == 0 {
		return request{}, fmt.Errorf("%w: empty filename", errMalformed)
	}
	r.name = string(fields[0])
	r.mode = strings.ToLower(string(fields[1]))
	switch r.mode {
	case "octet", "netascii":
	default:
		return request{}, fmt.Errorf("%w: transfer mode %q (octet or netascii)", errMalformed, fields[1])
	}
	rest := fields[2:]
	if len(rest)%2 != 0 {
		return request{}, fmt.Errorf("%w: option %q has no value", errMalformed, rest[len(rest)-1])
	}
	for i := 0; i < len(rest); i += 2 {
		r.opts = append(r.opts, option{name: strings.ToLower(string(rest[i])), value: string(rest[i+1])})
	}
	return r, nil
}

// marshal encodes r (the client side of parseRequest, for tests and fuzzing).
func (r request) marshal() []byte {
	b := binary.BigEndian.AppendUint16(nil, r.op)
	b = append(append(b, r.name...), 0)
	b = append(append(b, r.mode...), 0)
	for _, o := range r.opts {
		b = append(append(b, o.name...), 0)
		b = append(append(b, o.value...), 0)
	}
	return b
}

// negotiate answers the options the server supports: blksize (RFC 2348),
// clamped to [8, max], and tsize (RFC 2349) when the size is known
// (size < 0: unknown, as for netascii). Unknown options, and windowsize
// (lock-step on purpose), are left out, as RFC 2347 allows. It returns the
// accepted options in the client's order and the block size to use.
func negotiate(opts []option, maxBlock int, size int64) ([]option, int) {
	blksize := 512
	var acc []option
	seen := map[string]bool{}
	for _, o := range opts {
		if seen[o.name] {
			continue
		}
		seen[o.name] = true
		switch o.name {
		case "blksize":
			n, err := strconv.Atoi(o.value)
			if err != nil || n < minBlockSize || n > maxBlockSizeWire {
				continue
			}
			blksize = min(n, maxBlock)
			acc = append(acc, option{name: "blksize", value: strconv.Itoa(blksize)})
		case "tsize":
			if size >= 0 {
				acc = append(acc, option{name: "tsize", value: strconv.FormatInt(size, 10)})
			}
		}
	}
	return acc, blksize
}

// appendOACK encodes an option acknowledgement.
func appendOACK(b []byte, opts []option) []byte {
	b = binary.BigEndian.AppendUint16(b, opOACK)
	for _, o := range opts {
		b = append(append(b, o.name...), 0)
		b = append(append(b, o.value...), 0)
	}
	return b
}

// appendError encodes an ERROR packet with code and message.
func appendError(b []byte, code uint16, msg string) []byte {
	b = binary.BigEndian.AppendUint16(b, opERROR)
	b = binary.BigEndian.AppendUint16(b, code)
	return append(append(b, msg...), 0)
}

// parseError decodes an ERROR packet's code and message (without the
// opcode check: the caller has read it).
func parseError(b []byte) (uint16, string) {
	if len(b) < 4 {
		return 0, ""
	}
	msg, _, _ := bytes.Cut(b[4:], []byte{0})
	return binary.BigEndian.Uint16(b[2:]), string(msg)
}
