//! The NBD wire format: constants and pure parse/encode functions.
//!
//! Nothing here does I/O. Every parser takes a byte slice, checks lengths before reading and
//! returns a [`ProtocolError`] for malformed input, so the functions are safe to feed with
//! hostile bytes (they are what the `nbd_messages` fuzz target exercises).
//!
//! # Protocol primer
//!
//! An NBD session has two phases.
//!
//! **Handshake** (fixed newstyle). The server greets with `NBDMAGIC`, `IHAVEOPT` and 16 bits
//! of handshake flags ([`Greeting`]); the client answers with 32 bits of client flags. The
//! client then sends options ([`OptionHeader`] + data), each answered by one or more option
//! replies ([`OptionReplyHeader`] + data). `NBD_OPT_LIST` lists exports, `NBD_OPT_INFO`
//! describes one ([`InfoRequest`] → [`Info`] replies), and `NBD_OPT_GO` describes one and
//! enters the transmission phase. The legacy `NBD_OPT_EXPORT_NAME` enters transmission
//! without a structured reply ([`ExportNameReply`]).
//!
//! **Transmission**. The client sends [`Request`]s (28-byte header, followed by the data for
//! writes), each tagged with a handle; the server answers each with a [`SimpleReply`]
//! (16-byte header, followed by the data for successful reads), in any order. Structured
//! replies (`NBD_OPT_STRUCTURED_REPLY`) are not negotiated by this implementation, which
//! keeps the reply stream unambiguous.
//!
//! All integers are big-endian.

use crate::error::ProtocolError;

/// `NBDMAGIC`, the first 8 bytes sent by a server.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: newstyle greeting magic and option request magic.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Oldstyle greeting magic (not supported).
pub const CLISERV_MAGIC: u64 = 0x0000_4202_8186_1253;
/// Option reply magic.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Transmission request magic.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Simple reply magic.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Structured reply chunk magic.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Handshake flag: the server speaks fixed newstyle.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Handshake flag: the server can omit the 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flag: the client speaks fixed newstyle.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag: omit the 124 zero bytes.
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

/// Transmission flag: always set.
pub const TFLAG_HAS_FLAGS: u16 = 1 << 0;
/// Transmission flag: the export is read-only.
pub const TFLAG_READ_ONLY: u16 = 1 << 1;
/// Transmission flag: `NBD_CMD_FLUSH` is supported.
pub const TFLAG_SEND_FLUSH: u16 = 1 << 2;
/// Transmission flag: `NBD_CMD_FLAG_FUA` is supported.
pub const TFLAG_SEND_FUA: u16 = 1 << 3;
/// Transmission flag: rotational medium.
pub const TFLAG_ROTATIONAL: u16 = 1 << 4;
/// Transmission flag: `NBD_CMD_TRIM` is supported.
pub const TFLAG_SEND_TRIM: u16 = 1 << 5;
/// Transmission flag: `NBD_CMD_WRITE_ZEROES` is supported.
pub const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
/// Transmission flag: `NBD_CMD_FLAG_DF` is supported (structured replies only).
pub const TFLAG_SEND_DF: u16 = 1 << 7;
/// Transmission flag: several connections may be used and see each other's flushes.
pub const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;

/// Option: enter transmission (legacy, no error reporting).
pub const OPT_EXPORT_NAME: u32 = 1;
/// Option: abort the handshake.
pub const OPT_ABORT: u32 = 2;
/// Option: list exports.
pub const OPT_LIST: u32 = 3;
/// Option: start TLS.
pub const OPT_STARTTLS: u32 = 5;
/// Option: describe an export.
pub const OPT_INFO: u32 = 6;
/// Option: describe an export and enter transmission.
pub const OPT_GO: u32 = 7;
/// Option: structured replies.
pub const OPT_STRUCTURED_REPLY: u32 = 8;
/// Option: list metadata contexts.
pub const OPT_LIST_META_CONTEXT: u32 = 9;
/// Option: select metadata contexts.
pub const OPT_SET_META_CONTEXT: u32 = 10;
/// Option: extended headers.
pub const OPT_EXTENDED_HEADERS: u32 = 11;

