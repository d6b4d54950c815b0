package privilege

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
)

func TestExplain(t *testing.T) {
	for _, tt := range []struct {
		in      error
		missing bool
	}{
		{fmt.Errorf("listen: %w", &os.SyscallError{Syscall: "bind", Err: syscall.EACCES}), true},
		{fmt.Errorf("socket: %w", syscall.EPERM), true},
		{fmt.Errorf("listen: %w", syscall.EADDRINUSE), false},
		{nil, false},
	} {
		got := Explain(tt.in, "binding UDP port 67", NetBindService)
		if errors.Is(got, ErrMissing) != tt.missing {
			t.Errorf("%v: ErrMissing = %v", tt.in, !tt.missing)
		}
		if tt.missing && (!strings.Contains(got.Error(), "binding UDP port 67 needs CAP_NET_BIND_SERVICE") || !errors.Is(got, tt.in)) {
			t.Errorf("%v: %v", tt.in, got)
		}
		if !tt.missing && got != tt.in {
			t.Errorf("%v changed to %v", tt.in, got)
		}
	}
}
