//! The crate's error type.

use std::fmt;

use crate::time::Timestamp;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while parsing, verifying or requesting an attestation document.
///
/// Variants name precisely what failed: which payload [`Field`], which certificate
/// ([`CertRef`]), which PCR. Errors caused by untrusted input (the document) are distinct from
/// errors caused by the caller ([`Error::InvalidArgument`]) and from NSM failures
/// ([`Error::Nsm`], [`Error::Io`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // ---- size and encoding -------------------------------------------------------------------
    /// The document is larger than [`MAX_DOCUMENT_SIZE`](crate::MAX_DOCUMENT_SIZE); it was
    /// rejected before any parsing.
    #[error("document is {size} bytes, over the {limit}-byte limit")]
    DocumentTooLarge {
        /// Size of the input.
        size: usize,
        /// The limit it exceeded.
        limit: usize,
    },
    /// The bytes are not well-formed CBOR (or use a CBOR feature that attestation documents do
    /// not use, such as nesting deeper than the limit).
    #[error("malformed CBOR at byte {offset}: {reason}")]
    Cbor {
        /// Byte offset of the problem, relative to the start of the enclosing item (the document
        /// for the envelope, the payload for payload fields).
        offset: usize,
        /// What was wrong.
        reason: &'static str,
    },
    /// The CBOR is well formed but is not a COSE_Sign1 structure as the NSM produces it.
    #[error("not a COSE_Sign1 document: {0}")]
    Cose(&'static str),
    /// The protected header names an algorithm other than ES384 (-35), or none.
    #[error("unsupported COSE algorithm {} (attestation documents use ES384 = -35)", .0.map_or_else(|| "(none)".to_owned(), |a| a.to_string()))]
    UnsupportedAlgorithm(Option<i64>),
    /// Bytes follow the COSE_Sign1 structure. They are not covered by the signature, so a
    /// verifier refuses them unless the policy opts in with
    /// [`Policy::allow_trailing_bytes`](crate::Policy::allow_trailing_bytes) (some tools store
    /// a trailer after the document, e.g. dstack).
    #[error("{len} trailing bytes after the COSE_Sign1 structure (which ends at byte {offset})")]
    TrailingBytes {
        /// Length of the COSE_Sign1 structure, i.e. where the trailing bytes start.
        offset: usize,
        /// Number of trailing bytes.
        len: usize,
    },
    /// The COSE signature is not the 96-byte raw `r || s` encoding ES384 requires.
    #[error("COSE signature is {0} bytes, ES384 requires 96 (raw r || s)")]
    SignatureLength(usize),

    /// Text input is neither raw CBOR, hex nor base64 (see [`decode_input`](crate::decode_input)).
    #[error("cannot decode input: {0}")]
    InputEncoding(String),

    // ---- payload -----------------------------------------------------------------------------
    /// A mandatory payload field is absent or CBOR `null`.
    #[error("payload field `{0}` is missing")]
    MissingField(Field),
    /// A payload field occurs twice in the payload map.
    #[error("payload field `{0}` appears more than once")]
    DuplicateField(Field),
    /// The payload has both `pcrs` (Nitro Enclaves) and `nitrotpm_pcrs` (NitroTPM), so its
    /// [`DocumentKind`](crate::DocumentKind) is ambiguous.
    #[error("payload has both `pcrs` and `nitrotpm_pcrs`: enclave or NitroTPM document?")]
    AmbiguousKind,
    /// A payload field has the wrong CBOR type, size or value.
    #[error("payload field `{field}` is invalid: {reason}")]
    InvalidField {
        /// The offending field.
        field: Field,
        /// What is wrong with it.
        reason: String,
    },

    // ---- certificate chain -------------------------------------------------------------------
    /// `cabundle[0]` is not one of the trusted roots (identified by the SHA-256 of its DER).
    #[error(
        "untrusted root: cabundle[0] has SHA-256 {}, which is not a configured trust anchor",
        hex::encode(fingerprint)
    )]
    UntrustedRoot {
        /// SHA-256 of the DER of `cabundle[0]`.
        fingerprint: [u8; 32],
    },
    /// A certificate of the chain failed a check.
    #[error("{cert}: {reason}")]
    Certificate {
        /// Which certificate.
        cert: CertRef,
        /// What failed.
        reason: CertificateError,
    },

    // ---- COSE signature ----------------------------------------------------------------------
    /// The ES384 signature does not verify over the document's `Sig_structure` with the leaf
    /// certificate's key.
    #[error("COSE signature does not verify with the leaf certificate's key")]
    BadSignature,

    // ---- policy ------------------------------------------------------------------------------
    /// The document was produced by an enclave in debug mode (PCR0, PCR1 and PCR2 all zero) and
    /// the policy does not allow debug-mode documents.
    #[error("debug-mode document (PCR0/1/2 are all zero) and the policy does not allow debug mode")]
    DebugMode,
    /// The document is of a kind the policy does not accept (by default only
    /// [`DocumentKind::Enclave`](crate::DocumentKind::Enclave); see
    /// [`Policy::accept_kinds`](crate::Policy::accept_kinds)).
    #[error("{kind} attestation documents are not accepted by the policy")]
    KindNotAccepted {
        /// The document's kind.
        kind: crate::DocumentKind,
    },
    /// An expected PCR is absent from the document.
    #[error("PCR{index} is expected but not present in the document")]
    PcrMissing {
        /// PCR index.
        index: u16,
    },
    /// A PCR has a value other than the expected one.
    #[error(
        "PCR{index} mismatch: expected {}, document has {}",
        hex::encode(expected),
        hex::encode(actual)
    )]
    PcrMismatch {
        /// PCR index.
        index: u16,
        /// Value the policy expects.
        expected: Vec<u8>,
        /// Value in the document.
        actual: Vec<u8>,
    },
    /// `nonce`, `user_data` or `public_key` differs from the expected value (or is absent).
    #[error("{field} mismatch: expected {}, document has {}", hex::encode(expected), actual.as_deref().map_or_else(|| "null".to_owned(), hex::encode))]
    FieldMismatch {
        /// [`Field::Nonce`], [`Field::UserData`] or [`Field::PublicKey`].
        field: Field,
        /// Value the policy expects.
        expected: Vec<u8>,
        /// Value in the document (`None` when the field is absent/null).
        actual: Option<Vec<u8>>,
    },
    /// The document is older than the policy's maximum age.
    #[error(
        "document from {timestamp} is {age_ms} ms old at {now}, over the maximum age of {max_age_ms} ms"
    )]
    DocumentTooOld {
        /// The document's timestamp.
        timestamp: Timestamp,
        /// The caller's current time.
        now: Timestamp,
        /// `now - timestamp` in milliseconds.
        age_ms: u64,
        /// The policy's maximum age in milliseconds.
        max_age_ms: u64,
    },
    /// The document's timestamp is later than `now` plus the policy's leeway.
    #[error("document timestamp {timestamp} is in the future (now {now}, leeway {leeway_ms} ms)")]
    DocumentFromFuture {
        /// The document's timestamp.
        timestamp: Timestamp,
        /// The caller's current time.
        now: Timestamp,
        /// The policy's leeway in milliseconds.
        leeway_ms: u64,
    },

    // ---- NSM ---------------------------------------------------------------------------------
    /// The NSM (real or simulated) answered with an error code.
    #[error("NSM error: {0}")]
    Nsm(NsmErrorCode),
    /// The NSM answered with a response that does not match the request.
    #[error("unexpected NSM response: {0}")]
    NsmResponse(String),
    /// An I/O operation failed: opening or talking to the NSM device, reading or writing a
    /// simulator PKI file, or serving the HTTP API. `context` says what was being done (the
    /// message shows only it; the I/O error is the [`source`](std::error::Error::source)).
    #[error("{context}")]
    Io {
        /// What was being done, e.g. `opening /dev/nsm`.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    // ---- caller errors -----------------------------------------------------------------------
    /// An argument supplied by the caller (not the document) is invalid, e.g. a trust anchor
    /// that is not a P-384 CA certificate or a malformed PEM.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

/// A top-level field of the attestation document payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Field {
    /// `module_id` (text).
    ModuleId,
    /// `digest` (text, `"SHA384"`).
    Digest,
    /// `timestamp` (uint, milliseconds since the Unix epoch).
    Timestamp,
    /// `pcrs` (map uint → bstr) of a Nitro Enclaves document.
    Pcrs,
    /// `nitrotpm_pcrs` (map uint → bstr) of a NitroTPM document.
    NitroTpmPcrs,
    /// `certificate` (bstr, DER).
    Certificate,
    /// `cabundle` (array of bstr, DER, root first).
    Cabundle,
    /// `public_key` (bstr or null).
    PublicKey,
    /// `user_data` (bstr or null).
    UserData,
    /// `nonce` (bstr or null).
    Nonce,
    /// The payload map itself.
    Payload,
}

