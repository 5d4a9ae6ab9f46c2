//! One multiplexed NBD connection in the transmission phase: requests from many tasks are
//! written under one lock and tagged with handles; a reader task matches the replies to the
//! waiting requests. A connection that breaks fails every request waiting on it, and records
//! whether writes the server acknowledged may be lost (no flush covered them).

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{
    AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter, ReadHalf, WriteHalf,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::ClientConfig;
use super::handshake::{ExportInfo, negotiate};
use crate::device::BoxFuture;
use crate::error::{Error, IoContext, ProtocolError, Result, display_chain};
use crate::internal::proto::*;
pub(super) use crate::sync::lock;

/// A byte stream usable as an NBD transport.
pub(crate) trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Transport for T {}

pub(super) type BoxStream = Box<dyn Transport>;
pub(super) type Connector =
    Box<dyn Fn() -> BoxFuture<'static, io::Result<BoxStream>> + Send + Sync>;

/// One request to send.
pub(super) struct Op<'a> {
    pub(super) command: u16,
    pub(super) flags: u16,
    pub(super) offset: u64,
    pub(super) length: u32,
    pub(super) data: &'a [u8],
}

/// Why a request got no successful reply.
pub(super) enum Failure {
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
pub(super) struct Shared {
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
    pub(super) fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    pub(super) fn reason(&self) -> String {
        lock(&self.pending)
            .closed
            .clone()
            .unwrap_or_else(|| "connection lost".into())
    }

    /// Marks the connection dead and fails every request waiting on it. Idempotent.
    pub(super) fn kill(&self, reason: String) {
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
pub(super) struct Conn {
    pub(super) shared: Arc<Shared>,
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

pub(super) async fn open(
    connector: &Connector,
    config: &ClientConfig,
    writes_lost: &Arc<AtomicBool>,
) -> Result<(ExportInfo, Arc<Conn>)> {
    let handshake = async {
        let mut stream = connector().await.context("connecting to the NBD server")?;
        let info = negotiate(&mut stream, &config.export).await?;
        Ok::<_, Error>((info, stream))
    };
    let (info, stream) = tokio::time::timeout(config.connect_timeout, handshake)
        .await
        .map_err(|_| {
            Error::io(
                "connecting to the NBD server and negotiating the export",
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("timed out after {:?}", config.connect_timeout),
                ),
            )
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
    pub(super) async fn submit(&self, op: &Op<'_>) -> Result<Option<Vec<u8>>, Failure> {
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

    pub(super) async fn disconnect(&self) {
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
            tracing::warn!(error = %display_chain(&e), "NBD connection failed");
            display_chain(&e)
        }
    };
    // Don't abort ourselves from inside kill(): take the handle first.
    drop(lock(&shared.reader).take());
    shared.kill(reason);
}

async fn read_replies<R: AsyncRead + Unpin>(shared: &Shared, rd: &mut R) -> Result<()> {
    loop {
        let mut hdr = [0u8; SimpleReply::LEN];
        let n = rd
            .read(&mut hdr)
            .await
            .context("reading an NBD reply header")?;
        if n == 0 {
            return Ok(());
        }
        rd.read_exact(&mut hdr[n..])
            .await
            .context("reading an NBD reply header")?;
        let reply = SimpleReply::parse(&hdr)?;
        let waiter = lock(&shared.pending).waiters.remove(&reply.handle);
        let Some(w) = waiter else {
            return Err(ProtocolError::UnknownHandle(reply.handle).into());
        };
        let result = if reply.error != 0 {
            Err(Failure::Errno(reply.error))
        } else if w.read_len > 0 {
            Ok(Some(
                crate::server::read_vec(rd, w.read_len as usize)
                    .await
                    .context("reading the data of an NBD read reply")?,
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
