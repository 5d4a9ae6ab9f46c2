//! The crate's error type.

use std::fmt;
use std::time::Duration;

/// Everything that can go wrong in this crate.
///
/// Errors caused by untrusted input (a malformed envelope, a hostile HTTP response, a damaged
/// sealed secret) are distinct variants from API misuse ([`Error::InvalidArgument`]); none of
/// them ever carries key material, plaintexts or credentials. An underlying error (I/O, TLS,
/// attestation) is chained as [`source`](std::error::Error::source), never repeated in the
/// message: print the chain to see both.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A `CiphertextForRecipient` (CMS `EnvelopedData`) could not be parsed or opened.
    #[error("invalid CMS envelope")]
    Cms(#[from] CmsError),

    /// KMS (or the local KMS) answered with an error.
    #[error(transparent)]
    Service(#[from] ServiceError),

    /// A `Recipient` was sent but the response carried no `CiphertextForRecipient`: the call
    /// fails closed instead of using a plaintext field.
    #[error(
        "{operation}: the response has no CiphertextForRecipient although a Recipient was sent"
    )]
    MissingCiphertextForRecipient {
        /// The KMS operation, e.g. `Decrypt`.
        operation: &'static str,
    },

    /// A `Recipient` was sent and the server answered in plaintext (it ignored `Recipient`, as
    /// moto does): the call fails closed.
    #[error(
        "{operation}: the server returned a plaintext although a Recipient was sent (Recipient ignored?)"
    )]
    RecipientIgnored {
        /// The KMS operation, e.g. `Decrypt`.
        operation: &'static str,
    },

    /// A response (or, for the parent protocols, a message from the peer) could not be
    /// understood.
    #[error("{operation}: invalid response: {reason}")]
    InvalidResponse {
        /// The operation (or protocol) whose message was invalid.
        operation: &'static str,
        /// What was wrong.
        reason: String,
    },

    /// I/O failed (connecting, reading, writing, files).
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// TLS failed (handshake, certificate validation).
    #[error("TLS handshake failed")]
    Tls(#[source] std::io::Error),

    /// HTTP failed below the KMS protocol (connection closed, malformed HTTP).
    #[error("HTTP: {0}")]
    Http(String),

    /// A step took longer than its configured timeout.
    #[error("{what} timed out after {after:?}")]
    Timeout {
        /// What timed out.
        what: &'static str,
        /// The configured limit.
        after: Duration,
    },

    /// No usable credentials: its `kind` says what to do about it.
    #[error("credentials: {reason}")]
    Credentials {
        /// Missing, expired, or the source failed.
        kind: CredentialsErrorKind,
        /// What happened, for people.
        reason: String,
    },

    /// SigV4 signing failed, or (local KMS) an incoming signature did not verify.
    #[error("SigV4: {0}")]
    Signing(String),

    /// Attestation failed: the NSM refused to produce a document, or (local KMS) a document did
    /// not verify.
    #[error("attestation failed")]
    Attestation(#[from] nitro_attest::Error),

    /// A cryptographic operation failed (key generation, encryption). Opaque on purpose.
    #[error("cryptographic operation failed: {0}")]
    Crypto(&'static str),

    /// A sealed secret was malformed, damaged, or does not match what the caller expected.
    #[error("sealed secret: {reason}")]
    Sealed {
        /// Which check failed.
        kind: SealedErrorKind,
        /// What happened, for people.
        reason: String,
    },

    /// A key policy document is malformed or uses something the local KMS does not support.
    #[error("key policy: {0}")]
    Policy(String),

    /// An argument or the configuration is invalid (API misuse, not untrusted input).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

/// Why credentials were unusable ([`Error::Credentials`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CredentialsErrorKind {
    /// None configured (e.g. `AWS_ACCESS_KEY_ID` unset): fix the configuration.
    Missing,
    /// The source returned credentials that have already expired (check the clock).
    Expired,
    /// The source failed or refused (the parent, the AWS SDK chain): a later attempt may work.
    Unavailable,
    /// The source returned something unusable (e.g. an expiration that does not parse).
    Invalid,
}

/// Which check a sealed secret failed ([`Error::Sealed`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SealedErrorKind {
    /// Not a sealed-secret document (syntax, version, fields).
    Malformed,
    /// The document parses but its ciphertext or metadata was modified (authentication failed).
    Tampered,
    /// The document's encryption context is absent or differs from the expected one.
    ContextMismatch,
    /// The document was sealed under another KMS key than the expected one.
    KeyMismatch,
    /// The parent could not provide the document (unknown name, unreadable file).
    Unavailable,
}

/// `e` and its sources, joined with `": "` (for logs and for messages sent to a peer, where the
/// source chain would otherwise be lost).
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        let text = s.to_string();
        // Some errors (of other crates) repeat their source in their message already.
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = s.source();
    }
    out
}

