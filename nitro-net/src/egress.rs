//! Parent side of the egress tunnel: accept requests from the enclave, resolve on the parent,
//! check against the [`Policy`], connect, relay. Also answers time requests.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::policy::NameVerdict;
use crate::protocol::{
    KIND_CONNECT, MAX_REQUEST_BODY, REQUEST_HEADER_LEN, Request, Response, decode_request_header,
};
use crate::relay::relay_streams;
use crate::server::{ConnCtx, Limits, ServerHandle, Shutdown, spawn_server};
use crate::{Listener, PeerAddr, Policy, ProtocolError, Refusal, RefusalCode, Stream};

/// Name resolution on the parent, behind a trait so that tests (and deployments that pin
/// names) can replace the system resolver.
pub trait Resolve: Send + Sync + 'static {
    /// Resolves `name` (a normalised DNS name, never an IP literal) to addresses.
    fn resolve<'a>(
        &'a self,
        name: &'a str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send + 'a>>;
}

/// The operating system's resolver (`getaddrinfo` on a blocking thread), A and AAAA records.
#[derive(Debug, Clone, Copy, Default)]
#[non_exhaustive]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve<'a>(
        &'a self,
        name: &'a str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send + 'a>> {
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((name, port)).await?;
            Ok(addrs.map(|a| a.ip()).collect())
        })
    }
}

/// A fixed name → addresses table (names are matched after normalisation; unknown names fail
/// to resolve).
#[derive(Debug, Clone, Default)]
pub struct StaticResolver {
    map: HashMap<String, Vec<IpAddr>>,
}

impl StaticResolver {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `name` → `addrs`.
    #[must_use]
    pub fn with(mut self, name: &str, addrs: impl IntoIterator<Item = IpAddr>) -> Self {
        let key = match crate::policy::normalize_host(name) {
            Ok(crate::policy::Host::Name(n)) => n,
            _ => name.to_ascii_lowercase(),
        };
        self.map.entry(key).or_default().extend(addrs);
        self
    }
}

impl Resolve for StaticResolver {
    fn resolve<'a>(
        &'a self,
        name: &'a str,
        _port: u16,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send + 'a>> {
        let r = self.map.get(name).cloned().ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("{name}: no such name"))
        });
        Box::pin(std::future::ready(r))
    }
}

/// Time requests answered on one connection before the parent closes it.
const MAX_TIME_REQUESTS: u32 = 64;

type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// The parent-side egress server.
///
/// ```no_run
/// # async fn f() -> Result<(), nitro_net::Error> {
/// use nitro_net::{EgressServer, Policy};
///
/// let policy = Policy::from_toml_file("/etc/nitro/egress.toml")?;
/// let listener = "vsock:8000".parse::<nitro_net::Addr>()?.bind().await?;
/// let server = EgressServer::new(policy).spawn(listener);
/// // ... later
/// println!("{:?}", server.stats());
/// server.shutdown().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct EgressServer {
    policy: Arc<Policy>,
    limits: Limits,
    resolver: Arc<dyn Resolve>,
    time: bool,
    clock: Clock,
    dns_upstream: Option<SocketAddr>,
}

impl std::fmt::Debug for EgressServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EgressServer")
            .field("policy", &self.policy)
            .field("limits", &self.limits)
            .field("time", &self.time)
            .field("dns_upstream", &self.dns_upstream)
            .finish_non_exhaustive()
    }
}

impl EgressServer {
    /// A server enforcing `policy`, with default [`Limits`], the system resolver, and the time
    /// service on.
    pub fn new(policy: Policy) -> Self {
        EgressServer {
            policy: Arc::new(policy),
            limits: Limits::default(),
            resolver: Arc::new(SystemResolver),
            time: true,
            clock: Arc::new(SystemTime::now),
            dns_upstream: None,
        }
    }

    /// Answers the enclave's `DNS` requests (questions its in-enclave DNS server forwards:
    /// types other than `A`/`AAAA`) by asking the resolver at `upstream` (UDP, then TCP when
    /// the answer is truncated), after checking the question's name against the policy
    /// (admitted on some port). Default: off (such requests are refused with
    /// [`RefusalCode::NotSupported`]).
    #[must_use]
    pub fn dns_upstream(mut self, upstream: SocketAddr) -> Self {
        self.dns_upstream = Some(upstream);
        self
    }

