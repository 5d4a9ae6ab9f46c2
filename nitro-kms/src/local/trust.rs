//! Attestation documents in `Recipient`: which roots the local KMS trusts, and what a
//! verified document yields (the recipient's RSA key and the `kms:RecipientAttestation:*`
//! condition keys).
//!
//! As in AWS KMS, `Recipient` takes both kinds of document nitro-attest knows, and each kind
//! provides only its own condition keys:
//!
//! | document | condition keys |
//! |---|---|
//! | Nitro Enclaves (`pcrs`) | `kms:RecipientAttestation:PCR<n>`, `kms:RecipientAttestation:ImageSha384` (PCR0) |
//! | NitroTPM (`nitrotpm_pcrs`) | `kms:RecipientAttestation:NitroTPMPCR<n>` |
//!
//! so a key policy pinned to enclave measurements never admits an EC2 instance's NitroTPM
//! document with the same PCR values, nor the reverse.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::SystemTime;

use aws_lc_rs::rsa::PublicEncryptingKey;
use nitro_attest::{AttestationDocument, DocumentKind, Timestamp, TrustAnchors, Verifier};

use super::wire::Recipient;
use super::{LocalKms, check_len, internal, validation};
use crate::cms;
use crate::error::{Error, ServiceError};

/// The only `KeyEncryptionAlgorithm` KMS accepts in `Recipient`.
const RSAES_OAEP_SHA_256: &str = "RSAES_OAEP_SHA_256";

/// How the local KMS checks the attestation document in `Recipient`.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum AttestationTrust {
    /// Signature and certificate chain verified against these anchors: the AWS root
    /// ([`AttestationTrust::aws`]) for documents from real enclaves, or a simulator's root.
    Anchors(TrustAnchors),
    /// Roots (one or more PEM certificates) read from a file, and read again whenever the file
    /// changes: lets development tools (such as the `kms` example's `--recipient sim`) add
    /// simulator roots while the local KMS runs. A missing or empty file trusts nothing.
    RootsPemFile(PathBuf),
    /// **No signature or chain check**: for QEMU's `nitro-enclave` machine, whose emulated NSM
    /// produces unsigned documents. The payload is still parsed and its PCRs still go through
    /// the key policy, but anyone can forge such a document: development only.
    DangerousUnsignedEmulator,
}

impl AttestationTrust {
    /// The AWS Nitro Enclaves root (what real KMS trusts).
    pub fn aws() -> Self {
        Self::Anchors(TrustAnchors::aws())
    }

    /// A non-AWS root (DER), e.g. [`nitro_attest::SimulatedNsm::root_certificate_der`].
    pub fn root_der(der: &[u8]) -> Result<Self, Error> {
        Ok(Self::Anchors(TrustAnchors::non_aws_root_der(der)?))
    }

    /// Several non-AWS roots (DER), e.g. of several simulators (each [`SimulatedNsm`] has its
    /// own root).
    ///
    /// [`SimulatedNsm`]: nitro_attest::SimulatedNsm
    pub fn roots_der<'a>(roots: impl IntoIterator<Item = &'a [u8]>) -> Result<Self, Error> {
        let mut roots = roots.into_iter();
        let first = roots
            .next()
            .ok_or_else(|| Error::InvalidArgument("no root certificate".into()))?;
        let mut anchors = TrustAnchors::non_aws_root_der(first)?;
        for r in roots {
            anchors = anchors.with_non_aws_root_der(r)?;
        }
        Ok(Self::Anchors(anchors))
    }

    /// A non-AWS root (PEM).
    pub fn root_pem(pem: &str) -> Result<Self, Error> {
        Ok(Self::Anchors(TrustAnchors::non_aws_root_pem(pem)?))
    }

    /// See [`AttestationTrust::DangerousUnsignedEmulator`].
    pub fn dangerous_unsigned_emulator() -> Self {
        Self::DangerousUnsignedEmulator
    }
}

/// A verified `Recipient`: the public key to encrypt to and the condition keys it provides.
pub(super) struct VerifiedRecipient {
    public_key: Vec<u8>,
    pub(super) keys: BTreeMap<String, String>,
}

/// The attestation verifier in use (reloaded from a watched file when configured).
#[derive(Debug)]
pub(super) struct Trust {
    verifier: Option<Verifier>,
    /// `(modification time, length)` of the watched file when it was read.
    loaded: Option<(SystemTime, u64)>,
}

impl Trust {
    pub(super) fn new(config: &AttestationTrust) -> Result<Self, Error> {
        Ok(match config {
            AttestationTrust::Anchors(a) => Trust {
                verifier: Some(verifier_for(a.clone())),
                loaded: None,
            },
            AttestationTrust::RootsPemFile(path) => Trust {
                verifier: anchors_from_pem_file(path)?.map(verifier_for),
                loaded: file_stamp(path),
            },
            AttestationTrust::DangerousUnsignedEmulator => Trust {
                verifier: None,
                loaded: None,
            },
        })
    }
}

fn verifier_for(anchors: TrustAnchors) -> Verifier {
    Verifier::new(anchors).with_cache(std::sync::Arc::new(nitro_attest::CertCache::new(64)))
}

