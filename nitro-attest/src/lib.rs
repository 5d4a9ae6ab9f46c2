#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]
// The documentation links items of every feature; it is checked with `--all-features` (CI,
// docs.rs), and a build without some feature would only report those links as unresolved.
#![cfg_attr(
    not(all(feature = "device", feature = "simulator", feature = "http-api")),
    allow(rustdoc::broken_intra_doc_links)
)]
#![forbid(unsafe_code)]

mod anchors;
mod cbor;
mod chain;
pub mod dangerous;
mod document;
mod error;
#[cfg(feature = "http-api")]
mod http_api;
mod input;
mod nsm;
mod time;
mod verify;

#[cfg(test)]
#[cfg(feature = "simulator")]
mod tests;

pub use anchors::{AWS_ROOT_G1_PEM, AWS_ROOT_G1_SHA256, TrustAnchors};
pub use chain::CertCache;
pub use document::{
    AttestationDocument, COSE_ALG_ES384, Digest, DocumentKind, MAX_CABUNDLE, MAX_CERTIFICATE_SIZE,
    MAX_DOCUMENT_SIZE, MAX_OPTIONAL_FIELD, MAX_PCRS, PCR_LEN, UnverifiedDocument,
};
pub use error::{CertRef, CertificateError, Error, Field, NsmErrorCode, Result};
#[cfg(feature = "http-api")]
#[cfg_attr(docsrs, doc(cfg(feature = "http-api")))]
pub use http_api::{ATTESTATION_MAX_BODY, ATTESTATION_PATH, AttestationApi};
pub use input::decode_input;
#[cfg(feature = "device")]
#[cfg_attr(docsrs, doc(cfg(feature = "device")))]
pub use nsm::device::{NSM_DEVICE_PATH, NsmDevice};
#[cfg(feature = "simulator")]
#[cfg_attr(docsrs, doc(cfg(feature = "simulator")))]
pub use nsm::pki::{MAX_PKI_FILE, SimulatorPki};
#[cfg(feature = "simulator")]
#[cfg_attr(docsrs, doc(cfg(feature = "simulator")))]
pub use nsm::sim::{SimulatedNsm, SimulatedNsmBuilder};
pub use nsm::{NSM_REQUEST_MAX_SIZE, NSM_RESPONSE_MAX_SIZE, Nsm, NsmDescription, PcrDescription};
pub use time::{CheckTime, Timestamp};
pub use verify::{DEFAULT_LEEWAY, Policy, VerifiedDocument, Verifier, verify};

/// Entry points for fuzzing and property tests. Not part of the stable API.
#[doc(hidden)]
pub mod internal {
    use crate::{
        CheckTime, DocumentKind, Policy, Timestamp, UnverifiedDocument, Verifier, dangerous,
    };

    /// Runs every parser and verifier path over `data`: parse, verify against the AWS root at
    /// the document's own timestamp (if it parses), and the unsigned policy path. Returns
    /// `true` if the AWS verification accepted the document.
    pub fn fuzz_document(data: &[u8]) -> bool {
        let policy = Policy::new()
            .accept_kinds([DocumentKind::Enclave, DocumentKind::NitroTpm])
            .allow_trailing_bytes(true)
            .allow_debug(true)
            .check_time(CheckTime::DocumentTimestamp);
        let now = Timestamp::from_unix_millis(1_750_000_000_000);
        let _ = dangerous::check_policy_without_signature(data, now, &policy);
        match UnverifiedDocument::parse(data) {
            Ok(doc) => {
                let _ = dangerous::is_qemu_unsigned(&doc);
                Verifier::aws().verify_parsed(&doc, now, &policy).is_ok()
            }
            Err(_) => false,
        }
    }
}
