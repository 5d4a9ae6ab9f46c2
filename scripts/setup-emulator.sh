#!/usr/bin/env bash
# Installs the emulated-enclave tools, idempotently, cached outside the repository in
# $NITRO_CACHE/emulator (default ~/.cache/nitro-rs/emulator):
#
#   qemu/bin/qemu-system-x86_64   QEMU 10.0.2 with the `nitro-enclave` machine (EIF loader, PCRs,
#                                 emulated NSM), built from Debian's `qemu` source package
#                                 (bookworm-backports orig tarball, sha256-checked) with libcbor
#                                 and gnutls; Debian's binary package lacks that machine.
#   firmware/usr/share/{seabios,qemu}   bios-microvm.bin (Debian `seabios`) and the option ROMs
#                                 (Debian `qemu-system-data`, e.g. linuxboot_dma.bin).
#   vhost-device-vsock/bin/vhost-device-vsock   `cargo install --locked vhost-device-vsock 0.3.0`.
#   busybox/busybox               Debian's `busybox-static`: a shell and tools for test images.
#   kernel/                       the newest Debian 6.12 cloud kernel from bookworm-backports
#                                 (`boot/vmlinuz-*`, the full `lib/modules/<release>` tree, and
#                                 `modules/*.ko`: the modules an enclave init loads, decompressed).
#   env                           KEY=VALUE lines with the resolved paths (read by
#                                 `nitro_emulator::Tools`; documented there and below).
#
# Each component has its own stamp, so an interrupted run resumes and a complete cache is a no-op.
# Runs from scripts/install.sh; run it directly to (re)install the emulator only. Set
# NITRO_EMULATOR_REBUILD=1 to discard the cache and start over.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

# --- pinned inputs ---------------------------------------------------------------------------
QEMU_VERSION=10.0.2
QEMU_ORIG=qemu_${QEMU_VERSION}+ds.orig.tar.xz
QEMU_ORIG_SHA256=0901da33844a331bf8b3602b9c1fbd178e60b737c8e3ade678255bd090c9b9f1
MESON_VERSION=1.5.2
PYCOTAP_VERSION=1.3.1
VHOST_DEVICE_VSOCK_VERSION=0.3.0
KERNEL_SERIES=6.12
# The modules an enclave init loads, in load order (virtio_mmio first: the nitro-enclave machine
# puts its devices on virtio-mmio; vsock before its transports; nbd and nsm have no dependencies),
# then the legacy iptables NAT `REDIRECT` with the owner and port matches, which the stock enclave
# kernel has built in (the supervisor's transparent egress), each after its dependencies.
KERNEL_MODULES="virtio_mmio vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport nbd nsm \
libcrc32c nf_defrag_ipv4 nf_defrag_ipv6 nf_conntrack nf_nat x_tables ip_tables iptable_nat \
ip6_tables ip6table_nat xt_tcpudp xt_owner xt_REDIRECT"
# Recipe versions: bump one when its component's recipe changes (invalidates only that one).
QEMU_RECIPE=2
FW_RECIPE=2
BB_RECIPE=2
VHOST_RECIPE=2
KERNEL_RECIPE=2
ENV_FORMAT=1

EMU="$NITRO_CACHE/emulator"
mkdir -p "$EMU"

# One set-up at a time (several engineers / test runs may call install.sh concurrently).
exec 9>"$EMU/.lock"
flock 9

if [ "${NITRO_EMULATOR_REBUILD:-0}" = 1 ]; then
    log "NITRO_EMULATOR_REBUILD=1: discarding $EMU"
    find "$EMU" -mindepth 1 -maxdepth 1 ! -name .lock ! -name downloads -exec rm -rf {} +
fi

# Build inputs and the runtime libraries of the QEMU binary (checked every run: a restored cache on
# a fresh machine still needs the shared libraries; apt_install is a no-op when all are present).
apt_install \
    libcbor-dev libgnutls28-dev libglib2.0-dev libpixman-1-dev zlib1g-dev libfdt-dev \
    ninja-build python3-venv flex bison pkgconf dpkg-dev bzip2 xz-utils binutils gcc make curl

stamp_ok() { [ -f "$1/.stamp" ] && [ "$(cat "$1/.stamp")" = "$2" ]; }

# `apt-get download` into the cache; as root, skip apt's drop to the `_apt` user (it cannot write
# into a private cache directory and would only warn about it).
apt_download() {
    local opts=()
    [ "$(id -u)" -eq 0 ] && opts=(-o APT::Sandbox::User=root)
    apt-get download -qq "${opts[@]}" "$@" >/dev/null
}

