//! Locating the real fixtures (`NITRO_FIXTURES`, default `<workspace>/tests/fixtures`).

#![allow(dead_code)] // each test binary uses a subset
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: failing loudly is the point

use std::path::PathBuf;

/// One attestation document entry of `manifest.json`.
pub(crate) struct Fixture {
    pub(crate) file: String,
    pub(crate) bytes: Vec<u8>,
    pub(crate) valid: bool,
    pub(crate) json: serde_json::Value,
}

/// The fixture directory, or `None` (after printing why) when it is absent. Under `CI=true`
/// absence is a failure.
pub(crate) fn fixtures_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("NITRO_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../tests/fixtures"
            ))
        });
    if dir.join("manifest.json").is_file() {
        return Some(dir);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true but the fixtures are missing at {}", dir.display());
    }
    eprintln!(
        "SKIPPED: attestation fixtures not found at {} (set NITRO_FIXTURES)",
        dir.display()
    );
    None
}

/// Every attestation document of the manifest, decoded to raw CBOR.
pub(crate) fn attestation_fixtures() -> Option<Vec<Fixture>> {
    let dir = fixtures_dir()?;
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let mut out = Vec::new();
    for entry in manifest.as_array().unwrap() {
        let file = entry["file"].as_str().unwrap().to_owned();
        let input = std::fs::read(dir.join(&file)).unwrap();
        let mut bytes = nitro_attest::decode_input(&input)
            .unwrap_or_else(|e| panic!("{file}: {e}"))
            .into_owned();
        // The dstack files carry dstack's own SCALE-encoded trailer (a compact length and a
        // JSON object `{"os_image_hash": ...}`) after the COSE_Sign1; the genuine document is
        // the COSE_Sign1 item itself.
        let (_, len) = nitro_attest::UnverifiedDocument::parse_prefix(&bytes)
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        if file.contains("dstack__") {
            assert!(len < bytes.len(), "{file}: expected a trailer");
            bytes.truncate(len);
        } else {
            assert_eq!(len, bytes.len(), "{file}: unexpected trailing bytes");
        }
        let valid = entry["expected"].as_str().unwrap().starts_with("VALID");
        out.push(Fixture {
            file,
            bytes,
            valid,
            json: entry.clone(),
        });
    }
    assert!(out.len() >= 18, "manifest lists {} documents", out.len());
    Some(out)
}
