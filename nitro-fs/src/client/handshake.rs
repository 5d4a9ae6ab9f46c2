//! The client side of the NBD handshake (fixed newstyle): greeting, options, `NBD_OPT_GO`
//! with the legacy `NBD_OPT_EXPORT_NAME` fallback, and `NBD_OPT_LIST`.
//!
//! Generic over any `AsyncRead + AsyncWrite` stream, so it runs over `tokio::io::duplex` in
//! tests as well as over a socket.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::{Error, IoContext, NbdOption, NbdReplyType, ProtocolError, Result};
use crate::internal::proto::*;

/// What the server said about the export during the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExportInfo {
    /// Export size in bytes.
    pub size: u64,
    /// Transmission flags (`NBD_FLAG_*` of the NBD specification: bit 1 read-only, bit 2
    /// flush, bit 3 FUA, bit 5 trim, bit 6 write-zeroes, bit 8 multi-connection).
    pub flags: u16,
    /// Minimum block size (alignment of every request).
    pub min_block_size: u32,
    /// Preferred block size.
    pub preferred_block_size: u32,
    /// Largest payload the server accepts in one request.
    pub max_payload: u32,
    /// Description, when the server sent one.
    pub description: Option<String>,
}

impl ExportInfo {
    /// True if the server refuses writes.
    pub fn read_only(&self) -> bool {
        self.flags & TFLAG_READ_ONLY != 0
    }
}

/// Largest option reply payload accepted during the handshake.
const MAX_OPTION_REPLY: u32 = 64 * 1024;
/// Replies accepted for one option (e.g. exports in a list).
const MAX_OPTION_REPLIES: usize = 4096;

/// Runs the client side of the handshake on `stream` and enters transmission for `export`.
///
/// Uses `NBD_OPT_GO` (requesting block sizes and the description) and falls back to
/// `NBD_OPT_EXPORT_NAME` for servers that do not know it.
pub async fn negotiate<S>(stream: &mut S, export: &str) -> Result<ExportInfo>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    parse_string("export name", export.as_bytes())?;
    let handshake_flags = greet(stream).await?;
    let fixed = handshake_flags & FLAG_FIXED_NEWSTYLE != 0;
    let no_zeroes = handshake_flags & FLAG_NO_ZEROES != 0;
    if fixed {
        let data = InfoRequest {
            name: export,
            requests: vec![INFO_BLOCK_SIZE, INFO_DESCRIPTION],
        }
        .encode();
        send_option(stream, OPT_GO, &data).await?;
        let mut export_info: Option<(u64, u16)> = None;
        let mut block = None;
        let mut description = None;
        for _ in 0..MAX_OPTION_REPLIES {
            let (hdr, payload) = read_option_reply(stream, OPT_GO).await?;
            match hdr.reply_type {
                REP_INFO => match Info::parse(&payload)? {
                    Info::Export { size, flags } => export_info = Some((size, flags)),
                    Info::BlockSize {
                        minimum,
                        preferred,
                        maximum,
                    } => block = Some((minimum, preferred, maximum)),
                    Info::Description(d) => description = Some(d),
                    Info::Name(_) | Info::Unknown(_) => {}
                },
                REP_ACK => {
                    let Some((size, flags)) = export_info else {
                        return Err(ProtocolError::Invalid(
                            "NBD_OPT_GO acknowledged without NBD_INFO_EXPORT",
                        )
                        .into());
                    };
                    let (min, preferred, max) = block.unwrap_or((1, 4096, 32 << 20));
                    return Ok(ExportInfo {
                        size,
                        flags,
                        min_block_size: min,
                        preferred_block_size: preferred,
                        max_payload: max,
                        description,
                    });
                }
                REP_ERR_UNSUP => break,
                REP_ERR_UNKNOWN => return Err(Error::ExportNotFound(export.to_owned())),
                t if t & REP_FLAG_ERROR != 0 => {
                    return Err(refused(NbdOption::GO, t, &payload));
                }
                _ => {
                    return Err(
                        ProtocolError::Invalid("unexpected reply type to NBD_OPT_GO").into(),
                    );
                }
            }
        }
        if export_info.is_some() {
            return Err(ProtocolError::Invalid("too many replies to NBD_OPT_GO").into());
        }
    }
    // Legacy path: NBD_OPT_EXPORT_NAME (the server closes the connection if the name is unknown).
    send_option(stream, OPT_EXPORT_NAME, export.as_bytes()).await?;
    let mut b = [0u8; ExportNameReply::LEN];
    stream.read_exact(&mut b).await.map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            Error::ExportNotFound(export.to_owned())
        } else {
            Error::io("reading the reply to NBD_OPT_EXPORT_NAME", e)
        }
    })?;
    let r = ExportNameReply::parse(&b)?;
    if !no_zeroes {
        let mut pad = [0u8; EXPORT_NAME_PADDING];
        stream
            .read_exact(&mut pad)
            .await
            .context("reading the padding after the NBD_OPT_EXPORT_NAME reply")?;
    }
    Ok(ExportInfo {
        size: r.size,
        flags: r.flags,
        min_block_size: 1,
        preferred_block_size: 4096,
        max_payload: 32 << 20,
        description: None,
    })
}

