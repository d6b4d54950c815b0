package simbench_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cm4bench/cm4bench/eeprom"
	"github.com/cm4bench/cm4bench/internal/repotest"
	"github.com/cm4bench/cm4bench/netboot/dhcp"
	"github.com/cm4bench/cm4bench/netboot/serve"
	"github.com/cm4bench/cm4bench/netboot/sim/nettest"
	"github.com/cm4bench/cm4bench/netboot/sim/pisim"
	"github.com/cm4bench/cm4bench/netboot/tftp"
)

// TestLockedBoardNetbootsSigned: the TFTP root gets a boot.img signed
// with upstream's test key (serve.BuildSignedBoot, what `netboot serve
// --signed` runs). Over cm4bench's own DHCP and TFTP servers, a board
// locked to that key loads boot.img, checks boot.sig and boots the kernel
// and initramfs inside it; a board locked to another key refuses it and
// never boots; an unlocked board netboots the plain files as before.
func TestLockedBoardNetbootsSigned(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b, root := benchWithTFTPRoot(t, ctx, 3, 8<<20)
	pemKey, err := os.ReadFile(repotest.Shared(t, "secure-boot-vectors/private.pem"))
	if err != nil {
		t.Fatal(err)
	}
	key, err := eeprom.ParsePrivateKey(pemKey)
	if err != nil {
		t.Fatal(err)
	}
	acts, err := serve.BuildSignedBoot(root, serve.SignedBoot{Signer: key, Timestamp: 1700000000})
	if err != nil || len(acts) != 2 {
		t.Fatalf("BuildSignedBoot: %v %v", acts, err)
	}
	other, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	pol := &nettest.Switch{}
	ds := &dhcp.Server{Policy: pol}
	ts := &tftp.Server{Root: root, Policy: pol}
	startServers(t, ctx, b, ds, ts)

	locks := []*pisim.Locked{{Key: &key.PublicKey}, {Key: &other.PublicKey}, nil}
	outs := make([]*pisim.Outcome, len(b.Devices))
	errs := make([]error, len(b.Devices))
	var wg sync.WaitGroup
	for i, d := range b.Devices {
		wg.Add(1)
		go func() {
			defer wg.Done()
			bl := &pisim.Bootloader{Board: d.Board, Link: d.Link(), Locked: locks[i],
				EEPROM: pisim.EEPROM{BootOrder: 0xe2, DHCPTimeout: 5 * time.Second, DHCPReqTimeout: time.Second}, ModeDelay: 10 * time.Millisecond}
			bctx, bcancel := context.WithTimeout(ctx, 60*time.Second)
			defer bcancel()
			outs[i], errs[i] = bl.Boot(bctx)
		}()
	}
	wg.Wait()
	kernel, _ := os.ReadFile(filepath.Join(root, "kernel8.img"))
	ks := sha256.Sum256(kernel)
	names := func(o *pisim.Outcome) string {
		var n []string
		for _, f := range o.Files {
			n = append(n, f.Name)
		}
		return strings.Join(n, " ")
	}
	// locked to our key: boot.sig and boot.img only, the kernel from inside
	if o, err := outs[0], errs[0]; err != nil || o.Mode != "network" || !o.Signed || o.KernelSHA != hex.EncodeToString(ks[:]) ||
		pisim.KernelArg(o.Cmdline, "cm4bench.server") != "http://10.61.0.1:5000" || o.Config.Initramfs != "initrd.img" {
		t.Errorf("locked board: %v, outcome %+v", err, o)
	} else if n := names(o); strings.Contains(n, "start4.elf") || strings.Contains(n, "kernel8.img") || !strings.HasSuffix(n, "boot.sig "+o.Prefix+"/boot.img") {
		t.Errorf("locked board fetched %q; want boot.sig then boot.img and nothing loose", n)
	}
	// locked to another key: refused, no boot
	if o, err := outs[1], errs[1]; !errors.Is(err, pisim.ErrNoBootMedia) || o.Signed || !strings.Contains(strings.Join(o.Attempts, " "), "signature") {
		t.Errorf("board locked to another key: %v, attempts %q", err, o.Attempts)
	}
	// unlocked: the plain files
	if o, err := outs[2], errs[2]; err != nil || o.Signed || !strings.Contains(names(o), "start4.elf") || o.KernelSHA != hex.EncodeToString(ks[:]) {
		t.Errorf("unlocked board: %v, files %q", err, names(o))
	}

	// a boot.img changed after signing is refused by the locked board too
	f, err := os.OpenFile(filepath.Join(root, "boot.img"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("tampered"), 4096)
	f.Close()
	d := b.Devices[0]
	bl := &pisim.Bootloader{Board: d.Board, Link: d.Link(), Locked: locks[0],
		EEPROM: pisim.EEPROM{BootOrder: 0xe2, DHCPTimeout: 5 * time.Second, DHCPReqTimeout: time.Second}, ModeDelay: 10 * time.Millisecond}
	bctx, bcancel := context.WithTimeout(ctx, 60*time.Second)
	defer bcancel()
	if o, err := bl.Boot(bctx); !errors.Is(err, pisim.ErrNoBootMedia) || !strings.Contains(strings.Join(o.Attempts, " "), "sha256") {
		t.Errorf("tampered boot.img: %v, attempts %q", err, o.Attempts)
	}
}