/// Option reply: success / end of list.
pub const REP_ACK: u32 = 1;
/// Option reply: one export (answer to `NBD_OPT_LIST`).
pub const REP_SERVER: u32 = 2;
/// Option reply: one piece of export information.
pub const REP_INFO: u32 = 3;
/// Option reply: a metadata context.
pub const REP_META_CONTEXT: u32 = 4;
/// Option reply bit marking errors.
pub const REP_FLAG_ERROR: u32 = 1 << 31;
/// Option error: unknown option.
pub const REP_ERR_UNSUP: u32 = REP_FLAG_ERROR | 1;
/// Option error: forbidden by policy.
pub const REP_ERR_POLICY: u32 = REP_FLAG_ERROR | 2;
/// Option error: syntactically invalid.
pub const REP_ERR_INVALID: u32 = REP_FLAG_ERROR | 3;
/// Option error: not supported on this platform.
pub const REP_ERR_PLATFORM: u32 = REP_FLAG_ERROR | 4;
/// Option error: TLS required.
pub const REP_ERR_TLS_REQD: u32 = REP_FLAG_ERROR | 5;
/// Option error: unknown export.
pub const REP_ERR_UNKNOWN: u32 = REP_FLAG_ERROR | 6;
/// Option error: server shutting down.
pub const REP_ERR_SHUTDOWN: u32 = REP_FLAG_ERROR | 7;
/// Option error: the client must request block sizes.
pub const REP_ERR_BLOCK_SIZE_REQD: u32 = REP_FLAG_ERROR | 8;
/// Option error: too big.
pub const REP_ERR_TOO_BIG: u32 = REP_FLAG_ERROR | 9;

/// Information type: size and transmission flags.
pub const INFO_EXPORT: u16 = 0;
/// Information type: canonical name.
pub const INFO_NAME: u16 = 1;
/// Information type: description.
pub const INFO_DESCRIPTION: u16 = 2;
/// Information type: block size constraints.
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Command flag: force unit access.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
/// Command flag: `NBD_CMD_WRITE_ZEROES` must not punch holes.
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
/// Command flag: don't fragment (structured replies only).
pub const CMD_FLAG_DF: u16 = 1 << 2;
/// Command flag: one extent only (block status).
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
/// Command flag: fail write-zeroes unless fast.
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;

/// Command: read.
pub const CMD_READ: u16 = 0;
/// Command: write.
pub const CMD_WRITE: u16 = 1;
/// Command: disconnect.
pub const CMD_DISC: u16 = 2;
/// Command: flush.
pub const CMD_FLUSH: u16 = 3;
/// Command: trim.
pub const CMD_TRIM: u16 = 4;
/// Command: cache (prefetch).
pub const CMD_CACHE: u16 = 5;
/// Command: write zeroes.
pub const CMD_WRITE_ZEROES: u16 = 6;
/// Command: block status.
pub const CMD_BLOCK_STATUS: u16 = 7;

/// Longest string (export name, description, message) the protocol allows.
pub const MAX_STRING: usize = 4096;
/// Size of the zero padding after a legacy `NBD_OPT_EXPORT_NAME` reply.
pub const EXPORT_NAME_PADDING: usize = 124;

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

fn need(what: &'static str, b: &[u8], needed: usize) -> Result<(), ProtocolError> {
    if b.len() < needed {
        Err(ProtocolError::Truncated {
            what,
            needed,
            got: b.len(),
        })
    } else {
        Ok(())
    }
}

/// Checks that `bytes` is a valid NBD string (UTF-8, no NUL, at most [`MAX_STRING`] bytes).
pub fn parse_string<'a>(what: &'static str, bytes: &'a [u8]) -> Result<&'a str, ProtocolError> {
    if bytes.len() > MAX_STRING {
        return Err(ProtocolError::TooLong {
            what,
            len: bytes.len() as u64,
            max: MAX_STRING as u64,
        });
    }
    let s = std::str::from_utf8(bytes).map_err(|_| ProtocolError::BadString(what))?;
    if s.contains('\0') {
        return Err(ProtocolError::BadString(what));
    }
    Ok(s)
}

