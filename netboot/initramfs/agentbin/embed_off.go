//go:build !embedagent

package agentbin

// Embedded reports whether this build carries the agents.
const Embedded = false

func agent(string) ([]byte, error) { return nil, ErrNotEmbedded }
