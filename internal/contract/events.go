package contract

import (
	"slices"
	"time"
)

// Event is one entry of the bench's single event stream: DHCP leases, TFTP
// transfers, agent progress and technician clicks. Kind is one of the
// Event* constants below; Kinds lists them all, and a test fails when code
// emits a kind that is not declared here.
type Event struct {
	ID      int64          `json:"id,omitempty"`
	Time    time.Time      `json:"time"`
	Kind    string         `json:"kind"`
	Level   string         `json:"level,omitempty"` // LevelInfo, LevelWarn, LevelError
	MAC     string         `json:"mac,omitempty"`
	Serial  string         `json:"serial,omitempty"`
	Message string         `json:"message"`
	Fields  map[string]any `json:"fields,omitempty"`
}

// Event levels. An empty level reads as LevelInfo.
const (
	LevelInfo  = "info"
	LevelWarn  = "warn"
	LevelError = "error"
)

// Event kinds. Each is "<source>.<what>"; the source is the part of the
// bench that emits it.
const (
	// API server: devices.
	EventDeviceRegister = "device.register"
	EventDeviceLog      = "device.log"
	EventDeviceImage    = "device.image" // Fields: image; a technician assigned an image
	EventDevicePower    = "device.power" // level warn on failure; a technician power-cycled the board

	// API server: actions.
	EventActionSet      = "action.set"
	EventActionProgress = "action.progress" // Fields: action_id, phase, done, total, rate
	EventActionDone     = "action.done"
	EventActionFailed   = "action.failed"
	EventNetbootSet     = "netboot.set" // Fields: enabled (bool); MAC empty = global switch

	// API server: the line (recipes, rules, the armed switch).
	EventRecipeApplied = "recipe.applied" // Fields: recipe, version
	EventRulesSet      = "rules.set"      // Fields: rules (count)
	EventArmedSet      = "armed.set"      // Fields: armed (bool)
	EventRuleMatched   = "rule.matched"   // Fields: rule, recipe, version, mode; level warn when it could not start
	EventLabelPrinted  = "label.printed"  // Fields: action_id, printer; level warn when the printer failed (the board stays provisioned)

	// API server: stored files.
	EventBackupStored  = "backup.stored"
	EventBackupRemoved = "backup.removed" // Fields: backup_id
	EventImageAdded    = "image.added"
	EventImageRemoved  = "image.removed"
	EventImageDefault  = "image.default"

	// API server: itself and its technicians.
	EventServerRecovered = "server.recovered" // Fields: temp_files_removed, backups_failed
	EventAuthLogin       = "auth.login"       // Fields: ip
	EventAuthFailed      = "auth.failed"      // Fields: ip
	EventAuthRotated     = "auth.rotated"

	// DHCP server (netboot/dhcp).
	EventDHCPOffer   = "dhcp.offer"
	EventDHCPAck     = "dhcp.ack"
	EventDHCPNak     = "dhcp.nak"
	EventDHCPRelease = "dhcp.release"
	EventDHCPDecline = "dhcp.decline"
	EventDHCPRival   = "dhcp.rival" // level warn: another DHCP server answers on the link
	EventDHCPError   = "dhcp.error"

	// TFTP server (netboot/tftp) and the boot-file preparation (netboot/serve).
	EventTFTPTransfer = "tftp.transfer"
	EventTFTPProbe    = "tftp.probe" // a size probe the client ended early
	EventTFTPNotFound = "tftp.notfound"
	EventTFTPError    = "tftp.error"
	EventTFTPPrepared = "tftp.prepared" // per-board boot files written on first contact
)

var kinds = []string{
	EventDeviceRegister, EventDeviceLog, EventDeviceImage, EventDevicePower,
	EventActionSet, EventActionProgress, EventActionDone, EventActionFailed, EventNetbootSet,
	EventRecipeApplied, EventRulesSet, EventArmedSet, EventRuleMatched, EventLabelPrinted,
	EventBackupStored, EventBackupRemoved, EventImageAdded, EventImageRemoved, EventImageDefault,
	EventServerRecovered, EventAuthLogin, EventAuthFailed, EventAuthRotated,
	EventDHCPOffer, EventDHCPAck, EventDHCPNak, EventDHCPRelease, EventDHCPDecline, EventDHCPRival, EventDHCPError,
	EventTFTPTransfer, EventTFTPProbe, EventTFTPNotFound, EventTFTPError, EventTFTPPrepared,
}

// Kinds returns every declared event kind, in declaration order. The
// dashboard gets its list of kinds from here (api/ui serves it as kinds.js).
func Kinds() []string { return slices.Clone(kinds) }

// KnownKind reports whether kind is declared.
func KnownKind(kind string) bool { return slices.Contains(kinds, kind) }
