#!/usr/bin/env bash
# Installs what the test suite needs, when it is missing, idempotently. Debian 12 (bookworm).
#   Debian packages (apt-get, bookworm-backports added for QEMU 10 and the 6.12 kernel),
#   Python packages (pip, in a virtualenv under $NITRO_CACHE), cargo tools (cargo install --locked),
#   the Rust targets and toolchains the tests build for, and the emulator (scripts/setup-emulator.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

# --- Debian packages -------------------------------------------------------------------------
[ -r /etc/debian_version ] || die "scripts/install.sh supports Debian 12 (bookworm) only"

# bookworm-backports from the same mirror as the configured suites.
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    # (grep exits 2 when a glob matches no file: a machine may have only sources.list, or only
    # deb822 .sources files.)
    mirror=$(grep -rhs -m1 -E '^URIs:.*/debian/?$' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | head -n1 || true)
    [ -n "$mirror" ] || mirror=$(grep -rhs -m1 -E '^deb .*/debian/? bookworm' /etc/apt/sources.list /etc/apt/sources.list.d/*.list | awk '{print $2}' | head -n1 || true)
    [ -n "$mirror" ] || mirror=http://deb.debian.org/debian
    log "adding bookworm-backports from $mirror"
    printf 'Types: deb deb-src\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$mirror" \
        | as_root tee /etc/apt/sources.list.d/bookworm-backports.sources >/dev/null
    _APT_UPDATED=0
fi

# Everything the tests use as a real peer or a build input.
# (g++: libfuzzer-sys builds libFuzzer, which is C++. iptables for iptables-legacy and
# ip6tables-legacy, dnsutils for dig, dnsmasq-base as an upstream resolver and dnsperf: the
# nitro-net transparent egress test and DNS bench; docker-registry, skopeo and apache2-utils's
# htpasswd: nitro-eif's registry pull test.)
apt_install \
    ca-certificates curl xz-utils bzip2 cpio pkgconf gcc g++ make \
    musl-tools \
    openssl \
    socat iperf3 libssl-dev strace \
    nbdkit libnbd-bin \
    iptables dnsutils dnsmasq-base dnsperf \
    docker-registry skopeo apache2-utils \
    mmdebstrap umoci \
    python3-venv python3-pip
# qemu-img / qemu-io / qemu-nbd: QEMU 10 from backports.
apt_install -t bookworm-backports qemu-utils

# --- Debian's arm64 kernel (input of the aarch64 EIF tests) ---------------------------------
# Nitro Enclaves on Graviton boot an uncompressed arm64 `Image`; bookworm's arm64 vmlinuz is one
# (EFI-stub Image, "ARMd" at 0x38). If a later package ships it gzip-compressed, it is unpacked.
ARM64_IMAGE="$NITRO_CACHE/arm64/Image"
if [ ! -s "$ARM64_IMAGE" ]; then
    if ! dpkg --print-foreign-architectures | grep -qx arm64; then
        log "dpkg --add-architecture arm64 (to download Debian's arm64 kernel package)"
        as_root dpkg --add-architecture arm64
        _APT_UPDATED=0
    fi
    apt_update_once
    pkg=$(apt-cache depends linux-image-cloud-arm64:arm64 | awk '/Depends: linux-image-/ {print $2; exit}')
    [ -n "$pkg" ] || die "cannot resolve linux-image-cloud-arm64:arm64"
    log "apt-get download $pkg"
    work=$(mktemp -d)
    (cd "$work" && apt-get download -q "$pkg" >/dev/null 2>&1)
    mkdir -p "$NITRO_CACHE/arm64"
    dpkg-deb --fsys-tarfile "$work"/*.deb | tar -xO --wildcards './boot/vmlinuz-*' > "$work/vmlinuz"
    if [ "$(head -c2 "$work/vmlinuz" | od -An -tx1 | tr -d ' ')" = 1f8b ]; then
        gzip -dc "$work/vmlinuz" > "$ARM64_IMAGE.tmp"
    else
        cp "$work/vmlinuz" "$ARM64_IMAGE.tmp"
    fi
    [ "$(dd if="$ARM64_IMAGE.tmp" bs=1 skip=56 count=4 2>/dev/null)" = "ARMd" ] \
        || die "$pkg: vmlinuz is not an arm64 Image"
    mv "$ARM64_IMAGE.tmp" "$ARM64_IMAGE"
    echo "$pkg" > "$NITRO_CACHE/arm64/PACKAGE"
    rm -rf "$work"
fi

# --- Python packages -------------------------------------------------------------------------
MOTO_VERSION=5.2.5
if ! "$NITRO_VENV/bin/python" -c "import moto, sys; sys.exit(moto.__version__ != '$MOTO_VERSION')" 2>/dev/null; then
    log "pip install moto[server]==$MOTO_VERSION"
    python3 -m venv "$NITRO_VENV"
    "$NITRO_VENV/bin/pip" install --quiet "moto[server]==$MOTO_VERSION"
fi
# The aws CLI (v1, botocore underneath) for the KMS proxy test (nitro-kms/tests/proxy.rs).
AWSCLI_VERSION=1.46.3
if ! "$NITRO_VENV/bin/python" -c "import awscli, sys; sys.exit(awscli.__version__ != '$AWSCLI_VERSION')" 2>/dev/null; then
    log "pip install awscli==$AWSCLI_VERSION"
    "$NITRO_VENV/bin/pip" install --quiet "awscli==$AWSCLI_VERSION"
fi

# --- Rust targets and toolchains -------------------------------------------------------------
# Static enclave binaries (PID 1, the enclave application) are built for musl.
rustup target list --installed | grep -qx x86_64-unknown-linux-musl \
    || rustup target add x86_64-unknown-linux-musl
# cargo-fuzz needs a nightly toolchain.
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal

# --- cargo tools -----------------------------------------------------------------------------
cargo_install cargo-deny 0.20.2
cargo_install cargo-fuzz 0.13.1

# --- the emulator (QEMU nitro-enclave, vhost-device-vsock, Debian 6.12 kernel) ---------------
if [ -x scripts/setup-emulator.sh ]; then
    scripts/setup-emulator.sh
fi

# --- the Python example's root file system (mmdebstrap + umoci, cached) ----------------------
log "python example root file system: $(scripts/python-rootfs.sh)"
