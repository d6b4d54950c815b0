package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestProgramFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{nil, 2, "--server and --target are required"},
		{[]string{"--server", "http://127.0.0.1:1"}, 2, "required"},
		{[]string{"--server", "http://127.0.0.1:1", "--target", "x", "--mac", "zz"}, 2, "not an Ethernet MAC"},
		{[]string{"--server", "http://127.0.0.1:1", "--target", "x", "--mac", "dc:a6:32:00:00:01", "--log-level", "loud"}, 2, "--log-level"},
		{[]string{"--help"}, 0, "Usage: cm4agent"},
	} {
		var out bytes.Buffer
		if got := runProgram(tc.args, &out); got != tc.code || !strings.Contains(out.String(), tc.want) {
			t.Errorf("cm4agent %q: exit %d, output %q; want exit %d with %q", tc.args, got, out.String(), tc.code, tc.want)
		}
	}
}
