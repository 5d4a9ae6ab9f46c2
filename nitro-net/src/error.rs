//! The crate's error type.

use std::fmt;
use std::io;
use std::time::Duration;

use crate::time::ClockOffset;

/// Everything that can go wrong in `nitro-net`.
///
/// Input from the other side of a tunnel (the parent, the enclave, a local client) never makes
/// this crate panic: malformed bytes surface as [`Error::Protocol`], refusals by the parent as
/// [`Error::Refused`] carrying the parent's code and reason.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A transport address string (`vsock:CID:PORT`, `uds:DIR:PORT`, ...) could not be parsed.
    #[error("invalid address {input:?}: {reason}")]
    InvalidAddr {
        /// The text that was parsed.
        input: String,
        /// Why it is not an address.
        reason: String,
    },
    /// An I/O operation failed. The message is the context only; the operating system's error
    /// is the [`source`](std::error::Error::source) (print the chain to see both).
    #[error("{context}")]
    Io {
        /// What was being done (and with which address).
        context: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// An operation did not finish in time.
    #[error("{context}: timed out after {after:?}")]
    Timeout {
        /// What was being done.
        context: String,
        /// The limit that expired.
        after: Duration,
    },
    /// The peer sent bytes that break the protocol (tunnel framing, hybrid vsock control line,
    /// HTTP `CONNECT`, SOCKS5, PROXY protocol, netlink).
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// A policy could not be built or parsed.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The parent answered the tunnel request with a refusal (denied by policy, name resolution
    /// failed, connection refused, ...).
    #[error("the parent refused the request: {0}")]
    Refused(Refusal),
    /// The time service produced no acceptable answer.
    #[error(transparent)]
    Time(#[from] TimeError),
    /// The caller passed an unusable argument or configuration (API misuse, not bad input).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn timeout(context: impl Into<String>, after: Duration) -> Self {
        Error::Timeout {
            context: context.into(),
            after,
        }
    }

    /// The parent's refusal, when this error is one.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            Error::Refused(r) => Some(r),
            _ => None,
        }
    }

    /// The [`io::ErrorKind`] that best describes this error (used when it is turned into an
    /// [`io::Error`]).
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            Error::Io { source, .. } => source.kind(),
            Error::Timeout { .. } => io::ErrorKind::TimedOut,
            Error::Refused(r) => match r.code {
                RefusalCode::DeniedByPolicy => io::ErrorKind::PermissionDenied,
                RefusalCode::ConnectionRefused => io::ErrorKind::ConnectionRefused,
                RefusalCode::ConnectTimeout => io::ErrorKind::TimedOut,
                RefusalCode::NetworkUnreachable => io::ErrorKind::NetworkUnreachable,
                RefusalCode::HostUnreachable => io::ErrorKind::HostUnreachable,
                RefusalCode::ResolveFailed => io::ErrorKind::NotFound,
                RefusalCode::BadRequest | RefusalCode::UnsupportedVersion => {
                    io::ErrorKind::InvalidInput
                }
                _ => io::ErrorKind::Other,
            },
            Error::Protocol(_) => io::ErrorKind::InvalidData,
            Error::InvalidAddr { .. } | Error::InvalidArgument(_) | Error::Policy(_) => {
                io::ErrorKind::InvalidInput
            }
            Error::Time(_) => io::ErrorKind::Other,
        }
    }
}

impl From<Error> for io::Error {
    /// Keeps the [`Error`] as the inner error (`io::Error::get_ref` + `downcast_ref` recovers it),
    /// with the closest [`io::ErrorKind`]. An [`Error::Io`] gives back its source unchanged.
    fn from(e: Error) -> io::Error {
        match e {
            Error::Io { source, .. } => source,
            other => io::Error::new(other.kind(), other),
        }
    }
}

/// A tunnel request refused by the parent: the code and the parent's explanation.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Refusal {
    /// Why, as a machine-readable code.
    pub code: RefusalCode,
    /// The parent's explanation, for example the policy rule that denied the destination.
    pub message: String,
}

impl Refusal {
    /// A refusal with this code and message.
    pub fn new(code: RefusalCode, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.message.is_empty() {
            write!(f, "{}", self.code)
        } else {
            write!(f, "{}: {}", self.code, self.message)
        }
    }
}