/// Name of an option, for messages.
pub fn option_name(option: u32) -> &'static str {
    match option {
        OPT_EXPORT_NAME => "NBD_OPT_EXPORT_NAME",
        OPT_ABORT => "NBD_OPT_ABORT",
        OPT_LIST => "NBD_OPT_LIST",
        OPT_STARTTLS => "NBD_OPT_STARTTLS",
        OPT_INFO => "NBD_OPT_INFO",
        OPT_GO => "NBD_OPT_GO",
        OPT_STRUCTURED_REPLY => "NBD_OPT_STRUCTURED_REPLY",
        OPT_LIST_META_CONTEXT => "NBD_OPT_LIST_META_CONTEXT",
        OPT_SET_META_CONTEXT => "NBD_OPT_SET_META_CONTEXT",
        OPT_EXTENDED_HEADERS => "NBD_OPT_EXTENDED_HEADERS",
        _ => "unknown option",
    }
}

/// Name of an option reply type, for messages.
pub fn reply_type_name(reply: u32) -> &'static str {
    match reply {
        REP_ACK => "NBD_REP_ACK",
        REP_SERVER => "NBD_REP_SERVER",
        REP_INFO => "NBD_REP_INFO",
        REP_META_CONTEXT => "NBD_REP_META_CONTEXT",
        REP_ERR_UNSUP => "NBD_REP_ERR_UNSUP",
        REP_ERR_POLICY => "NBD_REP_ERR_POLICY",
        REP_ERR_INVALID => "NBD_REP_ERR_INVALID",
        REP_ERR_PLATFORM => "NBD_REP_ERR_PLATFORM",
        REP_ERR_TLS_REQD => "NBD_REP_ERR_TLS_REQD",
        REP_ERR_UNKNOWN => "NBD_REP_ERR_UNKNOWN",
        REP_ERR_SHUTDOWN => "NBD_REP_ERR_SHUTDOWN",
        REP_ERR_BLOCK_SIZE_REQD => "NBD_REP_ERR_BLOCK_SIZE_REQD",
        REP_ERR_TOO_BIG => "NBD_REP_ERR_TOO_BIG",
        _ if reply & REP_FLAG_ERROR != 0 => "unknown error reply",
        _ => "unknown reply",
    }
}

/// The server's newstyle greeting: `NBDMAGIC`, `IHAVEOPT`, handshake flags (18 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Greeting {
    /// Handshake flags (`FLAG_FIXED_NEWSTYLE`, `FLAG_NO_ZEROES`).
    pub handshake_flags: u16,
}

impl Greeting {
    /// Encoded length.
    pub const LEN: usize = 18;

    /// Encodes the greeting.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0..8].copy_from_slice(&NBD_MAGIC.to_be_bytes());
        b[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
        b[16..18].copy_from_slice(&self.handshake_flags.to_be_bytes());
        b
    }

    /// Parses a greeting; rejects oldstyle servers.
    pub fn parse(b: &[u8]) -> Result<Self, ProtocolError> {
        need("greeting", b, Self::LEN)?;
        let magic = be64(b, 0);
        if magic != NBD_MAGIC {
            return Err(ProtocolError::BadMagic {
                what: "greeting",
                found: magic,
            });
        }
        match be64(b, 8) {
            IHAVEOPT => Ok(Self {
                handshake_flags: be16(b, 16),
            }),
            CLISERV_MAGIC => Err(ProtocolError::Unsupported("oldstyle negotiation")),
            other => Err(ProtocolError::BadMagic {
                what: "newstyle greeting",
                found: other,
            }),
        }
    }
}

/// Header of an option request: `IHAVEOPT`, option, data length (16 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    /// Option code (`OPT_*`).
    pub option: u32,
    /// Length of the option data that follows.
    pub length: u32,
}

impl OptionHeader {
    /// Encoded length.
    pub const LEN: usize = 16;

