package usbboottest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	"github.com/cm4bench/cm4bench/usbboot"
)

// Control performs one control transfer. For IN transfers data receives
// the reply. timeout bounds how long the device may hold off (NAK).
func (b *Board) Control(ctx context.Context, s Setup, data []byte, timeout time.Duration) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.advance()
	at, addr := len(b.transcript), b.address
	b.note = ""
	n, err := b.control(ctx, s, data, timeout)
	r := Record{Kind: "control", Setup: s, Len: int(s.Length), N: n, Note: b.note}
	if err != nil {
		r.Err = err.Error()
	}
	b.insertRecord(at, addr, r)
	return n, err
}

func (b *Board) control(ctx context.Context, s Setup, data []byte, timeout time.Duration) (int, error) {
	if !b.present {
		return 0, ErrNoDevice
	}
	if int(s.Length) != len(data) {
		b.violate("control: wLength %d but %d-byte data stage", s.Length, len(data))
		return 0, ErrStall
	}
	switch {
	case s.RequestType == 0x80 && s.Request == 6:
		return b.getDescriptor(s, data)
	case s.RequestType == usbboot.ReqTypeOut && s.Request == usbboot.ReqVendor:
		return b.size(ctx, s, timeout)
	case s.RequestType == usbboot.ReqTypeIn && s.Request == usbboot.ReqVendor:
		return b.read(ctx, s, data, timeout)
	}
	b.violate("control: unexpected request type 0x%02x request %d", s.RequestType, s.Request)
	return 0, ErrStall
}

func (b *Board) getDescriptor(s Setup, data []byte) (int, error) {
	var d []byte
	switch s.Value >> 8 {
	case 1:
		d = b.deviceDescLocked()
	case 2:
		d = b.configDescLocked(b.numIfaces())
		if b.phase <= phROMStatus && b.cfg.SoC == usbboot.SoC2711 && b.cfgReads == 0 {
			// 2711 ROM quirk (rpi-eeprom#255): the first read claims a
			// 55-byte, 2-interface descriptor; the body is the 32-byte one.
			d = append([]byte(nil), d...)
			d[2], d[3], d[4] = 55, 0, 2
		}
		b.cfgReads++
	case 3:
		var err error
		if d, err = b.stringDescLocked(uint8(s.Value)); err != nil {
			return 0, err
		}
	default:
		return 0, ErrStall
	}
	return copy(data, d), nil
}

// size handles the vendor OUT "SIZE" transfer that arms a bulk receive.
func (b *Board) size(ctx context.Context, s Setup, timeout time.Duration) (int, error) {
	n := usbboot.SizeFromFields(s.Value, s.Index)
	if b.armed {
		b.violate("SIZE(%d) while %d of %d bulk bytes of %s are outstanding", n, b.armLen-b.armGot, b.armLen, b.armName)
		return 0, ErrStall
	}
	target := b.sizeTarget()
	if _, ok := b.hasFault(FaultSizeTimeout, target); ok {
		_ = b.clock.Sleep(ctx, timeout)
		return 0, ErrTimeout
	}
	if _, ok := b.hasFault(FaultStall, target); ok {
		return 0, ErrStall
	}
	switch b.phase {
	case phROMMsg:
		if n != usbboot.BootMessageSize {
			b.violate("ROM: SIZE(%d), want the %d-byte boot message first", n, usbboot.BootMessageSize)
			return 0, ErrStall
		}
		b.arm(int(n), "bootmsg", func(string) {
			l, _, _ := usbboot.ParseBootMessage(b.armBuf.Bytes())
			b.bootLen = l
			b.phase = phROMImage
		})
	case phROMImage:
		if n != b.bootLen {
			b.violate("ROM: SIZE(%d) but the boot message announced %d bytes", n, b.bootLen)
			return 0, ErrStall
		}
		if n == 0 {
			b.violate("ROM: empty second-stage image")
			return 0, ErrStall
		}
		name := b.BootcodeName()
		b.arm(int(n), name, func(sum string) {
			b.files = append(b.files, FileRecord{Command: usbboot.ReadFile, Name: name, Size: int64(n), Received: true, SHA256: sum})
			b.romLoads++
			b.phase = phROMStatus
		})
	case phROMStatus:
		b.violate("ROM: SIZE(%d) after the image; want READ(4) for the status", n)
		return 0, ErrStall
	case phSecond:
		return 0, b.reply(n)
	default:
		b.violate("SIZE(%d) while the device has nothing to receive", n)
		return 0, ErrStall
	}
	return 0, nil
}

