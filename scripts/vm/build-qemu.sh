#!/usr/bin/env bash
# Builds qemu-system-x86_64 from Debian's QEMU source (bookworm-backports) with libcbor and CONFIG_VIRTIO_NSM, so
# the `virtio-nsm-pci` device (the emulated Nitro Secure Module) exists, plus the firmware it loads.
# Usage: build-qemu.sh SOURCE_VERSION WORK_DIR OUT_DIR. prepare.sh calls it and caches OUT_DIR keyed by the source
# version and the hash of this file. Needs root (apt-get install of the build dependencies).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
qemu_version=$1 work=$2 out=$3
say() { echo "vm: $*" >&2; }
apt_install() { apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=600 "$@" >&2; }
fetch_deb() { # PACKAGE DIR: download one .deb and unpack it into DIR (nothing is installed)
  mkdir -p "$2"
  (cd "$work" && rm -f ./*.deb && apt-get download -qq "$1" >&2 && dpkg-deb -x ./*.deb "$2" && rm -f ./*.deb)
}
rm -rf "$out"

say "installing QEMU's build dependencies"
deps=(build-essential ninja-build pkgconf libglib2.0-dev libcbor-dev libfdt-dev libattr1-dev flex bison
      python3-venv python3-pycotap xz-utils)
missing=()
for p in "${deps[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then
  apt_install "${missing[@]}" || {
    # libglib2.0-dev wants a libpcre2-dev that matches the installed libpcre2: hold the family at one version.
    pcre=$(dpkg-query -W -f='${Version}' libpcre2-8-0)
    apt_install "${missing[@]}" "libpcre2-dev=$pcre" "libpcre2-8-0=$pcre" "libpcre2-16-0=$pcre" \
      "libpcre2-32-0=$pcre" "libpcre2-posix3=$pcre"
  }
fi
# QEMU 10 needs a newer meson than bookworm's.
if ! dpkg --compare-versions "$(dpkg-query -W -f='${Version}' meson 2>/dev/null || echo 0)" ge 1.5; then
  apt_install -t bookworm-backports meson
fi

say "fetching QEMU $qemu_version source"
orig="qemu_${qemu_version#1:}"
orig="${orig%%-*}.orig.tar.xz"
want=$(apt-cache showsrc qemu |
  awk -v f="$orig" '/^Checksums-Sha256:/ {on=1; next} /^[^ ]/ {on=0} on && $3 == f && !done {print $1; done=1}')
# A mirror may lack the .dsc or .debian.tar.xz while it has the upstream tarball, the only part used here.
(cd "$work" && apt-get source -qq --download-only "qemu=$qemu_version" >"$work/source.log" 2>&1) || true
[ -f "$work/$orig" ] || { say "could not download $orig"; exit 3; }
got=$(sha256sum "$work/$orig" | cut -d' ' -f1)
[ -n "$want" ] && [ "$got" = "$want" ] || { say "$orig: sha256 $got, the Sources index says '$want'"; exit 3; }
tar -C "$work" -xJf "$work/$orig"
src=$(find "$work" -maxdepth 1 -type d -name "qemu-*" -print -quit)
# The +ds tarball has no firmware blobs to unpack.
sed -i 's/unpack_edk2_blobs = bzip2.found()/unpack_edk2_blobs = false/' "$src/meson.build"
# Only the devices the guest uses. Nothing selects VIRTIO_NSM but the nitro-enclave machine, so it is named here.
cat >"$src/configs/devices/x86_64-softmmu/nsm.mak" <<'MAK'
CONFIG_I440FX=y
CONFIG_VIRTIO_PCI=y
CONFIG_VIRTIO_NSM=y
CONFIG_VIRTIO_9P=y
CONFIG_VIRTIO_RNG=y
CONFIG_SERIAL_ISA=y
MAK
say "building QEMU (a few minutes)"
mkdir -p "$src/build"
(cd "$src/build" && ../configure --python=/usr/bin/python3 --target-list=x86_64-softmmu \
    --without-default-features --without-default-devices --with-devices-x86_64=nsm \
    --enable-tcg --enable-libcbor --enable-virtfs --enable-attr --disable-docs --disable-tools \
    --disable-werror --disable-install-blobs >"$work/configure.log" 2>&1) || { tail -40 "$work/configure.log" >&2; exit 1; }
(cd "$src/build" && ninja qemu-system-x86_64 >"$work/ninja.log" 2>&1) || { tail -40 "$work/ninja.log" >&2; exit 1; }
mkdir -p "$out/fw"
strip -o "$out/qemu-system-x86_64" "$src/build/qemu-system-x86_64"
rm -rf "$src"

say "fetching firmware (seabios, qemu-system-data)"
fetch_deb seabios "$work/seabios"
fetch_deb "qemu-system-data/bookworm-backports" "$work/qemu-data"
cp "$work/seabios/usr/share/seabios/bios-256k.bin" "$out/fw/"
for f in linuxboot_dma.bin kvmvapic.bin; do cp "$(find "$work/qemu-data" -name "$f" -print -quit)" "$out/fw/"; done
"$out/qemu-system-x86_64" -device help 2>/dev/null | grep virtio-nsm-pci >/dev/null || { say "the built QEMU has no virtio-nsm-pci"; exit 1; }
