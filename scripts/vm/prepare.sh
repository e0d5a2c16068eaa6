#!/usr/bin/env bash
# Builds (or reuses) what `npm run test:vm` boots, all from Debian's archive through apt:
#   - qemu-system-x86_64 10.0.2 (bookworm-backports source) built with libcbor so `virtio-nsm-pci` exists
#     (Debian's own QEMU packages lack it), plus the firmware it loads (seabios, qemu-system-data);
#   - the bookworm-backports 6.12 kernel and the modules the guest loads (vsock loopback, nsm, 9p);
#   - busybox (static) for the guest's initramfs.
# Everything lands in a cache directory outside the clone ($ENCLAVE_VM_CACHE, default
# /var/cache/enclave-runtime-vm), keyed by package versions and the build recipe's hash, so a second run does
# no download and no build. Prints KEY=VALUE lines (QEMU, FIRMWARE, KERNEL, MODULES, BUSYBOX) on stdout;
# progress goes to stderr. Needs root (apt).
# `prepare.sh --check` builds nothing: it prints why this machine cannot run the VM tests and exits 1, or prints
# nothing and exits 0 (.ci/run asks it before `npm run test:vm`).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
here=$(cd "$(dirname "$0")" && pwd)
cache=${ENCLAVE_VM_CACHE:-/var/cache/enclave-runtime-vm}
say() { echo "vm: $*" >&2; }
check=false
[ "${1:-}" = "--check" ] && check=true
cannot() {
  if $check; then echo "$*"; else say "cannot run: $*"; fi
  exit 1
}
[ "$(id -u)" = 0 ] || cannot "needs root (apt-get)"
[ "$(uname -m)" = x86_64 ] || cannot "the recipe is for x86_64 hosts, this is $(uname -m)"
command -v apt-get >/dev/null || cannot "no apt-get: the packages come from Debian's archive"
# shellcheck disable=SC1091
codename=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
[ "$codename" = bookworm ] || cannot "the recipe uses bookworm-backports; this system is '${codename:-unknown}'"

mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9

bash "$here/apt-backports.sh"
# The package lists are refreshed once a day at most, or when the backports suite is not in them yet.
lists_stamp="$cache/.apt-updated"
if [ -z "$(find "$lists_stamp" -mmin -1440 2>/dev/null)" ] || ! apt-cache policy | grep bookworm-backports >/dev/null; then
  updated=false
  for attempt in 1 2 3; do apt-get update -qq >&2 && { updated=true; break; } || sleep $((attempt * 5)); done
  $updated || cannot "apt-get update failed: Debian's archive is not reachable"
  touch "$lists_stamp"
fi

candidate() { # PACKAGE -> its version in bookworm-backports
  apt-cache madison "$1" | awk -F'|' -v p="$1" '$3 ~ /bookworm-backports/ && !done {gsub(/ /, "", $2); print $2; done=1}'
}

meta_version=$(candidate linux-image-amd64)
[ -n "$meta_version" ] || cannot "linux-image-amd64 is not in bookworm-backports"
qemu_version=$(apt-cache showsrc qemu | awk '/^Version:/ {print $2}' | grep '^1:10\.' | sort -V | tail -1 || true)
[ -n "$qemu_version" ] || cannot "no QEMU 10 source package in bookworm-backports"
$check && exit 0

work=$(mktemp -d "$cache/.work.XXXXXX")
trap 'rm -rf "$work"' EXIT

fetch_deb() { # PACKAGE[=VERSION] DIR: download one .deb and unpack it into DIR (nothing is installed)
  local dir=$2
  mkdir -p "$dir"
  (cd "$work" && rm -f ./*.deb && apt-get download -qq "$1" >&2 && dpkg-deb -x ./*.deb "$dir" && rm -f ./*.deb)
}

# ---- the guest kernel and its modules -------------------------------------------------------------------
image=$(apt-cache show "linux-image-amd64=$meta_version" | awk -F': ' '/^Depends:/ && !done {split($2, d, " "); print d[1]; done=1}')
kernel_dir="$cache/kernel-$image-$meta_version"
if [ ! -f "$kernel_dir/ready" ]; then
  say "fetching $image ($meta_version)"
  rm -rf "$kernel_dir"
  fetch_deb "$image=$meta_version" "$work/kernel"
  release=$(ls "$work/kernel/lib/modules")
  mkdir -p "$kernel_dir/modules"
  cp "$work/kernel/boot/vmlinuz-$release" "$kernel_dir/vmlinuz"
  # Load order matters (no modules.dep in the initramfs): dependencies first.
  for module in net/vmw_vsock/vsock net/vmw_vsock/vmw_vsock_virtio_transport_common net/vmw_vsock/vsock_loopback \
      drivers/misc/nsm fs/netfs/netfs net/9p/9pnet net/9p/9pnet_virtio fs/9p/9p; do
    src="$work/kernel/lib/modules/$release/kernel/$module.ko"
    name=$(basename "$module")
    if [ -f "$src.xz" ]; then xz -dc "$src.xz" >"$kernel_dir/modules/$name.ko"; else cp "$src" "$kernel_dir/modules/$name.ko"; fi
    echo "$name" >>"$kernel_dir/modules/order"
  done
  rm -rf "$work/kernel"
  touch "$kernel_dir/ready"
fi

# ---- busybox for the initramfs ---------------------------------------------------------------------------
busybox_version=$(apt-cache policy busybox-static | awk '/Candidate:/ {print $2}')
busybox_dir="$cache/busybox-$busybox_version"
if [ ! -f "$busybox_dir/ready" ]; then
  say "fetching busybox-static $busybox_version"
  rm -rf "$busybox_dir"
  fetch_deb "busybox-static=$busybox_version" "$work/busybox"
  mkdir -p "$busybox_dir"
  cp "$work/busybox/bin/busybox" "$busybox_dir/busybox"
  touch "$busybox_dir/ready"
fi

# ---- QEMU with the emulated Nitro Secure Module -----------------------------------------------------------
# Keyed by the source version and the build recipe, so a change to either builds afresh.
qemu_dir="$cache/qemu-${qemu_version#1:}-$(sha256sum "$here/build-qemu.sh" | cut -c1-12)"
if [ ! -f "$qemu_dir/ready" ]; then
  rm -rf "$qemu_dir"
  bash "$here/build-qemu.sh" "$qemu_version" "$work" "$qemu_dir"
  touch "$qemu_dir/ready"
fi

# Older entries of the same kind are dropped so the cache does not grow with each new package version.
for old in "$cache"/kernel-* "$cache"/busybox-* "$cache"/qemu-*; do
  case "$old" in "$kernel_dir" | "$busybox_dir" | "$qemu_dir") ;; *) rm -rf "$old" ;; esac
done

echo "QEMU=$qemu_dir/qemu-system-x86_64"
echo "FIRMWARE=$qemu_dir/fw"
echo "KERNEL=$kernel_dir/vmlinuz"
echo "MODULES=$kernel_dir/modules"
echo "BUSYBOX=$busybox_dir/busybox"
