//! Copying bytes both ways between two streams, with half-close, bounded lazily-allocated
//! buffers, idle timeout and byte counters.
//!
//! Each direction owns at most one buffer of [`BUFFER_SIZE`] bytes, taken from a shared pool
//! only while bytes are in flight: when a read would block and nothing is left to write, the
//! buffer goes back to the pool. An idle relayed connection therefore holds no buffer at all,
//! and a busy one at most two (one per direction), which bounds memory per connection and
//! gives backpressure: nothing more is read from one side until the other side has accepted
//! what was read before.
//!
//! End of file on one side becomes a write shutdown (`SHUT_WR`) of the other side, after every
//! byte read before it has been written; the other direction keeps flowing until it ends too.
//!
//! A side that stops receiving (its peer closed or reset the connection, or shut down its read
//! side) ends only the direction towards it: what the other direction still carries (an answer
//! sent just before the close, say) is delivered before the relay reports the error.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use std::os::fd::OwnedFd;

use nix::fcntl::{OFlag, SpliceFFlags, splice};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

use crate::Stream;
use crate::stats::ByteCounters;

/// Size of each relay buffer (64 KiB: the virtio-vsock maximum packet payload, and where
/// published vsock throughput peaks).
pub const BUFFER_SIZE: usize = 64 * 1024;

/// How many idle buffers the shared pool keeps for reuse (beyond that they are freed).
const POOL_KEEP: usize = 64;

static POOL: Mutex<Vec<Box<[u8]>>> = Mutex::new(Vec::new());

fn take_buffer() -> Box<[u8]> {
    if let Ok(mut p) = POOL.lock()
        && let Some(b) = p.pop()
    {
        return b;
    }
    vec![0u8; BUFFER_SIZE].into_boxed_slice()
}

fn give_buffer(b: Box<[u8]>) {
    if let Ok(mut p) = POOL.lock()
        && p.len() < POOL_KEEP
    {
        p.push(b);
    }
}

/// Whether a write error means that the receiving side is gone for good (closed, reset, read
/// side shut down): the direction towards it ends, the other one goes on.
fn receiver_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::NotConnected
    )
}

/// How one direction ended, when it did not end cleanly.
#[derive(Default)]
struct Outcome {
    /// The write error that ended the direction because its receiver is gone.
    failed: Option<io::Error>,
}

impl Outcome {
    /// Ends the direction on a receiver-gone error (`Ready(Ok)`, error kept for later), or
    /// fails the relay on any other error.
    fn write_error(&mut self, e: io::Error, done: &mut bool) -> Poll<io::Result<()>> {
        if receiver_gone(&e) {
            self.failed = Some(e);
            *done = true;
            Poll::Ready(Ok(()))
        } else {
            Poll::Ready(Err(e))
        }
    }
}

/// The result of a relay whose two directions have ended.
fn finished(ab: &mut Outcome, ba: &mut Outcome) -> Poll<io::Result<()>> {
    match ab.failed.take().or_else(|| ba.failed.take()) {
        Some(e) => Poll::Ready(Err(e)),
        None => Poll::Ready(Ok(())),
    }
}

/// Bytes copied by [`relay`], per direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RelayTotals {
    /// From the first stream to the second.
    pub a_to_b: u64,
    /// From the second stream to the first.
    pub b_to_a: u64,
}

/// Copies `a → b` and `b → a` until both directions have ended; end of file in one direction
/// is passed on as a write shutdown and the other direction continues (never a shutdown of
/// both directions because one ended). Fails on an I/O error in either direction, or when
/// nothing moved for `idle_timeout` (checked with a granularity of half the timeout). A side
/// that can no longer receive (broken pipe, reset) ends the direction towards it only; the
/// error is returned once the other direction has delivered what it carries and ended too.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> std::io::Result<()> {
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
/// let (mut client, a) = tokio::io::duplex(1024);
/// let (b, mut server) = tokio::io::duplex(1024);
/// let relay = tokio::spawn(nitro_net::relay(a, b, None));
/// client.write_all(b"ping").await?;
/// client.shutdown().await?;                      // half-close towards the server
/// let mut got = Vec::new();
/// server.read_to_end(&mut got).await?;           // ... which sees EOF after "ping"
/// server.write_all(b"pong").await?;              // and can still answer
/// drop(server);
/// let mut answer = Vec::new();
/// client.read_to_end(&mut answer).await?;
/// assert_eq!((&got[..], &answer[..]), (&b"ping"[..], &b"pong"[..]));
/// assert_eq!(relay.await??.a_to_b, 4);
/// # Ok(()) }
/// ```
pub async fn relay<A, B>(a: A, b: B, idle_timeout: Option<Duration>) -> io::Result<RelayTotals>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let conn = ByteCounters::default();
    let totals = ByteCounters::default();
    relay_counted(a, b, idle_timeout, &conn, &totals).await?;
    Ok(RelayTotals {
        a_to_b: conn.up.load(Ordering::Relaxed),
        b_to_a: conn.down.load(Ordering::Relaxed),
    })
}

