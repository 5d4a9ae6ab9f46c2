//! Helpers shared by the integration tests: fixtures and external tools, skipped with a printed
//! reason when absent unless `CI=true`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a failure is a test failure
#![allow(dead_code, unreachable_pub)] // each test binary uses a subset

use std::path::PathBuf;

/// Whether a missing fixture or tool must fail the test (CI) instead of skipping it.
pub fn strict() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Skips (returns `None`, printing why) or, under `CI=true`, panics.
pub fn skip<T>(why: &str) -> Option<T> {
    assert!(!strict(), "CI=true and {why}");
    eprintln!("SKIPPED: {why}");
    None
}

/// The fixtures directory (`NITRO_FIXTURES`, default `<workspace>/../shared/fixtures`).
pub fn fixtures() -> Option<PathBuf> {
    let dir = std::env::var_os("NITRO_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../shared/fixtures"
            ))
        });
    if dir.join("cms").is_dir() {
        Some(dir)
    } else {
        skip(&format!("fixtures not found at {}", dir.display()))
    }
}

/// Path of an executable on PATH or in `$NITRO_CACHE/venv/bin`.
pub fn tool(name: &str) -> Option<PathBuf> {
    let cache = std::env::var_os("NITRO_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/nitro-rs")
        });
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.push(cache.join("venv/bin"));
    for d in dirs {
        let p = d.join(name);
        if p.is_file() {
            return Some(p);
        }
    }
    skip(&format!(
        "{name} not found on PATH or in $NITRO_CACHE/venv/bin"
    ))
}
