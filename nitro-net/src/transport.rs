//! Connecting and listening on an [`Addr`]: one stream type and one listener type for every
//! transport.
//!
//! Every stream's [`AsyncWrite::poll_shutdown`] shuts down the *write* side only (`SHUT_WR`): the
//! peer reads end-of-file and can keep sending; nothing in this crate ever shuts down both
//! directions because one of them ended.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio_vsock::{VMADDR_CID_ANY, VsockAddr, VsockListener, VsockStream};

use crate::addr::{Addr, display_path, parent_cid};
use crate::protocol::{HYBRID_LINE_MAX, hybrid_connect_line, parse_hybrid_ok};
use crate::{Error, ProtocolError};

/// Connect timeout used by [`Addr::connect`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A connected byte stream over any transport: `AF_VSOCK`, hybrid vsock, Unix socket or TCP.
///
/// `Send + Sync + Unpin + 'static`; [`AsyncWriteExt::shutdown`] shuts down the write side only.
#[derive(Debug)]
pub struct Stream {
    inner: Inner,
    /// Largest write passed to the socket (`None`: no cap).
    max_write: Option<usize>,
}

#[derive(Debug)]
enum Inner {
    Tcp(TcpStream),
    Unix(UnixStream),
    Vsock(VsockStream),
}

impl Stream {
    /// The peer's address, as far as the transport knows it.
    pub fn peer_addr(&self) -> PeerAddr {
        match &self.inner {
            Inner::Tcp(s) => s.peer_addr().map_or(PeerAddr::Unknown, PeerAddr::Tcp),
            Inner::Unix(_) => PeerAddr::Unix,
            Inner::Vsock(s) => s
                .peer_addr()
                .map_or(PeerAddr::Unknown, |a| PeerAddr::Vsock {
                    cid: a.cid(),
                    port: a.port(),
                }),
        }
    }

    /// Caps every write to the socket at `max` bytes (at least 1; `None` leaves the current
    /// cap). Caps combine: the smallest one wins. Every nitro-net path that writes to a stream
    /// (relays, including the `splice(2)` relay, tunnel clients, proxies, ingress) goes
    /// through this cap; see [`Limits::max_write`](crate::Limits::max_write).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> std::io::Result<()> {
    /// use tokio::io::AsyncWriteExt;
    /// let (a, _b) = tokio::net::UnixStream::pair()?;
    /// let mut s = nitro_net::Stream::from(a);
    /// s.limit_writes(Some(16 * 1024));
    /// assert_eq!(s.write(&[0u8; 100_000]).await?, 16 * 1024);
    /// # Ok(()) }
    /// ```
    pub fn limit_writes(&mut self, max: Option<usize>) {
        if let Some(m) = max {
            let m = m.max(1);
            self.max_write = Some(self.max_write.map_or(m, |cur| cur.min(m)));
        }
    }

    /// The write cap set by [`limit_writes`](Self::limit_writes).
    pub fn max_write(&self) -> Option<usize> {
        self.max_write
    }

    /// The TCP stream, if this is one.
    pub fn as_tcp(&self) -> Option<&TcpStream> {
        match &self.inner {
            Inner::Tcp(s) => Some(s),
            _ => None,
        }
    }
}

/// Readiness-based access for the zero-copy relay (TCP and Unix sockets only).
impl Stream {
    /// Whether [`splice(2)`] can move this stream's bytes (TCP and Unix sockets; the tokio-vsock
    /// stream does not expose its readiness, so vsock uses the copying relay).
    pub(crate) fn splice_capable(&self) -> bool {
        matches!(self.inner, Inner::Tcp(_) | Inner::Unix(_))
    }