# --- QEMU ------------------------------------------------------------------------------------
QEMU_DIR="$EMU/qemu"
QEMU_STAMP="recipe=$QEMU_RECIPE qemu=$QEMU_VERSION sha256=$QEMU_ORIG_SHA256 meson=$MESON_VERSION"
QEMU_BIN="$QEMU_DIR/bin/qemu-system-x86_64"

fetch_qemu_orig() {
    local dl="$EMU/downloads" f
    mkdir -p "$dl"
    f="$dl/$QEMU_ORIG"
    if [ -f "$f" ] && echo "$QEMU_ORIG_SHA256  $f" | sha256sum -c --status; then return 0; fi
    rm -f "$f"
    # Debian's own source package from bookworm-backports (install.sh adds its deb-src). Only the
    # orig tarball is needed; the .dsc/.debian.tar.xz may be missing on the mirror, so apt's exit
    # status is not trusted: the checksum below is.
    apt_update_once
    (cd "$dl" && apt-get source --download-only -qq qemu >/dev/null 2>&1) || true
    if [ ! -f "$f" ]; then
        # The backports version moved on: fetch the pinned orig tarball from the same mirror's pool.
        local mirror
        mirror=$(apt-get source --print-uris qemu 2>/dev/null | grep -o "'[^']*/pool/main/q/qemu/" | head -n1 | tr -d "'")
        [ -n "$mirror" ] || mirror=http://deb.debian.org/debian/pool/main/q/qemu/
        log "fetching $mirror$QEMU_ORIG"
        curl -fsSL --retry 3 -o "$f.part" "$mirror${QEMU_ORIG//+/%2b}" && mv "$f.part" "$f"
    fi
    rm -f "$dl"/qemu_*.dsc "$dl"/qemu_*.debian.tar.xz
    echo "$QEMU_ORIG_SHA256  $f" | sha256sum -c --status \
        || die "$QEMU_ORIG: sha256 mismatch (expected $QEMU_ORIG_SHA256)"
}

build_qemu() {
    fetch_qemu_orig
    local venv="$EMU/meson-venv"
    if ! "$venv/bin/meson" --version 2>/dev/null | grep -qx "$MESON_VERSION"; then
        log "meson $MESON_VERSION in $venv (bookworm's meson 1.0.1 is too old for QEMU 10)"
        rm -rf "$venv"
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet "meson==$MESON_VERSION" "pycotap==$PYCOTAP_VERSION"
    fi
    local work="$EMU/build"
    rm -rf "$work" && mkdir -p "$work"
    log "unpacking $QEMU_ORIG"
    tar -xJf "$EMU/downloads/$QEMU_ORIG" -C "$work"
    local src="$work/qemu-$QEMU_VERSION"
    # The +ds tarball strips pc-bios/*.bz2 but meson expects them when bzip2 is installed.
    local f
    for f in edk2-{aarch64-code,arm-code,arm-vars,riscv-code,riscv-vars,i386-code,i386-secure-code,i386-vars,x86_64-code,x86_64-secure-code,loongarch64-code,loongarch64-vars}.fd; do
        [ -e "$src/pc-bios/$f.bz2" ] || printf '' | bzip2 >"$src/pc-bios/$f.bz2"
    done
    # Only the nitro-enclave machine and what it selects (microvm, virtio-mmio, vhost-user-vsock,
    # virtio-nsm, ISA serial, ...): ~20% fewer compile steps than all x86 devices.
    printf 'CONFIG_NITRO_ENCLAVE=y\n' >"$src/configs/devices/x86_64-softmmu/nitro.mak"
    mkdir -p "$src/build"
    log "configuring QEMU $QEMU_VERSION (x86_64-softmmu, nitro-enclave machine only, libcbor, gnutls, vhost-user)"
    (cd "$src/build" && ../configure --python="$venv/bin/python3" --target-list=x86_64-softmmu \
        --without-default-features --enable-kvm --enable-libcbor --enable-gnutls --enable-vhost-user \
        --enable-fdt=system --enable-pixman --disable-docs --disable-werror --disable-download \
        --disable-install-blobs --disable-debug-info \
        --without-default-devices --with-devices-x86_64=nitro >"$work/configure.log" 2>&1) \
        || { tail -n 40 "$work/configure.log" >&2; die "QEMU configure failed (log: $work/configure.log)"; }
    grep -q 'CONFIG_NITRO_ENCLAVE 1' "$src/build/x86_64-softmmu-config-devices.h" \
        || die "QEMU configured without CONFIG_NITRO_ENCLAVE (libcbor or gnutls missing?)"
    log "building qemu-system-x86_64 (ninja, $(nproc) jobs; ~3 min on 2 cores)"
    ninja -C "$src/build" qemu-system-x86_64 >"$work/build.log" 2>&1 \
        || { tail -n 40 "$work/build.log" >&2; die "QEMU build failed (log: $work/build.log)"; }
    rm -rf "$QEMU_DIR.new" && mkdir -p "$QEMU_DIR.new/bin"
    strip -o "$QEMU_DIR.new/bin/qemu-system-x86_64" "$src/build/qemu-system-x86_64"
    "$QEMU_DIR.new/bin/qemu-system-x86_64" -machine help | grep -q '^nitro-enclave ' \
        || die "the built QEMU lacks the nitro-enclave machine"
    echo "$QEMU_STAMP" >"$QEMU_DIR.new/.stamp"
    rm -rf "$QEMU_DIR" && mv "$QEMU_DIR.new" "$QEMU_DIR"
    rm -rf "$work"
}