/// Machine-readable reason of a [`Refusal`], carried in one byte on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RefusalCode {
    /// The policy does not allow this destination (the message names the rule or says that no
    /// rule allows it).
    DeniedByPolicy,
    /// The parent could not resolve the name.
    ResolveFailed,
    /// The destination refused the connection.
    ConnectionRefused,
    /// Connecting to the destination timed out.
    ConnectTimeout,
    /// The parent has no route to the destination network.
    NetworkUnreachable,
    /// The destination host is unreachable.
    HostUnreachable,
    /// The request was malformed (bad host name, port 0, ...).
    BadRequest,
    /// The parent does not speak this protocol version.
    UnsupportedVersion,
    /// The parent is at its connection limit; retry later.
    Busy,
    /// The parent does not offer this service (for example time requests are disabled).
    NotSupported,
    /// Another failure on the parent.
    Internal,
    /// A code this version of the crate does not know.
    Unknown(u8),
}

impl RefusalCode {
    /// The code's wire value (status byte of a tunnel response).
    pub fn to_u8(self) -> u8 {
        match self {
            RefusalCode::DeniedByPolicy => 1,
            RefusalCode::ResolveFailed => 2,
            RefusalCode::ConnectionRefused => 3,
            RefusalCode::ConnectTimeout => 4,
            RefusalCode::NetworkUnreachable => 5,
            RefusalCode::HostUnreachable => 6,
            RefusalCode::BadRequest => 7,
            RefusalCode::UnsupportedVersion => 8,
            RefusalCode::Busy => 9,
            RefusalCode::NotSupported => 10,
            RefusalCode::Internal => 11,
            RefusalCode::Unknown(v) => v,
        }
    }

    /// The code for a wire value; `0` (success) is not a refusal and maps to `Unknown(0)`.
    pub fn from_u8(v: u8) -> Self {
        match v {
            1 => RefusalCode::DeniedByPolicy,
            2 => RefusalCode::ResolveFailed,
            3 => RefusalCode::ConnectionRefused,
            4 => RefusalCode::ConnectTimeout,
            5 => RefusalCode::NetworkUnreachable,
            6 => RefusalCode::HostUnreachable,
            7 => RefusalCode::BadRequest,
            8 => RefusalCode::UnsupportedVersion,
            9 => RefusalCode::Busy,
            10 => RefusalCode::NotSupported,
            11 => RefusalCode::Internal,
            other => RefusalCode::Unknown(other),
        }
    }
}

impl fmt::Display for RefusalCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            RefusalCode::DeniedByPolicy => "denied by policy",
            RefusalCode::ResolveFailed => "name resolution failed",
            RefusalCode::ConnectionRefused => "connection refused",
            RefusalCode::ConnectTimeout => "connect timed out",
            RefusalCode::NetworkUnreachable => "network unreachable",
            RefusalCode::HostUnreachable => "host unreachable",
            RefusalCode::BadRequest => "bad request",
            RefusalCode::UnsupportedVersion => "unsupported protocol version",
            RefusalCode::Busy => "parent busy (connection limit)",
            RefusalCode::NotSupported => "not supported by this parent",
            RefusalCode::Internal => "internal error on the parent",
            RefusalCode::Unknown(v) => return write!(f, "unknown refusal code {v}"),
        };
        f.write_str(s)
    }
}

/// Bytes from a peer that break one of the protocols this crate speaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The stream ended in the middle of a message.
    #[error("{0}: the peer closed the connection mid-message")]
    UnexpectedEof(&'static str),
    /// The message does not start with the tunnel protocol's magic bytes.
    #[error("not a nitro-net tunnel message (bad magic)")]
    BadMagic,
    /// A protocol version this implementation does not speak.
    #[error("unsupported tunnel protocol version {0}")]
    UnsupportedVersion(u8),
    /// An unknown message kind.
    #[error("unknown tunnel message kind {0}")]
    UnknownKind(u8),
    /// A length field above the protocol's limit.
    #[error("{what} is {len} bytes, above the limit of {max}")]
    TooLong {
        /// Which field or message.
        what: &'static str,
        /// The length announced or seen.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An HTTP proxy request with a method other than `CONNECT` (the local HTTP proxy only
    /// tunnels; it answers `405 Method Not Allowed`).
    #[error(
        "HTTP method {method:?} not supported: this proxy only tunnels with CONNECT (use https:// URLs, or curl --proxytunnel)"
    )]
    MethodNotAllowed {
        /// The method the client sent.
        method: String,
    },
    /// A field has an impossible value.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// Which field or message.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