    pub(crate) fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &self.inner {
            Inner::Tcp(s) => s.poll_read_ready(cx),
            Inner::Unix(s) => s.poll_read_ready(cx),
            Inner::Vsock(_) => Poll::Ready(Err(io::Error::from(io::ErrorKind::Unsupported))),
        }
    }

    pub(crate) fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &self.inner {
            Inner::Tcp(s) => s.poll_write_ready(cx),
            Inner::Unix(s) => s.poll_write_ready(cx),
            Inner::Vsock(_) => Poll::Ready(Err(io::Error::from(io::ErrorKind::Unsupported))),
        }
    }

    /// Runs `f` on the socket; a `WouldBlock` from `f` clears the readiness.
    pub(crate) fn try_io<R>(
        &self,
        interest: Interest,
        f: impl FnOnce(std::os::fd::BorrowedFd<'_>) -> io::Result<R>,
    ) -> io::Result<R> {
        use std::os::fd::AsFd;
        match &self.inner {
            Inner::Tcp(s) => s.try_io(interest, || f(s.as_fd())),
            Inner::Unix(s) => s.try_io(interest, || f(s.as_fd())),
            Inner::Vsock(_) => Err(io::Error::from(io::ErrorKind::Unsupported)),
        }
    }
}

impl From<TcpStream> for Stream {
    fn from(s: TcpStream) -> Self {
        // Latency over throughput for tunnelled request/response traffic; the relay writes
        // large chunks anyway.
        let _ = s.set_nodelay(true);
        Stream {
            inner: Inner::Tcp(s),
            max_write: None,
        }
    }
}

impl From<UnixStream> for Stream {
    fn from(s: UnixStream) -> Self {
        Stream {
            inner: Inner::Unix(s),
            max_write: None,
        }
    }
}

impl From<VsockStream> for Stream {
    fn from(s: VsockStream) -> Self {
        Stream {
            inner: Inner::Vsock(s),
            max_write: None,
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Inner::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Inner::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Inner::Vsock(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let buf = match this.max_write {
            Some(m) if buf.len() > m => &buf[..m],
            _ => buf,
        };
        match &mut this.inner {
            Inner::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Inner::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Inner::Vsock(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.max_write.is_some() {
            // Capped: the first non-empty slice, through the cap.
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &b[..]);
            return self.poll_write(cx, first);
        }
        match &mut self.get_mut().inner {
            Inner::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Inner::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Inner::Vsock(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        if self.max_write.is_some() {
            return false;
        }
        match &self.inner {
            Inner::Tcp(s) => s.is_write_vectored(),
            Inner::Unix(s) => s.is_write_vectored(),
            Inner::Vsock(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Inner::Tcp(s) => Pin::new(s).poll_flush(cx),
            Inner::Unix(s) => Pin::new(s).poll_flush(cx),
            Inner::Vsock(s) => Pin::new(s).poll_flush(cx),
        }
    }

    /// Shuts down the write side only (`SHUT_WR`).
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Inner::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Inner::Unix(s) => Pin::new(s).poll_shutdown(cx),
            // tokio-vsock: `SHUT_WR`. (Its inherent blocking `shutdown(how)` is not called.)
            Inner::Vsock(s) => AsyncWrite::poll_shutdown(Pin::new(s), cx),
        }
    }
}

/// Who connected to a [`Listener`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerAddr {
    /// A TCP client.
    Tcp(SocketAddr),
    /// A vsock peer.
    Vsock {
        /// Its CID.
        cid: u32,
        /// Its (ephemeral) port.
        port: u32,
    },
    /// A Unix-socket peer (unnamed).
    Unix,
    /// Not known.
    Unknown,
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerAddr::Tcp(a) => write!(f, "tcp:{a}"),
            PeerAddr::Vsock { cid, port } => write!(f, "vsock:{cid}:{port}"),
            PeerAddr::Unix => f.write_str("unix"),
            PeerAddr::Unknown => f.write_str("unknown"),
        }
    }
}

impl Addr {
    /// Connects with [`DEFAULT_CONNECT_TIMEOUT`].
    pub async fn connect(&self) -> Result<Stream, Error> {
        self.connect_timeout(DEFAULT_CONNECT_TIMEOUT).await
    }

    /// Connects, giving up after `timeout` (the hybrid `CONNECT`/`OK` exchange included).
    pub async fn connect_timeout(&self, timeout: Duration) -> Result<Stream, Error> {
        match tokio::time::timeout(timeout, self.connect_inner()).await {
            Ok(r) => r,
            Err(_) => Err(Error::timeout(format!("connect to {self}"), timeout)),
        }
    }

