//! The enclave-side NBD client.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::future::try_join_all;
use tokio::io::{
    AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter, ReadHalf, WriteHalf,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::device::{BlockDevice, check_request};
use crate::error::{Error, NbdErrno, ProtocolError, Result};
use crate::proto::*;

/// A byte stream usable as an NBD transport.
pub(crate) trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Transport for T {}

type BoxStream = Box<dyn Transport>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type Connector = Box<dyn Fn() -> BoxFuture<io::Result<BoxStream>> + Send + Sync>;

/// How the client re-establishes a lost connection.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ReconnectPolicy {
    /// Connection attempts per reconnection (0 = never reconnect). Default 8.
    pub max_attempts: u32,
    /// Delay before the second attempt; doubles after each failure. Default 50 ms.
    pub initial_delay: Duration,
    /// Upper bound of the delay. Default 2 s.
    pub max_delay: Duration,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            initial_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(2),
        }
    }
}

impl ReconnectPolicy {
    /// Never reconnect: the first lost connection fails every later request.
    pub fn never() -> Self {
        Self {
            max_attempts: 0,
            ..Self::default()
        }
    }
}

/// Settings of an [`NbdClient`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientConfig {
    /// Export to open (empty = the server's default export).
    pub export: String,
    /// Reconnection behaviour.
    pub reconnect: ReconnectPolicy,
    /// Times one request is re-sent on a new connection after the old one broke. Default 3.
    pub max_retries: u32,
    /// Time allowed for connecting plus the handshake. Default 10 s.
    pub connect_timeout: Duration,
    /// Time allowed for one request before the connection is considered dead and the request
    /// is retried on a new one. Default: none.
    pub request_timeout: Option<Duration>,
    /// Largest payload sent in one request (further capped by the server's maximum); larger
    /// reads and writes are split and pipelined. Default 1 MiB.
    pub max_request: u32,
}

impl ClientConfig {
    /// Settings for `export` with defaults for everything else.
    pub fn new(export: impl Into<String>) -> Self {
        Self {
            export: export.into(),
            reconnect: ReconnectPolicy::default(),
            max_retries: 3,
            connect_timeout: Duration::from_secs(10),
            request_timeout: None,
            max_request: 1 << 20,
        }
    }
}

/// What the server said about the export during the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExportInfo {
    /// Export size in bytes.
    pub size: u64,
    /// Transmission flags (`proto::TFLAG_*`).
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
                    return Err(Error::Negotiation {
                        option: "NBD_OPT_GO",
                        reason: reply_reason(t, &payload),
                    });
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
            Error::Io(e)
        }
    })?;
    let r = ExportNameReply::parse(&b)?;
    if !no_zeroes {
        let mut pad = [0u8; EXPORT_NAME_PADDING];
        stream.read_exact(&mut pad).await?;
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
                return Err(Error::Negotiation {
                    option: "NBD_OPT_LIST",
                    reason: reply_reason(t, &payload),
                });
            }
            _ => return Err(ProtocolError::Invalid("unexpected reply to NBD_OPT_LIST").into()),
        }
    }
    Err(ProtocolError::Invalid("too many replies to NBD_OPT_LIST").into())
}

fn reply_reason(reply_type: u32, payload: &[u8]) -> String {
    let msg = String::from_utf8_lossy(payload);
    if msg.is_empty() {
        reply_type_name(reply_type).to_owned()
    } else {
        format!("{}: {}", reply_type_name(reply_type), msg)
    }
}

async fn greet<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) -> Result<u16> {
    let mut b = [0u8; Greeting::LEN];
    stream.read_exact(&mut b).await?;
    let g = Greeting::parse(&b)?;
    let mut client_flags = 0u32;
    if g.handshake_flags & FLAG_FIXED_NEWSTYLE != 0 {
        client_flags |= FLAG_C_FIXED_NEWSTYLE;
    }
    if g.handshake_flags & FLAG_NO_ZEROES != 0 {
        client_flags |= FLAG_C_NO_ZEROES;
    }
    stream.write_all(&client_flags.to_be_bytes()).await?;
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
    stream.write_all(&b).await?;
    stream.flush().await?;
    Ok(())
}