    /// Sets the limits and timeouts.
    #[must_use]
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Replaces the resolver.
    #[must_use]
    pub fn resolver(mut self, resolver: impl Resolve) -> Self {
        self.resolver = Arc::new(resolver);
        self
    }

    /// Turns the time service on (default) or off (time requests are then refused with
    /// [`RefusalCode::NotSupported`]).
    #[must_use]
    pub fn time_service(mut self, enabled: bool) -> Self {
        self.time = enabled;
        self
    }

    /// Replaces the clock the time service reads (default: the system's real-time clock).
    #[must_use]
    pub fn clock(mut self, clock: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Serves on `listener` until the handle is shut down.
    ///
    /// **Dropping the returned [`ServerHandle`] stops the server**: keep it, `join` it or
    /// [`detach`](ServerHandle::detach) it.
    pub fn spawn(self, listener: Listener) -> ServerHandle {
        self.spawn_with_shutdown(listener, Shutdown::new())
    }

    /// Serves on `listener` until `shutdown` is triggered.
    ///
    /// **Dropping the returned [`ServerHandle`] triggers `shutdown`**, which stops every
    /// server sharing it; [`detach`](ServerHandle::detach) the handle to avoid that.
    pub fn spawn_with_shutdown(self, listener: Listener, shutdown: Shutdown) -> ServerHandle {
        let limits = self.limits.clone();
        let this = Arc::new(self);
        spawn_server("egress", listener, limits, shutdown, move |s, peer, ctx| {
            this.clone().handle(s, peer, ctx)
        })
    }

    async fn handle(self: Arc<Self>, mut stream: Stream, peer: PeerAddr, ctx: ConnCtx) {
        let hs = ctx.limits.handshake_timeout;
        let mut time_requests = 0;
        loop {
            let req = match tokio::time::timeout(hs, read_request(&mut stream)).await {
                Ok(Ok(Some(r))) => r,
                Ok(Ok(None)) => return,
                Ok(Err(ReadError::Protocol(e, kind))) => {
                    ctx.registry.counters.failed_handshake();
                    tracing::warn!(%peer, error = %crate::error::chain(&e), "egress: malformed request");
                    let code = match e {
                        ProtocolError::UnsupportedVersion(_) => RefusalCode::UnsupportedVersion,
                        ProtocolError::UnknownKind(_) => RefusalCode::NotSupported,
                        _ => RefusalCode::BadRequest,
                    };
                    let resp = Response::Refused {
                        kind,
                        refusal: Refusal::new(code, e.to_string()),
                    };
                    let _ = write_and_close(&mut stream, &resp).await;
                    return;
                }
                Ok(Err(ReadError::Io(e))) => {
                    ctx.registry.counters.failed_handshake();
                    tracing::debug!(%peer, error = %crate::error::chain(&e), "egress: connection lost during the handshake");
                    return;
                }
                Err(_) => {
                    ctx.registry.counters.failed_handshake();
                    tracing::warn!(%peer, timeout = ?hs, "egress: handshake timed out");
                    return;
                }
            };
            match req {
                Request::Time { nonce } => {
                    let resp = if self.time {
                        let (unix_seconds, nanos) = unix_parts((self.clock)());
                        Response::Time {
                            nonce,
                            unix_seconds,
                            nanos,
                        }
                    } else {
                        Response::Refused {
                            kind: req.kind(),
                            refusal: Refusal::new(
                                RefusalCode::NotSupported,
                                "the time service is disabled on this parent",
                            ),
                        }
                    };
                    if stream.write_all(&resp.encode()).await.is_err() {
                        return;
                    }
                    // Further time requests may follow on the same connection.
                }
                Request::Connect { host, port } => {
                    self.connect(stream, peer, ctx, host, port).await;
                    return;
                }
                Request::Dns { message } => {
                    let resp = match crate::dns::answer_on_parent(
                        &self.policy,
                        self.dns_upstream,
                        &message,
                        ctx.limits.connect_timeout,
                    )
                    .await
                    {
                        Ok(message) => {
                            tracing::debug!(%peer, "egress: DNS question answered");
                            Response::Dns { message }
                        }
                        Err(refusal) => {
                            ctx.registry.counters.refused();
                            tracing::warn!(%peer, code = %refusal.code, reason = %refusal.message, "egress: DNS question refused");
                            Response::Refused {
                                kind: crate::protocol::KIND_DNS,
                                refusal,
                            }
                        }
                    };
                    if stream.write_all(&resp.encode()).await.is_err() {
                        return;
                    }
                }
            }
            // A time (or DNS) connection keeps its handshake slot: it is bounded by the handshake
            // timeout per request and by MAX_TIME_REQUESTS.
            time_requests += 1;
            if time_requests >= MAX_TIME_REQUESTS {
                let _ = stream.shutdown().await;
                return;
            }
        }
    }

    async fn connect(
        &self,
        mut stream: Stream,
        peer: PeerAddr,
        mut ctx: ConnCtx,
        host: String,
        port: u16,
    ) {
        let started = std::time::Instant::now();
        let result = self.open_destination(&ctx, &host, port).await;
        let (dest, slot) = match result {
            Ok(ok) => ok,
            Err(refusal) => {
                ctx.registry.counters.refused();
                match refusal.code {
                    RefusalCode::DeniedByPolicy | RefusalCode::BadRequest => {
                        tracing::warn!(%peer, %host, port, code = %refusal.code, reason = %refusal.message, "egress: refused");
                    }
                    _ => {
                        tracing::info!(%peer, %host, port, code = %refusal.code, reason = %refusal.message, "egress: failed");
                    }
                }
                let resp = Response::Refused {
                    kind: KIND_CONNECT,
                    refusal,
                };
                let _ = write_and_close(&mut stream, &resp).await;
                return;
            }
        };
        let dest_addr = dest
            .peer_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let _ = dest.set_nodelay(true);
        if let Err(e) = stream
            .write_all(&Response::Connected { peer: dest_addr }.encode())
            .await
        {
            tracing::debug!(%peer, error = %crate::error::chain(&e), "egress: enclave went away before the answer");
            return;
        }
        ctx.handshake_done();
        let guard = ctx
            .registry
            .register(peer.to_string(), format!("{host}:{port} ({dest_addr})"));
        tracing::info!(conn = guard.id, %peer, %host, port, dest = %dest_addr, setup = ?started.elapsed(), "egress: connected");
        let r = relay_streams(
            stream,
            Stream::from(dest),
            &ctx.limits,
            &guard.bytes,
            guard.totals(),
        )
        .await;
        let (up, down) = (
            guard.bytes.up.load(std::sync::atomic::Ordering::Relaxed),
            guard.bytes.down.load(std::sync::atomic::Ordering::Relaxed),
        );
        match r {
            Ok(()) => {
                tracing::info!(
                    conn = guard.id,
                    bytes_up = up,
                    bytes_down = down,
                    "egress: closed"
                )
            }
            Err(e) => {
                tracing::info!(conn = guard.id, bytes_up = up, bytes_down = down, error = %crate::error::chain(&e), "egress: closed with an error")
            }
        }
        drop(slot);
    }

    async fn open_destination(
        &self,
        ctx: &ConnCtx,
        host: &str,
        port: u16,
    ) -> Result<(TcpStream, tokio::sync::OwnedSemaphorePermit), Refusal> {
        let verdict = self.policy.check_name(host, port)?;
        let slot = ctx.try_slot().ok_or_else(|| {
            Refusal::new(
                RefusalCode::Busy,
                format!("{} connections already relayed", ctx.limits.max_connections),
            )
        })?;
        let now = tokio::time::Instant::now();
        // A configured timeout too large to add means "no timeout" (a year).
        let deadline = now
            .checked_add(ctx.limits.connect_timeout)
            .unwrap_or(now + Duration::from_secs(365 * 86400));
        let addrs = match &verdict {
            NameVerdict::Ip(ip) => vec![*ip],
            NameVerdict::Name { name, .. } => {
                let resolved =
                    tokio::time::timeout_at(deadline, self.resolver.resolve(name, port)).await;
                let resolved = match resolved {
                    Ok(Ok(a)) => a,
                    Ok(Err(e)) => {
                        return Err(Refusal::new(
                            RefusalCode::ResolveFailed,
                            format!("resolving {name}: {e}"),
                        ));
                    }
                    Err(_) => {
                        return Err(Refusal::new(
                            RefusalCode::ResolveFailed,
                            format!("resolving {name}: timed out"),
                        ));
                    }
                };
                self.policy.check_addresses(&verdict, port, &resolved)?
            }
        };
        let mut last = Refusal::new(RefusalCode::ResolveFailed, format!("{host}: no address"));
        for ip in addrs {
            let sa = SocketAddr::new(ip, port);
            match tokio::time::timeout_at(deadline, TcpStream::connect(sa)).await {
                Ok(Ok(s)) => return Ok((s, slot)),
                Ok(Err(e)) => last = connect_refusal(&e, sa),
                Err(_) => {
                    return Err(Refusal::new(
                        RefusalCode::ConnectTimeout,
                        format!(
                            "connecting to {host}:{port} ({sa}) timed out after {:?}",
                            ctx.limits.connect_timeout
                        ),
                    ));
                }
            }
        }
        Err(last)
    }
}

fn connect_refusal(e: &io::Error, sa: SocketAddr) -> Refusal {
    let code = match e.kind() {
        io::ErrorKind::ConnectionRefused => RefusalCode::ConnectionRefused,
        io::ErrorKind::TimedOut => RefusalCode::ConnectTimeout,
        io::ErrorKind::NetworkUnreachable => RefusalCode::NetworkUnreachable,
        io::ErrorKind::HostUnreachable => RefusalCode::HostUnreachable,
        _ => RefusalCode::Internal,
    };
    Refusal::new(code, format!("connecting to {sa}: {e}"))
}

/// Seconds and nanoseconds since the Unix epoch (negative seconds before it).
pub(crate) fn unix_parts(t: SystemTime) -> (i64, u32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (
            i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            d.subsec_nanos(),
        ),
        Err(e) => {
            let d = e.duration();
            let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            if d.subsec_nanos() == 0 {
                (-secs, 0)
            } else {
                (-secs - 1, 1_000_000_000 - d.subsec_nanos())
            }
        }
    }
}