    async fn connect_inner(&self) -> Result<Stream, Error> {
        let ctx = || format!("connect to {self}");
        match self {
            Addr::Vsock { cid, port } => {
                let cid = cid.unwrap_or_else(parent_cid);
                let s = VsockStream::connect(VsockAddr::new(cid, *port))
                    .await
                    .map_err(|e| Error::io(format!("connect to vsock:{cid}:{port}"), e))?;
                Ok(s.into())
            }
            Addr::Hybrid { uds, port } => {
                let mut s = UnixStream::connect(uds)
                    .await
                    .map_err(|e| Error::io(ctx(), e))?;
                s.write_all(hybrid_connect_line(*port).as_bytes())
                    .await
                    .map_err(|e| Error::io(ctx(), e))?;
                read_hybrid_ok(&mut s).await.map_err(|e| match e {
                    Error::Io { source, .. } => Error::io(ctx(), source),
                    other => other,
                })?;
                Ok(s.into())
            }
            Addr::UnixDir { .. } | Addr::Unix { .. } => {
                let path = self.connect_path().unwrap_or_default();
                let s = UnixStream::connect(&path)
                    .await
                    .map_err(|e| Error::io(ctx(), e))?;
                Ok(s.into())
            }
            Addr::Tcp { addr } => {
                let s = TcpStream::connect(addr.as_str())
                    .await
                    .map_err(|e| Error::io(ctx(), e))?;
                Ok(s.into())
            }
        }
    }

    /// Binds a listener. Unix-socket transports create the directory (`uds:DIR:PORT`) and
    /// replace a stale socket file nobody listens on; the socket file is removed when the
    /// listener is dropped.
    pub async fn bind(&self) -> Result<Listener, Error> {
        let ctx = || format!("listen on {self}");
        let inner = match self {
            Addr::Vsock { cid, port } => {
                let l = VsockListener::bind(VsockAddr::new(cid.unwrap_or(VMADDR_CID_ANY), *port))
                    .map_err(|e| Error::io(ctx(), e))?;
                ListenerInner::Vsock(l)
            }
            Addr::Hybrid { .. } | Addr::UnixDir { .. } | Addr::Unix { .. } => {
                let path = self.listen_path().unwrap_or_default();
                if let Addr::UnixDir { dir, .. } = self {
                    std::fs::create_dir_all(dir).map_err(|e| Error::io(ctx(), e))?;
                }
                remove_stale_socket(&path)
                    .await
                    .map_err(|e| Error::io(ctx(), e))?;
                let l = UnixListener::bind(&path).map_err(|e| Error::io(ctx(), e))?;
                let ino = std::fs::metadata(&path)
                    .map(|m| (m.dev(), m.ino()))
                    .unwrap_or((0, 0));
                ListenerInner::Unix {
                    listener: l,
                    path,
                    ino,
                }
            }
            Addr::Tcp { addr } => {
                let l = TcpListener::bind(addr.as_str())
                    .await
                    .map_err(|e| Error::io(ctx(), e))?;
                ListenerInner::Tcp(l)
            }
        };
        let local = match &inner {
            ListenerInner::Tcp(l) => match l.local_addr() {
                Ok(a) => Addr::Tcp {
                    addr: a.to_string(),
                },
                Err(_) => self.clone(),
            },
            ListenerInner::Vsock(l) => match (self, l.local_addr()) {
                (Addr::Vsock { cid: None, .. }, Ok(a)) => Addr::Vsock {
                    cid: None,
                    port: a.port(),
                },
                (_, Ok(a)) => Addr::Vsock {
                    cid: Some(a.cid()),
                    port: a.port(),
                },
                (_, Err(_)) => self.clone(),
            },
            ListenerInner::Unix { .. } => self.clone(),
        };
        Ok(Listener { inner, local })
    }
}

/// Reads the hybrid vsock backend's `OK <n>\n` answer without consuming any byte after the
/// newline (those belong to the stream).
async fn read_hybrid_ok(s: &mut UnixStream) -> Result<u32, Error> {
    let mut line = Vec::with_capacity(HYBRID_LINE_MAX);
    let mut peek = [0u8; HYBRID_LINE_MAX];
    loop {
        s.readable()
            .await
            .map_err(|e| Error::io("hybrid vsock", e))?;
        let want = HYBRID_LINE_MAX - line.len();
        let r = s.try_io(Interest::READABLE, || {
            nix::sys::socket::recv(
                s.as_raw_fd(),
                &mut peek[..want],
                nix::sys::socket::MsgFlags::MSG_PEEK,
            )
            .map_err(io::Error::from)
        });
        let n = match r {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(Error::io("hybrid vsock", e)),
        };
        if n == 0 {
            return Err(ProtocolError::UnexpectedEof(
                "hybrid vsock CONNECT (no listener on that guest port?)",
            )
            .into());
        }
        // Consume up to and including the newline, or everything peeked if it has none.
        let take = peek[..n]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(n, |i| i + 1);
        let start = line.len();
        line.resize(start + take, 0);
        s.read_exact(&mut line[start..])
            .await
            .map_err(|e| Error::io("hybrid vsock", e))?;
        if line.last() == Some(&b'\n') {
            return Ok(parse_hybrid_ok(&line)?);
        }
        if line.len() >= HYBRID_LINE_MAX {
            return Err(ProtocolError::TooLong {
                what: "hybrid vsock reply line",
                len: line.len(),
                max: HYBRID_LINE_MAX,
            }
            .into());
        }
    }
}

/// Removes `path` if it is a Unix socket nobody is listening on.
async fn remove_stale_socket(path: &Path) -> io::Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", display_path(path)),
        ));
    }
    match UnixStream::connect(path).await {
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("something is already listening on {}", display_path(path)),
        )),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => std::fs::remove_file(path),
        Err(e) => Err(e),
    }
}

