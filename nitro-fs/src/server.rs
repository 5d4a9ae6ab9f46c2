//! The parent-side NBD server.

use std::collections::HashSet;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::io::{
    AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, ReadHalf, WriteHalf,
};

use crate::device::{BlockDevice, DynBlockDevice};
use crate::error::{Error, IoContext, NbdErrno, ProtocolError, Result, display_chain};
use crate::internal::proto::*;

/// One named export: a block device offered to NBD clients.
#[derive(Clone)]
pub struct Export {
    name: String,
    description: String,
    device: Arc<dyn DynBlockDevice>,
    read_only: bool,
}

impl std::fmt::Debug for Export {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Export")
            .field("name", &self.name)
            .field("description", &self.description)
            .field("size", &self.device.size())
            .field("read_only", &self.read_only)
            .finish()
    }
}

impl Export {
    /// An export named `name` serving `device`.
    pub fn new(name: impl Into<String>, device: impl BlockDevice + 'static) -> Self {
        let read_only = device.is_read_only();
        Self {
            name: name.into(),
            description: String::new(),
            device: Arc::new(device),
            read_only,
        }
    }

    /// Sets the description shown by `nbdinfo` and `NBD_INFO_DESCRIPTION`.
    pub fn with_description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    /// Serves the export read-only (writes, trims and write-zeroes fail with `EPERM`).
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only || self.device.is_read_only();
        self
    }

    /// The export's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The export's size in bytes.
    pub fn size(&self) -> u64 {
        self.device.size()
    }

    /// Transmission flags advertised for this export.
    pub fn transmission_flags(&self) -> u16 {
        let mut flags = TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH | TFLAG_SEND_FUA;
        if self.read_only {
            flags |= TFLAG_READ_ONLY;
        } else {
            flags |= TFLAG_SEND_TRIM | TFLAG_SEND_WRITE_ZEROES;
        }
        if self.device.can_multi_conn() {
            flags |= TFLAG_CAN_MULTI_CONN;
        }
        flags
    }

    fn block_size_info(&self, max_request: u32) -> Info {
        let minimum = self.device.min_block_size().max(1);
        let preferred = self.device.block_size().max(minimum);
        Info::BlockSize {
            minimum,
            preferred,
            maximum: max_request - max_request % minimum,
        }
    }
}

/// Limits and timeouts of a [`Server`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Largest read or write payload accepted in one request (advertised as the maximum
    /// block size). Default 32 MiB, the value qemu and the Linux kernel assume.
    pub max_request: u32,
    /// Requests processed concurrently per connection before the server stops reading.
    /// Default 256.
    pub max_in_flight: usize,
    /// Payload bytes processed concurrently per connection before the server stops
    /// reading. Default 128 MiB.
    pub max_in_flight_bytes: usize,
    /// Time a client has to finish the handshake. Default 30 s.
    pub handshake_timeout: Duration,
    /// Options a client may send before entering transmission. Default 256.
    pub max_options: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_request: 32 << 20,
            max_in_flight: 256,
            max_in_flight_bytes: 128 << 20,
            handshake_timeout: Duration::from_secs(30),
            max_options: 256,
        }
    }
}

/// An NBD server exporting one or more block devices, over any byte stream.
///
/// Speaks fixed-newstyle negotiation with `NBD_OPT_GO`, `NBD_OPT_INFO`, `NBD_OPT_LIST`,
/// `NBD_OPT_EXPORT_NAME` and `NBD_OPT_ABORT` (structured replies, metadata contexts, TLS and
/// extended headers are refused with the proper error replies, so qemu, libnbd and the Linux
/// kernel fall back to simple replies), then serves read, write, flush, FUA, trim and
/// write-zeroes with many requests in flight. Malformed or out-of-range requests get an
/// error reply; a corrupt stream ends the connection.
///
/// The server is cheap to clone; run [`serve`](Self::serve) once per accepted connection.
///
/// ```no_run
/// use nitro_fs::{Export, FileDevice, Server};
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let server = Server::new(vec![Export::new("disk0", FileDevice::create("disk0.img", 1 << 30)?)])?;
/// let listener = tokio::net::UnixListener::bind("/run/nbd.sock")?;
/// loop {
///     let (stream, _) = listener.accept().await?;
///     let server = server.clone();
///     tokio::spawn(async move { server.serve(stream).await });
/// }
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Server {
    inner: Arc<ServerInner>,
}

#[derive(Debug)]
struct ServerInner {
    exports: Vec<Export>,
    config: ServerConfig,
}

impl Server {
    /// A server with the default [`ServerConfig`].
    pub fn new(exports: Vec<Export>) -> Result<Self> {
        Self::with_config(exports, ServerConfig::default())
    }