/// Inverse of [`unix_parts`]; `None` when the time is not representable (a hostile parent
/// can send any 64-bit value).
pub(crate) fn from_unix_parts(secs: i64, nanos: u32) -> Option<SystemTime> {
    if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::new(secs.unsigned_abs(), nanos))
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(secs.unsigned_abs()))?
            .checked_add(Duration::from_nanos(u64::from(nanos)))
    }
}

enum ReadError {
    /// The request is malformed; `u8` is its kind byte (for the refusal).
    Protocol(ProtocolError, u8),
    Io(io::Error),
}

/// Reads exactly one request (never a byte more). `Ok(None)`: clean end of file before it.
async fn read_request<S: AsyncRead + Unpin>(s: &mut S) -> Result<Option<Request>, ReadError> {
    let mut buf = [0u8; REQUEST_HEADER_LEN + MAX_REQUEST_BODY];
    let mut have = 0;
    while have < REQUEST_HEADER_LEN {
        let n = s
            .read(&mut buf[have..REQUEST_HEADER_LEN])
            .await
            .map_err(ReadError::Io)?;
        if n == 0 {
            return if have == 0 {
                Ok(None)
            } else {
                Err(ReadError::Protocol(
                    ProtocolError::UnexpectedEof("tunnel request header"),
                    0,
                ))
            };
        }
        have += n;
        // Fail fast on a wrong magic (someone speaking another protocol).
        decode_request_header(&buf[..have]).map_err(|e| ReadError::Protocol(e, 0))?;
    }
    let header = match decode_request_header(&buf[..have]) {
        Ok(Some(h)) => h,
        Ok(None) => {
            return Err(ReadError::Protocol(
                ProtocolError::UnexpectedEof("tunnel request header"),
                0,
            ));
        }
        Err(e) => return Err(ReadError::Protocol(e, buf[3])),
    };
    let total = REQUEST_HEADER_LEN + header.len;
    if header.version != crate::protocol::VERSION {
        return Err(ReadError::Protocol(
            ProtocolError::UnsupportedVersion(header.version),
            header.kind,
        ));
    }
    s.read_exact(&mut buf[REQUEST_HEADER_LEN..total])
        .await
        .map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                ReadError::Protocol(
                    ProtocolError::UnexpectedEof("tunnel request body"),
                    header.kind,
                )
            } else {
                ReadError::Io(e)
            }
        })?;
    match Request::decode(&buf[..total]) {
        Ok(Some((r, _))) => Ok(Some(r)),
        Ok(None) => Err(ReadError::Protocol(
            ProtocolError::UnexpectedEof("tunnel request"),
            header.kind,
        )),
        Err(e) => Err(ReadError::Protocol(e, header.kind)),
    }
}

