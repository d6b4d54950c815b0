package usbboottest

import (
	"fmt"
	"strings"

	"github.com/cm4bench/cm4bench/usbboot"
)

// ReplayConfigs turns a recorded trace (cm4bench usbboot --trace) into
// one board per port that issues exactly the second-stage requests the
// real board issued, in order: the simulator plays the device side of the
// recording. Its SoC comes from the attach record's product id, its serial
// from the attach record, and its interface from the claim records.
func ReplayConfigs(recs []usbboot.TraceRecord) ([]BoardConfig, error) {
	byPort := map[string]*BoardConfig{}
	var order []string
	second := map[string]bool{} // port -> the second stage is talking
	for _, r := range recs {
		cfg := byPort[r.Port]
		if cfg == nil {
			cfg = &BoardConfig{Port: r.Port, Mode: ModeRecovery, ScriptOnly: true}
			byPort[r.Port] = cfg
			order = append(order, r.Port)
		}
		switch r.Kind {
		case "attach":
			var vidpid, speed, serial string
			fields := strings.SplitN(r.Note, " ", 4)
			if len(fields) >= 1 {
				vidpid = fields[0]
			}
			if len(fields) >= 2 {
				speed = fields[1]
			}
			if len(fields) == 4 && fields[2] == "serial" {
				serial = strings.Trim(fields[3], `"`)
			}
			switch vidpid {
			case "0a5c:2711":
				cfg.SoC = usbboot.SoC2711
			case "0a5c:2712":
				cfg.SoC = usbboot.SoC2712
			case "0a5c:2763", "0a5c:2764":
				cfg.SoC, cfg.Mode = usbboot.SoC2835, ModeMSD
			default:
				return nil, fmt.Errorf("usbboottest: replay %s: unknown device %q", r.Port, vidpid)
			}
			if speed == "full-speed" && cfg.SoC != usbboot.SoC2835 {
				cfg.Faults = append(cfg.Faults, Fault{Kind: FaultFullSpeed})
			}
			if len(serial) == 8 {
				cfg.Serial = serial
			}
		case "claim":
			if strings.HasPrefix(r.Note, "interface 1 ") {
				cfg.TwoInterfaces = true
			}
		case "control":
			if strings.HasSuffix(r.Note, "iSerial=4") || strings.HasSuffix(r.Note, "iSerial=1") {
				second[r.Port] = true
			}
			if q, ok := usbboot.TraceRequest(r); ok && second[r.Port] {
				if r.N < usbboot.RequestSize {
					cfg.ShortRequests = true
				}
				cfg.Extra = append(cfg.Extra, q)
			}
		}
	}
	var out []BoardConfig
	for _, p := range order {
		cfg := byPort[p]
		if cfg.SoC == "" {
			return nil, fmt.Errorf("usbboottest: replay %s: the trace has no attach record", p)
		}
		out = append(out, *cfg)
	}
	return out, nil
}