impl Error {
    pub(crate) fn credentials(kind: CredentialsErrorKind, reason: impl Into<String>) -> Self {
        Self::Credentials {
            kind,
            reason: reason.into(),
        }
    }

    pub(crate) fn sealed(kind: SealedErrorKind, reason: impl Into<String>) -> Self {
        Self::Sealed {
            kind,
            reason: reason.into(),
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    /// Whether a retry may succeed (throttling, 5xx, transient network failures, timeouts).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Service(e) => e.is_retryable(),
            Self::Io { .. } | Self::Http(_) | Self::Timeout { .. } => true,
            _ => false,
        }
    }

    /// The KMS error code (`__type` without namespace), when this is a service error.
    pub fn service_code(&self) -> Option<&str> {
        match self {
            Self::Service(e) => Some(&e.code),
            _ => None,
        }
    }
}

/// An error returned by KMS (or by the local KMS, or another KMS-compatible server), with the
/// code from `__type` (namespace removed) and the message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub struct ServiceError {
    /// HTTP status code.
    pub status: u16,
    /// Error code, e.g. `AccessDeniedException` (from `__type` or `x-amzn-ErrorType`).
    pub code: String,
    /// Error message (`message` or `Message`), empty when the server sent none.
    pub message: String,
    /// `x-amzn-RequestId`, when present.
    pub request_id: Option<String>,
}

impl ServiceError {
    /// Creates a service error.
    pub fn new(status: u16, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.into(),
            message: message.into(),
            request_id: None,
        }
    }

    /// Whether KMS documents this error as transient.
    pub fn is_retryable(&self) -> bool {
        self.status >= 500
            || matches!(
                self.code.as_str(),
                "ThrottlingException"
                    | "Throttling"
                    | "TooManyRequestsException"
                    | "RequestLimitExceeded"
                    | "DependencyTimeoutException"
                    | "KeyUnavailableException"
                    | "KMSInternalException"
                    | "ServiceUnavailable"
                    | "ServiceUnavailableException"
                    | "InternalFailure"
            )
    }
}

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KMS error {} (HTTP {})", self.code, self.status)?;
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        if let Some(id) = &self.request_id {
            write!(f, " [request id {id}]")?;
        }
        Ok(())
    }
}

