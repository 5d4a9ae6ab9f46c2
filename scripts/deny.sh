#!/usr/bin/env bash
# cargo deny: licenses, bans and sources always; advisories against the RustSec advisory
# database, fetched from github.com when reachable, else a copy cached in cargo's advisory-dbs
# directory (stale: its date is printed), else skipped with a warning.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

cargo deny --all-features check licenses bans sources
db="${CARGO_HOME:-$HOME/.cargo}/advisory-dbs"
log_file="$NITRO_CACHE/deny-advisories.log"
db_date() {
    local copy
    copy=$(compgen -G "$db/advisory-db-*/crates" | head -n1 || true)
    [ -n "$copy" ] && git -C "$(dirname "$copy")" log -1 --format=%cs 2>/dev/null || echo "unknown date"
}
if cargo deny --all-features check advisories 2>"$log_file"; then
    log "cargo deny advisories: ok (advisory database as of $(db_date))"
elif grep -qiE 'failed to fetch advisory database' "$log_file"; then
    cached=$(compgen -G "$db/advisory-db-*/crates" | head -n1 || true)
    if [ -n "$cached" ]; then
        warn "cargo deny advisories: github.com is unreachable; checking against the cached copy in $(dirname "$cached") (as of $(db_date))"
        cargo deny --offline --all-features check advisories
    else
        warn "cargo deny advisories: SKIPPED, the advisory database (github.com/rustsec/advisory-db) is unreachable from this machine and no copy is cached in $db"
    fi
else
    cat "$log_file" >&2
    die "cargo deny advisories failed"
fi
