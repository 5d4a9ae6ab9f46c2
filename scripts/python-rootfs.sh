#!/usr/bin/env bash
# Builds the root filesystem of the Python example application (issue 17): Debian 13 with
# python3-minimal, python3-boto3 and python3-requests, made by mmdebstrap without Docker, with
# documentation, locales, apt lists, __pycache__, perl modules, gconv and the botocore service
# models other than KMS, S3 and STS removed. The result is a tar archive cached
# outside the repository, both as a tar archive and as a one-layer OCI image layout (made with
# umoci, tag `python`) that nitro-eif's importer and `eif build --image` read:
#
#   scripts/python-rootfs.sh            # prints the path of the cached OCI layout
#
# NITRO_CACHE (default ~/.cache/nitro-rs) holds it; delete the file to rebuild.
set -euo pipefail
cache="${NITRO_CACHE:-$HOME/.cache/nitro-rs}/python-rootfs"
out="$cache/rootfs-trixie-python.tar"
# iptables (legacy), iproute2 and e2fsprogs: the supervisor's transparent egress and volumes use
# the image's `iptables-legacy`, `ip` and `mkfs.ext2`, as on a real enclave.
packages="python3-minimal,python3-boto3,python3-requests,ca-certificates,iptables,iproute2,e2fsprogs"
# Bump when the hooks change, so that a cached archive is rebuilt.
recipe=5
# Debian 13: its boto3 (1.37) reads AWS_ENDPOINT_URL_KMS; Debian 12's (1.26) predates
# service-specific endpoint variables and reads the region only from AWS_DEFAULT_REGION.
suite=trixie
oci="$cache/oci"
stamp="$cache/packages"
if [[ -f "$out" && -d "$oci" && -f "$stamp" && "$(cat "$stamp")" == "$suite $packages $recipe" ]]; then
    echo "$oci"
    exit 0
fi
mkdir -p "$cache"
mirror="$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)"
mirror="${mirror:-http://deb.debian.org/debian}"
tmp="$cache/partial.tar"
rm -rf "$tmp" "$out.tmp" "$cache"/rootfs-*.tar
# Essential packages plus ours; no recommends. The hooks strip what an enclave never reads.
mmdebstrap --quiet --format=tar --variant=essential --include="$packages" \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/lintian/*' \
    --customize-hook='find "$1/usr" "$1/etc" -name __pycache__ -type d -prune -exec rm -rf {} +' \
    --customize-hook='cd "$1"/usr/lib/python3/dist-packages/botocore/data && for d in */; do case "$d" in kms/|s3/|sts/) ;; *) rm -rf "$d" ;; esac; done' \
    --customize-hook='rm -rf "$1"/usr/lib/x86_64-linux-gnu/gconv "$1"/usr/share/perl "$1"/usr/lib/x86_64-linux-gnu/perl' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/log/*' \
    "$suite" "$tmp" "$mirror" >&2
mv "$tmp" "$out"
rm -rf "$oci"
umoci init --layout "$oci" >&2
umoci new --image "$oci:python" >&2
umoci raw add-layer --image "$oci:python" "$out" >&2
umoci config --image "$oci:python" --config.cmd python3 --config.env PATH=/usr/local/bin:/usr/bin:/bin >&2
echo "$suite $packages $recipe" > "$stamp"
echo "$oci"
