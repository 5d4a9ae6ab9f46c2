//! The pure verifier: document bytes + trust anchors + time + policy in, verdict out.

use std::collections::BTreeMap;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::signature::ParsedPublicKey;

use crate::anchors::{TrustAnchors, sha256};
use crate::chain::{self, CertCache, CertInfo};
use crate::document::{
    AttestationDocument, COSE_ALG_ES384, DocumentKind, UnverifiedDocument, sig_structure_digest,
};
use crate::error::{CertRef, Error, Field, Result};
use crate::time::{CheckTime, Timestamp, duration_ms};

/// What a document must satisfy beyond a valid signature and chain: document kind, trailing
/// bytes, check time, clock leeway, maximum age, expected PCRs, nonce, `user_data`,
/// `public_key`, debug mode.
///
/// The default policy accepts only Nitro Enclaves documents ([`DocumentKind::Enclave`]),
/// refuses bytes after the COSE_Sign1 structure, checks certificates at `now` with 30 s
/// leeway, has no maximum age, expects no particular PCRs, nonce, user data or public key, and
/// rejects debug-mode documents. **A relying party should almost always pin PCRs** (PCR0, or PCR1 and PCR2; PCR8
/// for signed images), and a nonce or maximum age for freshness: without them any enclave
/// attested by the trust anchors is accepted.
///
/// ```
/// use std::time::Duration;
/// use nitro_attest::{CheckTime, Policy};
/// let pcr0 = [0x11u8; 48];
/// let policy = Policy::new()
///     .expect_pcr(0, pcr0)
///     .expect_nonce(b"challenge-42")
///     .max_age(Duration::from_secs(300))
///     .leeway(Duration::from_secs(5))
///     .check_time(CheckTime::Now);
/// assert_eq!(policy.expected_pcrs().get(&0).map(Vec::len), Some(48));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    check_time: CheckTime,
    leeway: Duration,
    max_age: Option<Duration>,
    pcrs: BTreeMap<u16, Vec<u8>>,
    nonce: Option<Vec<u8>>,
    user_data: Option<Vec<u8>>,
    public_key: Option<Vec<u8>>,
    allow_debug: bool,
    kinds: Vec<DocumentKind>,
    allow_trailing_bytes: bool,
}

/// Default clock-skew leeway applied to certificate validity and the document timestamp.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);

impl Default for Policy {
    fn default() -> Self {
        Policy {
            check_time: CheckTime::Now,
            leeway: DEFAULT_LEEWAY,
            max_age: None,
            pcrs: BTreeMap::new(),
            nonce: None,
            user_data: None,
            public_key: None,
            allow_debug: false,
            kinds: vec![DocumentKind::Enclave],
            allow_trailing_bytes: false,
        }
    }
}

impl Policy {
    /// The default policy (see the type documentation).
    pub fn new() -> Self {
        Self::default()
    }

    /// When certificate validity is checked: the caller's `now` (default), the document's own
    /// timestamp (for archived documents), or a fixed instant.
    pub fn check_time(mut self, t: CheckTime) -> Self {
        self.check_time = t;
        self
    }