async fn read_option_reply<S: AsyncRead + Unpin>(
    stream: &mut S,
    option: u32,
) -> Result<(OptionReplyHeader, Vec<u8>)> {
    let mut b = [0u8; OptionReplyHeader::LEN];
    stream.read_exact(&mut b).await?;
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
    stream.read_exact(&mut payload).await?;
    Ok((hdr, payload))
}

/// An NBD client: a remote export used as a [`BlockDevice`].
///
/// Requests from any number of tasks are pipelined over one connection (clone the client or
/// share it by reference). Reads and writes larger than the negotiated maximum are split
/// and sent concurrently. When the connection breaks, the client reconnects through its
/// connector (with exponential back-off, see [`ReconnectPolicy`]) and re-sends the requests
/// that had no reply; if writes acknowledged on the lost connection had not been flushed,
/// the next [`flush`](BlockDevice::flush) fails with [`Error::UnflushedWritesLost`], since
/// the server may have lost them.
///
/// Everything the server sends is treated as hostile: replies are checked against the
/// requests in flight, lengths are bounded, and any violation closes the connection.
///
/// ```no_run
/// use nitro_fs::{BlockDevice, ClientConfig, NbdClient};
/// # async fn demo() -> nitro_fs::Result<()> {
/// let client = NbdClient::connect(
///     || tokio::net::UnixStream::connect("/run/nbd.sock"),
///     ClientConfig::new("disk0"),
/// )
/// .await?;
/// client.write_at(0, &[0xab; 4096]).await?;
/// client.flush().await?;
/// let mut buf = vec![0u8; 4096];
/// client.read_at(0, &mut buf).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct NbdClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for NbdClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NbdClient")
            .field("export", &self.inner.config.export)
            .field("info", &self.inner.info)
            .finish()
    }
}

struct Inner {
    connector: Connector,
    config: ClientConfig,
    info: ExportInfo,
    /// Largest payload per request (config and server limit, aligned).
    chunk: u32,
    current: Mutex<Option<Arc<Conn>>>,
    reconnect_lock: tokio::sync::Mutex<()>,
    /// Set when a connection died with acknowledged but unflushed writes.
    writes_lost: Arc<AtomicBool>,
    closed: AtomicBool,
}

