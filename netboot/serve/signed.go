package serve

import (
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/cm4bench/cm4bench/eeprom"
	"github.com/cm4bench/cm4bench/internal/atomicfile"
	"github.com/cm4bench/cm4bench/netboot/bootfs"
)

// SignedBoot signs the netboot files for boards in secure-boot mode.
type SignedBoot struct {
	Signer    crypto.Signer  // a PEM key, a PKCS#11 token or an HSM command
	PublicKey *rsa.PublicKey // the key in the boards' OTP (nil: the signer's)
	Timestamp int64          // ts: of boot.sig
}

// fileSigner is a signer that signs a file rather than a digest (an HSM
// wrapper hashes the file itself).
type fileSigner interface {
	ForFile(path string) crypto.Signer
}

// signedBootFile reports whether a TFTP root file belongs in boot.img:
// the firmware, device trees, kernel, initramfs and the two text files
// (and overlays/). Backups, per-board folders and the EEPROM files stay
// out.
func signedBootFile(rel string) bool {
	name := filepath.Base(rel)
	if dir := filepath.Dir(rel); dir != "." {
		return dir == "overlays" && strings.HasSuffix(name, ".dtbo") || rel == "overlays/overlay_map.dtb"
	}
	switch {
	case name == "config.txt", name == "cmdline.txt", name == "initrd.img":
		return true
	case strings.Contains(name, ".orig-"):
		return false
	case strings.HasPrefix(name, "start") && strings.HasSuffix(name, ".elf"),
		strings.HasPrefix(name, "fixup") && strings.HasSuffix(name, ".dat"),
		strings.HasPrefix(name, "kernel") && strings.HasSuffix(name, ".img"),
		strings.HasSuffix(name, ".dtb"):
		return true
	}
	return false
}

// BuildSignedBoot packs the netboot files of root (start4.elf, fixup4.dat,
// the device trees, kernel, initrd.img with the agent, config.txt and
// cmdline.txt) into root/boot.img, the FAT ramdisk a secure-boot
// bootloader loads, and signs it as root/boot.sig. boot.sig is written
// first and boot.img last, each atomically, so a cut run never leaves a
// boot.img whose signature looks valid but is stale.
func BuildSignedBoot(root string, sb SignedBoot) ([]FileAction, error) {
	fail := func(err error) ([]FileAction, error) { return nil, fmt.Errorf("serve: signed boot.img: %w", err) }
	if sb.Signer == nil {
		return fail(errors.New("no signing key"))
	}
	pub := sb.PublicKey
	if pub == nil {
		k, err := eeprom.CheckSigningKey(sb.Signer.Public())
		if err != nil {
			return fail(err)
		}
		pub = k
	}
	files, err := bootfs.CollectDir(root, func(rel string, isDir bool) bool {
		if isDir {
			return rel == "overlays"
		}
		return signedBootFile(rel)
	})
	if err != nil {
		return fail(err)
	}
	have := map[string]bool{}
	for _, f := range files {
		have[f.Path] = true
	}
	for _, need := range []string{"start4.elf", "fixup4.dat", "config.txt", "cmdline.txt", "initrd.img"} {
		if !have[need] {
			return fail(fmt.Errorf("the TFTP root has no %s to pack (prepare it first)", need))
		}
	}
	tmp := filepath.Join(root, ".boot.img.partial")
	defer os.Remove(tmp)
	if _, err := bootfs.BuildRamdisk(tmp, files); err != nil {
		return fail(err)
	}
	img, err := os.ReadFile(tmp)
	if err != nil {
		return fail(err)
	}
	sum := sha256.Sum256(img)
	s := sb.Signer
	if fsg, ok := s.(fileSigner); ok {
		s = fsg.ForFile(tmp)
	}
	sig, err := eeprom.SignedDigest(sum, sb.Timestamp, 0, s, pub)
	if err != nil {
		return fail(err)
	}
	if err := atomicfile.WriteFile(filepath.Join(root, "boot.sig"), sig, 0o644); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp, filepath.Join(root, "boot.img")); err != nil {
		return fail(err)
	}
	ss := sha256.Sum256(sig)
	return []FileAction{
		{Name: "boot.sig", Action: ActionWritten, SHA256: hex.EncodeToString(ss[:])},
		{Name: "boot.img", Action: ActionWritten, SHA256: hex.EncodeToString(sum[:])},
	}, nil
}
