//! The transmission phase: requests are read, validated and executed concurrently (bounded
//! by [`ServerConfig`] limits), and the replies written in batches, in completion order.

use std::future::Future;
use std::pin::Pin;

use futures_util::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::io::{
    AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, ReadHalf, WriteHalf,
};

use super::buffers::{discard, give_buffer, read_vec, take_buffer};
use super::{Export, ServerConfig};
use crate::error::{Error, IoContext, NbdErrno, Result, display_chain};
use crate::internal::proto::*;

/// Socket read buffer of a connection.
pub(super) const READ_BUFFER: usize = 256 * 1024;
/// Read replies at least this large are written straight from their buffer.
const DIRECT_WRITE: usize = 64 * 1024;

/// What the request reader produced.
enum Incoming {
    /// A request, with its payload for writes.
    Request(Request, Vec<u8>),
    /// A write whose payload exceeded the limit; the payload was skipped.
    Oversized(Request),
    /// `NBD_CMD_DISC`.
    Disconnect,
    /// End of stream between requests.
    Eof,
}

type Reader<S> = BufReader<ReadHalf<S>>;
type ReadFuture<'a, S> = Pin<Box<dyn Future<Output = (Reader<S>, Result<Incoming>)> + Send + 'a>>;

fn read_next<'a, S>(mut rd: Reader<S>, max_request: u32) -> ReadFuture<'a, S>
where
    S: AsyncRead + Send + 'a,
{
    Box::pin(async move {
        let r = read_incoming(&mut rd, max_request).await;
        (rd, r)
    })
}

async fn read_incoming<R: AsyncRead + Unpin>(rd: &mut R, max_request: u32) -> Result<Incoming> {
    let mut hdr = [0u8; Request::LEN];
    // EOF before the first byte of a request is a (hard but clean) disconnect.
    let n = rd
        .read(&mut hdr)
        .await
        .context("reading an NBD request header")?;
    if n == 0 {
        return Ok(Incoming::Eof);
    }
    rd.read_exact(&mut hdr[n..])
        .await
        .context("reading an NBD request header")?;
    let req = Request::parse(&hdr)?;
    if req.command == CMD_DISC {
        return Ok(Incoming::Disconnect);
    }
    if !req.has_payload() {
        return Ok(Incoming::Request(req, Vec::new()));
    }
    if req.length > max_request {
        discard(rd, u64::from(req.length))
            .await
            .context("discarding the payload of an oversized NBD write")?;
        return Ok(Incoming::Oversized(req));
    }
    let data = read_vec(rd, req.length as usize)
        .await
        .context("reading the data of an NBD write request")?;
    Ok(Incoming::Request(req, data))
}

/// A finished request, ready to be answered.
struct Completion {
    handle: u64,
    error: u32,
    data: Vec<u8>,
    cost: usize,
}

type Pending = Pin<Box<dyn Future<Output = Completion> + Send>>;

fn errno_of(err: &Error, writing: bool) -> u32 {
    match err {
        Error::OutOfRange { .. } if writing => NbdErrno::ENOSPC.0,
        Error::OutOfRange { .. } | Error::Unaligned { .. } | Error::InvalidArgument(_) => {
            NbdErrno::EINVAL.0
        }
        Error::ReadOnly => NbdErrno::EPERM.0,
        Error::Unsupported(_) => NbdErrno::ENOTSUP.0,
        Error::Io { source, .. } => match source.raw_os_error() {
            Some(nix::libc::ENOSPC | nix::libc::EDQUOT | nix::libc::EFBIG) => NbdErrno::ENOSPC.0,
            _ => NbdErrno::EIO.0,
        },
        _ => NbdErrno::EIO.0,
    }
}

