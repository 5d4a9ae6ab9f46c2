# Shared helpers for the scripts in this directory. Source it; do not run it.
# shellcheck shell=bash

# Where slow set-up is cached, outside the repository.
export NITRO_CACHE="${NITRO_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nitro-rs}"
mkdir -p "$NITRO_CACHE"

# Python tools (moto) live in a virtualenv inside the cache.
export NITRO_VENV="$NITRO_CACHE/venv"
export PATH="$NITRO_VENV/bin:${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

log() { printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; }
warn() { printf '\033[1;33mwarning:\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31merror:\033[0m %s\n' "$*" >&2; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }

# Run a command as root: directly when we are root, else through sudo.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi
}

# Lists every package in "$@" that dpkg does not report as installed.
missing_debs() {
    local p
    for p in "$@"; do
        dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || echo "$p"
    done
}

_APT_UPDATED=0
apt_update_once() {
    if [ "$_APT_UPDATED" -eq 0 ]; then
        as_root apt-get update -qq
        _APT_UPDATED=1
    fi
}

# apt_install [-t SUITE] PKG...: installs the packages that are missing, idempotently.
apt_install() {
    local target=()
    if [ "${1:-}" = "-t" ]; then target=(-t "$2"); shift 2; fi
    local missing
    missing=$(missing_debs "$@")
    [ -z "$missing" ] && return 0
    log "apt-get install ${target[*]} $(echo $missing)"
    apt_update_once
    # shellcheck disable=SC2086
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${target[@]}" $missing >/dev/null
}

# cargo_install CRATE VERSION [BIN]: `cargo install --locked` unless BIN already reports VERSION.
cargo_install() {
    local crate=$1 version=$2 bin=${3:-$1}
    if have "$bin" && "$bin" --version 2>/dev/null | grep -qF "$version"; then return 0; fi
    log "cargo install $crate $version"
    cargo install --locked --quiet "$crate" --version "$version"
}

# Runs "$@", recording its wall time for the summary printed by `print_timings`.
_TIMINGS=()
step() {
    local name=$1; shift
    log "$name"
    local t0=$SECONDS
    "$@"
    _TIMINGS+=("$(printf '%5ds  %s' $((SECONDS - t0)) "$name")")
}
print_timings() {
    log "timings"
    printf '%s\n' "${_TIMINGS[@]}" >&2
}