/// Sends a final response and closes "lingering": after the write shutdown, what the peer
/// still sends is read and discarded for a moment, so that closing with unread bytes does not
/// turn into a reset that destroys the response before the peer reads it.
pub(crate) async fn write_and_close<S>(s: &mut S, resp: &Response) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    s.write_all(&resp.encode()).await?;
    s.shutdown().await?;
    linger_drain(s).await;
    Ok(())
}

pub(crate) async fn linger_drain<S: AsyncRead + Unpin>(s: &mut S) {
    let mut sink = [0u8; 4096];
    let mut left: usize = 64 * 1024;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while left > 0 {
            match s.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_parts_round_trip() {
        for t in [
            UNIX_EPOCH,
            UNIX_EPOCH + Duration::new(1_700_000_000, 123),
            UNIX_EPOCH - Duration::new(5, 1),
            UNIX_EPOCH - Duration::new(5, 0),
        ] {
            let (s, n) = unix_parts(t);
            assert!(n < 1_000_000_000);
            let _ = from_unix_parts(i64::MAX, 999_999_999);
            let _ = from_unix_parts(i64::MIN, 999_999_999);
            assert_eq!(from_unix_parts(s, n), Some(t));
        }
    }

    /// The tunnel request reader over a 1-byte pipe: one request, and the bytes after it
    /// (the start of the relayed stream) left in place.
    #[tokio::test]
    async fn request_reader_over_duplex() {
        let req = Request::Connect {
            host: "kms.us-east-1.amazonaws.com".into(),
            port: 443,
        };
        let mut sent = req.encode().unwrap();
        sent.extend_from_slice(b"early");
        let (mut enclave, mut parent) = tokio::io::duplex(1);
        let w = tokio::spawn(async move {
            enclave.write_all(&sent).await.unwrap();
        });
        let got = match read_request(&mut parent).await {
            Ok(Some(r)) => r,
            _ => panic!("no request"),
        };
        assert_eq!(got, req);
        let mut rest = Vec::new();
        parent.read_to_end(&mut rest).await.unwrap();
        w.await.unwrap();
        assert_eq!(rest, b"early");
    }

    #[tokio::test]
    async fn request_reader_ends_and_errors_over_duplex() {
        // Clean end of file before a request.
        let (enclave, mut parent) = tokio::io::duplex(8);
        drop(enclave);
        assert!(matches!(read_request(&mut parent).await, Ok(None)));
        // Cut inside the body: a protocol error carrying the request's kind.
        let sent = Request::Time { nonce: 7 }.encode().unwrap();
        let (mut enclave, mut parent) = tokio::io::duplex(64);
        enclave.write_all(&sent[..sent.len() - 1]).await.unwrap();
        drop(enclave);
        match read_request(&mut parent).await {
            Err(ReadError::Protocol(ProtocolError::UnexpectedEof(_), kind)) => {
                assert_eq!(kind, crate::protocol::KIND_TIME);
            }
            _ => panic!("expected a truncated-body error"),
        }
        // Another protocol entirely: refused after the first bytes, without waiting.
        let (mut enclave, mut parent) = tokio::io::duplex(64);
        enclave.write_all(b"GE").await.unwrap();
        assert!(matches!(
            read_request(&mut parent).await,
            Err(ReadError::Protocol(ProtocolError::BadMagic, 0))
        ));
    }

    /// `write_and_close` delivers the whole response through a 4-byte pipe, ends the write
    /// side, and drains what the peer still sends for at most a second (paused time: the
    /// linger bound itself is checked, not the machine's speed).
    #[tokio::test(start_paused = true)]
    async fn write_and_close_over_duplex() {
        let resp = Response::Refused {
            kind: KIND_CONNECT,
            refusal: Refusal::new(RefusalCode::DeniedByPolicy, "no rule allows x:1"),
        };
        let (mut enclave, mut parent) = tokio::io::duplex(4);
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let peer = tokio::spawn(async move {
            let mut all = Vec::new();
            enclave.read_to_end(&mut all).await.unwrap();
            // The response is complete; the peer now keeps its side open and sends more.
            enclave.write_all(b"more").await.unwrap();
            let _ = done_rx.await;
            all
        });
        let t0 = tokio::time::Instant::now();
        write_and_close(&mut parent, &resp).await.unwrap();
        let lingered = t0.elapsed();
        assert!(
            lingered >= Duration::from_secs(1) && lingered < Duration::from_millis(1010),
            "linger bound: {lingered:?}"
        );
        done_tx.send(()).unwrap();
        assert_eq!(peer.await.unwrap(), resp.encode());
    }
}