impl NbdClient {
    /// Connects through `connector` (called again for every reconnection) and opens
    /// `config.export`.
    pub async fn connect<F, Fut, S>(connector: F, config: ClientConfig) -> Result<Self>
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = io::Result<S>> + Send + 'static,
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let connector: Connector = Box::new(move || {
            let fut = connector();
            Box::pin(async move { fut.await.map(|s| Box::new(s) as BoxStream) })
        });
        let writes_lost = Arc::new(AtomicBool::new(false));
        let (info, conn) = open(&connector, &config, &writes_lost).await?;
        let mut chunk = config
            .max_request
            .min(info.max_payload)
            .max(info.min_block_size);
        chunk -= chunk % info.min_block_size.max(1);
        Ok(Self {
            inner: Arc::new(Inner {
                connector,
                chunk,
                config,
                info,
                current: Mutex::new(Some(conn)),
                reconnect_lock: tokio::sync::Mutex::new(()),
                writes_lost,
                closed: AtomicBool::new(false),
            }),
        })
    }

    /// Connects to a Unix socket.
    pub async fn connect_unix(path: impl Into<std::path::PathBuf>, export: &str) -> Result<Self> {
        let path = path.into();
        Self::connect(
            move || tokio::net::UnixStream::connect(path.clone()),
            ClientConfig::new(export),
        )
        .await
    }

    /// Connects over TCP.
    pub async fn connect_tcp(addr: std::net::SocketAddr, export: &str) -> Result<Self> {
        Self::connect(
            move || async move {
                let s = tokio::net::TcpStream::connect(addr).await?;
                s.set_nodelay(true)?;
                Ok(s)
            },
            ClientConfig::new(export),
        )
        .await
    }

    /// What the server said about the export.
    pub fn info(&self) -> &ExportInfo {
        &self.inner.info
    }

    /// Ends the session cleanly (`NBD_CMD_DISC`) after the requests in flight. Later
    /// requests fail with [`Error::Disconnected`].
    pub async fn close(&self) -> Result<()> {
        self.inner.closed.store(true, Ordering::SeqCst);
        let conn = lock(&self.inner.current).take();
        if let Some(conn) = conn {
            conn.disconnect().await;
        }
        Ok(())
    }

    /// Breaks the current connection as if the network failed (for tests of reconnection).
    #[doc(hidden)]
    pub fn break_connection(&self) {
        if let Some(conn) = lock(&self.inner.current).as_ref() {
            conn.shared.kill("connection broken on request".into());
        }
    }

    async fn connection(&self) -> Result<Arc<Conn>> {
        if let Some(c) = lock(&self.inner.current).as_ref()
            && c.shared.is_alive()
        {
            return Ok(c.clone());
        }
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(Error::Disconnected("the client was closed".into()));
        }
        let _g = self.inner.reconnect_lock.lock().await;
        // Someone else may have reconnected while we waited.
        let last_reason = {
            let cur = lock(&self.inner.current);
            match cur.as_ref() {
                Some(c) if c.shared.is_alive() => return Ok(c.clone()),
                Some(c) => c.shared.reason(),
                None => "no connection".to_owned(),
            }
        };
        let policy = &self.inner.config.reconnect;
        if policy.max_attempts == 0 {
            return Err(Error::Disconnected(last_reason));
        }
        let mut delay = policy.initial_delay;
        let mut last_err = Error::Disconnected(last_reason);
        for attempt in 0..policy.max_attempts {
            if attempt > 0 {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(policy.max_delay);
            }
            match open(
                &self.inner.connector,
                &self.inner.config,
                &self.inner.writes_lost,
            )
            .await
            {
                Ok((info, conn)) => {
                    if info.size != self.inner.info.size {
                        conn.shared.kill("export changed size".into());
                        return Err(Error::Disconnected(format!(
                            "after reconnecting, the export has {} bytes instead of {}",
                            info.size, self.inner.info.size
                        )));
                    }
                    tracing::info!(attempt, "NBD client reconnected");
                    *lock(&self.inner.current) = Some(conn.clone());
                    return Ok(conn);
                }
                Err(e) => {
                    tracing::warn!(attempt, error = %e, "NBD reconnection failed");
                    last_err = e;
                }
            }
        }
        Err(match last_err {
            e @ Error::Disconnected(_) => e,
            e => Error::Disconnected(format!("reconnection failed: {e}")),
        })
    }

    /// Sends one request, retrying on new connections when the old one breaks.
    async fn call(&self, op: Op<'_>) -> Result<Option<Vec<u8>>> {
        let mut attempts = 0;
        loop {
            let conn = self.connection().await?;
            let fut = conn.submit(&op);
            let result = match self.inner.config.request_timeout {
                Some(t) => match tokio::time::timeout(t, fut).await {
                    Ok(r) => r,
                    Err(_) => {
                        conn.shared.kill("request timed out".into());
                        Err(Failure::Disconnected("request timed out".into()))
                    }
                },
                None => fut.await,
            };
            match result {
                Ok(data) => return Ok(data),
                Err(Failure::Errno(errno)) => {
                    return Err(Error::Server {
                        command: command_name(op.command),
                        offset: op.offset,
                        length: u64::from(op.length),
                        errno: NbdErrno(errno),
                    });
                }
                Err(Failure::Disconnected(reason)) => {
                    attempts += 1;
                    if attempts > self.inner.config.max_retries
                        || self.inner.config.reconnect.max_attempts == 0
                    {
                        return Err(Error::Disconnected(reason));
                    }
                    tracing::debug!(reason, "retrying NBD request on a new connection");
                }
            }
        }
    }

    fn check(&self, offset: u64, len: u64, writing: bool) -> Result<()> {
        if writing && self.inner.info.read_only() {
            return Err(Error::ReadOnly);
        }
        check_request(
            self.inner.info.size,
            self.inner.info.min_block_size,
            offset,
            len,
        )
    }

    fn has(&self, flag: u16) -> bool {
        self.inner.info.flags & flag != 0
    }

    async fn write_impl(&self, offset: u64, data: &[u8], fua: bool) -> Result<()> {
        self.check(offset, data.len() as u64, true)?;
        let use_fua = fua && self.has(TFLAG_SEND_FUA);
        let chunk = self.inner.chunk as usize;
        let futs = data.chunks(chunk).enumerate().map(|(i, piece)| {
            self.call(Op {
                command: CMD_WRITE,
                flags: if use_fua { CMD_FLAG_FUA } else { 0 },
                offset: offset + (i * chunk) as u64,
                length: piece.len() as u32,
                data: piece,
            })
        });
        try_join_all(futs).await?;
        if fua && !use_fua {
            self.flush_impl().await?;
        }
        Ok(())
    }

    async fn flush_impl(&self) -> Result<()> {
        if self.has(TFLAG_SEND_FLUSH) && !self.inner.info.read_only() {
            self.call(Op {
                command: CMD_FLUSH,
                flags: 0,
                offset: 0,
                length: 0,
                data: &[],
            })
            .await?;
        }
        if self.inner.writes_lost.swap(false, Ordering::SeqCst) {
            return Err(Error::UnflushedWritesLost);
        }
        Ok(())
    }

    /// Splits a trim / write-zeroes range into requests of at most 2^31 bytes.
    async fn ranged(&self, command: u16, flags: u16, offset: u64, len: u64) -> Result<()> {
        let align = u64::from(self.inner.info.min_block_size.max(1));
        let max = (1u64 << 31) - (1u64 << 31) % align;
        let mut futs = Vec::new();
        let mut done = 0;
        while done < len {
            let n = (len - done).min(max);
            futs.push(self.call(Op {
                command,
                flags,
                offset: offset + done,
                length: n as u32,
                data: &[],
            }));
            done += n;
        }
        try_join_all(futs).await?;
        Ok(())
    }
}