/// A listening socket on any transport.
#[derive(Debug)]
pub struct Listener {
    inner: ListenerInner,
    local: Addr,
}

#[derive(Debug)]
enum ListenerInner {
    Tcp(TcpListener),
    Unix {
        listener: UnixListener,
        path: PathBuf,
        ino: (u64, u64),
    },
    Vsock(VsockListener),
}

impl Listener {
    /// Waits for the next connection.
    pub async fn accept(&self) -> Result<(Stream, PeerAddr), Error> {
        let ctx = || format!("accept on {}", self.local);
        match &self.inner {
            ListenerInner::Tcp(l) => {
                let (s, a) = l.accept().await.map_err(|e| Error::io(ctx(), e))?;
                Ok((s.into(), PeerAddr::Tcp(a)))
            }
            ListenerInner::Unix { listener, .. } => {
                let (s, _) = listener.accept().await.map_err(|e| Error::io(ctx(), e))?;
                Ok((s.into(), PeerAddr::Unix))
            }
            ListenerInner::Vsock(l) => {
                let (s, a) = l.accept().await.map_err(|e| Error::io(ctx(), e))?;
                Ok((
                    s.into(),
                    PeerAddr::Vsock {
                        cid: a.cid(),
                        port: a.port(),
                    },
                ))
            }
        }
    }

    /// The address this listener is bound to (with the actual port when port 0 was asked for,
    /// for TCP and vsock).
    pub fn local_addr(&self) -> &Addr {
        &self.local
    }

    /// The local TCP address, for TCP listeners.
    pub fn local_tcp_addr(&self) -> Option<SocketAddr> {
        match &self.inner {
            ListenerInner::Tcp(l) => l.local_addr().ok(),
            _ => None,
        }
    }
}

impl From<TcpListener> for Listener {
    fn from(l: TcpListener) -> Self {
        let local = Addr::Tcp {
            addr: l
                .local_addr()
                .map_or_else(|_| "0.0.0.0:0".into(), |a| a.to_string()),
        };
        Listener {
            inner: ListenerInner::Tcp(l),
            local,
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let ListenerInner::Unix { path, ino, .. } = &self.inner {
            // Only remove the socket file if it is still the one this listener created.
            if std::fs::symlink_metadata(path).is_ok_and(|m| (m.dev(), m.ino()) == *ino) {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}