impl Field {
    /// The CBOR map key of this field (`"module_id"`, ...); `"payload"` for [`Field::Payload`].
    pub fn name(self) -> &'static str {
        match self {
            Field::ModuleId => "module_id",
            Field::Digest => "digest",
            Field::Timestamp => "timestamp",
            Field::Pcrs => "pcrs",
            Field::NitroTpmPcrs => "nitrotpm_pcrs",
            Field::Certificate => "certificate",
            Field::Cabundle => "cabundle",
            Field::PublicKey => "public_key",
            Field::UserData => "user_data",
            Field::Nonce => "nonce",
            Field::Payload => "payload",
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Identifies one certificate of a document's chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CertRef {
    /// `cabundle[i]` (0 is the root, then regional, zonal, instance in real documents).
    Bundle(usize),
    /// The document's `certificate` (the leaf that signed the document).
    Leaf,
    /// A configured trust anchor (the index in [`TrustAnchors`](crate::TrustAnchors)).
    Anchor(usize),
}

impl fmt::Display for CertRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertRef::Bundle(i) => write!(f, "cabundle[{i}]"),
            CertRef::Leaf => f.write_str("certificate (leaf)"),
            CertRef::Anchor(i) => write!(f, "trust anchor #{i}"),
        }
    }
}

