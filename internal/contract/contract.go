// Package contract is what the parts of cm4bench agree on: the JSON types of
// the device and technician APIs, the event type with every event kind the
// bench emits, the configuration the initramfs hands to cm4agent, and MAC
// normalisation. The servers (api, netboot/dhcp, netboot/tftp), the device
// agent and the CLI import it; it imports nothing of ours and nothing
// beyond the standard library, so each side can use it without pulling in
// the other.
//
// The first group of endpoints is compatible with the original
// provisioning-client.sh (curl and dd); the agent uses richer fields and
// endpoints alongside them.
package contract

import (
	"encoding/json"
	"time"
)

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
	AcceptSparse   = "x-cm4bench-sparse"       // Accept-Encoding value for the sparse deploy stream (internal/sparseimg)
)

// Action names.
const (
	ActionNone   = "none"
	ActionDeploy = "deploy"
	ActionBackup = "backup"
	// ActionIdentify blinks the board's activity LED for IdentifySeconds so
	// the technician finds it on a full bench; it changes nothing on the
	// board and leaves its netboot switch as it is.
	ActionIdentify = "identify"
)

// EMMCAction reports whether an action reads or writes the eMMC (deploy,
// backup). Such an action switches the board's netboot on when it is
// queued and off when it succeeds, so the board boots its eMMC next time;
// any other action (identify) leaves the board and its switch as they were.
func EMMCAction(typ string) bool { return typ == ActionDeploy || typ == ActionBackup }

// IdentifySeconds is how long an identify blinks the activity LED.
const IdentifySeconds = 15

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
	// SignedBoot is the bootloader's chosen/bootloader/signed bit field
	// (0x1 SIGNED_BOOT in the config, 0x4 devkey revoked, 0x8 customer key
	// hash in OTP); nil when the device tree does not publish it.
	SignedBoot *uint32 `json:"signed_boot,omitempty"`
}

// Signed-boot bits of Facts.SignedBoot.
const (
	SignedBootConfig = 0x1 // SIGNED_BOOT=1 in the EEPROM config
	SignedBootDevkey = 0x4 // the ROM development key is revoked
	SignedBootOTPKey = 0x8 // the customer key hash is in OTP: the board is locked
)

// Locked reports whether the board says its OTP holds a customer key hash.
func (f *Facts) Locked() bool {
	return f != nil && f.SignedBoot != nil && *f.SignedBoot&SignedBootOTPKey != 0
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
	// Customise is what a recipe deploy does after the image is written and
	// verified; nil for a plain deploy (and unknown to the shell client).
	Customise *Customise `json:"customise,omitempty"`
}

// After-success policies of a recipe: what the board does once its deploy
// is verified and reported.
const (
	AfterReboot   = "reboot"   // boot the new eMMC (the default)
	AfterPowerOff = "poweroff" // power off: the board is ready to pack
	AfterHold     = "hold"     // stay in the agent, polling
)

// Customise tells the agent which per-device files to write into the FAT
// boot partition of the image it just wrote, and what to do afterwards.
type Customise struct {
	Files  []CustomFile `json:"files,omitempty"`
	After  string       `json:"after,omitempty"`  // After* ("" = reboot)
	Verify string       `json:"verify,omitempty"` // Verify* ("" = read back)
}

// Verify policies of a recipe.
const (
	VerifyReadback = "readback" // read the written image back from the eMMC and hash it (the default)
	VerifyStream   = "stream"   // trust the hash of the bytes written, checked against the image's
)

// CustomFile is one rendered per-device file. Path is relative to the boot
// partition's root, "/"-separated.
type CustomFile struct {
	Path   string `json:"path"`
	Data   []byte `json:"data"`   // base64 in JSON
	SHA256 string `json:"sha256"` // of Data
}

