//! The crate's error type.

use std::fmt;
use std::io;

use crate::internal::proto;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in `nitro-fs`.
///
/// Errors caused by the peer (a malformed NBD message, a tampered block) are kept apart from
/// errors caused by the caller (an out-of-range request, a write to a read-only device), so
/// that callers can tell an attack from a bug.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system I/O error (socket, file, ioctl). `context` says what was being
    /// done; the operating system's error is the [`source`](std::error::Error::source).
    #[error("{context}")]
    Io {
        /// What was being done, e.g. `reading the NBD greeting` or `opening /dev/nbd0`.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// The peer sent bytes that do not follow the NBD protocol. The connection is unusable.
    #[error("NBD protocol violation by the peer: {0}")]
    Protocol(ProtocolError),

    /// The NBD server refused an option during the handshake.
    #[error("NBD server refused {option} with {reply}{}", message_suffix(.message))]
    Negotiation {
        /// The option that was refused (e.g. [`NbdOption::GO`]).
        option: NbdOption,
        /// The server's error reply (e.g. [`NbdReplyType::ERR_POLICY`],
        /// [`NbdReplyType::ERR_TLS_REQD`]).
        reply: NbdReplyType,
        /// The server's human-readable message (may be empty).
        message: String,
    },

    /// The server has no export of this name.
    #[error("NBD export {0:?} does not exist on the server")]
    ExportNotFound(String),

    /// The NBD server answered a request with an error.
    #[error("NBD server failed {command} at offset {offset} (length {length}): {errno}")]
    Server {
        /// The command that failed ([`NbdCommand::READ`], [`NbdCommand::WRITE`], ...).
        command: NbdCommand,
        /// Request offset.
        offset: u64,
        /// Request length.
        length: u64,
        /// The NBD error value.
        errno: NbdErrno,
    },

    /// The connection to the server is gone and could not be re-established.
    #[error("NBD connection lost: {0}")]
    Disconnected(String),

    /// The connection was lost after the server acknowledged writes that no flush had
    /// yet made durable: those writes may be lost. Reported once, by the next `flush`.
    #[error(
        "the NBD connection was lost before acknowledged writes were flushed: they may be lost"
    )]
    UnflushedWritesLost,

    /// A request reaches past the end of the device.
    #[error("request at offset {offset} with length {length} exceeds the device size {size}")]
    OutOfRange {
        /// Request offset.
        offset: u64,
        /// Request length.
        length: u64,
        /// Device size.
        size: u64,
    },

    /// A request is not aligned to the device's minimum block size.
    #[error("request at offset {offset} with length {length} is not aligned to {alignment} bytes")]
    Unaligned {
        /// Request offset.
        offset: u64,
        /// Request length.
        length: u64,
        /// Required alignment.
        alignment: u32,
    },

    /// The device is read-only.
    #[error("the device is read-only")]
    ReadOnly,

    /// A request or parameter is invalid (bad size, bad name, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// The operation is not supported by this device or peer.
    #[error("unsupported: {0}")]
    Unsupported(String),

    /// Stored data failed authentication: the parent (or the storage) altered, swapped or
    /// rolled back something. The data is never returned.
    #[error("integrity check failed: {0}")]
    Integrity(IntegrityError),

    /// The device was rolled back: the freshness anchor knows a newer state than the one
    /// the storage presents.
    #[error(
        "rollback detected: the freshness anchor holds generation {anchor_generation} but the device presents generation {device_generation}"
    )]
    Rollback {
        /// Generation recorded by the freshness anchor.
        anchor_generation: u64,
        /// Generation found on the device.
        device_generation: u64,
    },

    /// The device does not contain a sealed-device header (never initialised, or not ours).
    /// Only returned when no particular device is expected: with an expected
    /// [`DeviceId`](crate::sealed::DeviceId) the same situation is
    /// [`Error::SealedDeviceMissing`].
    #[error("not a sealed device: {0}")]
    NotSealed(String),

    /// A particular sealed device was expected (bound in the freshness anchor, or
    /// [`SealedConfig::expect_device`](crate::sealed::SealedConfig::expect_device)) but no
    /// authentic header of it is there: the storage serves zeros, both header copies are
    /// damaged, or the device was replaced. The parent may be trying to reset the volume; it
    /// is never re-created.
    #[error("sealed device {expected} is missing: {reason}")]
    SealedDeviceMissing {
        /// The expected device identity.
        expected: crate::sealed::DeviceId,
        /// What was found instead.
        reason: String,
    },

    /// The storage holds a sealed device other than the expected one (e.g. another volume of
    /// the same enclave substituted by the parent).
    #[error("expected sealed device {expected}, found {found}")]
    UnexpectedDevice {
        /// The expected device identity.
        expected: crate::sealed::DeviceId,
        /// The identity in the headers found.
        found: crate::sealed::DeviceId,
    },

    /// Wrapping or unwrapping the data key failed. When a service failed (e.g. AWS KMS with
    /// the `kms` feature: a `nitro_kms::Error`), it is the `source`, so a caller can downcast
    /// it and decide whether to retry.
    #[error("key wrapping failed: {reason}")]
    KeyWrap {
        /// What failed, e.g. `KMS Decrypt` or `wrapped key has the wrong length`.
        reason: String,
        /// The underlying error, if any.
        #[source]
        source: Option<BoxError>,
    },

    /// The freshness anchor failed to load or store state, or refused an update. An anchor
    /// backed by a service reports that service's error as the `source`.
    #[error("freshness anchor failed: {reason}")]
    Anchor {
        /// What failed.
        reason: String,
        /// The underlying error, if any.
        #[source]
        source: Option<BoxError>,
    },

    /// A previous flush of the sealed device failed, so its on-disk state is uncertain; the
    /// device must be reopened (which recovers the last committed state).
    #[error("the sealed device must be reopened after a failed flush: {0}")]
    Poisoned(String),

    /// A cryptographic primitive failed unexpectedly (not an authentication failure).
    #[error("cryptographic failure: {0}")]
    Crypto(&'static str),
}