    /// Encodes the header.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0..8].copy_from_slice(&IHAVEOPT.to_be_bytes());
        b[8..12].copy_from_slice(&self.option.to_be_bytes());
        b[12..16].copy_from_slice(&self.length.to_be_bytes());
        b
    }

    /// Parses the header.
    pub fn parse(b: &[u8]) -> Result<Self, ProtocolError> {
        need("option header", b, Self::LEN)?;
        let magic = be64(b, 0);
        if magic != IHAVEOPT {
            return Err(ProtocolError::BadMagic {
                what: "option",
                found: magic,
            });
        }
        Ok(Self {
            option: be32(b, 8),
            length: be32(b, 12),
        })
    }
}

/// Header of an option reply: magic, option, reply type, data length (20 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionReplyHeader {
    /// The option being answered.
    pub option: u32,
    /// Reply type (`REP_*`).
    pub reply_type: u32,
    /// Length of the reply data that follows.
    pub length: u32,
}

impl OptionReplyHeader {
    /// Encoded length.
    pub const LEN: usize = 20;

    /// Encodes the header.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0..8].copy_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
        b[8..12].copy_from_slice(&self.option.to_be_bytes());
        b[12..16].copy_from_slice(&self.reply_type.to_be_bytes());
        b[16..20].copy_from_slice(&self.length.to_be_bytes());
        b
    }

    /// Parses the header.
    pub fn parse(b: &[u8]) -> Result<Self, ProtocolError> {
        need("option reply header", b, Self::LEN)?;
        let magic = be64(b, 0);
        if magic != OPTION_REPLY_MAGIC {
            return Err(ProtocolError::BadMagic {
                what: "option reply",
                found: magic,
            });
        }
        Ok(Self {
            option: be32(b, 8),
            reply_type: be32(b, 12),
            length: be32(b, 16),
        })
    }

    /// True for error replies.
    pub fn is_error(&self) -> bool {
        self.reply_type & REP_FLAG_ERROR != 0
    }
}

/// Data of `NBD_OPT_INFO` / `NBD_OPT_GO`: export name and requested information types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest<'a> {
    /// Export name (empty = default export).
    pub name: &'a str,
    /// Requested `INFO_*` types.
    pub requests: Vec<u16>,
}

impl<'a> InfoRequest<'a> {
    /// Parses the option data; the whole slice must be consumed.
    pub fn parse(b: &'a [u8]) -> Result<Self, ProtocolError> {
        need("info request", b, 4)?;
        let name_len = be32(b, 0) as usize;
        if name_len > MAX_STRING {
            return Err(ProtocolError::TooLong {
                what: "export name",
                len: name_len as u64,
                max: MAX_STRING as u64,
            });
        }
        need("info request", b, 4 + name_len + 2)?;
        let name = parse_string("export name", &b[4..4 + name_len])?;
        let count = be16(b, 4 + name_len) as usize;
        let rest = &b[4 + name_len + 2..];
        if rest.len() != count * 2 {
            return Err(ProtocolError::Invalid(
                "info request: information count does not match the option length",
            ));
        }
        let requests = rest.chunks_exact(2).map(|c| be16(c, 0)).collect();
        Ok(Self { name, requests })
    }

    /// Encodes the option data.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(4 + self.name.len() + 2 + 2 * self.requests.len());
        b.extend_from_slice(&(self.name.len() as u32).to_be_bytes());
        b.extend_from_slice(self.name.as_bytes());
        b.extend_from_slice(&(self.requests.len() as u16).to_be_bytes());
        for r in &self.requests {
            b.extend_from_slice(&r.to_be_bytes());
        }
        b
    }
}