func (b *Board) sizeTarget() string {
	switch b.phase {
	case phROMMsg:
		return "bootmsg"
	case phROMImage:
		return b.BootcodeName()
	case phSecond:
		if b.curReq != nil {
			return b.curReq.Name
		}
	}
	return ""
}

func (b *Board) arm(n int, name string, done func(sum string)) {
	b.armed, b.armLen, b.armGot, b.armName = true, n, 0, name
	b.armHash = sha256.New()
	b.armBuf = &bytes.Buffer{}
	b.onArmDone = done
}

// reply handles the host's answer to the current file-server request.
func (b *Board) reply(n uint32) error {
	if !b.awaiting || b.curReq == nil {
		b.violate("SIZE(%d) with no request pending", n)
		return ErrStall
	}
	req := *b.curReq
	st := b.script[b.stepIdx]
	b.awaiting = false
	switch {
	case st.raw && !b.readFile:
		b.files = append(b.files, FileRecord{Command: req.Command, Name: req.Name, Size: int64(n)})
		if req.Command == usbboot.ReadFile && n > 0 {
			b.arm(int(n), req.Name, func(sum string) {
				fr := &b.files[len(b.files)-1]
				fr.Received, fr.SHA256 = true, sum
				b.stepIdx++
			})
			return nil
		}
		if req.IsDone() {
			b.finish()
			return nil
		}
		b.stepIdx++
	case req.IsDone():
		if n != 0 {
			b.violate("Done (empty name): SIZE(%d), want 0", n)
		}
		b.finish()
	case strings.HasPrefix(req.Name, "*"):
		if n != 0 {
			b.violate("metadata %q: SIZE(%d), want 0", req.Name, n)
		}
		b.stepIdx++
	case req.Command == usbboot.GetFileSize:
		b.files = append(b.files, FileRecord{Command: usbboot.GetFileSize, Name: req.Name, Size: int64(n)})
		switch {
		case n > 0 && st.readIt:
			b.readFile = true
		case n == 0 && st.required:
			b.state = "halted: missing " + req.Name
			b.phase = phHalted // real firmware hangs ("Cannot open file mcb.bin")
		default:
			b.stepIdx++
		}
	case req.Command == usbboot.ReadFile:
		fr := &b.files[len(b.files)-1]
		if int64(n) != fr.Size {
			b.violate("ReadFile %s: SIZE(%d) but GetFileSize answered %d", req.Name, n, fr.Size)
			return ErrStall
		}
		b.readFile = false
		b.arm(int(n), req.Name, func(sum string) {
			fr := &b.files[len(b.files)-1]
			fr.Received, fr.SHA256 = true, sum
			b.fileDone(req.Name, sum)
		})
	}
	return nil
}

func (b *Board) fileDone(name, sum string) {
	b.stepIdx++
	if b.cfg.Mode != ModeRecovery {
		return
	}
	switch name {
	case "config.txt":
		b.recConf = bytes.Clone(b.armBuf.Bytes())
	case "pieeprom.sig":
		b.sigText = bytes.Clone(b.armBuf.Bytes())
		line, _, _ := bufio.NewReader(bytes.NewReader(b.armBuf.Bytes())).ReadLine()
		b.sigHash = strings.ToLower(strings.TrimSpace(string(line)))
	case "pieeprom.bin":
		b.eepromSum = sum
		b.eepromImg = bytes.Clone(b.armBuf.Bytes())
		wait := b.cfg.FlashTime
		if f, ok := b.hasFault(FaultSilentFlash, ""); ok {
			wait = f.Duration
			if wait == 0 {
				wait = 25 * time.Second
			}
		}
		b.busyUntil = b.clock.Now().Add(wait)
	}
}