/// Why a certificate of the chain was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertificateError {
    /// Not a well-formed DER X.509 certificate (or trailing bytes after it).
    #[error("malformed X.509 certificate: {0}")]
    Malformed(String),
    /// Not an X.509 v3 certificate.
    #[error("not an X.509 v3 certificate")]
    NotVersion3,
    /// Signed with an algorithm other than ecdsa-with-SHA384 (or the inner and outer signature
    /// algorithm identifiers differ).
    #[error("signature algorithm {0} is not ecdsa-with-SHA384")]
    UnsupportedSignatureAlgorithm(String),
    /// The subject key is not an EC P-384 key.
    #[error("subject public key is not EC P-384: {0}")]
    UnsupportedKey(String),
    /// The certificate's `notAfter` is before the check time (minus leeway).
    #[error("expired: valid until {not_after}, checked at {at}")]
    Expired {
        /// End of the validity period.
        not_after: Timestamp,
        /// The check time.
        at: Timestamp,
    },
    /// The certificate's `notBefore` is after the check time (plus leeway).
    #[error("not yet valid: valid from {not_before}, checked at {at}")]
    NotYetValid {
        /// Start of the validity period.
        not_before: Timestamp,
        /// The check time.
        at: Timestamp,
    },
    /// The certificate's issuer name is not the subject name of the certificate above it.
    #[error("issuer name does not match the subject of the issuing certificate")]
    IssuerMismatch,
    /// The certificate's signature does not verify with the issuing certificate's key.
    #[error("signature does not verify with the issuing certificate's key")]
    BadSignature,
    /// A certificate used as a CA lacks BasicConstraints `cA = TRUE`.
    #[error("used as a CA but BasicConstraints does not say cA = TRUE")]
    NotCa,
    /// A CA certificate's BasicConstraints extension is not marked critical.
    #[error("BasicConstraints of a CA certificate is not critical")]
    BasicConstraintsNotCritical,
    /// A CA's `pathLenConstraint` allows fewer intermediate CAs than follow it.
    #[error("pathLenConstraint {path_len} exceeded: {below} CA certificates follow")]
    PathLenExceeded {
        /// The constraint.
        path_len: u32,
        /// Number of non-leaf certificates below this one.
        below: usize,
    },
    /// A required KeyUsage bit is absent (`keyCertSign` for CAs, `digitalSignature` for the
    /// leaf), or the KeyUsage extension is missing.
    #[error("KeyUsage lacks {0}")]
    KeyUsage(&'static str),
    /// The leaf certificate is a CA certificate.
    #[error("the leaf certificate must not be a CA")]
    LeafIsCa,
    /// The certificate has a critical extension this verifier does not process.
    #[error("unsupported critical extension {0}")]
    UnknownCriticalExtension(String),
    /// An extension occurs twice or cannot be parsed.
    #[error("invalid extension: {0}")]
    InvalidExtension(String),
}

impl Error {
    /// An [`Error::Io`] with its context.
    // Only the NSM device, the simulator's PKI files and the HTTP API do I/O.
    #[cfg_attr(
        not(any(feature = "device", feature = "simulator", feature = "http-api")),
        allow(dead_code)
    )]
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// Error codes the NSM returns (mirrors the NSM API's `ErrorCode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NsmErrorCode {
    /// Input argument(s) invalid.
    InvalidArgument,
    /// PCR index out of bounds.
    InvalidIndex,
    /// The response does not correspond to the request.
    InvalidResponse,
    /// The PCR is locked (read-only) and the operation would modify it.
    ReadOnlyIndex,
    /// The request cannot be fulfilled (missing capability).
    InvalidOperation,
    /// The output buffer is too small.
    BufferTooSmall,
    /// The request is too large (over 4 KiB of CBOR).
    InputTooLarge,
    /// Internal NSM error. The real driver reports every failing `ioctl` errno other than
    /// `EMSGSIZE` this way.
    InternalError,
}

impl fmt::Display for NsmErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}