/// Lists the server's exports (`NBD_OPT_LIST`), as (name, details) pairs, then aborts the
/// handshake.
pub async fn list_exports<S>(stream: &mut S) -> Result<Vec<(String, String)>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let flags = greet(stream).await?;
    if flags & FLAG_FIXED_NEWSTYLE == 0 {
        return Err(Error::Unsupported(
            "listing exports needs a fixed-newstyle server".into(),
        ));
    }
    send_option(stream, OPT_LIST, &[]).await?;
    let mut out = Vec::new();
    for _ in 0..MAX_OPTION_REPLIES {
        let (hdr, payload) = read_option_reply(stream, OPT_LIST).await?;
        match hdr.reply_type {
            REP_SERVER => out.push(parse_rep_server(&payload)?),
            REP_ACK => {
                send_option(stream, OPT_ABORT, &[]).await?;
                // The reply to NBD_OPT_ABORT is optional; don't wait for it.
                let _ = stream.shutdown().await;
                return Ok(out);
            }
            t if t & REP_FLAG_ERROR != 0 => {
                return Err(refused(NbdOption::LIST, t, &payload));
            }
            _ => return Err(ProtocolError::Invalid("unexpected reply to NBD_OPT_LIST").into()),
        }
    }
    Err(ProtocolError::Invalid("too many replies to NBD_OPT_LIST").into())
}

/// The error for an option the server refused with error reply `reply_type`.
fn refused(option: NbdOption, reply_type: u32, payload: &[u8]) -> Error {
    Error::Negotiation {
        option,
        reply: NbdReplyType(reply_type),
        message: String::from_utf8_lossy(payload).into_owned(),
    }
}

async fn greet<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) -> Result<u16> {
    let mut b = [0u8; Greeting::LEN];
    stream
        .read_exact(&mut b)
        .await
        .context("reading the NBD greeting")?;
    let g = Greeting::parse(&b)?;
    let mut client_flags = 0u32;
    if g.handshake_flags & FLAG_FIXED_NEWSTYLE != 0 {
        client_flags |= FLAG_C_FIXED_NEWSTYLE;
    }
    if g.handshake_flags & FLAG_NO_ZEROES != 0 {
        client_flags |= FLAG_C_NO_ZEROES;
    }
    stream
        .write_all(&client_flags.to_be_bytes())
        .await
        .context("sending the NBD client flags")?;
    Ok(g.handshake_flags)
}

async fn send_option<S: AsyncWrite + Unpin>(
    stream: &mut S,
    option: u32,
    data: &[u8],
) -> Result<()> {
    let mut b = Vec::with_capacity(OptionHeader::LEN + data.len());
    b.extend_from_slice(
        &OptionHeader {
            option,
            length: data.len() as u32,
        }
        .encode(),
    );
    b.extend_from_slice(data);
    let sent = async {
        stream.write_all(&b).await?;
        stream.flush().await
    };
    sent.await
        .with_context(|| format!("sending {}", option_name(option)))
}

async fn read_option_reply<S: AsyncRead + Unpin>(
    stream: &mut S,
    option: u32,
) -> Result<(OptionReplyHeader, Vec<u8>)> {
    let mut b = [0u8; OptionReplyHeader::LEN];
    stream
        .read_exact(&mut b)
        .await
        .with_context(|| format!("reading a reply to {}", option_name(option)))?;
    let hdr = OptionReplyHeader::parse(&b)?;
    if hdr.option != option {
        return Err(ProtocolError::Invalid("option reply for a different option").into());
    }
    if hdr.length > MAX_OPTION_REPLY {
        return Err(ProtocolError::TooLong {
            what: "option reply",
            len: u64::from(hdr.length),
            max: u64::from(MAX_OPTION_REPLY),
        }
        .into());
    }
    let mut payload = vec![0u8; hdr.length as usize];
    stream
        .read_exact(&mut payload)
        .await
        .with_context(|| format!("reading a reply to {}", option_name(option)))?;
    Ok((hdr, payload))
}
