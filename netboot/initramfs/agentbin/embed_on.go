//go:build embedagent

package agentbin

import (
	"embed"
	"fmt"
)

//go:embed bin/cm4agent-linux-arm64 bin/cm4agent-linux-amd64
var bins embed.FS

// Embedded reports whether this build carries the agents.
const Embedded = true

func agent(arch string) ([]byte, error) {
	b, err := bins.ReadFile("bin/cm4agent-linux-" + arch)
	if err != nil {
		return nil, fmt.Errorf("agentbin: %w", err)
	}
	return b, nil
}
