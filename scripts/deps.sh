#!/usr/bin/env bash
# Installs the Debian packages cm4bench's build, tests and demo need, when
# they are missing. Run as root (make run / make test / .ci/run call it).
# Each package is listed once here, with what it is for.
set -euo pipefail

pkgs=(
  pkg-config          # cgo: find libusb
  gcc                 # cgo, and the libusb-1.0 stand-in (make libusbfake)
  libusb-1.0-0-dev    # cgo: usbboot/gousbdev and the libusb-ABI fake
  iproute2            # network namespaces and veth pairs for the bench tests
  busybox             # netboot tests: udhcpc as a Pi-like DHCP client
  isc-dhcp-client     # netboot tests: dhclient as a second DHCP client
  atftp               # netboot tests/bench: TFTP client sending the Pi's exact RRQ (tsize 0, blksize 1024)
  dnsmasq-base        # netboot tests/bench: rival DHCP server and TFTP/DHCP performance peer (no service unit)
  curl                # netboot tests: TFTP/HTTP client
  chromium            # api/ui: headless browser test of the dashboard (chromedp)
  qemu-system-arm     # agent e2e: qemu-system-aarch64 boots Debian's arm64 kernel with our initramfs
  zstd                # api tests: real zstd for compressed images and backups
  xz-utils            # api tests: real xz for .img.xz images
  nginx-light         # api bench: nginx serving the same image as the peer to beat (own config, never the service)
  tshark              # netboot tests: reads the pcap of serve --capture (the outside oracle for the format)
  dosfstools          # recipes: mkfs.fat makes the test images' boot partitions, fsck.fat -n checks what the agent wrote
  mtools              # recipes: mdir/mtype read the per-device files back from each board's eMMC
  cups                # labels: the tests run their own cupsd (own config, spool and port; never the service)
  printer-driver-cups-pdf # labels: the cups-pdf printer the label test prints to
  poppler-utils       # labels: pdftotext/pdftoppm read the printed PDF back (and CUPS's pdftops filter)
  zbar-tools          # labels: zbarimg decodes the printed QR code
  softhsm2            # secure boot: a real PKCS#11 token the signing tests use
  opensc              # secure boot: pkcs11-tool signs with the same token (the outside oracle)
  man-db              # cli: man -l renders the generated man pages in their test; man -w finds the packaged ones
  systemd             # .deb: systemd-analyze verify/security check the service unit (no service is started)
  util-linux          # .deb: setpriv runs serve as an unprivileged user with the unit's capabilities
  passwd              # .deb: the package's postinst creates the cm4bench user (useradd)
)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "deps: missing Debian packages: ${missing[*]}" >&2
  echo "deps: run as root, or: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
# Never let a package start its service on this machine (dnsmasq, nginx, cups):
# tests start their own instances, bound to their own namespaces.
cleanup() { rm -f /usr/sbin/policy-rc.d; }
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  trap cleanup EXIT
fi
if [ -z "${DEPS_NO_UPDATE:-}" ]; then apt-get update -qq; fi
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