/// One `NBD_REP_INFO` payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Info {
    /// `NBD_INFO_EXPORT`: size in bytes and transmission flags.
    Export {
        /// Export size in bytes.
        size: u64,
        /// Transmission flags (`TFLAG_*`).
        flags: u16,
    },
    /// `NBD_INFO_NAME`: canonical export name.
    Name(String),
    /// `NBD_INFO_DESCRIPTION`: human-readable description.
    Description(String),
    /// `NBD_INFO_BLOCK_SIZE`: block size constraints.
    BlockSize {
        /// Minimum block size (alignment of offsets and lengths).
        minimum: u32,
        /// Preferred block size.
        preferred: u32,
        /// Maximum payload of one request.
        maximum: u32,
    },
    /// An information type this implementation does not know (ignored by clients).
    Unknown(u16),
}

impl Info {
    /// Parses an `NBD_REP_INFO` payload.
    pub fn parse(b: &[u8]) -> Result<Self, ProtocolError> {
        need("info reply", b, 2)?;
        let kind = be16(b, 0);
        let rest = &b[2..];
        match kind {
            INFO_EXPORT => {
                if rest.len() != 10 {
                    return Err(ProtocolError::Invalid("NBD_INFO_EXPORT length"));
                }
                Ok(Self::Export {
                    size: be64(rest, 0),
                    flags: be16(rest, 8),
                })
            }
            INFO_NAME => Ok(Self::Name(parse_string("export name", rest)?.to_owned())),
            INFO_DESCRIPTION => Ok(Self::Description(
                parse_string("export description", rest)?.to_owned(),
            )),
            INFO_BLOCK_SIZE => {
                if rest.len() != 12 {
                    return Err(ProtocolError::Invalid("NBD_INFO_BLOCK_SIZE length"));
                }
                let info = Self::BlockSize {
                    minimum: be32(rest, 0),
                    preferred: be32(rest, 4),
                    maximum: be32(rest, 8),
                };
                info.validate()?;
                Ok(info)
            }
            other => Ok(Self::Unknown(other)),
        }
    }

    fn validate(&self) -> Result<(), ProtocolError> {
        if let Self::BlockSize {
            minimum,
            preferred,
            maximum,
        } = *self
        {
            let ok = minimum.is_power_of_two()
                && minimum <= 65536
                && preferred.is_power_of_two()
                && preferred >= minimum
                && maximum >= minimum;
            if !ok {
                return Err(ProtocolError::Invalid("NBD_INFO_BLOCK_SIZE constraints"));
            }
        }
        Ok(())
    }

    /// Encodes the payload (without the option reply header).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        match self {
            Self::Export { size, flags } => {
                b.extend_from_slice(&INFO_EXPORT.to_be_bytes());
                b.extend_from_slice(&size.to_be_bytes());
                b.extend_from_slice(&flags.to_be_bytes());
            }
            Self::Name(n) => {
                b.extend_from_slice(&INFO_NAME.to_be_bytes());
                b.extend_from_slice(n.as_bytes());
            }
            Self::Description(d) => {
                b.extend_from_slice(&INFO_DESCRIPTION.to_be_bytes());
                b.extend_from_slice(d.as_bytes());
            }
            Self::BlockSize {
                minimum,
                preferred,
                maximum,
            } => {
                b.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
                b.extend_from_slice(&minimum.to_be_bytes());
                b.extend_from_slice(&preferred.to_be_bytes());
                b.extend_from_slice(&maximum.to_be_bytes());
            }
            Self::Unknown(kind) => b.extend_from_slice(&kind.to_be_bytes()),
        }
        b
    }
}

/// Parses the payload of an `NBD_REP_SERVER` reply: the export name (any trailing
/// description is returned as the second element).
pub fn parse_rep_server(b: &[u8]) -> Result<(String, String), ProtocolError> {
    need("NBD_REP_SERVER", b, 4)?;
    let len = be32(b, 0) as usize;
    if len > b.len() - 4 {
        return Err(ProtocolError::Invalid(
            "NBD_REP_SERVER name length exceeds the reply",
        ));
    }
    let name = parse_string("export name", &b[4..4 + len])?.to_owned();
    let details = parse_string("export details", &b[4 + len..])?.to_owned();
    Ok((name, details))
}

