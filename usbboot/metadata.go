package usbboot

import (
	"bytes"
	"encoding/json"
)

// KV is one metadata item a second stage reported as "*KEY*VALUE".
type KV struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

// Metadata is the metadata of one session, in arrival order.
type Metadata []KV

// Get returns the last value reported for key.
func (m Metadata) Get(key string) (string, bool) {
	for i := len(m) - 1; i >= 0; i-- {
		if m[i].Key == key {
			return m[i].Value, true
		}
	}
	return "", false
}

// RPIBootJSON renders m the way `rpiboot -j` writes <serial>.json: an
// object of string values, one tab-indented key per line, in arrival
// order (a repeated key keeps its first position and its last value).
func (m Metadata) RPIBootJSON() []byte {
	var keys []string
	last := map[string]string{}
	for _, kv := range m {
		if _, seen := last[kv.Key]; !seen {
			keys = append(keys, kv.Key)
		}
		last[kv.Key] = kv.Value
	}
	var b bytes.Buffer
	b.WriteString("{")
	for i, k := range keys {
		if i > 0 {
			b.WriteString(",")
		}
		kj, _ := json.Marshal(k)
		vj, _ := json.Marshal(last[k])
		b.WriteString("\n\t")
		b.Write(kj)
		b.WriteString(": ")
		b.Write(vj)
	}
	b.WriteString("\n}\n")
	return b.Bytes()
}
