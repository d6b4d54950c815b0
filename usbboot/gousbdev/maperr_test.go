//go:build cgo

package gousbdev

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/google/gousb"

	"github.com/cm4bench/cm4bench/usbboot"
)

// The usbboot state machine decides "keep waiting" versus "device gone"
// from these sentinels, so every libusb code it relies on must map.
func TestMapErr(t *testing.T) {
	expired, cancel := context.WithTimeout(context.Background(), -time.Second)
	defer cancel()
	for _, tt := range []struct {
		ctx  context.Context
		in   error
		want error
	}{
		{context.Background(), gousb.ErrorTimeout, usbboot.ErrTimeout},
		{context.Background(), gousb.ErrorNoDevice, usbboot.ErrDisconnected},
		{context.Background(), gousb.ErrorNotFound, usbboot.ErrDisconnected},
		{context.Background(), gousb.ErrorPipe, usbboot.ErrStall},
		{context.Background(), gousb.ErrorAccess, usbboot.ErrAccess},
		{context.Background(), gousb.ErrorIO, usbboot.ErrIO},
		{context.Background(), gousb.TransferTimedOut, usbboot.ErrTimeout},
		{context.Background(), gousb.TransferNoDevice, usbboot.ErrDisconnected},
		{context.Background(), gousb.TransferStall, usbboot.ErrStall},
		{context.Background(), gousb.TransferError, usbboot.ErrIO},
		{expired, gousb.TransferCancelled, usbboot.ErrTimeout},
		{context.Background(), fmt.Errorf("wrapped: %w", gousb.ErrorPipe), usbboot.ErrStall},
	} {
		got := mapErr(tt.ctx, tt.in)
		if !errors.Is(got, tt.want) || !errors.Is(got, tt.in) {
			t.Errorf("mapErr(%v) = %v, want errors.Is %v and the original", tt.in, got, tt.want)
		}
	}
	if got := mapErr(context.Background(), gousb.TransferCancelled); errors.Is(got, usbboot.ErrTimeout) {
		t.Errorf("a cancel without a deadline mapped to a timeout: %v", got)
	}
}
