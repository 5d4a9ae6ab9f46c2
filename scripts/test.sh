#!/usr/bin/env bash
# The README's test command: installs what the tests need, then runs every check and test.
#
#   scripts/test.sh
#
# Slow set-up (packages, cargo tools, the emulator) is cached outside the repository in
# $NITRO_CACHE (default ~/.cache/nitro-rs) and in the usual cargo/apt/pip locations.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-auto}"
# Tests find the real fixtures in tests/fixtures (or wherever NITRO_FIXTURES points).

step "install prerequisites" scripts/install.sh
step "rustfmt" cargo fmt --all --check
step "clippy (-D warnings, all targets, all features)" \
    cargo clippy --locked --workspace --all-targets --all-features -- -D warnings
step "rustdoc (-D warnings)" \
    env RUSTDOCFLAGS="-D warnings" cargo doc --locked --workspace --no-deps --all-features
step "cargo deny" scripts/deny.sh
step "tests (unit, property, fixture, interop, end-to-end)" \
    cargo test --locked --release --workspace --all-features
step "fuzz smoke" scripts/fuzz-smoke.sh
print_timings
log "all checks passed"