    /// Clock-skew leeway (default [`DEFAULT_LEEWAY`]): certificates are accepted from
    /// `notBefore - leeway` to `notAfter + leeway`, and with a maximum age a timestamp up to
    /// `leeway` in the future is accepted. Real leaf certificates are issued without
    /// backdating, so a verifier whose clock is slightly behind needs some leeway.
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// Maximum document age: `now - timestamp` must not exceed it, and `timestamp` must not be
    /// later than `now + leeway`. This is independent of certificate validity (a leaf lives
    /// about three hours and signs many documents).
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.max_age = Some(max_age);
        self
    }

    /// Requires PCR `index` to equal `value`. Can be called for any subset of PCRs.
    pub fn expect_pcr(mut self, index: u16, value: impl AsRef<[u8]>) -> Self {
        self.pcrs.insert(index, value.as_ref().to_vec());
        self
    }

    /// Requires the document's `nonce` to equal `nonce`.
    pub fn expect_nonce(mut self, nonce: impl AsRef<[u8]>) -> Self {
        self.nonce = Some(nonce.as_ref().to_vec());
        self
    }

    /// Requires the document's `user_data` to equal `user_data`.
    pub fn expect_user_data(mut self, user_data: impl AsRef<[u8]>) -> Self {
        self.user_data = Some(user_data.as_ref().to_vec());
        self
    }

    /// Requires the document's `public_key` to equal `public_key` (compared as bytes).
    pub fn expect_public_key(mut self, public_key: impl AsRef<[u8]>) -> Self {
        self.public_key = Some(public_key.as_ref().to_vec());
        self
    }

    /// Accepts debug-mode documents (PCR0/1/2 all zero). Only for development: a debug-mode
    /// enclave's memory can be read by its parent.
    pub fn allow_debug(mut self, allow: bool) -> Self {
        self.allow_debug = allow;
        self
    }

    /// The document kinds accepted (default: only [`DocumentKind::Enclave`]). A NitroTPM
    /// document attests an EC2 instance's boot chain, not an enclave: a relying party expecting
    /// an enclave must not accept one, so NitroTPM documents must be asked for. An empty list
    /// accepts nothing. Expected PCRs apply to whichever kind the document is: with both kinds
    /// accepted, pin PCRs that mean the same thing in both, or verify with one policy per kind.
    ///
    /// ```
    /// use nitro_attest::{DocumentKind, Policy};
    /// let tpm = Policy::new().accept_kinds([DocumentKind::NitroTpm]);
    /// assert!(tpm.accepts_kind(DocumentKind::NitroTpm));
    /// assert!(!tpm.accepts_kind(DocumentKind::Enclave));
    /// assert!(!Policy::new().accepts_kind(DocumentKind::NitroTpm));
    /// ```
    pub fn accept_kinds(mut self, kinds: impl IntoIterator<Item = DocumentKind>) -> Self {
        self.kinds = kinds.into_iter().collect();
        self.kinds.sort_unstable();
        self.kinds.dedup();
        self
    }

    /// Accepts bytes after the COSE_Sign1 structure (default: refused with
    /// [`Error::TrailingBytes`]). They are not covered by the signature and are ignored; only
    /// for containers known to append a trailer (dstack stores a SCALE-encoded JSON object
    /// after the document).
    pub fn allow_trailing_bytes(mut self, allow: bool) -> Self {
        self.allow_trailing_bytes = allow;
        self
    }

    /// `true` if documents of `kind` are accepted.
    pub fn accepts_kind(&self, kind: DocumentKind) -> bool {
        self.kinds.contains(&kind)
    }

    /// The accepted document kinds, sorted.
    pub fn accepted_kinds(&self) -> &[DocumentKind] {
        &self.kinds
    }

    /// Whether trailing bytes are accepted.
    pub fn get_allow_trailing_bytes(&self) -> bool {
        self.allow_trailing_bytes
    }

    /// Parses `document` under this policy's trailing-bytes rule; returns the document and
    /// the number of trailing bytes.
    pub(crate) fn parse(&self, document: &[u8]) -> Result<(UnverifiedDocument, usize)> {
        let (doc, len) = UnverifiedDocument::parse_prefix(document)?;
        let trailing = document.len() - len;
        if trailing > 0 && !self.allow_trailing_bytes {
            return Err(Error::TrailingBytes {
                offset: len,
                len: trailing,
            });
        }
        Ok((doc, trailing))
    }

    /// The configured check time.
    pub fn get_check_time(&self) -> CheckTime {
        self.check_time
    }

    /// The configured leeway.
    pub fn get_leeway(&self) -> Duration {
        self.leeway
    }

    /// The configured maximum age.
    pub fn get_max_age(&self) -> Option<Duration> {
        self.max_age
    }

    /// The expected PCR values.
    pub fn expected_pcrs(&self) -> &BTreeMap<u16, Vec<u8>> {
        &self.pcrs
    }

    /// Checks the payload against the policy (everything except signature and chain).
    pub(crate) fn check_payload(&self, doc: &AttestationDocument, now: Timestamp) -> Result<()> {
        if !self.accepts_kind(doc.kind) {
            return Err(Error::KindNotAccepted { kind: doc.kind });
        }
        if !self.allow_debug && doc.is_debug_mode() {
            return Err(Error::DebugMode);
        }
        for (&index, expected) in &self.pcrs {
            let actual = doc.pcr(index).ok_or(Error::PcrMissing { index })?;
            if actual != expected.as_slice() {
                return Err(Error::PcrMismatch {
                    index,
                    expected: expected.clone(),
                    actual: actual.to_vec(),
                });
            }
        }
        for (field, expected, actual) in [
            (Field::Nonce, &self.nonce, &doc.nonce),
            (Field::UserData, &self.user_data, &doc.user_data),
            (Field::PublicKey, &self.public_key, &doc.public_key),
        ] {
            if let Some(expected) = expected
                && actual.as_ref() != Some(expected)
            {
                return Err(Error::FieldMismatch {
                    field,
                    expected: expected.clone(),
                    actual: actual.clone(),
                });
            }
        }
        if let Some(max_age) = self.max_age {
            let leeway_ms = duration_ms(self.leeway);
            if doc.timestamp.unix_millis() > now.unix_millis().saturating_add(leeway_ms) {
                return Err(Error::DocumentFromFuture {
                    timestamp: doc.timestamp,
                    now,
                    leeway_ms,
                });
            }
            let age_ms = now
                .unix_millis()
                .saturating_sub(doc.timestamp.unix_millis());
            let max_age_ms = duration_ms(max_age);
            if age_ms > max_age_ms {
                return Err(Error::DocumentTooOld {
                    timestamp: doc.timestamp,
                    now,
                    age_ms,
                    max_age_ms,
                });
            }
        }
        Ok(())
    }
}

