#!/usr/bin/env bash
# cargo deny: licenses, bans and sources always; advisories whenever the RustSec advisory
# database can be fetched (it lives on github.com) or a copy is already cached.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

cargo deny --all-features check licenses bans sources
db="${CARGO_HOME:-$HOME/.cargo}/advisory-dbs"
if cargo deny --all-features check advisories 2>"$NITRO_CACHE/deny-advisories.log"; then
    log "cargo deny advisories: ok"
elif grep -qiE 'failed to fetch advisory database' "$NITRO_CACHE/deny-advisories.log" \
        && ! compgen -G "$db/*/crates" >/dev/null; then
    warn "cargo deny advisories: SKIPPED, the advisory database (github.com/rustsec/advisory-db) is unreachable from this machine and no copy is cached in $db"
else
    cat "$NITRO_CACHE/deny-advisories.log" >&2
    die "cargo deny advisories failed"
fi
