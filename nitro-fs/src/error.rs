//! The crate's error type.

use std::fmt;
use std::io;

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
    /// An operating-system I/O error (socket, file, ioctl).
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),

    /// The peer sent bytes that do not follow the NBD protocol. The connection is unusable.
    #[error("NBD protocol violation by the peer: {0}")]
    Protocol(#[from] ProtocolError),

    /// The NBD server refused an option during the handshake.
    #[error("NBD server refused {option}: {reason}")]
    Negotiation {
        /// The option that was refused (e.g. `NBD_OPT_GO`).
        option: &'static str,
        /// The server's reply type and message.
        reason: String,
    },

    /// The server has no export of this name.
    #[error("NBD export {0:?} does not exist on the server")]
    ExportNotFound(String),

    /// The NBD server answered a request with an error.
    #[error("NBD server failed {command} at offset {offset} (length {length}): {errno}")]
    Server {
        /// The command that failed (`read`, `write`, ...).
        command: &'static str,
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

    /// Wrapping or unwrapping the data key failed.
    #[error("key wrapping failed: {0}")]
    KeyWrap(String),

    /// The freshness anchor failed to load or store state.
    #[error("freshness anchor failed: {0}")]
    Anchor(String),

    /// A previous flush of the sealed device failed, so its on-disk state is uncertain; the
    /// device must be reopened (which recovers the last committed state).
    #[error("the sealed device must be reopened after a failed flush: {0}")]
    Poisoned(String),

    /// A cryptographic primitive failed unexpectedly (not an authentication failure).
    #[error("cryptographic failure: {0}")]
    Crypto(&'static str),
}

impl Error {
    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        Self::InvalidArgument(msg.into())
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

/// A violation of the NBD wire format, found by the pure parsers in [`crate::proto`].
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