/// A document whose signature, certificate chain and policy were verified.
///
/// Dereferences to the [`AttestationDocument`] payload.
#[derive(Debug, Clone)]
pub struct VerifiedDocument {
    document: AttestationDocument,
    anchor_sha256: [u8; 32],
    checked_at: Timestamp,
    trailing_bytes: usize,
}

impl VerifiedDocument {
    /// The verified payload.
    pub fn document(&self) -> &AttestationDocument {
        &self.document
    }

    /// Consumes this and returns the verified payload.
    pub fn into_document(self) -> AttestationDocument {
        self.document
    }

    /// SHA-256 of the DER of the trust anchor the chain ended at
    /// ([`AWS_ROOT_G1_SHA256`](crate::AWS_ROOT_G1_SHA256) for genuine documents).
    pub fn anchor_sha256(&self) -> [u8; 32] {
        self.anchor_sha256
    }

    /// The instant at which certificate validity was checked.
    pub fn checked_at(&self) -> Timestamp {
        self.checked_at
    }

    /// Enclave or NitroTPM document.
    pub fn kind(&self) -> DocumentKind {
        self.document.kind
    }

    /// Number of bytes after the COSE_Sign1 structure that were ignored (non-zero only under
    /// [`Policy::allow_trailing_bytes`]). They are **not** authenticated.
    pub fn trailing_bytes(&self) -> usize {
        self.trailing_bytes
    }
}

impl Deref for VerifiedDocument {
    type Target = AttestationDocument;
    fn deref(&self) -> &AttestationDocument {
        &self.document
    }
}

