//! Locating the real fixtures (`NITRO_FIXTURES`, default `<workspace>/tests/fixtures`).

#![allow(dead_code)] // each test binary uses a subset
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: failing loudly is the point

use std::path::PathBuf;

/// One attestation document entry of `manifest.json`.
pub(crate) struct Fixture {
    pub(crate) file: String,
    /// The document as stored (raw CBOR), trailer included.
    pub(crate) bytes: Vec<u8>,
    /// Bytes after the COSE_Sign1 (dstack's trailer), 0 for the others.
    pub(crate) trailing: usize,
    pub(crate) valid: bool,
    pub(crate) json: serde_json::Value,
}

/// The fixture directory, or `None` (after printing why) when it is absent. Under `CI=true`
/// absence is a failure.
pub(crate) fn fixtures_dir() -> Option<PathBuf> {
    nitro_test_support::fixtures_or_skip("manifest.json")
}

impl Fixture {
    /// The COSE_Sign1 item alone (without a trailer).
    pub(crate) fn cose(&self) -> &[u8] {
        &self.bytes[..self.bytes.len() - self.trailing]
    }

    /// The parsed document (trailer ignored).
    pub(crate) fn parsed(&self) -> nitro_attest::UnverifiedDocument {
        nitro_attest::UnverifiedDocument::parse(self.cose())
            .unwrap_or_else(|e| panic!("{}: {e}", self.file))
    }
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
        let bytes = nitro_attest::decode_input(&input)
            .unwrap_or_else(|e| panic!("{file}: {e}"))
            .into_owned();
        // The dstack files carry dstack's own SCALE-encoded trailer (a compact length and a
        // JSON object `{"os_image_hash": ...}`) after the COSE_Sign1; the genuine document is
        // the COSE_Sign1 item itself. Verifying them as stored needs
        // `Policy::allow_trailing_bytes`.
        let (_, len) = nitro_attest::UnverifiedDocument::parse_prefix(&bytes)
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        if file.contains("dstack__") {
            assert!(len < bytes.len(), "{file}: expected a trailer");
        } else {
            assert_eq!(len, bytes.len(), "{file}: unexpected trailing bytes");
        }
        let trailing = bytes.len() - len;
        let valid = entry["expected"].as_str().unwrap().starts_with("VALID");
        out.push(Fixture {
            file,
            bytes,
            trailing,
            valid,
            json: entry.clone(),
        });
    }
    assert!(out.len() >= 18, "manifest lists {} documents", out.len());
    Some(out)
}