// FileHash is a file the agent wrote, read back and hashed.
type FileHash struct {
	Path   string `json:"path"`
	SHA256 string `json:"sha256"`
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
	// Files are the per-device files written into the boot partition, read
	// back and hashed (recipe deploys only).
	Files []FileHash `json:"files,omitempty" form:"-"`
	// Phases are the agent's own seconds per phase of a deploy (write,
	// verify, customise), for the ledger.
	Phases *PhaseSeconds `json:"phases,omitempty" form:"-"`
}

// APIError is the body of every 4xx/5xx answer.
type APIError struct {
	Error string `json:"error"`
}

// Device-side URLs handed out in PollResponse (absolute, with ?token=).
// A GET of PathImage/<action_id> streams the image; a PUT or POST to
// PathBackup/<action_id> uploads a backup. Only the device (by IP) that
// polled the action may use them, and only while the action is open.
const (
	PathImage  = "/api/device/image"  // GET  /api/device/image/<action_id>?token=T
	PathBackup = "/api/device/backup" // PUT|POST /api/device/backup/<action_id>?token=T
)

// Response and request headers of the image and backup streams.
const (
	// HeaderImageSize carries the uncompressed image size on a deploy stream.
	HeaderImageSize = "X-Cm4bench-Image-Size"
	// HeaderImageSHA256 carries the sha256 of the uncompressed image.
	HeaderImageSHA256 = "X-Cm4bench-Image-Sha256"
	// HeaderImageFormat names the stored form of the image (raw, gz, xz, zst).
	HeaderImageFormat = "X-Cm4bench-Image-Format"
	// HeaderRawSHA256 may be sent with a backup upload: the sha256 of the
	// raw (uncompressed) device bytes. A mismatch fails the action.
	HeaderRawSHA256 = "X-Cm4bench-Raw-Sha256"
)

// Technician API (Authorization: Bearer <admin token>, or the session cookie).
const (
	PathAPIv1      = "/api/v1"
	PathLogin      = "/api/v1/login"        // POST LoginRequest; sets CookieSession
	PathLogout     = "/api/v1/logout"       // POST; clears CookieSession
	PathRotate     = "/api/v1/token/rotate" // POST (admin); answers {"token": new}
	CookieSession  = "cm4bench_session"
	FileAdminToken = "admin-token" // in the data dir, mode 0600
	FileServerInfo = "server.json" // in the data dir: ServerInfo of the running server
)

// Device states (Device.State).
const (
	DeviceIdle    = "idle"
	DevicePending = "pending"
	DeviceRunning = "running"
	DeviceDone    = "done"
	DeviceFailed  = "failed"
	DeviceOffline = "offline"
)

// Action states (Action.State).
const (
	StatePending   = "pending"
	StateRunning   = "running"
	StateDone      = "done"
	StateFailed    = "failed"
	StateCancelled = "cancelled"
)

// Device is one board the bench has seen, as the technician API shows it.
type Device struct {
	MAC       string    `json:"mac"`
	Serial    string    `json:"serial,omitempty"`
	IP        string    `json:"ip,omitempty"`
	Facts     *Facts    `json:"facts,omitempty"`
	FirstSeen time.Time `json:"first_seen"`
	LastSeen  time.Time `json:"last_seen"`
	Netboot   bool      `json:"netboot"`           // this MAC's own switch (the global switch is separate)
	State     string    `json:"state"`             // Device* constants
	Action    *Action   `json:"action,omitempty"`  // current or last action
	Image     string    `json:"image,omitempty"`   // assigned image; empty = the default
	Actions   []Action  `json:"actions,omitempty"` // recent actions, newest first (GET /devices/:mac only)
	// NotPolling is set when a job has waited two poll intervals for a board
	// that has not polled in that time: it is not network-booted now and
	// needs a power-cycle or reset to pick the job up.
	NotPolling bool `json:"not_polling,omitempty"`
	// Match is the first rule that matches the board (GET devices).
	Match *Match `json:"match,omitempty"`
}