impl BlockDevice for NbdClient {
    fn size(&self) -> u64 {
        self.inner.info.size
    }

    fn block_size(&self) -> u32 {
        self.inner.info.preferred_block_size
    }

    fn min_block_size(&self) -> u32 {
        self.inner.info.min_block_size
    }

    fn is_read_only(&self) -> bool {
        self.inner.info.read_only()
    }

    fn can_multi_conn(&self) -> bool {
        self.has(TFLAG_CAN_MULTI_CONN)
    }

    async fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.check(offset, buf.len() as u64, false)?;
        let chunk = self.inner.chunk as usize;
        let futs = buf
            .chunks_mut(chunk)
            .enumerate()
            .map(|(i, piece)| async move {
                let data = self
                    .call(Op {
                        command: CMD_READ,
                        flags: 0,
                        offset: offset + (i * chunk) as u64,
                        length: piece.len() as u32,
                        data: &[],
                    })
                    .await?;
                match data {
                    Some(d) if d.len() == piece.len() => {
                        piece.copy_from_slice(&d);
                        Ok(())
                    }
                    _ => Err(Error::Protocol(ProtocolError::Invalid("read reply length"))),
                }
            });
        try_join_all(futs).await?;
        Ok(())
    }

    async fn read_to_vec(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        if len == 0 || len > self.inner.chunk as usize {
            let mut v = vec![0u8; len];
            self.read_at(offset, &mut v).await?;
            return Ok(v);
        }
        self.check(offset, len as u64, false)?;
        // One request: hand over the reply buffer itself.
        match self
            .call(Op {
                command: CMD_READ,
                flags: 0,
                offset,
                length: len as u32,
                data: &[],
            })
            .await?
        {
            Some(d) if d.len() == len => Ok(d),
            _ => Err(Error::Protocol(ProtocolError::Invalid("read reply length"))),
        }
    }

    async fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.write_impl(offset, data, false).await
    }

    async fn write_at_fua(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.write_impl(offset, data, true).await
    }

    async fn flush(&self) -> Result<()> {
        self.flush_impl().await
    }

    async fn trim(&self, offset: u64, len: u64) -> Result<()> {
        self.check(offset, len, true)?;
        if len == 0 || !self.has(TFLAG_SEND_TRIM) {
            // A hint the server does not take.
            return Ok(());
        }
        self.ranged(CMD_TRIM, 0, offset, len).await
    }

    async fn write_zeroes(&self, offset: u64, len: u64, may_trim: bool) -> Result<()> {
        self.check(offset, len, true)?;
        if len == 0 {
            return Ok(());
        }
        if self.has(TFLAG_SEND_WRITE_ZEROES) {
            let flags = if may_trim { 0 } else { CMD_FLAG_NO_HOLE };
            return self.ranged(CMD_WRITE_ZEROES, flags, offset, len).await;
        }
        let zeroes = vec![0u8; (self.inner.chunk as u64).min(len) as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(zeroes.len() as u64) as usize;
            self.write_impl(offset + done, &zeroes[..n], false).await?;
            done += n as u64;
        }
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One request to send.
struct Op<'a> {
    command: u16,
    flags: u16,
    offset: u64,
    length: u32,
    data: &'a [u8],
}

