//! The server side of the NBD handshake (fixed newstyle): greeting, then options until
//! `NBD_OPT_GO` or `NBD_OPT_EXPORT_NAME` picks an export, or the client aborts. Unknown
//! options get the proper error replies; every length is bounded before anything is read.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::buffers::discard;
use super::{Export, Server};
use crate::error::{Error, IoContext, ProtocolError, Result};
use crate::internal::proto::*;

/// Option data larger than this is refused.
const MAX_OPTION_DATA: u32 = 64 * 1024;
/// Option data larger than this ends the connection instead of being skipped.
const MAX_OPTION_DISCARD: u32 = 1 << 20;

impl Server {
    /// Runs the handshake; `None` when the client ended it without choosing an export.
    pub(super) async fn handshake<R, W>(&self, rd: &mut R, wr: &mut W) -> Result<Option<Export>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let greeting = Greeting {
            handshake_flags: FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES,
        };
        wr.write_all(&greeting.encode())
            .await
            .context("sending the NBD greeting")?;
        wr.flush().await.context("sending the NBD greeting")?;
        let client_flags = rd
            .read_u32()
            .await
            .context("reading the NBD client flags")?;
        if client_flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
            return Err(ProtocolError::Invalid("unknown client flags").into());
        }
        let fixed = client_flags & FLAG_C_FIXED_NEWSTYLE != 0;
        let no_zeroes = client_flags & FLAG_C_NO_ZEROES != 0;
        let cfg = &self.inner.config;

        for _ in 0..cfg.max_options {
            let mut hdr = [0u8; OptionHeader::LEN];
            rd.read_exact(&mut hdr)
                .await
                .context("reading an NBD option header")?;
            let opt = OptionHeader::parse(&hdr)?;
            if opt.length > MAX_OPTION_DATA {
                if opt.length > MAX_OPTION_DISCARD || !fixed {
                    return Err(ProtocolError::TooLong {
                        what: "option data",
                        len: u64::from(opt.length),
                        max: u64::from(MAX_OPTION_DATA),
                    }
                    .into());
                }
                discard(rd, u64::from(opt.length))
                    .await
                    .context("discarding oversized NBD option data")?;
                reply(wr, opt.option, REP_ERR_TOO_BIG, b"option data too large").await?;
                continue;
            }
            let mut data = vec![0u8; opt.length as usize];
            rd.read_exact(&mut data)
                .await
                .context("reading NBD option data")?;

            if !fixed && opt.option != OPT_EXPORT_NAME {
                // Non-fixed newstyle only knows NBD_OPT_EXPORT_NAME and cannot be told "no".
                return Err(ProtocolError::Invalid(
                    "option other than EXPORT_NAME without fixed newstyle",
                )
                .into());
            }
            match opt.option {
                OPT_EXPORT_NAME => {
                    let name = parse_string("export name", &data)?;
                    let Some(export) = self.find(name) else {
                        // The protocol has no way to refuse: hard disconnect.
                        tracing::info!(export = name, "NBD client asked for an unknown export");
                        return Err(Error::ExportNotFound(name.to_owned()));
                    };
                    let mut out = ExportNameReply {
                        size: export.size(),
                        flags: export.transmission_flags(),
                    }
                    .encode()
                    .to_vec();
                    if !no_zeroes {
                        out.extend_from_slice(&[0u8; EXPORT_NAME_PADDING]);
                    }
                    wr.write_all(&out)
                        .await
                        .context("sending an NBD option reply")?;
                    wr.flush().await.context("sending an NBD option reply")?;
                    return Ok(Some(export.clone()));
                }
                OPT_ABORT => {
                    reply(wr, opt.option, REP_ACK, &[]).await?;
                    return Ok(None);
                }
                OPT_LIST => {
                    if !data.is_empty() {
                        reply(
                            wr,
                            opt.option,
                            REP_ERR_INVALID,
                            b"NBD_OPT_LIST takes no data",
                        )
                        .await?;
                        continue;
                    }
                    let mut out = Vec::new();
                    for e in &self.inner.exports {
                        let payload = encode_rep_server(&e.name);
                        push_reply(&mut out, opt.option, REP_SERVER, &payload);
                    }
                    push_reply(&mut out, opt.option, REP_ACK, &[]);
                    wr.write_all(&out)
                        .await
                        .context("sending an NBD option reply")?;
                    wr.flush().await.context("sending an NBD option reply")?;
                }
                OPT_INFO | OPT_GO => {
                    let req = match InfoRequest::parse(&data) {
                        Ok(r) => r,
                        Err(e) => {
                            let msg = e.to_string();
                            reply(wr, opt.option, REP_ERR_INVALID, msg.as_bytes()).await?;
                            continue;
                        }
                    };
                    let Some(export) = self.find(req.name) else {
                        let msg = format!("no export named {:?}", req.name);
                        reply(wr, opt.option, REP_ERR_UNKNOWN, msg.as_bytes()).await?;
                        continue;
                    };
                    let mut out = Vec::new();
                    let info = Info::Export {
                        size: export.size(),
                        flags: export.transmission_flags(),
                    };
                    push_reply(&mut out, opt.option, REP_INFO, &info.encode());
                    // Block sizes may be sent unrequested; clients that did not ask ignore them.
                    let bs = export.block_size_info(cfg.max_request);
                    push_reply(&mut out, opt.option, REP_INFO, &bs.encode());
                    for kind in &req.requests {
                        match *kind {
                            INFO_NAME => {
                                let i = Info::Name(export.name.clone());
                                push_reply(&mut out, opt.option, REP_INFO, &i.encode());
                            }
                            INFO_DESCRIPTION if !export.description.is_empty() => {
                                let i = Info::Description(export.description.clone());
                                push_reply(&mut out, opt.option, REP_INFO, &i.encode());
                            }
                            _ => {}
                        }
                    }
                    push_reply(&mut out, opt.option, REP_ACK, &[]);
                    wr.write_all(&out)
                        .await
                        .context("sending an NBD option reply")?;
                    wr.flush().await.context("sending an NBD option reply")?;
                    if opt.option == OPT_GO {
                        return Ok(Some(export.clone()));
                    }
                }
                OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                    // Only meaningful after structured replies, which we refuse.
                    reply(
                        wr,
                        opt.option,
                        REP_ERR_INVALID,
                        b"metadata contexts need structured replies",
                    )
                    .await?;
                }
                OPT_STARTTLS => {
                    reply(wr, opt.option, REP_ERR_POLICY, b"TLS is not offered").await?;
                }
                other => {
                    let msg = format!("{} is not supported", option_name(other));
                    reply(wr, other, REP_ERR_UNSUP, msg.as_bytes()).await?;
                }
            }
        }
        Err(ProtocolError::Invalid("too many options during the handshake").into())
    }
}

fn push_reply(out: &mut Vec<u8>, option: u32, reply_type: u32, payload: &[u8]) {
    let h = OptionReplyHeader {
        option,
        reply_type,
        length: payload.len() as u32,
    };
    out.extend_from_slice(&h.encode());
    out.extend_from_slice(payload);
}

async fn reply<W: AsyncWrite + Unpin>(
    wr: &mut W,
    option: u32,
    reply_type: u32,
    payload: &[u8],
) -> Result<()> {
    let mut out = Vec::with_capacity(OptionReplyHeader::LEN + payload.len());
    push_reply(&mut out, option, reply_type, payload);
    wr.write_all(&out)
        .await
        .context("sending an NBD option reply")?;
    wr.flush().await.context("sending an NBD option reply")?;
    Ok(())
}
