// Package wire holds the JSON types exchanged between the cm4bench server,
// its CLI client and the cm4agent device agent. It is types and constants
// only: it imports nothing beyond the standard library, so the agent can use
// it without pulling in the server.
//
// The first group of endpoints is compatible with the original
// provisioning-client.sh (curl and dd); the agent uses richer fields and
// endpoints alongside them.
package wire

import "time"

// Device endpoints (shell-client compatible).
const (
	PathRegister   = "/api/register-device"    // POST RegisterRequest (JSON or form mac, ip)
	PathPoll       = "/api/device-action-poll" // GET ?mac=MAC -> PollResponse
	PathActionDone = "/api/action-done"        // POST ActionDone (JSON or form)
	PathProgress   = "/api/device/progress"    // POST Progress (agent)
	PathLog        = "/api/device/log"         // POST LogLines (agent)
	PathOpenAPI    = "/api/openapi.json"       // GET
	PathEvents     = "/api/events"             // GET text/event-stream of Event
	PathMetrics    = "/metrics"                // GET Prometheus text
	HeaderToken    = "Authorization"           // "Bearer <admin token>" for technician endpoints
	DefaultPort    = 5000                      // HTTP API and dashboard
	KernelArgURL   = "cm4bench.server"         // kernel command line: cm4bench.server=http://IP:PORT
	AcceptZstd     = "zstd"                    // Accept-Encoding value for a compressed deploy stream
)

// Action names.
const (
	ActionNone   = "none"
	ActionDeploy = "deploy"
	ActionBackup = "backup"
)

// Action-done status values. An empty status means success (the shell
// client sends none).
const (
	StatusSuccess = "success"
	StatusFailed  = "failed"
)

// Facts are what the agent learns about its board and reports at register.
// The shell client sends none of them.
type Facts struct {
	Serial     string   `json:"serial,omitempty"`      // 8 hex digits, from /proc/cpuinfo or the device tree
	Revision   string   `json:"revision,omitempty"`    // board revision code, e.g. "c03141"
	Model      string   `json:"model,omitempty"`       // /proc/device-tree/model
	MACs       []string `json:"macs,omitempty"`        // every Ethernet MAC
	EMMCBytes  int64    `json:"emmc_bytes,omitempty"`  // size of the target block device
	EMMCCID    string   `json:"emmc_cid,omitempty"`    // sysfs cid
	EMMCCSD    string   `json:"emmc_csd,omitempty"`    // sysfs csd
	Bootloader string   `json:"bootloader,omitempty"`  // bootloader version where readable
	TempMilliC int      `json:"temp_millic,omitempty"` // SoC temperature in milli-degrees Celsius
	Agent      string   `json:"agent,omitempty"`       // agent version; empty for the shell client
}

// RegisterRequest is POSTed to PathRegister.
type RegisterRequest struct {
	MAC   string `json:"mac" form:"mac"`
	IP    string `json:"ip" form:"ip"`
	Facts *Facts `json:"facts,omitempty"`
}

// RegisterResponse answers a register.
type RegisterResponse struct {
	Status       string  `json:"status"` // "registered"
	MAC          string  `json:"mac"`
	PollInterval float64 `json:"poll_interval_s"` // seconds the device should wait between polls
}

// ImageInfo describes the image behind a deploy URL.
type ImageInfo struct {
	Name           string `json:"name"`
	Format         string `json:"format"`          // raw, gz, xz or zst: the stored form
	Size           int64  `json:"size"`            // uncompressed bytes
	SHA256         string `json:"sha256"`          // of the uncompressed bytes
	CompressedSize int64  `json:"compressed_size"` // stored bytes (== Size for raw)
}

// PollResponse answers GET PathPoll. Action is always set; URL is set for a
// deploy (a GET of it streams the raw image unless the client accepts zstd)
// and UploadURL for a backup (PUT or POST the raw or zstd bytes).
type PollResponse struct {
	Action    string     `json:"action"`
	URL       string     `json:"url,omitempty"`
	UploadURL string     `json:"upload_url,omitempty"`
	ActionID  string     `json:"action_id,omitempty"`
	Token     string     `json:"token,omitempty"` // the per-action token also carried in the URLs
	Image     *ImageInfo `json:"image,omitempty"`
}

// Progress is POSTed by the agent about once a second during an action.
type Progress struct {
	MAC      string  `json:"mac"`
	ActionID string  `json:"action_id"`
	Token    string  `json:"token"`
	Phase    string  `json:"phase"` // download, write, verify, read, upload
	Done     int64   `json:"done"`
	Total    int64   `json:"total"`
	Rate     float64 `json:"rate_bps"`
}

// LogLines is POSTed by the agent with the tail of its console log.
type LogLines struct {
	MAC      string   `json:"mac"`
	ActionID string   `json:"action_id,omitempty"`
	Token    string   `json:"token,omitempty"`
	Lines    []string `json:"lines"`
}

// ActionDone is POSTed to PathActionDone when an action ends. The shell
// client sends only mac (and perhaps action); the agent fills in the rest.
type ActionDone struct {
	MAC              string  `json:"mac" form:"mac"`
	Action           string  `json:"action,omitempty" form:"action"`
	Status           string  `json:"status,omitempty" form:"status"`
	SHA256           string  `json:"sha256,omitempty" form:"sha256"` // of the raw (uncompressed) bytes
	ActionID         string  `json:"action_id,omitempty" form:"action_id"`
	Token            string  `json:"token,omitempty" form:"token"`
	Error            string  `json:"error,omitempty" form:"error"`
	Bytes            int64   `json:"bytes,omitempty" form:"bytes"`
	CompressedSHA256 string  `json:"compressed_sha256,omitempty" form:"compressed_sha256"`
	CompressedBytes  int64   `json:"compressed_bytes,omitempty" form:"compressed_bytes"`
	Seconds          float64 `json:"seconds,omitempty" form:"seconds"`
}

// Event is one entry of the bench's single event stream: DHCP leases, TFTP
// transfers, agent progress and technician clicks. Kind is dotted, for
// example "dhcp.ack", "tftp.transfer", "tftp.probe", "device.register",
// "action.progress", "action.done", "netboot.set".
type Event struct {
	ID      int64          `json:"id,omitempty"`
	Time    time.Time      `json:"time"`
	Kind    string         `json:"kind"`
	Level   string         `json:"level,omitempty"` // info, warn, error
	MAC     string         `json:"mac,omitempty"`
	Serial  string         `json:"serial,omitempty"`
	Message string         `json:"message"`
	Fields  map[string]any `json:"fields,omitempty"`
}

// APIError is the body of every 4xx/5xx answer.
type APIError struct {
	Error string `json:"error"`
}