// Action is one deploy or backup of one device.
type Action struct {
	ID               string     `json:"id"`
	MAC              string     `json:"mac"`
	Type             string     `json:"type"` // deploy or backup
	Image            string     `json:"image,omitempty"`
	State            string     `json:"state"` // State* constants
	Phase            string     `json:"phase,omitempty"`
	Done             int64      `json:"done"`
	Total            int64      `json:"total"`
	Rate             float64    `json:"rate_bps"`
	Error            string     `json:"error,omitempty"`
	Created          time.Time  `json:"created"`
	Started          *time.Time `json:"started,omitempty"`
	Finished         *time.Time `json:"finished,omitempty"`
	SHA256           string     `json:"sha256,omitempty"` // raw bytes written or read, as reported or measured
	Bytes            int64      `json:"bytes,omitempty"`
	CompressedSHA256 string     `json:"compressed_sha256,omitempty"`
	CompressedBytes  int64      `json:"compressed_bytes,omitempty"`
	BackupID         string     `json:"backup_id,omitempty"`
	Log              []string   `json:"log,omitempty"` // tail of the agent's log
	// A recipe deploy: the recipe version, the rule that started it ("" =
	// a technician), and the pool values it was given.
	Recipe        string      `json:"recipe,omitempty"`
	RecipeVersion int         `json:"recipe_version,omitempty"`
	Rule          string      `json:"rule,omitempty"`
	Values        []PoolValue `json:"values,omitempty"`
	Files         []FileHash  `json:"files,omitempty"` // rendered files and their sha256
}

// PoolValue is one value a pool gave a board.
type PoolValue struct {
	Pool  string `json:"pool"`
	Value string `json:"value"`
	State string `json:"state,omitempty"` // allocated, used, free (returned) or retired
}

// Match is what the rules say about a board: which rule matched, why,
// and what it starts. Rule is "" when none matched.
type Match struct {
	Rule    string `json:"rule,omitempty"`
	Recipe  string `json:"recipe,omitempty"`
	Version int    `json:"version,omitempty"`
	Mode    string `json:"mode,omitempty"` // auto or ask
	Why     string `json:"why"`
}

// Backup is one stored device backup.
type Backup struct {
	ID         string    `json:"id"`
	MAC        string    `json:"mac"`
	Serial     string    `json:"serial,omitempty"`
	ActionID   string    `json:"action_id"`
	Created    time.Time `json:"created"`
	Size       int64     `json:"size"`        // raw bytes
	StoredSize int64     `json:"stored_size"` // bytes on disk
	Compressed bool      `json:"compressed"`  // stored as zstd
	SHA256     string    `json:"sha256"`      // of the raw bytes
	Name       string    `json:"name"`        // file name for downloads, no path
}

// Image is one deployable image.
type Image struct {
	Name           string    `json:"name"`
	Format         string    `json:"format"` // raw, gz, xz or zst
	Size           int64     `json:"size"`   // uncompressed bytes
	CompressedSize int64     `json:"compressed_size"`
	SHA256         string    `json:"sha256"`  // of the uncompressed bytes
	Default        bool      `json:"default"` // what Deploy writes when the board has no image of its own
	Golden         bool      `json:"golden"`  // the server's --image file: never deleted through the API
	Modified       time.Time `json:"modified"`
}

// DefaultImageRequest is the body of PUT /api/v1/images/default: the image
// Deploy writes to a board with none of its own ("" = back to --image).
type DefaultImageRequest struct {
	Image string `json:"image"`
}

// PowerCycled answers POST /api/v1/devices/:mac/power-cycle.
type PowerCycled struct {
	MAC    string `json:"mac"`
	Status string `json:"status"` // "power-cycled"
}