/// Why a request got no successful reply.
enum Failure {
    Errno(u32),
    Disconnected(String),
}

/// What the reader task must do with a reply.
struct Waiter {
    tx: oneshot::Sender<Result<Option<Vec<u8>>, Failure>>,
    command: u16,
    read_len: u32,
    /// For writes: whether the acknowledgement makes the data durable (FUA).
    durable: bool,
    /// For flushes: the acknowledged-write count the flush covers.
    flush_covers: u64,
}

struct PendingTable {
    waiters: HashMap<u64, Waiter>,
    /// Set once the connection is dead, with the reason.
    closed: Option<String>,
}

/// State shared between a connection's writers and its reader task.
struct Shared {
    pending: Mutex<PendingTable>,
    alive: AtomicBool,
    /// Number of non-durable writes the server acknowledged on this connection.
    acked_writes: AtomicU64,
    /// Acknowledged-write count covered by the last successful flush.
    flushed_writes: AtomicU64,
    writes_lost: Arc<AtomicBool>,
    reader: Mutex<Option<JoinHandle<()>>>,
}

impl Shared {
    fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    fn reason(&self) -> String {
        lock(&self.pending)
            .closed
            .clone()
            .unwrap_or_else(|| "connection lost".into())
    }

    /// Marks the connection dead and fails every request waiting on it. Idempotent.
    fn kill(&self, reason: String) {
        let waiters = {
            let mut p = lock(&self.pending);
            if p.closed.is_some() {
                return;
            }
            p.closed = Some(reason.clone());
            self.alive.store(false, Ordering::SeqCst);
            std::mem::take(&mut p.waiters)
        };
        if self.acked_writes.load(Ordering::SeqCst) > self.flushed_writes.load(Ordering::SeqCst) {
            self.writes_lost.store(true, Ordering::SeqCst);
        }
        for (_, w) in waiters {
            let _ = w.tx.send(Err(Failure::Disconnected(reason.clone())));
        }
        if let Some(h) = lock(&self.reader).take() {
            h.abort();
        }
        tracing::debug!(reason, "NBD connection closed");
    }
}

/// One live connection.
struct Conn {
    shared: Arc<Shared>,
    writer: tokio::sync::Mutex<BufWriter<WriteHalf<BoxStream>>>,
    next_handle: AtomicU64,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.shared.kill("connection dropped".into());
    }
}

/// Marks the connection dead if a request is abandoned half-written.
struct WriteGuard<'a>(&'a Shared, bool);
impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        if !self.1 {
            self.0
                .kill("a request was abandoned while being sent".into());
        }
    }
}

async fn open(
    connector: &Connector,
    config: &ClientConfig,
    writes_lost: &Arc<AtomicBool>,
) -> Result<(ExportInfo, Arc<Conn>)> {
    let handshake = async {
        let mut stream = connector().await?;
        let info = negotiate(&mut stream, &config.export).await?;
        Ok::<_, Error>((info, stream))
    };
    let (info, stream) = tokio::time::timeout(config.connect_timeout, handshake)
        .await
        .map_err(|_| {
            Error::Io(io::Error::new(
                io::ErrorKind::TimedOut,
                "NBD connect and handshake timed out",
            ))
        })??;
    let (rd, wr) = tokio::io::split(stream);
    let shared = Arc::new(Shared {
        pending: Mutex::new(PendingTable {
            waiters: HashMap::new(),
            closed: None,
        }),
        alive: AtomicBool::new(true),
        acked_writes: AtomicU64::new(0),
        flushed_writes: AtomicU64::new(0),
        writes_lost: writes_lost.clone(),
        reader: Mutex::new(None),
    });
    let task = tokio::spawn(reader_task(shared.clone(), rd));
    *lock(&shared.reader) = Some(task);
    let conn = Conn {
        shared,
        writer: tokio::sync::Mutex::new(BufWriter::with_capacity(128 * 1024, wr)),
        next_handle: AtomicU64::new(1),
    };
    Ok((info, Arc::new(conn)))
}