/// A boxed error from a key-wrapping service or a freshness-anchor store.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

fn message_suffix(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

impl From<ProtocolError> for Error {
    fn from(e: ProtocolError) -> Self {
        Self::Protocol(e)
    }
}

impl Error {
    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        Self::InvalidArgument(msg.into())
    }

    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    /// An [`Error::KeyWrap`] without an underlying error.
    pub fn key_wrap(reason: impl Into<String>) -> Self {
        Self::KeyWrap {
            reason: reason.into(),
            source: None,
        }
    }

    /// An [`Error::Anchor`] without an underlying error.
    pub fn anchor(reason: impl Into<String>) -> Self {
        Self::Anchor {
            reason: reason.into(),
            source: None,
        }
    }

    /// True when the error means that stored data did not authenticate, was rolled back, or
    /// the expected sealed device is missing or replaced.
    pub fn is_integrity(&self) -> bool {
        matches!(
            self,
            Self::Integrity(_)
                | Self::Rollback { .. }
                | Self::SealedDeviceMissing { .. }
                | Self::UnexpectedDevice { .. }
        )
    }
}

/// What failed authentication in a sealed device.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum IntegrityError {
    /// A data block failed AES-GCM authentication (altered, swapped from another position or
    /// device, or an older version).
    Block {
        /// Logical block index.
        index: u64,
    },
    /// A metadata page (nonces and tags of a range of blocks) or hash-tree page does not
    /// match the hash tree.
    Metadata {
        /// Tree level (0 = the per-block metadata pages).
        level: u8,
        /// Page index within the level.
        page: u64,
        /// First logical block covered by the page.
        first_block: u64,
        /// Last logical block covered by the page.
        last_block: u64,
    },
    /// Neither copy of the device header authenticates.
    Header(String),
    /// The device presents the same generation as the freshness anchor but a different
    /// hash-tree root: a forked or forged state.
    Fork {
        /// The generation both claim.
        generation: u64,
    },
}