/// [`relay`] updating per-connection and total counters as bytes move (`up` = a → b).
pub(crate) async fn relay_counted<A, B>(
    a: A,
    b: B,
    idle_timeout: Option<Duration>,
    conn: &ByteCounters,
    totals: &ByteCounters,
) -> io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    Relay {
        a,
        b,
        ab: Pump::new(&conn.up, &totals.up),
        ba: Pump::new(&conn.down, &totals.down),
        idle: idle_timeout.map(Idle::new),
    }
    .await
}

/// Relays between two transport streams: with `splice(2)` (no copy through user space) when
/// `zero_copy` is on and both are TCP or Unix sockets, else with [`relay_counted`].
pub(crate) async fn relay_streams(
    mut a: Stream,
    mut b: Stream,
    limits: &crate::Limits,
    conn: &ByteCounters,
    totals: &ByteCounters,
) -> io::Result<()> {
    a.limit_writes(limits.max_write);
    b.limit_writes(limits.max_write);
    let idle_timeout = limits.idle_timeout;
    if limits.zero_copy && a.splice_capable() && b.splice_capable() {
        SpliceRelay {
            a,
            b,
            ab: SplicePump::new(&conn.up, &totals.up),
            ba: SplicePump::new(&conn.down, &totals.down),
            idle: idle_timeout.map(Idle::new),
        }
        .await
    } else {
        relay_counted(a, b, idle_timeout, conn, totals).await
    }
}

/// A pipe that carries spliced bytes between two sockets; it holds page references, not
/// copies. Pooled like the copy buffers: a direction holds one only while bytes are in flight.
struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
}

static PIPES: Mutex<Vec<Pipe>> = Mutex::new(Vec::new());

fn take_pipe() -> io::Result<Pipe> {
    if let Ok(mut p) = PIPES.lock()
        && let Some(pipe) = p.pop()
    {
        return Ok(pipe);
    }
    let (r, w) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
    Ok(Pipe { r, w })
}

/// Only empty pipes come back here.
fn give_pipe(p: Pipe) {
    if let Ok(mut pool) = PIPES.lock()
        && pool.len() < POOL_KEEP
    {
        pool.push(p);
    }
}

struct SpliceRelay<'c> {
    a: Stream,
    b: Stream,
    ab: SplicePump<'c>,
    ba: SplicePump<'c>,
    idle: Option<Idle>,
}

impl Future for SpliceRelay<'_> {
    type Output = io::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let ab = this.ab.poll(cx, &this.a, &mut this.b)?;
        let ba = this.ba.poll(cx, &this.b, &mut this.a)?;
        if ab.is_ready() && ba.is_ready() {
            return finished(&mut this.ab.outcome, &mut this.ba.outcome);
        }
        if let Some(idle) = &mut this.idle {
            return idle.poll(cx, this.ab.moved + this.ba.moved);
        }
        Poll::Pending
    }
}

/// One direction of a [`SpliceRelay`]: socket → pipe → socket.
///
/// When no pipe can be made (the process is out of file descriptors: `EMFILE`, `ENFILE`), the
/// direction copies through a pooled buffer instead, so that an established connection never
/// loses bytes because of descriptor pressure.
struct SplicePump<'c> {
    pipe: Option<Pipe>,
    /// The copy buffer used instead of a pipe, and where its pending bytes start.
    buf: Option<(Box<[u8]>, usize)>,
    /// Bytes in the pipe (or the buffer) not yet written out.
    pending: usize,
    eof: bool,
    done: bool,
    moved: u64,
    outcome: Outcome,
    conn: &'c AtomicU64,
    total: &'c AtomicU64,
}