// Status answers GET /api/v1/status.
type Status struct {
	Version      string         `json:"version"`
	Addresses    []string       `json:"addresses"` // base URLs the server listens on
	Netboot      bool           `json:"netboot"`   // global switch
	RivalDHCP    []string       `json:"rival_dhcp,omitempty"`
	DefaultImage string         `json:"default_image,omitempty"`
	PowerControl bool           `json:"power_control"` // the bench can power-cycle boards (serve --power-command)
	Armed        bool           `json:"armed"`         // auto rules start deploys on their own
	Rules        int            `json:"rules"`
	Recipes      int            `json:"recipes"`
	Devices      map[string]int `json:"devices"` // count by state
	Images       int            `json:"images"`
	Backups      int            `json:"backups"`
	Started      time.Time      `json:"started"`
}

// SetActionRequest is POSTed to /api/v1/devices/:mac/action.
type SetActionRequest struct {
	Action string `json:"action"` // deploy, backup or none (cancel)
	Image  string `json:"image,omitempty"`
	// Recipe deploys the latest version of a recipe instead of an image
	// (Rule names the rule that suggested it, for the record).
	Recipe string `json:"recipe,omitempty"`
	Rule   string `json:"rule,omitempty"`
}

// PoolState is how many values of a recipe's pool are in each state
// (free, allocated, used, retired).
type PoolState struct {
	Recipe string         `json:"recipe"`
	Pool   string         `json:"pool"`
	Kind   string         `json:"kind"`
	Next   int64          `json:"next,omitempty"` // counters: the next number
	States map[string]int `json:"states"`
}

// PoolRecord is one pool value that went to a board: the history of who
// got what.
type PoolRecord struct {
	Pool     string `json:"pool"`
	Value    string `json:"value"`
	State    string `json:"state"`
	MAC      string `json:"mac"`
	ActionID string `json:"action_id"`
}

// Armed is the body of GET/PUT /api/v1/armed: whether auto rules start
// deploys on their own.
type Armed struct {
	Armed bool `json:"armed"`
}

// RecipeApplied answers PUT /api/v1/recipes, one per recipe in the file.
type RecipeApplied struct {
	Name    string `json:"name"`
	Version int    `json:"version"`
	Changed bool   `json:"changed"` // false: the same content was already stored
}

// BulkActionRequest is POSTed to /api/v1/actions.
type BulkActionRequest struct {
	MACs   []string `json:"macs"`
	Action string   `json:"action"`
	Image  string   `json:"image,omitempty"`
}

// SetImageRequest is PUT to /api/v1/devices/:mac/image.
type SetImageRequest struct {
	Image string `json:"image"` // empty = back to the default
}

// NetbootSwitch is the body of GET/PUT /api/v1/netboot and PUT
// /api/v1/devices/:mac/netboot.
type NetbootSwitch struct {
	MAC     string `json:"mac,omitempty"`
	Enabled bool   `json:"enabled"`
}

// LoginRequest is POSTed to PathLogin.
type LoginRequest struct {
	Token string `json:"token,omitempty"`
	// Code is the one-time code of a printed login link (instead of Token).
	Code string `json:"code,omitempty"`
}

// ServerInfo is what a running server records in <data>/server.json so the
// CLI can find it.
type ServerInfo struct {
	URL     string    `json:"url"`
	PID     int       `json:"pid"`
	Started time.Time `json:"started"`
}

// AgentUserAgent prefixes the User-Agent of cm4agent. The server measures
// download and upload progress itself for every other client (the shell
// client reports none) and leaves it to the agent otherwise.
const AgentUserAgent = "cm4agent"

