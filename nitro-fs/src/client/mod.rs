//! The enclave-side NBD client.
//!
//! [`handshake`] negotiates an export over any stream; [`connection`] multiplexes requests
//! over one negotiated stream; this module turns a connector into an [`NbdClient`] that
//! splits large requests, reconnects and retries.

mod connection;
mod handshake;

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::try_join_all;
use tokio::io::{AsyncRead, AsyncWrite};

use self::connection::{BoxStream, Conn, Connector, Failure, Op, lock, open};
pub use self::handshake::{ExportInfo, list_exports, negotiate};
use crate::device::{BlockDevice, check_request};
use crate::error::{Error, NbdCommand, NbdErrno, ProtocolError, Result, display_chain};
use crate::internal::proto::*;

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

    /// Breaks the current connection as if the network failed (for tests of reconnection,
    /// through [`internal::break_connection`](crate::internal::break_connection)).
    pub(crate) fn break_connection(&self) {
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
                    tracing::warn!(attempt, error = %display_chain(&e), "NBD reconnection failed");
                    last_err = e;
                }
            }
        }
        Err(match last_err {
            e @ Error::Disconnected(_) => e,
            e => Error::Disconnected(format!("reconnection failed: {}", display_chain(&e))),
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
                        command: NbdCommand(op.command),
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
