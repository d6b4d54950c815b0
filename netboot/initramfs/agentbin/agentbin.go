// Package agentbin carries the cm4agent executables inside a release
// cm4bench, so `cm4bench netboot initramfs` needs no Go toolchain at the
// bench. `make build` cross-compiles cm4agent for linux/arm64 and
// linux/amd64 into bin/ (git-ignored) and builds cm4bench with
// -tags embedagent; without that tag Agent reports ErrNotEmbedded.
package agentbin

import (
	"errors"
	"fmt"
)

// ErrNotEmbedded is returned by a cm4bench built without the agents.
var ErrNotEmbedded = errors.New("this cm4bench was built without the embedded cm4agent (build it with `make build`, which uses -tags embedagent, or pass --agent FILE)")

// Agent returns the cm4agent executable for arch ("arm64" or "amd64").
func Agent(arch string) ([]byte, error) {
	switch arch {
	case "arm64", "amd64":
	default:
		return nil, fmt.Errorf("agentbin: no cm4agent for architecture %q (have arm64, amd64)", arch)
	}
	return agent(arch)
}