/// Why a CMS envelope was rejected. Every malformed, truncated or hostile input maps to one of
/// these; none panics.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CmsError {
    /// The input ended inside an element.
    #[error("truncated input")]
    Truncated,
    /// The input is larger than the configured limit, or a length does not fit.
    #[error("input or length too large")]
    TooLarge,
    /// Nesting deeper than the parser follows.
    #[error("nesting too deep")]
    TooDeep,
    /// Not valid BER, or a value of the wrong shape.
    #[error("malformed BER: {0}")]
    Malformed(&'static str),
    /// A required element is absent.
    #[error("missing {0}")]
    Missing(&'static str),
    /// An element has an unexpected tag.
    #[error("{field}: unexpected tag 0x{found:02x}")]
    UnexpectedTag {
        /// The element being read.
        field: &'static str,
        /// The identifier octet found.
        found: u8,
    },
    /// Bytes after the end of an element that must be complete.
    #[error("trailing data after {0}")]
    TrailingData(&'static str),
    /// An object identifier other than the one required.
    #[error("{field}: unsupported object identifier {oid}")]
    UnexpectedOid {
        /// The element being read.
        field: &'static str,
        /// Dotted form of the identifier found.
        oid: String,
    },
    /// A version number this crate does not support.
    #[error("{field}: unsupported version {version}")]
    UnsupportedVersion {
        /// The structure carrying the version.
        field: &'static str,
        /// The version found.
        version: u32,
    },
    /// Not exactly one recipient, or a recipient that is not a `KeyTransRecipientInfo`.
    #[error("unsupported recipients: {0}")]
    UnsupportedRecipient(&'static str),
    /// Key-encryption parameters other than RSAES-OAEP with SHA-256, MGF1-SHA-256, empty label.
    #[error("unsupported key encryption parameters: {0}")]
    UnsupportedKeyEncryption(&'static str),
    /// The IV is not a 16-byte OCTET STRING.
    #[error("AES-256-CBC IV must be 16 bytes, found {0}")]
    BadIv(usize),
    /// Optional structures (originatorInfo, unprotectedAttrs) this crate does not process.
    #[error("unsupported optional field {0}")]
    UnsupportedField(&'static str),
    /// The envelope names a recipient other than the key used to open it.
    #[error("the envelope is addressed to another recipient")]
    RecipientMismatch,
    /// The encrypted content key could not be decrypted with the private key (wrong key or
    /// damaged envelope).
    #[error("RSA-OAEP decryption of the content key failed")]
    KeyDecryption,
    /// The decrypted content key is not 32 bytes.
    #[error("content key must be 32 bytes, found {0}")]
    BadContentKey(usize),
    /// The encrypted content is empty or not a whole number of AES blocks.
    #[error("encrypted content length {0} is not a positive multiple of 16")]
    BadContentLength(usize),
    /// The PKCS#7 padding is invalid (wrong key or damaged content).
    #[error("invalid PKCS#7 padding")]
    BadPadding,
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn sources_are_chained_not_repeated() {
        let io = || std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused by peer");
        let e = Error::io("connecting to kms.eu-west-1.amazonaws.com:443", io());
        assert_eq!(
            e.to_string(),
            "connecting to kms.eu-west-1.amazonaws.com:443"
        );
        assert_eq!(e.source().unwrap().to_string(), "refused by peer");
        assert_eq!(
            chain(&e),
            "connecting to kms.eu-west-1.amazonaws.com:443: refused by peer"
        );
        let tls = Error::Tls(io());
        assert!(!tls.to_string().contains("refused by peer"), "{tls}");
        assert_eq!(chain(&tls), "TLS handshake failed: refused by peer");
        let cms = Error::from(CmsError::Truncated);
        assert!(!cms.to_string().contains("truncated"), "{cms}");
        assert_eq!(chain(&cms), "invalid CMS envelope: truncated input");
        // A service error is transparent: its message is the error's, with no source.
        let svc = Error::from(ServiceError::new(400, "AccessDeniedException", "no"));
        assert_eq!(chain(&svc), svc.to_string());
        assert_eq!(svc.service_code(), Some("AccessDeniedException"));
    }

    #[test]
    fn kinds_are_fields() {
        let e = Error::credentials(
            CredentialsErrorKind::Missing,
            "AWS_ACCESS_KEY_ID is not set",
        );
        assert!(matches!(
            e,
            Error::Credentials {
                kind: CredentialsErrorKind::Missing,
                ..
            }
        ));
        assert_eq!(e.to_string(), "credentials: AWS_ACCESS_KEY_ID is not set");
        let e = Error::sealed(SealedErrorKind::KeyMismatch, "sealed under k1, expected k2");
        assert_eq!(e.to_string(), "sealed secret: sealed under k1, expected k2");
    }
}
