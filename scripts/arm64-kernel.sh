#!/usr/bin/env bash
# Fetches Debian's arm64 kernel package (linux-image-*-arm64 of the arm64
# architecture) and unpacks it into a cache directory, for the QEMU
# end-to-end test of cm4agent (netboot/device/e2e). Prints the cache
# directory. Idempotent: a populated cache is reused.
#
#   scripts/arm64-kernel.sh [CACHE_DIR]   (default /var/cache/cm4bench-test/arm64-kernel)
#
# Layout of CACHE_DIR afterwards:
#   vmlinuz            the kernel (arm64 Image, gzip-compressed by Debian)
#   modules/           lib/modules/<version> of the same package
#   version            the kernel version string
set -euo pipefail
cache="${1:-${CM4BENCH_KERNEL_CACHE:-/var/cache/cm4bench-test/arm64-kernel}}"
if [ -s "$cache/vmlinuz" ] && [ -d "$cache/modules" ] && [ -s "$cache/version" ]; then
  echo "$cache"; exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "arm64-kernel: run as root (needs dpkg --add-architecture arm64 and apt-get update)" >&2
  exit 1
fi
apt_opts=(-o DPkg::Lock::Timeout=600 -qq)
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  dpkg --add-architecture arm64
  apt-get "${apt_opts[@]}" update >&2
fi
# The metapackage linux-image-arm64:arm64 depends on the current versioned
# kernel package; resolve it so we download exactly one package.
pkg=$(apt-cache depends linux-image-arm64:arm64 2>/dev/null | awk '/Depends: linux-image-[0-9].*-arm64/ {print $2; exit}')
if [ -z "$pkg" ]; then
  apt-get "${apt_opts[@]}" update >&2
  pkg=$(apt-cache depends linux-image-arm64:arm64 | awk '/Depends: linux-image-[0-9].*-arm64/ {print $2; exit}')
fi
[ -n "$pkg" ] || { echo "arm64-kernel: cannot resolve linux-image-arm64:arm64" >&2; exit 1; }
pkg=${pkg%:arm64}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
( cd "$tmp" && apt-get "${apt_opts[@]}" download "$pkg:arm64" >&2 )
deb=$(ls "$tmp"/*.deb | head -1)
mkdir -p "$tmp/x"
dpkg-deb -x "$deb" "$tmp/x"
vmlinuz=$(ls "$tmp"/x/boot/vmlinuz-* | head -1)
ver=${vmlinuz##*/vmlinuz-}
[ -d "$tmp/x/lib/modules/$ver" ] || [ -d "$tmp/x/usr/lib/modules/$ver" ] || { echo "arm64-kernel: no modules for $ver in $deb" >&2; exit 1; }
moddir="$tmp/x/lib/modules/$ver"; [ -d "$moddir" ] || moddir="$tmp/x/usr/lib/modules/$ver"
mkdir -p "$cache.new"
rm -rf "$cache.new"/*
cp "$vmlinuz" "$cache.new/vmlinuz"
cp -a "$moddir" "$cache.new/modules"
echo "$ver" > "$cache.new/version"
rm -rf "$cache"
mv "$cache.new" "$cache"
echo "$cache"