/// Reads every certificate of a PEM file into trust anchors (`None`: no certificate).
fn anchors_from_pem_file(path: &std::path::Path) -> Result<Option<TrustAnchors>, Error> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let pem = match std::fs::read(path) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
    };
    let mut anchors: Option<TrustAnchors> = None;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| Error::InvalidArgument(format!("{}: {e}", path.display())))?;
        anchors = Some(match anchors {
            None => TrustAnchors::non_aws_root_der(&cert)?,
            Some(a) => a.with_non_aws_root_der(&cert)?,
        });
    }
    Ok(anchors)
}

fn file_stamp(path: &std::path::Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl LocalKms {
    /// The verifier, reloading a watched roots file when it changed.
    pub(super) fn current_verifier(&self) -> Result<Option<Verifier>, ServiceError> {
        let mut trust = self
            .trust
            .lock()
            .map_err(|_| internal("trust lock poisoned"))?;
        if let AttestationTrust::RootsPemFile(path) = &self.config.trust {
            let stamp = file_stamp(path);
            if stamp != trust.loaded {
                trust.verifier = anchors_from_pem_file(path)
                    .map_err(|e| internal(format!("cannot reload the trusted roots: {e}")))?
                    .map(verifier_for);
                trust.loaded = stamp;
            }
        }
        Ok(trust.verifier.clone())
    }

    /// Verifies `Recipient` and returns its public key and condition keys.
    pub(super) fn verify_recipient(
        &self,
        recipient: Option<&Recipient>,
        now: SystemTime,
    ) -> Result<Option<VerifiedRecipient>, ServiceError> {
        let Some(r) = recipient else {
            return Ok(None);
        };
        match r.key_encryption_algorithm.as_deref() {
            Some(RSAES_OAEP_SHA_256) => {}
            other => {
                return Err(validation(format!(
                    "Recipient.KeyEncryptionAlgorithm must be RSAES_OAEP_SHA_256, not {other:?}"
                )));
            }
        }
        let doc = r.attestation_document.as_slice();
        check_len("recipient.attestationDocument", doc.len(), 1, 262_144)?;
        // Both kinds, as AWS KMS: the condition keys below tell them apart.
        let mut policy = nitro_attest::Policy::new()
            .allow_debug(true)
            .accept_kinds([DocumentKind::Enclave, DocumentKind::NitroTpm]);
        if let Some(age) = self.config.max_document_age {
            policy = policy.max_age(age);
        }
        let now_ts = Timestamp::from_system_time(now);
        let payload = match &self.config.trust {
            AttestationTrust::DangerousUnsignedEmulator => {
                nitro_attest::dangerous::check_policy_without_signature(doc, now_ts, &policy)
            }
            _ => {
                let verifier = self.current_verifier()?.ok_or_else(|| {
                    validation("Invalid attestation document: the local KMS trusts no root yet")
                })?;
                verifier
                    .verify(doc, now_ts, &policy)
                    .map(nitro_attest::VerifiedDocument::into_document)
            }
        }
        .map_err(|e| validation(format!("Invalid attestation document: {e}")))?;
        let public_key = payload
            .public_key
            .clone()
            .ok_or_else(|| validation("The attestation document has no public_key"))?;
        let rsa = PublicEncryptingKey::from_der(&public_key).map_err(|_| {
            validation("The attestation document's public_key is not an RSA SubjectPublicKeyInfo")
        })?;
        if !(2048..=4096).contains(&rsa.key_size_bits()) {
            return Err(validation(
                "The recipient RSA key must have 2048 to 4096 bits",
            ));
        }
        let keys = condition_keys(&payload)?;
        Ok(Some(VerifiedRecipient { public_key, keys }))
    }

    pub(super) fn seal_for(
        recipient: &VerifiedRecipient,
        secret: &[u8],
    ) -> Result<Vec<u8>, ServiceError> {
        cms::seal(&recipient.public_key, secret)
            .map_err(|e| internal(format!("cannot build CiphertextForRecipient: {e}")))
    }
}

/// The `kms:RecipientAttestation:*` condition keys of a verified document: `PCR<n>` and
/// `ImageSha384` for an enclave document, `NitroTPMPCR<n>` for a NitroTPM document. Values are
/// lower-case hex, as AWS KMS compares them.
fn condition_keys(doc: &AttestationDocument) -> Result<BTreeMap<String, String>, ServiceError> {
    let prefix = match doc.kind {
        DocumentKind::Enclave => "kms:RecipientAttestation:PCR",
        DocumentKind::NitroTpm => "kms:RecipientAttestation:NitroTPMPCR",
        // A kind nitro-attest learns later is refused until this code knows which condition
        // keys AWS KMS gives it (the policy above does not accept one anyway).
        other => {
            return Err(validation(format!(
                "Invalid attestation document: the local KMS does not support {other} documents"
            )));
        }
    };
    let mut keys: BTreeMap<String, String> = doc
        .pcrs
        .iter()
        .map(|(index, value)| (format!("{prefix}{index}"), hex::encode(value)))
        .collect();
    if doc.kind == DocumentKind::Enclave
        && let Some(pcr0) = doc.pcr(0)
    {
        keys.insert(
            "kms:RecipientAttestation:ImageSha384".to_owned(),
            hex::encode(pcr0),
        );
    }
    Ok(keys)
}