impl fmt::Display for IntegrityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Block { index } => write!(
                f,
                "block {index} does not authenticate (altered, swapped or rolled back)"
            ),
            Self::Metadata {
                level,
                page,
                first_block,
                last_block,
            } => write!(
                f,
                "metadata page {page} at tree level {level} (blocks {first_block}..={last_block}) does not match the hash tree"
            ),
            Self::Header(why) => write!(f, "device header: {why}"),
            Self::Fork { generation } => write!(
                f,
                "the device's hash-tree root for generation {generation} differs from the freshness anchor's"
            ),
        }
    }
}

/// `e` and its sources, joined with `: ` (for messages that must carry the whole chain).
pub(crate) fn display_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

/// Adds a context to an [`io::Result`], making it a crate [`Result`].
pub(crate) trait IoContext<T> {
    /// Wraps the error in [`Error::Io`] with `context`.
    fn context(self, context: &str) -> Result<T>;
    /// Wraps the error in [`Error::Io`] with the context `f` computes (only on error).
    fn with_context(self, f: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn context(self, context: &str) -> Result<T> {
        self.map_err(|e| Error::io(context, e))
    }

    fn with_context(self, f: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(f(), e))
    }
}

/// An NBD option (`NBD_OPT_*`), as named in [`Error::Negotiation`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NbdOption(pub u32);

impl NbdOption {
    /// `NBD_OPT_EXPORT_NAME`: enter transmission (legacy).
    pub const EXPORT_NAME: Self = Self(proto::OPT_EXPORT_NAME);
    /// `NBD_OPT_LIST`: list exports.
    pub const LIST: Self = Self(proto::OPT_LIST);
    /// `NBD_OPT_INFO`: describe an export.
    pub const INFO: Self = Self(proto::OPT_INFO);
    /// `NBD_OPT_GO`: describe an export and enter transmission.
    pub const GO: Self = Self(proto::OPT_GO);

    /// The option's name in the NBD specification (`NBD_OPT_GO`, ...).
    pub fn name(self) -> &'static str {
        proto::option_name(self.0)
    }
}

impl fmt::Display for NbdOption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An NBD option reply type (`NBD_REP_*`); in [`Error::Negotiation`] always an error reply
/// (`NBD_REP_ERR_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NbdReplyType(pub u32);

impl NbdReplyType {
    /// `NBD_REP_ERR_UNSUP`: the server does not know the option.
    pub const ERR_UNSUP: Self = Self(proto::REP_ERR_UNSUP);
    /// `NBD_REP_ERR_POLICY`: forbidden by the server's policy.
    pub const ERR_POLICY: Self = Self(proto::REP_ERR_POLICY);
    /// `NBD_REP_ERR_INVALID`: the option was syntactically invalid.
    pub const ERR_INVALID: Self = Self(proto::REP_ERR_INVALID);
    /// `NBD_REP_ERR_PLATFORM`: not supported on the server's platform.
    pub const ERR_PLATFORM: Self = Self(proto::REP_ERR_PLATFORM);
    /// `NBD_REP_ERR_TLS_REQD`: the server requires TLS first.
    pub const ERR_TLS_REQD: Self = Self(proto::REP_ERR_TLS_REQD);
    /// `NBD_REP_ERR_UNKNOWN`: no such export.
    pub const ERR_UNKNOWN: Self = Self(proto::REP_ERR_UNKNOWN);
    /// `NBD_REP_ERR_SHUTDOWN`: the server is shutting down.
    pub const ERR_SHUTDOWN: Self = Self(proto::REP_ERR_SHUTDOWN);
    /// `NBD_REP_ERR_BLOCK_SIZE_REQD`: the client must request block sizes.
    pub const ERR_BLOCK_SIZE_REQD: Self = Self(proto::REP_ERR_BLOCK_SIZE_REQD);
    /// `NBD_REP_ERR_TOO_BIG`: a request or reply would be too large.
    pub const ERR_TOO_BIG: Self = Self(proto::REP_ERR_TOO_BIG);