    /// A server with explicit limits.
    pub fn with_config(exports: Vec<Export>, config: ServerConfig) -> Result<Self> {
        if exports.is_empty() {
            return Err(Error::invalid("a server needs at least one export"));
        }
        if config.max_request < 4096 || config.max_in_flight == 0 {
            return Err(Error::invalid(
                "max_request must be at least 4096 and max_in_flight at least 1",
            ));
        }
        let mut seen = HashSet::new();
        for e in &exports {
            parse_string("export name", e.name.as_bytes())?;
            parse_string("export description", e.description.as_bytes())?;
            if !seen.insert(e.name.clone()) {
                return Err(Error::invalid(format!(
                    "duplicate export name {:?}",
                    e.name
                )));
            }
        }
        Ok(Self {
            inner: Arc::new(ServerInner { exports, config }),
        })
    }

    /// The exports.
    pub fn exports(&self) -> &[Export] {
        &self.inner.exports
    }

    fn find(&self, name: &str) -> Option<&Export> {
        let exports = &self.inner.exports;
        exports
            .iter()
            .find(|e| e.name == name)
            // The empty name is the protocol's "default export": the first one.
            .or_else(|| {
                if name.is_empty() {
                    exports.first()
                } else {
                    None
                }
            })
    }

    /// Serves one client connection: handshake, then transmission until the client
    /// disconnects. Returns `Ok` on a clean end (`NBD_CMD_DISC`, `NBD_OPT_ABORT`, or EOF
    /// between requests) and an error when the client broke the protocol.
    pub async fn serve<S>(&self, stream: S) -> Result<()>
    where
        S: AsyncRead + AsyncWrite + Send,
    {
        let (rd, mut wr) = tokio::io::split(stream);
        let mut rd = BufReader::with_capacity(READ_BUFFER, rd);
        let cfg = &self.inner.config;
        let chosen =
            match tokio::time::timeout(cfg.handshake_timeout, self.handshake(&mut rd, &mut wr))
                .await
            {
                Ok(r) => r?,
                Err(_) => {
                    return Err(Error::io(
                        "NBD handshake with a client",
                        io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("timed out after {:?}", cfg.handshake_timeout),
                        ),
                    ));
                }
            };
        match chosen {
            Some(export) => transmission(&export, rd, wr, cfg).await,
            None => Ok(()),
        }
    }

    async fn handshake<R, W>(&self, rd: &mut R, wr: &mut W) -> Result<Option<Export>>
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
                discard(rd, u64::from(opt.length)).await?;
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

/// Option data larger than this is refused.
const MAX_OPTION_DATA: u32 = 64 * 1024;
/// Option data larger than this ends the connection instead of being skipped.
const MAX_OPTION_DISCARD: u32 = 1 << 20;
/// Socket read buffer of a connection.
const READ_BUFFER: usize = 256 * 1024;
/// Read replies at least this large are written straight from their buffer.
const DIRECT_WRITE: usize = 64 * 1024;

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

async fn discard<R: AsyncRead + Unpin>(rd: &mut R, mut n: u64) -> Result<()> {
    let mut buf = [0u8; 8192];
    while n > 0 {
        let k = n.min(buf.len() as u64) as usize;
        rd.read_exact(&mut buf[..k])
            .await
            .context("discarding NBD option data")?;
        n -= k as u64;
    }
    Ok(())
}

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
        discard(rd, u64::from(req.length)).await?;
        return Ok(Incoming::Oversized(req));
    }
    let data = read_vec(rd, req.length as usize)
        .await
        .context("reading the data of an NBD write request")?;
    Ok(Incoming::Request(req, data))
}

/// Read buffers kept for reuse, so that large reads neither zero-fill nor page-fault fresh
/// memory every time.
static BUFFERS: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());
/// Buffers above this size are not kept.
const POOLED_MAX: usize = 4 << 20;
/// Buffers kept at most.
const POOLED_COUNT: usize = 64;

/// A buffer of `len` bytes (content unspecified).
pub(crate) fn take_buffer(len: usize) -> Vec<u8> {
    match pooled(len) {
        Some(mut b) => {
            // Only the part beyond the old length is zero-filled.
            b.resize(len, 0);
            b
        }
        None => vec![0u8; len],
    }
}

/// An empty buffer with room for `len` bytes.
fn take_spare(len: usize) -> Vec<u8> {
    match pooled(len) {
        Some(mut b) => {
            b.clear();
            b
        }
        None => Vec::with_capacity(len),
    }
}

fn pooled(len: usize) -> Option<Vec<u8>> {
    if len <= 4096 || len > POOLED_MAX {
        return None;
    }
    let mut pool = BUFFERS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    pool.iter()
        .position(|b| b.capacity() >= len)
        .map(|i| pool.swap_remove(i))
}

/// Returns a buffer to the pool.
pub(crate) fn give_buffer(b: Vec<u8>) {
    if b.capacity() > 4096 && b.capacity() <= POOLED_MAX {
        let mut pool = BUFFERS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if pool.len() < POOLED_COUNT {
            pool.push(b);
        }
    }
}

/// Reads exactly `n` bytes into a new vector, without zero-filling it first.
pub(crate) async fn read_vec<R: AsyncRead + Unpin>(rd: &mut R, n: usize) -> io::Result<Vec<u8>> {
    let mut data = take_spare(n);
    while data.len() < n {
        let want = (n - data.len()) as u64;
        if (&mut *rd).take(want).read_buf(&mut data).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(data)
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

async fn transmission<S>(
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