// LedgerRow is one provisioning of a board (a deploy that ended), written
// once when it ends and never changed: what a manufacturer needs months
// later. Seconds are per phase: netboot (first DHCP packet to register),
// register (register to the job's pickup), write (download and write),
// verify (read-back), customise (per-device files).
type LedgerRow struct {
	ID            int64        `json:"id"`
	Time          time.Time    `json:"time"` // when it ended
	Station       string       `json:"station"`
	Slot          string       `json:"slot"` // where on the bench: the board's address on the bench network
	Operator      string       `json:"operator"`
	MAC           string       `json:"mac"`
	MACs          []string     `json:"macs"`
	Serial        string       `json:"serial"`
	Model         string       `json:"model"`
	Revision      string       `json:"revision"`
	Bootloader    string       `json:"bootloader"`
	EMMCBytes     int64        `json:"emmc_bytes"`
	EMMCCID       string       `json:"emmc_cid"`
	EMMCCSD       string       `json:"emmc_csd"`
	ActionID      string       `json:"action_id"`
	Recipe        string       `json:"recipe"`
	RecipeVersion int          `json:"recipe_version"`
	Rule          string       `json:"rule"`
	Image         string       `json:"image"`
	ImageSHA256   string       `json:"image_sha256"`
	Values        []PoolValue  `json:"values"`
	Files         []FileHash   `json:"files"`
	Started       time.Time    `json:"started"`
	Seconds       PhaseSeconds `json:"seconds"`
	WireBytes     int64        `json:"wire_bytes"`
	WrittenBytes  int64        `json:"written_bytes"`
	Result        string       `json:"result"` // done, failed or cancelled
	Error         string       `json:"error"`
}

// PhaseSeconds are a provisioning's durations (see LedgerRow).
type PhaseSeconds struct {
	Netboot   float64 `json:"netboot"`
	Register  float64 `json:"register"`
	Write     float64 `json:"write"`
	Verify    float64 `json:"verify"`
	Customise float64 `json:"customise"`
	Total     float64 `json:"total"`
}

// Webhook events: what a factory's MES/ERP can subscribe to.
const (
	WebhookBoardRegistered = "board.registered" // data: Device
	WebhookActionDone      = "action.done"      // data: Action
	WebhookActionFailed    = "action.failed"    // data: Action
	WebhookLedgerRow       = "ledger.row"       // data: LedgerRow
)

// WebhookEvents lists every webhook event.
func WebhookEvents() []string {
	return []string{WebhookBoardRegistered, WebhookActionDone, WebhookActionFailed, WebhookLedgerRow}
}

// Webhook delivery headers. The signature is "sha256=" and the hex
// HMAC-SHA256 of the raw body with the webhook's secret; the delivery id
// is the same on every retry of one delivery, so a receiver deduplicates
// by it.
const (
	HeaderWebhookEvent     = "X-Cm4bench-Event"
	HeaderWebhookDelivery  = "X-Cm4bench-Delivery"
	HeaderWebhookSignature = "X-Cm4bench-Signature"
)

// Webhook is a configured endpoint. Secret is shown only when it is made.
type Webhook struct {
	ID      string    `json:"id"`
	URL     string    `json:"url"`
	Events  []string  `json:"events"`
	Secret  string    `json:"secret,omitempty"`
	Created time.Time `json:"created"`
}

// WebhookRequest is the body of POST /api/v1/webhooks ("" secret: one is
// generated).
type WebhookRequest struct {
	URL    string   `json:"url"`
	Events []string `json:"events"`
	Secret string   `json:"secret,omitempty"`
}

// WebhookPayload is the JSON body of every delivery.
type WebhookPayload struct {
	Delivery string          `json:"delivery"`
	Event    string          `json:"event"`
	Time     time.Time       `json:"time"`
	Data     json.RawMessage `json:"data"`
}

// Delivery is one webhook delivery in the outbox: pending until a 2xx
// answer, retried with backoff, given up ("failed") after many attempts.
type Delivery struct {
	ID        string     `json:"id"`
	WebhookID string     `json:"webhook_id"`
	URL       string     `json:"url"`
	Event     string     `json:"event"`
	State     string     `json:"state"` // pending, delivered, failed
	Attempts  int        `json:"attempts"`
	LastError string     `json:"last_error,omitempty"`
	Created   time.Time  `json:"created"`
	NextAt    *time.Time `json:"next_at,omitempty"`
	Delivered *time.Time `json:"delivered,omitempty"`
}