    /// True for error replies (`NBD_REP_ERR_*`).
    pub fn is_error(self) -> bool {
        self.0 & proto::REP_FLAG_ERROR != 0
    }

    /// The reply type's name in the NBD specification (`NBD_REP_ERR_POLICY`, ...).
    pub fn name(self) -> &'static str {
        proto::reply_type_name(self.0)
    }
}

impl fmt::Display for NbdReplyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An NBD transmission command (`NBD_CMD_*`), as named in [`Error::Server`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NbdCommand(pub u16);

impl NbdCommand {
    /// `NBD_CMD_READ`.
    pub const READ: Self = Self(proto::CMD_READ);
    /// `NBD_CMD_WRITE`.
    pub const WRITE: Self = Self(proto::CMD_WRITE);
    /// `NBD_CMD_FLUSH`.
    pub const FLUSH: Self = Self(proto::CMD_FLUSH);
    /// `NBD_CMD_TRIM`.
    pub const TRIM: Self = Self(proto::CMD_TRIM);
    /// `NBD_CMD_WRITE_ZEROES`.
    pub const WRITE_ZEROES: Self = Self(proto::CMD_WRITE_ZEROES);

    /// A short name for messages (`read`, `write`, `write-zeroes`, ...).
    pub fn name(self) -> &'static str {
        proto::command_name(self.0)
    }
}

impl fmt::Display for NbdCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An NBD error value as carried in replies (the spec's errno subset).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NbdErrno(pub u32);

impl NbdErrno {
    /// Operation not permitted (e.g. write to a read-only export).
    pub const EPERM: Self = Self(1);
    /// Input/output error.
    pub const EIO: Self = Self(5);
    /// Cannot allocate memory.
    pub const ENOMEM: Self = Self(12);
    /// Invalid argument.
    pub const EINVAL: Self = Self(22);
    /// No space left on device (e.g. write past the end).
    pub const ENOSPC: Self = Self(28);
    /// Value too large.
    pub const EOVERFLOW: Self = Self(75);
    /// Operation not supported.
    pub const ENOTSUP: Self = Self(95);
    /// Server is shutting down.
    pub const ESHUTDOWN: Self = Self(108);

    /// Name of the error value.
    pub fn name(self) -> &'static str {
        match self.0 {
            1 => "EPERM",
            5 => "EIO",
            12 => "ENOMEM",
            22 => "EINVAL",
            28 => "ENOSPC",
            75 => "EOVERFLOW",
            95 => "ENOTSUP",
            108 => "ESHUTDOWN",
            _ => "unknown error",
        }
    }
}

impl fmt::Display for NbdErrno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}

/// A violation of the NBD wire format, found by the crate's bounds-checked parsers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A magic number did not match.
    #[error("bad {what} magic {found:#x}")]
    BadMagic {
        /// Which message.
        what: &'static str,
        /// The value received.
        found: u64,
    },
    /// A message is shorter than its fixed part or its declared length.
    #[error("truncated {what}: need {needed} bytes, have {got}")]
    Truncated {
        /// Which message.
        what: &'static str,
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        got: usize,
    },
    /// A declared length exceeds what the protocol or this implementation allows.
    #[error("{what} length {len} exceeds the limit {max}")]
    TooLong {
        /// Which field.
        what: &'static str,
        /// Declared length.
        len: u64,
        /// Limit.
        max: u64,
    },
    /// A message is structurally invalid.
    #[error("invalid {0}")]
    Invalid(&'static str),
    /// A string is not valid UTF-8 or contains NUL.
    #[error("{0} is not a valid NBD string (UTF-8 without NUL)")]
    BadString(&'static str),
    /// The peer uses a protocol variant this implementation does not speak.
    #[error("unsupported protocol feature: {0}")]
    Unsupported(&'static str),
    /// The server replied to a request that is not outstanding.
    #[error("reply for unknown handle {0:#x}")]
    UnknownHandle(u64),
}