func (b *Board) finish() {
	b.state = "done"
	b.phase = phHalted
	switch b.cfg.Mode {
	case ModeRecovery:
		// recovery.bin with pieeprom.bin stops after the update; the USB
		// device stays until power-off [inferred].
	default:
		b.detach("second stage done: booting the payload")
		b.schedule(2*time.Second, func() {
			b.newAddress()
			b.present = true
			if b.cfg.Mode == ModeGadget {
				b.vid, b.pid = 0x1d6b, 0x0104 // Linux composite gadget [inferred]
			} else {
				b.vid, b.pid = usbboot.VendorID, 0x0001 // VPU msd firmware
			}
			b.serialIdx = 0
			b.state = "mass-storage"
			b.phase = phHalted
			b.record(Record{Kind: "enumerate", Note: fmt.Sprintf("%04x:%04x mass storage", b.vid, b.pid)})
			b.signal()
		})
	}
}

// read handles the vendor IN "READ" transfer.
func (b *Board) read(ctx context.Context, s Setup, data []byte, timeout time.Duration) (int, error) {
	n := usbboot.SizeFromFields(s.Value, s.Index)
	if int(n) != len(data) {
		b.violate("READ: wValue/wIndex say %d bytes but wLength is %d", n, len(data))
		return 0, ErrStall
	}
	if b.armed {
		b.violate("READ(%d) while %d bulk bytes of %s are outstanding", n, b.armLen-b.armGot, b.armName)
		return 0, ErrStall
	}
	switch b.phase {
	case phROMStatus:
		if n != usbboot.StatusSize {
			b.violate("ROM: READ(%d), want the 4-byte status", n)
			return 0, ErrStall
		}
		status := uint32(0)
		if _, ok := b.hasFault(FaultRejectBootcode, ""); ok {
			status = 1
		}
		binary.LittleEndian.PutUint32(data, status)
		if status != 0 {
			b.phase = phROMMsg
			return 4, nil
		}
		lost := false
		if _, ok := b.hasFault(FaultStatusLost, ""); ok {
			lost = true
		}
		// The ROM starts the second stage: detach, re-attach ~1.5 s later.
		twice := false
		if _, ok := b.hasFault(FaultROMTwice, ""); ok {
			twice = true
		}
		b.detach("ROM starts the second stage")
		if _, ok := b.hasFault(FaultNoSecondStage, ""); ok {
			b.state = "gone"
			return 4, nil
		}
		if twice {
			b.schedule(1500*time.Millisecond, b.enumerateROM)
		} else {
			b.schedule(1500*time.Millisecond, b.enumerateSecond)
		}
		if lost {
			return 0, ErrIO
		}
		return 4, nil
	case phSecond:
		if n != usbboot.RequestSize {
			b.violate("second stage: READ(%d), want %d", n, usbboot.RequestSize)
			return 0, ErrStall
		}
		if b.awaiting {
			b.violate("READ before the host answered %s %q", b.curReq.Command, b.curReq.Name)
			return 0, ErrStall
		}
		if now := b.clock.Now(); now.Before(b.busyUntil) {
			if wait := b.busyUntil.Sub(now); wait > timeout {
				_ = b.clock.Sleep(ctx, timeout)
				return 0, ErrTimeout
			} else {
				_ = b.clock.Sleep(ctx, wait)
			}
		}
		var req usbboot.Request
		if b.readFile {
			req = usbboot.Request{Command: usbboot.ReadFile, Name: b.script[b.stepIdx].req.Name}
		} else {
			if b.stepIdx >= len(b.script) && b.cfg.Mode == ModeRecovery && !b.metaAdded {
				b.metaAdded = true
				b.script = append(b.script, b.metadataSteps()...)
			}
			if b.stepIdx >= len(b.script) {
				if b.cfg.Mode == ModeRecovery && b.cfg.DetachAfterUpdate && !b.cfg.ScriptOnly {
					b.state = "done"
					b.detach("recovery.bin finished: left the bus without Done")
					return 0, ErrNoDevice
				}
				b.script = append(b.script, b.doneStep())
			}
			req = b.script[b.stepIdx].req
		}
		rec, err := req.MarshalBinary()
		if err != nil {
			return 0, err
		}
		if b.cfg.ShortRequests {
			rec = rec[:max(usbboot.MinRequestSize, 4+len(req.Name)+1)]
		}
		copy(data, rec)
		b.note = fmt.Sprintf("%s %q", req.Command, req.Name)
		b.curReq = &req
		b.awaiting = true
		if req.Command == usbboot.Done && req.Name != "" {
			b.awaiting = false // no reply to a named Done
			b.finish()
		}
		return len(rec), nil
	case phHalted:
		_ = b.clock.Sleep(ctx, timeout)
		return 0, ErrTimeout
	}
	b.violate("READ(%d) in the ROM before the image was loaded", n)
	return 0, ErrStall
}