/// Checks a request against the export; returns the error value to reply with, if any.
fn validate(export: &Export, req: &Request, max_request: u32) -> Option<u32> {
    let allowed = match req.command {
        CMD_READ | CMD_WRITE | CMD_FLUSH | CMD_TRIM => CMD_FLAG_FUA,
        CMD_WRITE_ZEROES => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE,
        _ => return Some(NbdErrno::EINVAL.0),
    };
    if req.flags & !allowed != 0 {
        return Some(NbdErrno::EINVAL.0);
    }
    let writing = matches!(req.command, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES);
    if writing && export.read_only {
        return Some(NbdErrno::EPERM.0);
    }
    if req.command == CMD_FLUSH {
        return (req.offset != 0 || req.length != 0).then_some(NbdErrno::EINVAL.0);
    }
    if matches!(req.command, CMD_READ | CMD_WRITE) && req.length > max_request {
        return Some(NbdErrno::EINVAL.0);
    }
    let size = export.device.size();
    match req.offset.checked_add(u64::from(req.length)) {
        Some(end) if end <= size => {}
        _ => {
            return Some(if matches!(req.command, CMD_WRITE | CMD_WRITE_ZEROES) {
                NbdErrno::ENOSPC.0
            } else {
                NbdErrno::EINVAL.0
            });
        }
    }
    let min = u64::from(export.device.min_block_size().max(1));
    if !req.offset.is_multiple_of(min) || u64::from(req.length) % min != 0 {
        return Some(NbdErrno::EINVAL.0);
    }
    None
}

fn execute(export: &Export, req: Request, payload: Vec<u8>) -> Pending {
    let dev = export.device.clone();
    let cost = req.length as usize;
    Box::pin(async move {
        let fua = req.flags & CMD_FLAG_FUA != 0;
        let mut data = Vec::new();
        let result = match req.command {
            CMD_READ => {
                data = take_buffer(req.length as usize);
                dev.read_at(req.offset, &mut data).await
            }
            CMD_WRITE => {
                let r = dev.write_at(req.offset, &payload, fua).await;
                give_buffer(payload);
                r
            }
            CMD_FLUSH => dev.flush().await,
            CMD_TRIM => {
                let r = dev.trim(req.offset, u64::from(req.length)).await;
                if r.is_ok() && fua {
                    dev.flush().await
                } else {
                    r
                }
            }
            CMD_WRITE_ZEROES => {
                let may_trim = req.flags & CMD_FLAG_NO_HOLE == 0;
                let r = dev
                    .write_zeroes(req.offset, u64::from(req.length), may_trim)
                    .await;
                if r.is_ok() && fua {
                    dev.flush().await
                } else {
                    r
                }
            }
            _ => Err(Error::Unsupported("command".into())),
        };
        let error = match result {
            Ok(()) => 0,
            Err(e) => {
                tracing::warn!(
                    command = command_name(req.command),
                    offset = req.offset,
                    length = req.length,
                    error = %display_chain(&e),
                    "NBD request failed"
                );
                data = Vec::new();
                errno_of(&e, req.command != CMD_READ)
            }
        };
        Completion {
            handle: req.handle,
            error,
            data,
            cost,
        }
    })
}

/// Serves the transmission phase of `export` on an already-negotiated stream (the Linux
/// kernel's NBD driver starts here, without a handshake).
pub(crate) async fn serve_transmission<S>(
    export: &Export,
    stream: S,
    cfg: &ServerConfig,
) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (rd, wr) = tokio::io::split(stream);
    transmission(export, BufReader::with_capacity(READ_BUFFER, rd), wr, cfg).await
}

pub(super) async fn transmission<S>(
    export: &Export,
    rd: Reader<S>,
    mut wr: WriteHalf<S>,
    cfg: &ServerConfig,
) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Send,
{
    let result = transmission_loop(export, rd, &mut wr, cfg).await;
    if result.is_ok() {
        wr.flush().await.context("sending NBD replies")?;
        let _ = wr.shutdown().await;
    }
    result
}

/// What woke the transmission loop up.
enum Event<S> {
    Completed(Completion),
    Read(Reader<S>, Result<Incoming>),
}