impl ProtocolError {
    pub(crate) fn malformed(what: &'static str, reason: impl Into<String>) -> Self {
        ProtocolError::Malformed {
            what,
            reason: reason.into(),
        }
    }
}

/// A policy that could not be built: the TOML, or one of its rules, is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The TOML text does not parse (the message carries the line and column).
    #[error("policy file: {0}")]
    Toml(String),
    /// A rule is invalid.
    #[error("policy rule {section}[{index}]: {reason}")]
    Rule {
        /// `allow` or `deny`.
        section: &'static str,
        /// Position of the rule in its section, from 0.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A host pattern is not a valid DNS name (after normalisation) or wildcard.
    #[error("invalid host pattern {pattern:?}: {reason}")]
    InvalidHost {
        /// The pattern as written.
        pattern: String,
        /// Why it is refused.
        reason: String,
    },
    /// A CIDR block does not parse.
    #[error("invalid CIDR block {0:?}")]
    InvalidCidr(String),
    /// A port or port range is invalid.
    #[error("invalid port specification {0:?}")]
    InvalidPorts(String),
}

/// Why a time measurement was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TimeError {
    /// The round trip took longer than the configured bound, so the answer is too imprecise.
    #[error("time answer rejected: round trip {rtt:?} exceeds the bound of {max:?}")]
    RttTooLarge {
        /// Measured round-trip time.
        rtt: Duration,
        /// Configured bound.
        max: Duration,
    },
    /// The parent's time differs from the local clock by more than the configured bound.
    #[error("time answer rejected: offset {offset} exceeds the bound of {max:?}")]
    OffsetOutOfBound {
        /// Offset the answer implies (parent minus local clock).
        offset: ClockOffset,
        /// Configured bound.
        max: Duration,
    },
    /// The parent's time disagrees with the TLS-authenticated time source by more than the
    /// tolerance: the parent is lying (or its clock is broken).
    #[error(
        "the parent's time disagrees with the authenticated source ({source_name}) by {disagreement:?} (tolerance {tolerance:?})"
    )]
    ParentDisagrees {
        /// Name of the authenticated source.
        source_name: String,
        /// How far apart the two are beyond their combined uncertainty.
        disagreement: Duration,
        /// Configured tolerance.
        tolerance: Duration,
    },
    /// The answer does not echo the request's nonce.
    #[error("time answer does not match the request (nonce mismatch)")]
    NonceMismatch,
    /// The authenticated time source has no observation recent enough to check against.
    #[error("the authenticated time source ({0}) has no recent observation")]
    NoTrustedObservation(String),
    /// Stepping the system clock failed (typically [`io::ErrorKind::PermissionDenied`]: no
    /// `CAP_SYS_TIME`).
    #[error("stepping the system clock failed: {kind}{}", errno.map(|n| format!(" (errno {n})")).unwrap_or_default())]
    StepFailed {
        /// What kind of failure.
        kind: io::ErrorKind,
        /// The operating system's error number, when there is one.
        errno: Option<i32>,
    },
}

/// Displays an error followed by its sources, `": "`-separated (for log lines and the text
/// sent to a local client, where the chain would otherwise be lost).
pub(crate) fn chain<'a>(e: &'a (dyn std::error::Error + 'static)) -> impl fmt::Display + 'a {
    struct Chain<'a>(&'a (dyn std::error::Error + 'static));
    impl fmt::Display for Chain<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{}", self.0)?;
            let mut next = self.0.source();
            while let Some(s) = next {
                write!(f, ": {s}")?;
                next = s.source();
            }
            Ok(())
        }
    }
    Chain(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The IO source is shown once: in the chain, not in the message.
    #[test]
    fn io_source_is_chained_not_repeated() {
        let e = Error::io(
            "connect to vsock:3:8000",
            io::Error::from_raw_os_error(nix::libc::ECONNREFUSED),
        );
        let msg = e.to_string();
        assert_eq!(msg, "connect to vsock:3:8000");
        let src = std::error::Error::source(&e).expect("source").to_string();
        assert!(src.contains("refused"), "{src}");
        let full = chain(&e).to_string();
        assert_eq!(full, format!("{msg}: {src}"));
        assert_eq!(full.matches("refused").count(), 1, "{full}");
    }
}
