#!/usr/bin/env bash
# Builds every cargo-fuzz target and runs each for NITRO_FUZZ_SECONDS (default 10) seconds,
# seeded from fuzz/seeds/<target>/ plus the fixture files listed in fuzz/seeds/<target>.fixtures
# (paths relative to $NITRO_FIXTURES). A crash fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

secs="${NITRO_FUZZ_SECONDS:-10}"
fixtures="${NITRO_FIXTURES:-$PWD/tests/fixtures}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cd fuzz
cargo +nightly fuzz build --sanitizer none --debug-assertions
for target in $(cargo +nightly fuzz list); do
    corpus="$work/$target"
    mkdir -p "$corpus"
    cp -r "seeds/$target/." "$corpus/" 2>/dev/null || true
    rm -f "$corpus/.keep"
    if [ -f "seeds/$target.fixtures" ] && [ -d "$fixtures" ]; then
        while read -r f; do
            [ -n "$f" ] && [ -f "$fixtures/$f" ] && cp "$fixtures/$f" "$corpus/"
        done < "seeds/$target.fixtures"
    fi
    log "fuzz $target for ${secs}s ($(ls "$corpus" | wc -l) seeds)"
    cargo +nightly fuzz run --sanitizer none --debug-assertions "$target" "$corpus" -- \
        -max_total_time="$secs" -print_final_stats=1 2>"$work/$target.log" \
        || { tail -n 60 "$work/$target.log" >&2; die "fuzz target $target failed"; }
    grep -E 'stat::number_of_executed_units' "$work/$target.log" >&2 || true
done