if stamp_ok "$QEMU_DIR" "$QEMU_STAMP" && "$QEMU_BIN" -machine help 2>/dev/null | grep -q '^nitro-enclave '; then
    :
else
    step "QEMU $QEMU_VERSION with the nitro-enclave machine" build_qemu
fi

# --- firmware: bios-microvm.bin (seabios) and option ROMs (qemu-system-data) -----------------
FW_DIR="$EMU/firmware"
FW_STAMP="recipe=$FW_RECIPE qemu-system-data seabios from bookworm-backports"

install_firmware() {
    local tmp="$EMU/firmware.dl"
    rm -rf "$tmp" "$FW_DIR.new" && mkdir -p "$tmp" "$FW_DIR.new"
    apt_update_once
    (cd "$tmp" && apt_download qemu-system-data/bookworm-backports seabios/bookworm-backports)
    local deb
    for deb in "$tmp"/*.deb; do dpkg-deb -x "$deb" "$FW_DIR.new"; done
    [ -f "$FW_DIR.new/usr/share/seabios/bios-microvm.bin" ] || die "seabios lacks bios-microvm.bin"
    [ -f "$FW_DIR.new/usr/share/qemu/linuxboot_dma.bin" ] || die "qemu-system-data lacks linuxboot_dma.bin"
    basename -a "$tmp"/*.deb >"$FW_DIR.new/packages"
    echo "$FW_STAMP" >"$FW_DIR.new/.stamp"
    rm -rf "$FW_DIR" "$tmp" && mv "$FW_DIR.new" "$FW_DIR"
}

stamp_ok "$FW_DIR" "$FW_STAMP" || step "firmware (seabios, qemu-system-data)" install_firmware

# --- busybox: a static shell and tools for test and debugging images (guest userland) ---------
BB_DIR="$EMU/busybox"
BB_STAMP="recipe=$BB_RECIPE busybox-static"

install_busybox() {
    local tmp="$EMU/busybox.dl"
    rm -rf "$tmp" "$BB_DIR.new" && mkdir -p "$tmp" "$BB_DIR.new"
    apt_update_once
    (cd "$tmp" && apt_download busybox-static)
    dpkg-deb -x "$tmp"/busybox-static_*.deb "$tmp/root"
    cp "$tmp/root/bin/busybox" "$BB_DIR.new/busybox"
    "$BB_DIR.new/busybox" true || die "busybox-static does not run"
    basename -a "$tmp"/*.deb >"$BB_DIR.new/package"
    echo "$BB_STAMP" >"$BB_DIR.new/.stamp"
    rm -rf "$BB_DIR" "$tmp" && mv "$BB_DIR.new" "$BB_DIR"
}

stamp_ok "$BB_DIR" "$BB_STAMP" || step "busybox-static" install_busybox

# --- vhost-device-vsock ----------------------------------------------------------------------
VHOST_DIR="$EMU/vhost-device-vsock"
VHOST_BIN="$VHOST_DIR/bin/vhost-device-vsock"
VHOST_STAMP="recipe=$VHOST_RECIPE vhost-device-vsock=$VHOST_DEVICE_VSOCK_VERSION"

install_vhost() {
    rm -rf "$VHOST_DIR"
    cargo install --locked --quiet --root "$VHOST_DIR" vhost-device-vsock --version "$VHOST_DEVICE_VSOCK_VERSION"
    "$VHOST_BIN" --version | grep -qF "$VHOST_DEVICE_VSOCK_VERSION"
    echo "$VHOST_STAMP" >"$VHOST_DIR/.stamp"
}

stamp_ok "$VHOST_DIR" "$VHOST_STAMP" && [ -x "$VHOST_BIN" ] \
    || step "vhost-device-vsock $VHOST_DEVICE_VSOCK_VERSION (cargo install)" install_vhost

# --- Debian 6.12 cloud kernel + modules ------------------------------------------------------
KDIR="$EMU/kernel"
KERNEL_STAMP_PREFIX="recipe=$KERNEL_RECIPE modules=$KERNEL_MODULES"

install_kernel() {
    apt_update_once
    # The newest linux-image-6.12.*-cloud-amd64-unsigned that apt knows (bookworm-backports).
    local pkg
    pkg=$(apt-cache search --names-only "^linux-image-${KERNEL_SERIES//./\\.}\.[0-9]+\+deb[0-9]+-cloud-amd64-unsigned\$" \
        | awk '{print $1}' | sort -V | tail -n1)
    [ -n "$pkg" ] || die "no linux-image-$KERNEL_SERIES.*-cloud-amd64-unsigned in apt (is bookworm-backports configured?)"
    local tmp="$EMU/kernel.dl"
    rm -rf "$tmp" "$KDIR.new" && mkdir -p "$tmp" "$KDIR.new/modules"
    log "apt-get download $pkg"
    (cd "$tmp" && apt_download "$pkg")
    dpkg-deb -x "$tmp"/*.deb "$tmp/root"
    local release=${pkg#linux-image-}
    release=${release%-unsigned}
    [ -f "$tmp/root/boot/vmlinuz-$release" ] || die "$pkg has no boot/vmlinuz-$release"
    mkdir -p "$KDIR.new/boot" "$KDIR.new/lib/modules"
    mv "$tmp/root/boot/vmlinuz-$release" "$tmp/root/boot/config-$release" "$KDIR.new/boot/"
    mv "$tmp/root/lib/modules/$release" "$KDIR.new/lib/modules/"
    local m path
    for m in $KERNEL_MODULES; do
        path=$(find "$KDIR.new/lib/modules/$release/kernel" -name "$m.ko*" | head -n1)
        [ -n "$path" ] || die "$pkg has no module $m"
        case $path in
            *.ko.xz) xz -dc "$path" >"$KDIR.new/modules/$m.ko" ;;
            *.ko.zst) zstd -dcq "$path" >"$KDIR.new/modules/$m.ko" ;;
            *.ko) cp "$path" "$KDIR.new/modules/$m.ko" ;;
            *) die "unexpected module file $path" ;;
        esac
    done
    printf '%s\n' $KERNEL_MODULES >"$KDIR.new/modules/load_order"
    echo "$pkg" >"$KDIR.new/package"
    echo "$release" >"$KDIR.new/release"
    echo "$KERNEL_STAMP_PREFIX package=$pkg" >"$KDIR.new/.stamp"
    rm -rf "$KDIR" "$tmp" && mv "$KDIR.new" "$KDIR"
}

if [ -f "$KDIR/.stamp" ] && grep -qF "$KERNEL_STAMP_PREFIX package=" "$KDIR/.stamp" \
    && [ -f "$KDIR/boot/vmlinuz-$(cat "$KDIR/release" 2>/dev/null)" ]; then
    : # Keep the kernel chosen at first install (PCR1 stays stable across runs).
else
    step "Debian $KERNEL_SERIES cloud kernel and modules" install_kernel
fi

# --- env file --------------------------------------------------------------------------------
KREL=$(cat "$KDIR/release")
ENV_FILE="$EMU/env"
{
    echo "# Written by scripts/setup-emulator.sh: KEY=VALUE per line, values raw (not quoted), no spaces."
    echo "NITRO_EMULATOR_ENV_FORMAT=$ENV_FORMAT"
    echo "NITRO_QEMU=$QEMU_BIN"
    echo "NITRO_QEMU_VERSION=$QEMU_VERSION"
    echo "NITRO_QEMU_BIOS=$FW_DIR/usr/share/seabios/bios-microvm.bin"
    echo "NITRO_QEMU_FIRMWARE_DIRS=$FW_DIR/usr/share/qemu:$FW_DIR/usr/share/seabios"
    echo "NITRO_VHOST_DEVICE_VSOCK=$VHOST_BIN"
    echo "NITRO_BUSYBOX=$BB_DIR/busybox"
    echo "NITRO_KERNEL=$KDIR/boot/vmlinuz-$KREL"
    echo "NITRO_KERNEL_CONFIG=$KDIR/boot/config-$KREL"
    echo "NITRO_KERNEL_RELEASE=$KREL"
    echo "NITRO_KERNEL_PACKAGE=$(cat "$KDIR/package")"
    echo "NITRO_KERNEL_MODULES_TREE=$KDIR/lib/modules/$KREL"
    echo "NITRO_KERNEL_MODULES_DIR=$KDIR/modules"
    echo "NITRO_KERNEL_MODULES=$(echo $KERNEL_MODULES | tr ' ' ,)"
} >"$ENV_FILE.new"
if ! cmp -s "$ENV_FILE.new" "$ENV_FILE"; then
    mv "$ENV_FILE.new" "$ENV_FILE"
    log "emulator ready: $ENV_FILE"
else
    rm -f "$ENV_FILE.new"
fi
if [ "${#_TIMINGS[@]}" -gt 0 ]; then print_timings; fi