/// Verifies attestation documents against a set of [`TrustAnchors`], optionally with a shared
/// [`CertCache`].
///
/// Verification is pure: no I/O, no clock reads. The caller passes `now`, which is used for
/// [`CheckTime::Now`] and for the maximum age. The steps, in order:
///
/// 1. size limit, then COSE_Sign1 and payload parsing ([`UnverifiedDocument::parse`]);
///    bytes after the COSE_Sign1 are refused ([`Error::TrailingBytes`]) unless the policy
///    allows them;
/// 2. protected header `alg` = ES384 (-35), no `crit`, signature of 96 bytes;
/// 3. `cabundle[0]` byte-identical to a trust anchor, else [`Error::UntrustedRoot`];
/// 4. the chain anchor → `cabundle[1..]` → `certificate` (see below), every certificate valid
///    at the check time (reported leaf first, so an old document says "leaf expired");
/// 5. the ES384 signature over `["Signature1", protected, h'', payload]` built from the
///    received bytes, with the leaf key, else [`Error::BadSignature`];
/// 6. the [`Policy`]: document kind (enclave or NitroTPM, [`Error::KindNotAccepted`]), debug
///    mode, PCRs, nonce, user data, public key, maximum age.
///
/// # Certificate checks
///
/// This follows AWS's "Verifying the root of trust" (attestation_process.md §3.2.3–3.2.4) and
/// RFC 5280 path validation, restricted to what the Nitro PKI uses:
///
/// - every certificate is X.509 v3, signed with ecdsa-with-SHA384 (inner and outer algorithm
///   identifiers equal, no parameters), and carries an EC P-384 key;
/// - each certificate's issuer name equals (byte for byte) the subject name of the one above
///   it, and its signature verifies with that certificate's key;
/// - every certificate, the anchor included, is valid at the check time (± leeway);
/// - CA certificates (the anchor and `cabundle[1..]`) have a critical BasicConstraints with
///   `cA = TRUE`, KeyUsage `keyCertSign`, and a `pathLenConstraint` (when present) not smaller
///   than the number of CA certificates below them. The AWS root has **no**
///   pathLenConstraint, which RFC 5280 allows;
/// - the leaf is not a CA and its KeyUsage has `digitalSignature`. The leaf's KeyUsage is
///   **non-critical** in genuine documents, so the bits are checked, not the criticality;
/// - no Extended Key Usage is required or interpreted (genuine certificates have none);
/// - an unknown **critical** extension is rejected (RFC 5280 §4.2); the understood ones are
///   BasicConstraints, KeyUsage, ExtendedKeyUsage, Subject/Authority Key Identifier, CRL
///   Distribution Points, Subject Alternative Name, Certificate Policies, Authority
///   Information Access;
/// - revocation is **not** checked: AWS's guidance disables CRL checking, and the
///   intermediates' CRL distribution points are never fetched (the verifier does no I/O).
///
/// ```
/// # #[cfg(feature = "simulator")]
/// # fn main() -> Result<(), nitro_attest::Error> {
/// use nitro_attest::{Nsm, Policy, SimulatedNsm, Timestamp, Verifier};
/// let nsm = SimulatedNsm::builder().seed(7).build()?;
/// let doc = nsm.attestation(None, Some(b"nonce-1"), None)?;
///
/// // The simulator's root must be opted into explicitly...
/// let verifier = Verifier::new(nsm.trust_anchors()?);
/// let policy = Policy::new()
///     .expect_nonce(b"nonce-1")
///     .expect_pcr(0, nsm.describe_pcr(0)?.value);
/// let verified = verifier.verify(&doc, Timestamp::now(), &policy)?;
/// assert_eq!(verified.nonce.as_deref(), Some(&b"nonce-1"[..]));
///
/// // ...and the AWS root rejects simulated documents.
/// let err = Verifier::aws().verify(&doc, Timestamp::now(), &policy).unwrap_err();
/// assert!(matches!(err, nitro_attest::Error::UntrustedRoot { .. }));
/// # Ok(())
/// # }
/// # #[cfg(not(feature = "simulator"))]
/// # fn main() {}
/// ```
#[derive(Debug, Clone)]
pub struct Verifier {
    anchors: TrustAnchors,
    cache: Option<Arc<CertCache>>,
}

impl Verifier {
    /// A verifier trusting `anchors`, without cache.
    pub fn new(anchors: TrustAnchors) -> Self {
        Verifier {
            anchors,
            cache: None,
        }
    }

    /// A verifier trusting only the AWS Nitro Enclaves Root-G1.
    pub fn aws() -> Self {
        Self::new(TrustAnchors::aws())
    }

    /// Uses `cache` for already verified certificates (see [`CertCache`]); the cache can be
    /// shared between verifiers and threads.
    pub fn with_cache(mut self, cache: Arc<CertCache>) -> Self {
        self.cache = Some(cache);
        self
    }

    /// The trust anchors.
    pub fn anchors(&self) -> &TrustAnchors {
        &self.anchors
    }

    /// Parses and verifies `document` (raw COSE_Sign1 bytes). `now` is the caller's current
    /// time.
    ///
    /// # Errors
    ///
    /// The first check that fails, as a precise [`Error`].
    pub fn verify(
        &self,
        document: &[u8],
        now: Timestamp,
        policy: &Policy,
    ) -> Result<VerifiedDocument> {
        let (doc, trailing) = policy.parse(document)?;
        let mut verified = self.verify_parsed(&doc, now, policy)?;
        verified.trailing_bytes = trailing;
        Ok(verified)
    }