async fn transmission_loop<S>(
    export: &Export,
    rd: Reader<S>,
    wr: &mut WriteHalf<S>,
    cfg: &ServerConfig,
) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Send,
{
    let mut read_fut: Option<ReadFuture<'_, S>> = Some(read_next(rd, cfg.max_request));
    let mut inflight: FuturesUnordered<Pending> = FuturesUnordered::new();
    let mut inflight_bytes = 0usize;
    let mut out: Vec<u8> = Vec::with_capacity(DIRECT_WRITE * 2);
    let mut failure: Option<Error> = None;
    let can_read = |n: usize, bytes: usize| {
        n < cfg.max_in_flight && (n == 0 || bytes < cfg.max_in_flight_bytes)
    };

    loop {
        // Take everything that is ready without waiting, then write the replies in one go:
        // with a fast device this turns into one read and one write system call per batch.
        loop {
            let mut event = None;
            if let Some(Some(c)) = inflight.next().now_or_never() {
                event = Some(Event::Completed(c));
            } else if can_read(inflight.len(), inflight_bytes)
                && let Some(fut) = read_fut.as_mut()
                && let Some((rd, incoming)) = fut.as_mut().now_or_never()
            {
                read_fut = None;
                event = Some(Event::Read(rd, incoming));
            }
            let Some(event) = event else { break };
            handle_event(
                event,
                export,
                cfg,
                wr,
                &mut out,
                &mut read_fut,
                &mut inflight,
                &mut inflight_bytes,
                &mut failure,
            )
            .await?;
            if out.len() >= DIRECT_WRITE {
                wr.write_all(&out).await.context("sending NBD replies")?;
                out.clear();
            }
        }
        if !out.is_empty() {
            wr.write_all(&out).await.context("sending NBD replies")?;
            out.clear();
        }
        if read_fut.is_none() && inflight.is_empty() {
            break;
        }
        let reading = read_fut.is_some() && can_read(inflight.len(), inflight_bytes);
        let event = tokio::select! {
            Some(c) = inflight.next(), if !inflight.is_empty() => Event::Completed(c),
            (rd, incoming) = async {
                match read_fut.as_mut() {
                    Some(f) => f.as_mut().await,
                    None => std::future::pending().await,
                }
            }, if reading => Event::Read(rd, incoming),
        };
        if matches!(event, Event::Read(..)) {
            read_fut = None;
        }
        handle_event(
            event,
            export,
            cfg,
            wr,
            &mut out,
            &mut read_fut,
            &mut inflight,
            &mut inflight_bytes,
            &mut failure,
        )
        .await?;
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[allow(clippy::too_many_arguments)] // the loop's state, split out to keep the loop readable
async fn handle_event<'a, S>(
    event: Event<S>,
    export: &Export,
    cfg: &'a ServerConfig,
    wr: &mut WriteHalf<S>,
    out: &mut Vec<u8>,
    read_fut: &mut Option<ReadFuture<'a, S>>,
    inflight: &mut FuturesUnordered<Pending>,
    inflight_bytes: &mut usize,
    failure: &mut Option<Error>,
) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Send + 'a,
{
    match event {
        Event::Completed(c) => {
            *inflight_bytes -= c.cost;
            encode_completion(out, wr, c).await?;
        }
        Event::Read(rd, incoming) => match incoming {
            Ok(Incoming::Request(req, payload)) => {
                accept(export, req, payload, cfg, inflight, inflight_bytes, out);
                *read_fut = Some(read_next(rd, cfg.max_request));
            }
            Ok(Incoming::Oversized(req)) => {
                push_simple(out, req.handle, NbdErrno::EINVAL.0);
                *read_fut = Some(read_next(rd, cfg.max_request));
            }
            // Finish what is in flight, then close.
            Ok(Incoming::Disconnect | Incoming::Eof) => {}
            Err(e) => {
                tracing::warn!(error = %display_chain(&e), "NBD client sent a malformed request; closing");
                *failure = Some(e);
            }
        },
    }
    Ok(())
}

fn accept(
    export: &Export,
    req: Request,
    payload: Vec<u8>,
    cfg: &ServerConfig,
    inflight: &mut FuturesUnordered<Pending>,
    inflight_bytes: &mut usize,
    out: &mut Vec<u8>,
) {
    if let Some(errno) = validate(export, &req, cfg.max_request) {
        tracing::debug!(
            command = command_name(req.command),
            offset = req.offset,
            length = req.length,
            errno,
            "refusing NBD request"
        );
        push_simple(out, req.handle, errno);
        return;
    }
    *inflight_bytes += req.length as usize;
    inflight.push(execute(export, req, payload));
}

fn push_simple(out: &mut Vec<u8>, handle: u64, error: u32) {
    out.extend_from_slice(&SimpleReply { error, handle }.encode());
}

async fn encode_completion<W: AsyncWrite + Unpin>(
    out: &mut Vec<u8>,
    wr: &mut W,
    c: Completion,
) -> Result<()> {
    push_simple(out, c.handle, c.error);
    if c.data.len() >= DIRECT_WRITE {
        wr.write_all(out).await.context("sending NBD replies")?;
        out.clear();
        wr.write_all(&c.data).await.context("sending NBD replies")?;
    } else {
        out.extend_from_slice(&c.data);
    }
    give_buffer(c.data);
    Ok(())
}
