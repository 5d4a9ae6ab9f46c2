//! Checks that **do not verify authenticity**. Everything here trusts the document bytes as
//! given; use it only where no signed document can exist.
//!
//! The one legitimate use is QEMU's emulated NSM (`virtio-nsm-device`, QEMU ≥ 9.2), which
//! produces deliberately **unsigned** documents: protected header `{1: -1}`, a 64-byte zero
//! signature, and 64 zero bytes as `certificate` and as the only `cabundle` entry. The payload
//! (PCRs, `module_id`, `user_data`, `nonce`, `public_key`) is real, so a development setup can
//! still check measurements and bind a nonce. Anyone able to write bytes can forge such a
//! document: never accept this in production. A correct [`Verifier`](crate::Verifier) rejects
//! every QEMU document.

use crate::document::{AttestationDocument, UnverifiedDocument};
use crate::error::Result;
use crate::time::Timestamp;
use crate::verify::Policy;

/// Parses `document` and applies the payload part of `policy` (trailing bytes, document
/// kind, debug mode, PCRs, nonce,
/// `user_data`, `public_key`, maximum age and future timestamps against `now`) **without
/// verifying the signature or the certificate chain**, and without checking the COSE algorithm.
/// [`Policy::check_time`] is ignored as no certificate is checked.
///
/// ```
/// # #[cfg(feature = "simulator")]
/// # fn main() -> Result<(), nitro_attest::Error> {
/// use nitro_attest::{Nsm, Policy, SimulatedNsm, Timestamp, dangerous};
/// let nsm = SimulatedNsm::builder().seed(3).build()?;
/// let doc = nsm.attestation(None, Some(b"n"), None)?;
/// let payload = dangerous::check_policy_without_signature(
///     &doc,
///     Timestamp::now(),
///     &Policy::new().expect_nonce(b"n"),
/// )?;
/// assert_eq!(payload.nonce.as_deref(), Some(&b"n"[..]));
/// # Ok(())
/// # }
/// # #[cfg(not(feature = "simulator"))]
/// # fn main() {}
/// ```
///
/// # Errors
///
/// Parse errors as for [`UnverifiedDocument::parse`], policy errors as for
/// [`Verifier::verify`](crate::Verifier::verify).
pub fn check_policy_without_signature(
    document: &[u8],
    now: Timestamp,
    policy: &Policy,
) -> Result<AttestationDocument> {
    let (doc, _) = policy.parse(document)?;
    policy.check_payload(doc.payload(), now)?;
    Ok(doc.into_payload())
}

/// `true` if `doc` has the shape of QEMU's unsigned emulated documents (protected header
/// `alg = -1`, zero signature, zero-filled certificate and single zero-filled `cabundle` entry).
/// Purely informational; it proves nothing about the document's origin.
pub fn is_qemu_unsigned(doc: &UnverifiedDocument) -> bool {
    let zero = |b: &[u8]| !b.is_empty() && b.iter().all(|&x| x == 0);
    let p = doc.payload();
    doc.algorithm() == Some(-1)
        && zero(doc.signature())
        && zero(&p.certificate)
        && p.cabundle.len() == 1
        && zero(&p.cabundle[0])
}