impl Conn {
    async fn submit(&self, op: &Op<'_>) -> Result<Option<Vec<u8>>, Failure> {
        let handle = self.next_handle.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut p = lock(&self.shared.pending);
            if let Some(reason) = &p.closed {
                return Err(Failure::Disconnected(reason.clone()));
            }
            p.waiters.insert(
                handle,
                Waiter {
                    tx,
                    command: op.command,
                    read_len: if op.command == CMD_READ { op.length } else { 0 },
                    durable: op.flags & CMD_FLAG_FUA != 0,
                    flush_covers: self.shared.acked_writes.load(Ordering::SeqCst),
                },
            );
        }
        let header = Request {
            flags: op.flags,
            command: op.command,
            handle,
            offset: op.offset,
            length: op.length,
        }
        .encode();
        {
            let mut w = self.writer.lock().await;
            let mut guard = WriteGuard(&self.shared, false);
            let sent = async {
                w.write_all(&header).await?;
                if !op.data.is_empty() {
                    w.write_all(op.data).await?;
                }
                w.flush().await
            }
            .await;
            guard.1 = true;
            if let Err(e) = sent {
                self.shared.kill(format!("sending a request failed: {e}"));
            }
        }
        match rx.await {
            Ok(r) => r,
            Err(_) => Err(Failure::Disconnected(self.shared.reason())),
        }
    }

    async fn disconnect(&self) {
        let header = Request {
            flags: 0,
            command: CMD_DISC,
            handle: self.next_handle.fetch_add(1, Ordering::Relaxed),
            offset: 0,
            length: 0,
        }
        .encode();
        // Let requests in flight finish first (bounded wait).
        for _ in 0..1000 {
            if lock(&self.shared.pending).waiters.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut w = self.writer.lock().await;
        let _ = w.write_all(&header).await;
        let _ = w.flush().await;
        let _ = w.shutdown().await;
        self.shared.kill("disconnected".into());
    }
}

async fn reader_task(shared: Arc<Shared>, rd: ReadHalf<BoxStream>) {
    let mut rd = BufReader::with_capacity(256 * 1024, rd);
    let reason = match read_replies(&shared, &mut rd).await {
        Ok(()) => "the server closed the connection".to_owned(),
        Err(e) => {
            tracing::warn!(error = %e, "NBD connection failed");
            e.to_string()
        }
    };
    // Don't abort ourselves from inside kill(): take the handle first.
    drop(lock(&shared.reader).take());
    shared.kill(reason);
}

async fn read_replies<R: AsyncRead + Unpin>(shared: &Shared, rd: &mut R) -> Result<()> {
    loop {
        let mut hdr = [0u8; SimpleReply::LEN];
        let n = rd.read(&mut hdr).await?;
        if n == 0 {
            return Ok(());
        }
        rd.read_exact(&mut hdr[n..]).await?;
        let reply = SimpleReply::parse(&hdr)?;
        let waiter = lock(&shared.pending).waiters.remove(&reply.handle);
        let Some(w) = waiter else {
            return Err(ProtocolError::UnknownHandle(reply.handle).into());
        };
        let result = if reply.error != 0 {
            Err(Failure::Errno(reply.error))
        } else if w.read_len > 0 {
            Ok(Some(
                crate::server::read_vec(rd, w.read_len as usize).await?,
            ))
        } else {
            match w.command {
                CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES if !w.durable => {
                    shared.acked_writes.fetch_add(1, Ordering::SeqCst);
                }
                CMD_FLUSH => {
                    shared
                        .flushed_writes
                        .fetch_max(w.flush_covers, Ordering::SeqCst);
                }
                _ => {}
            }
            Ok(if w.command == CMD_READ {
                Some(Vec::new())
            } else {
                None
            })
        };
        let _ = w.tx.send(result);
    }
}