// BulkOut receives one bulk OUT transfer on endpoint ep.
func (b *Board) BulkOut(ctx context.Context, ep uint8, p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.advance()
	at, addr := len(b.transcript), b.address
	n, err := b.bulk(ctx, ep, p)
	r := Record{Kind: "bulk", EP: ep, Len: len(p), N: n}
	if err != nil {
		r.Err = err.Error()
	}
	b.insertRecord(at, addr, r)
	return n, err
}

func (b *Board) bulk(ctx context.Context, ep uint8, p []byte) (int, error) {
	if !b.present {
		return 0, ErrNoDevice
	}
	want := uint8(0x01)
	if b.numIfaces() == 2 {
		want = 0x03
	}
	if ep != want {
		b.violate("bulk OUT on endpoint 0x%02x, the vendor interface uses 0x%02x", ep, want)
		return 0, ErrStall
	}
	if !b.armed {
		b.violate("bulk OUT of %d bytes without a SIZE", len(p))
		return 0, ErrStall
	}
	if rest := b.armLen - b.armGot; len(p) > rest {
		b.violate("bulk OUT of %d bytes but only %d of %s remain", len(p), rest, b.armName)
		return 0, ErrStall
	}
	if b.phase <= phROMStatus && b.speed == usbboot.SpeedFull && b.cfg.SoC != usbboot.SoC2835 {
		_ = b.clock.Sleep(ctx, usbboot.BulkTimeout)
		return 0, ErrTimeout // maxpacket clamped 512 -> 64: nothing gets through
	}
	if _, ok := b.hasFault(FaultShortBulk, b.armName); ok {
		k := len(p) / 2
		b.take(p[:k])
		return k, nil
	}
	if _, ok := b.hasFault(FaultDisconnect, b.armName); ok {
		k := len(p) / 2
		b.take(p[:k])
		b.state = "unplugged"
		b.detach(fmt.Sprintf("unplugged during %s", b.armName))
		b.next = nil
		return k, ErrNoDevice
	}
	b.take(p)
	return len(p), nil
}

func (b *Board) take(p []byte) {
	b.armHash.Write(p)
	keep := 4096
	if b.armName == "pieeprom.bin" {
		keep = 2 << 20 // the whole image, for HashStamped
	}
	if b.armBuf.Len() < keep {
		b.armBuf.Write(p[:min(len(p), keep-b.armBuf.Len())])
	}
	b.armGot += len(p)
	if b.armGot == b.armLen {
		b.armed = false
		sum := hex.EncodeToString(b.armHash.Sum(nil))
		if b.onArmDone != nil {
			b.onArmDone(sum)
		}
	}
}
