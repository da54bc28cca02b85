#!/bin/sh
# Install what the VM tests and the dev cluster need (idempotent; quick when everything is there):
# QEMU, Debian's kernel + matching headers (the build tree for chital.ko), a static busybox for the
# initramfs, pahole (BTF for module builds against 6.12 headers), strace (benchmark), gcc/make.
set -eu
PKGS="qemu-system-x86 linux-image-amd64 linux-headers-amd64 busybox-static dwarves strace gcc make libc6-dev file cpio kmod"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -z "$missing" ]; then
  echo "install-vm-deps: all present ($PKGS)"
  exit 0
fi
echo "install-vm-deps: installing:$missing"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
$SUDO apt-get update -q
# shellcheck disable=SC2086  # word splitting of the package list is intended
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends $missing