    /// Verifies an already parsed document.
    ///
    /// # Errors
    ///
    /// As [`Verifier::verify`].
    pub fn verify_parsed(
        &self,
        doc: &UnverifiedDocument,
        now: Timestamp,
        policy: &Policy,
    ) -> Result<VerifiedDocument> {
        if doc.algorithm() != Some(COSE_ALG_ES384) {
            return Err(Error::UnsupportedAlgorithm(doc.algorithm()));
        }
        if doc.has_critical_headers() {
            return Err(Error::Cose("critical header parameters are not supported"));
        }
        if doc.signature().len() != 96 {
            return Err(Error::SignatureLength(doc.signature().len()));
        }
        let payload = doc.payload();
        let at = match policy.check_time {
            CheckTime::Now => now,
            CheckTime::DocumentTimestamp => payload.timestamp,
            CheckTime::At(t) => t,
        };
        let leaf_key = self.verify_chain(payload, at, policy.leeway)?;
        let digest = sig_structure_digest(doc.protected_header(), doc.payload_bytes());
        let der_sig = chain::fixed_to_der(doc.signature()).ok_or(Error::BadSignature)?;
        leaf_key
            .verify_digest_sig(&digest, &der_sig)
            .map_err(|_| Error::BadSignature)?;
        policy.check_payload(payload, now)?;
        let anchor_sha256 = sha256(&payload.cabundle[0]);
        Ok(VerifiedDocument {
            document: payload.clone(),
            anchor_sha256,
            checked_at: at,
            trailing_bytes: 0,
        })
    }

    /// Walks anchor → cabundle[1..] → leaf; returns the leaf's COSE verification key.
    fn verify_chain(
        &self,
        doc: &AttestationDocument,
        at: Timestamp,
        leeway: Duration,
    ) -> Result<ParsedPublicKey> {
        let bundle = &doc.cabundle;
        let root_der = bundle.first().ok_or(Error::MissingField(Field::Cabundle))?;
        let (_, anchor) = self
            .anchors
            .find(root_der)
            .ok_or_else(|| Error::UntrustedRoot {
                fingerprint: sha256(root_der),
            })?;
        let cert_err = |cert, reason| Error::Certificate { cert, reason };
        // CA certificates below the anchor (excluding the leaf).
        let n_ca = bundle.len() - 1;
        anchor
            .info
            .check_ca(n_ca)
            .map_err(|r| cert_err(CertRef::Bundle(0), r))?;

        // Pass 1, top down: issuer names, signatures, per-certificate and role constraints.
        let mut chain: Vec<(CertRef, Arc<CertInfo>)> = Vec::with_capacity(bundle.len() + 1);
        chain.push((CertRef::Bundle(0), anchor.info.clone()));
        let mut issuer_der: &[u8] = root_der;
        for (i, der) in bundle.iter().enumerate().skip(1) {
            let issuer = &chain[chain.len() - 1].1;
            let info = self
                .link(issuer, issuer_der, der)
                .and_then(|info| info.check_ca(n_ca - i).map(|()| info))
                .map_err(|r| cert_err(CertRef::Bundle(i), r))?;
            chain.push((CertRef::Bundle(i), info));
            issuer_der = der;
        }
        let issuer = &chain[chain.len() - 1].1;
        let leaf = self
            .link(issuer, issuer_der, &doc.certificate)
            .and_then(|info| info.check_leaf().map(|()| info))
            .map_err(|r| cert_err(CertRef::Leaf, r))?;
        let key = leaf.key.clone();
        chain.push((CertRef::Leaf, leaf));

        // Pass 2, leaf first: validity at the check time, so that an old document reports its
        // expired leaf rather than an expired intermediate.
        for (cert, info) in chain.iter().rev() {
            info.check_validity(at, leeway)
                .map_err(|r| cert_err(*cert, r))?;
        }
        Ok(key)
    }

    fn link(
        &self,
        issuer: &CertInfo,
        issuer_der: &[u8],
        der: &[u8],
    ) -> Result<Arc<CertInfo>, crate::CertificateError> {
        if let Some(cache) = &self.cache {
            if let Some(hit) = cache.get(issuer_der, der) {
                return Ok(hit);
            }
            let info = Arc::new(chain::link(issuer, der)?);
            cache.insert(issuer_der, der, info.clone());
            Ok(info)
        } else {
            Ok(Arc::new(chain::link(issuer, der)?))
        }
    }
}

impl Default for Verifier {
    fn default() -> Self {
        Self::aws()
    }
}

/// Verifies `document` against `anchors` at `now` with `policy` (a [`Verifier`] without cache).
///
/// # Errors
///
/// As [`Verifier::verify`].
pub fn verify(
    document: &[u8],
    anchors: &TrustAnchors,
    now: Timestamp,
    policy: &Policy,
) -> Result<VerifiedDocument> {
    Verifier::new(anchors.clone()).verify(document, now, policy)
}