impl<'c> SplicePump<'c> {
    fn new(conn: &'c AtomicU64, total: &'c AtomicU64) -> Self {
        SplicePump {
            pipe: None,
            buf: None,
            pending: 0,
            eof: false,
            done: false,
            moved: 0,
            outcome: Outcome::default(),
            conn,
            total,
        }
    }

    fn release(&mut self) {
        // A pipe still holding bytes (after an error) is closed, never reused.
        if let Some(p) = self.pipe.take()
            && self.pending == 0
        {
            give_pipe(p);
        }
        if self.pending == 0
            && let Some((b, _)) = self.buf.take()
        {
            give_buffer(b);
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>, r: &Stream, w: &mut Stream) -> Poll<io::Result<()>> {
        const FLAGS: SpliceFFlags =
            SpliceFFlags::SPLICE_F_NONBLOCK.union(SpliceFFlags::SPLICE_F_MOVE);
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            if self.pending > 0 {
                if let Some((buf, start)) = self.buf.as_mut() {
                    let chunk = &buf[*start..*start + self.pending];
                    match ready!(Pin::new(&mut *w).poll_write(cx, chunk)) {
                        Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                        Ok(n) => {
                            *start += n;
                            self.pending -= n;
                            self.moved += n as u64;
                            self.conn.fetch_add(n as u64, Ordering::Relaxed);
                            self.total.fetch_add(n as u64, Ordering::Relaxed);
                        }
                        Err(e) => return self.write_failed(e),
                    }
                    continue;
                }
                if let Err(e) = ready!(w.poll_write_ready(cx)) {
                    return self.write_failed(e);
                }
                let Some(pipe) = self.pipe.as_ref() else {
                    return Poll::Ready(Err(io::Error::other("relay pipe missing")));
                };
                // The stream's write cap holds for spliced bytes too.
                let want = w.max_write().map_or(self.pending, |m| self.pending.min(m));
                match w.try_io(Interest::WRITABLE, |fd| {
                    splice(&pipe.r, None, fd, None, want, FLAGS).map_err(io::Error::from)
                }) {
                    Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Ok(n) => {
                        self.pending -= n;
                        self.moved += n as u64;
                        self.conn.fetch_add(n as u64, Ordering::Relaxed);
                        self.total.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return self.write_failed(e),
                }
                continue;
            }
            if self.eof {
                self.release();
                match ready!(Pin::new(&mut *w).poll_shutdown(cx)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
                    Err(e) => return self.write_failed(e),
                }
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            match r.poll_read_ready(cx) {
                Poll::Pending => {
                    // Idle in this direction: hold no pipe while waiting.
                    self.release();
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            if self.pipe.is_none() && self.buf.is_none() {
                match take_pipe() {
                    Ok(p) => self.pipe = Some(p),
                    Err(e) if out_of_descriptors(&e) => {
                        tracing::debug!(error = %crate::error::chain(&e), "relay: no pipe, copying through a buffer");
                        self.buf = Some((take_buffer(), 0));
                    }
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            if let Some((buf, start)) = self.buf.as_mut() {
                match r.try_io(Interest::READABLE, |fd| {
                    nix::unistd::read(fd, buf).map_err(io::Error::from)
                }) {
                    Ok(0) => self.eof = true,
                    Ok(n) => {
                        *start = 0;
                        self.pending = n;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
                continue;
            }
            let Some(pipe) = self.pipe.as_ref() else {
                return Poll::Ready(Err(io::Error::other("relay pipe missing")));
            };
            match r.try_io(Interest::READABLE, |fd| {
                splice(fd, None, &pipe.w, None, BUFFER_SIZE, FLAGS).map_err(io::Error::from)
            }) {
                Ok(0) => self.eof = true,
                Ok(n) => self.pending = n,
                // Readiness was stale; it is cleared, the next poll_read_ready waits.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// Whether an error means that the process or the system has no file descriptor left.
fn out_of_descriptors(e: &io::Error) -> bool {
    use nix::errno::Errno;
    matches!(e.raw_os_error(), Some(c) if c == Errno::EMFILE as i32 || c == Errno::ENFILE as i32)
}

impl SplicePump<'_> {
    fn write_failed(&mut self, e: io::Error) -> Poll<io::Result<()>> {
        // The pipe's bytes have nowhere to go: it is closed, not pooled.
        self.pipe = None;
        self.pending = 0;
        self.outcome.write_error(e, &mut self.done)
    }
}

impl Drop for SplicePump<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

struct Idle {
    period: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// Progress counter value at the last check.
    seen: u64,
    quiet_periods: u32,
    timeout: Duration,
}

struct Relay<'c, A, B> {
    a: A,
    b: B,
    ab: Pump<'c>,
    ba: Pump<'c>,
    idle: Option<Idle>,
}

impl<A, B> Future for Relay<'_, A, B>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    type Output = io::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let ab = this.ab.poll(cx, &mut this.a, &mut this.b)?;
        let ba = this.ba.poll(cx, &mut this.b, &mut this.a)?;
        if ab.is_ready() && ba.is_ready() {
            return finished(&mut this.ab.outcome, &mut this.ba.outcome);
        }
        if let Some(idle) = &mut this.idle {
            return idle.poll(cx, this.ab.moved + this.ba.moved);
        }
        Poll::Pending
    }
}

impl Idle {
    fn new(t: Duration) -> Idle {
        Idle {
            period: (t / 2).max(Duration::from_millis(1)),
            sleep: Box::pin(tokio::time::sleep(t / 2)),
            seen: 0,
            quiet_periods: 0,
            timeout: t,
        }
    }

    /// `Ready(Err(TimedOut))` once nothing moved for two periods; `Pending` otherwise (with the
    /// timer armed).
    fn poll(&mut self, cx: &mut Context<'_>, progress: u64) -> Poll<io::Result<()>> {
        while self.sleep.as_mut().poll(cx).is_ready() {
            if progress != self.seen {
                self.seen = progress;
                self.quiet_periods = 0;
            } else {
                self.quiet_periods += 1;
                if self.quiet_periods >= 2 {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no data in either direction for {:?}", self.timeout),
                    )));
                }
            }
            let now = tokio::time::Instant::now();
            // An absurdly long period means "never" (a year, re-armed).
            let next = now
                .checked_add(self.period)
                .unwrap_or(now + Duration::from_secs(365 * 86400));
            self.sleep.as_mut().reset(next);
        }
        Poll::Pending
    }
}

/// One direction.
struct Pump<'c> {
    buf: Option<Box<[u8]>>,
    pos: usize,
    len: usize,
    eof: bool,
    done: bool,
    need_flush: bool,
    moved: u64,
    outcome: Outcome,
    conn: &'c AtomicU64,
    total: &'c AtomicU64,
}

impl Drop for Pump<'_> {
    fn drop(&mut self) {
        if let Some(b) = self.buf.take() {
            give_buffer(b);
        }
    }
}

impl<'c> Pump<'c> {
    fn new(conn: &'c AtomicU64, total: &'c AtomicU64) -> Self {
        Pump {
            buf: None,
            pos: 0,
            len: 0,
            eof: false,
            done: false,
            need_flush: false,
            moved: 0,
            outcome: Outcome::default(),
            conn,
            total,
        }
    }

    fn write_failed(&mut self, e: io::Error) -> Poll<io::Result<()>> {
        // What is left in the buffer has nowhere to go.
        if let Some(b) = self.buf.take() {
            give_buffer(b);
        }
        self.pos = 0;
        self.len = 0;
        self.outcome.write_error(e, &mut self.done)
    }

    fn poll<R, W>(&mut self, cx: &mut Context<'_>, r: &mut R, w: &mut W) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            // Write what was read before reading more (bounded buffer = backpressure).
            if self.pos < self.len {
                let Some(buf) = self.buf.as_ref() else {
                    return Poll::Ready(Err(io::Error::other("relay buffer missing")));
                };
                let n = match ready!(Pin::new(&mut *w).poll_write(cx, &buf[self.pos..self.len])) {
                    Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Ok(n) => n,
                    Err(e) => return self.write_failed(e),
                };
                self.pos += n;
                self.moved += n as u64;
                self.conn.fetch_add(n as u64, Ordering::Relaxed);
                self.total.fetch_add(n as u64, Ordering::Relaxed);
                self.need_flush = true;
                continue;
            }
            if self.eof {
                if let Some(b) = self.buf.take() {
                    give_buffer(b);
                }
                if let Err(e) = ready!(Pin::new(&mut *w).poll_flush(cx)) {
                    return self.write_failed(e);
                }
                match ready!(Pin::new(&mut *w).poll_shutdown(cx)) {
                    Ok(()) => {}
                    // The peer is already fully gone: nothing left to tell it.
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
                    Err(e) => return self.write_failed(e),
                }
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            self.pos = 0;
            self.len = 0;
            let buf = self.buf.get_or_insert_with(take_buffer);
            let mut rb = ReadBuf::new(buf);
            match Pin::new(&mut *r).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    if n == 0 {
                        self.eof = true;
                    } else {
                        self.len = n;
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    // Idle in this direction: hold no buffer while waiting.
                    if let Some(b) = self.buf.take() {
                        give_buffer(b);
                    }
                    if self.need_flush {
                        if let Err(e) = ready!(Pin::new(&mut *w).poll_flush(cx)) {
                            return self.write_failed(e);
                        }
                        self.need_flush = false;
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn half_close_both_ways_over_small_pipes() {
        // duplex(7) forces many partial reads and writes.
        let (mut client, a) = tokio::io::duplex(7);
        let (b, mut server) = tokio::io::duplex(7);
        let relay = tokio::spawn(relay(a, b, None));
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let d2 = data.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&d2).await.unwrap();
            client.shutdown().await.unwrap();
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, data);
        server.write_all(b"after EOF").await.unwrap();
        server.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"after EOF");
        let t = relay.await.unwrap().unwrap();
        assert_eq!((t.a_to_b, t.b_to_a), (100_000, 9));
    }

    /// `client <-> a ==relay== b <-> server`, where the server stops receiving (`SHUT_RD`:
    /// writes towards it fail with `EPIPE`) but still answers: the answer is delivered in
    /// full, then the relay reports the broken pipe.
    async fn answer_after_receiver_gone(zero_copy: Option<bool>) {
        use std::os::fd::AsRawFd;
        use tokio::net::UnixStream;
        let (mut client, a) = UnixStream::pair().unwrap();
        let (b, mut server) = UnixStream::pair().unwrap();
        let relay = tokio::spawn(async move {
            match zero_copy {
                None => relay(a, b, None).await.map(drop),
                Some(z) => {
                    let limits = crate::Limits {
                        zero_copy: z,
                        ..Default::default()
                    };
                    let c = ByteCounters::default();
                    let t = ByteCounters::default();
                    relay_streams(a.into(), b.into(), &limits, &c, &t).await
                }
            }
        });
        nix::sys::socket::shutdown(server.as_raw_fd(), nix::sys::socket::Shutdown::Read).unwrap();
        server.write_all(b"hello").await.unwrap();
        // The relay now fails to write this towards the server.
        client.write_all(b"request").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        server.write_all(b" world").await.unwrap();
        server.shutdown().await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello world", "zero_copy {zero_copy:?}");
        let e = relay.await.unwrap().unwrap_err();
        assert_eq!(
            e.kind(),
            io::ErrorKind::BrokenPipe,
            "zero_copy {zero_copy:?}"
        );
    }

    #[tokio::test]
    async fn a_receiver_that_is_gone_ends_only_its_direction() {
        for zero_copy in [None, Some(false), Some(true)] {
            answer_after_receiver_gone(zero_copy).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_fires_only_when_idle() {
        let (mut client, a) = tokio::io::duplex(64);
        let (b, mut server) = tokio::io::duplex(64);
        let relay = tokio::spawn(relay(a, b, Some(Duration::from_secs(10))));
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(4)).await;
            client.write_all(b"x").await.unwrap();
            let mut one = [0u8; 1];
            server.read_exact(&mut one).await.unwrap();
        }
        assert!(!relay.is_finished());
        tokio::time::sleep(Duration::from_secs(20)).await;
        let e = relay.await.unwrap().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }
}