/// Encodes the payload of an `NBD_REP_SERVER` reply.
pub fn encode_rep_server(name: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(4 + name.len());
    b.extend_from_slice(&(name.len() as u32).to_be_bytes());
    b.extend_from_slice(name.as_bytes());
    b
}

/// The server's answer to `NBD_OPT_EXPORT_NAME`: size and transmission flags, then 124 zero
/// bytes unless both sides agreed on `NO_ZEROES`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportNameReply {
    /// Export size in bytes.
    pub size: u64,
    /// Transmission flags.
    pub flags: u16,
}

impl ExportNameReply {
    /// Encoded length without padding.
    pub const LEN: usize = 10;

    /// Encodes the reply (without padding).
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0..8].copy_from_slice(&self.size.to_be_bytes());
        b[8..10].copy_from_slice(&self.flags.to_be_bytes());
        b
    }

    /// Parses the reply (without padding).
    pub fn parse(b: &[u8]) -> Result<Self, ProtocolError> {
        need("export name reply", b, Self::LEN)?;
        Ok(Self {
            size: be64(b, 0),
            flags: be16(b, 8),
        })
    }
}

/// A transmission-phase request header (28 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Command flags (`CMD_FLAG_*`).
    pub flags: u16,
    /// Command (`CMD_*`).
    pub command: u16,
    /// Handle echoed in the reply.
    pub handle: u64,
    /// Byte offset.
    pub offset: u64,
    /// Byte length (for writes: the length of the data that follows).
    pub length: u32,
}

impl Request {
    /// Encoded length.
    pub const LEN: usize = 28;

    /// Encodes the header.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&self.command.to_be_bytes());
        b[8..16].copy_from_slice(&self.handle.to_be_bytes());
        b[16..24].copy_from_slice(&self.offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.length.to_be_bytes());
        b
    }

    /// Parses the header.
    pub fn parse(b: &[u8]) -> Result<Self, ProtocolError> {
        need("request", b, Self::LEN)?;
        let magic = be32(b, 0);
        if magic != REQUEST_MAGIC {
            return Err(ProtocolError::BadMagic {
                what: "request",
                found: u64::from(magic),
            });
        }
        Ok(Self {
            flags: be16(b, 4),
            command: be16(b, 6),
            handle: be64(b, 8),
            offset: be64(b, 16),
            length: be32(b, 24),
        })
    }

    /// True when a data payload of `length` bytes follows the header.
    pub fn has_payload(&self) -> bool {
        self.command == CMD_WRITE
    }
}

/// Name of a command, for messages.
pub fn command_name(command: u16) -> &'static str {
    match command {
        CMD_READ => "read",
        CMD_WRITE => "write",
        CMD_DISC => "disconnect",
        CMD_FLUSH => "flush",
        CMD_TRIM => "trim",
        CMD_CACHE => "cache",
        CMD_WRITE_ZEROES => "write-zeroes",
        CMD_BLOCK_STATUS => "block-status",
        _ => "unknown command",
    }
}

/// A simple reply header (16 bytes); successful reads are followed by the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimpleReply {
    /// Error value (0 = success).
    pub error: u32,
    /// Handle of the request being answered.
    pub handle: u64,
}

impl SimpleReply {
    /// Encoded length.
    pub const LEN: usize = 16;

    /// Encodes the header.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
        b[4..8].copy_from_slice(&self.error.to_be_bytes());
        b[8..16].copy_from_slice(&self.handle.to_be_bytes());
        b
    }

    /// Parses the header. A structured reply (never negotiated by this implementation) is
    /// a protocol error.
    pub fn parse(b: &[u8]) -> Result<Self, ProtocolError> {
        need("reply", b, Self::LEN)?;
        match be32(b, 0) {
            SIMPLE_REPLY_MAGIC => Ok(Self {
                error: be32(b, 4),
                handle: be64(b, 8),
            }),
            STRUCTURED_REPLY_MAGIC => Err(ProtocolError::Invalid(
                "structured reply although structured replies were not negotiated",
            )),
            other => Err(ProtocolError::BadMagic {
                what: "reply",
                found: u64::from(other),
            }),
        }
    }
}
