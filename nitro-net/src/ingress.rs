//! Ingress: TCP listeners on the parent forwarded to enclave ports, and the enclave side that
//! hands those connections to the application (as streams, or forwarded to a local port),
//! optionally preceded by a PROXY protocol v2 header carrying the real client address.
//!
//! The client address in a PROXY header comes from the parent: it is exactly as trustworthy
//! as the parent (fine for logs and rate limits, not for authentication).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::relay::relay_streams;
use crate::server::{ConnCtx, Limits, ServerHandle, Shutdown, spawn_server};
use crate::{Addr, Error, Listener, PeerAddr, ProtocolError, Stream};

/// The 12-byte signature that starts every PROXY protocol v2 header.
pub const PROXY_V2_SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];

/// Largest PROXY v2 header accepted (addresses plus TLVs).
pub const PROXY_V2_MAX: usize = 16 + 1024;

/// A decoded PROXY protocol v2 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProxyHeader {
    /// A proxied TCP connection: the original client and the address it connected to.
    Proxy {
        /// The client.
        source: SocketAddr,
        /// The address the client connected to (the parent's listener).
        destination: SocketAddr,
    },
    /// A connection made by the proxy itself (health check), or an unsupported address family:
    /// no client address.
    Local,
}

/// Encodes a PROXY v2 header for a TCP connection from `source` to `destination` (mixed
/// families are sent as IPv6, the IPv4 side mapped).
///
/// ```
/// use nitro_net::internal::{ProxyHeader, encode_proxy_v2, parse_proxy_v2};
/// let src = "203.0.113.7:51000".parse()?;
/// let dst = "10.0.0.5:443".parse()?;
/// let h = encode_proxy_v2(src, dst);
/// assert_eq!(h.len(), 28);
/// assert_eq!(parse_proxy_v2(&h)?, Some((ProxyHeader::Proxy { source: src, destination: dst }, 28)));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn encode_proxy_v2(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + 36);
    v.extend_from_slice(&PROXY_V2_SIGNATURE);
    v.push(0x21); // version 2, PROXY
    match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            v.push(0x11); // TCP over IPv4
            v.extend_from_slice(&12u16.to_be_bytes());
            v.extend_from_slice(&s.octets());
            v.extend_from_slice(&d.octets());
        }
        (s, d) => {
            let six = |ip: IpAddr| match ip {
                IpAddr::V4(a) => a.to_ipv6_mapped(),
                IpAddr::V6(a) => a,
            };
            v.push(0x21); // TCP over IPv6
            v.extend_from_slice(&36u16.to_be_bytes());
            v.extend_from_slice(&six(s).octets());
            v.extend_from_slice(&six(d).octets());
        }
    }
    v.extend_from_slice(&source.port().to_be_bytes());
    v.extend_from_slice(&destination.port().to_be_bytes());
    v
}

/// Parses a PROXY v2 header at the front of `buf`: `Ok(None)` if more bytes are needed, else
/// the header and its length (TLVs are skipped).
pub fn parse_proxy_v2(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProtocolError> {
    let n = buf.len().min(12);
    if buf[..n] != PROXY_V2_SIGNATURE[..n] {
        return Err(ProtocolError::malformed(
            "PROXY v2 header",
            "bad signature (is the parent sending the PROXY protocol?)",
        ));
    }
    if buf.len() < 16 {
        return Ok(None);
    }
    let ver_cmd = buf[12];
    if ver_cmd >> 4 != 2 {
        return Err(ProtocolError::malformed(
            "PROXY v2 header",
            format!("version {}", ver_cmd >> 4),
        ));
    }
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if 16 + len > PROXY_V2_MAX {
        return Err(ProtocolError::TooLong {
            what: "PROXY v2 header",
            len: 16 + len,
            max: PROXY_V2_MAX,
        });
    }
    if buf.len() < 16 + len {
        return Ok(None);
    }
    let body = &buf[16..16 + len];
    let total = 16 + len;
    match ver_cmd & 0x0f {
        0 => return Ok(Some((ProxyHeader::Local, total))),
        1 => {}
        c => {
            return Err(ProtocolError::malformed(
                "PROXY v2 header",
                format!("command {c}"),
            ));
        }
    }
    let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    let hdr = match buf[13] {
        0x11 | 0x12 => {
            if body.len() < 12 {
                return Err(ProtocolError::malformed(
                    "PROXY v2 header",
                    "IPv4 block too short",
                ));
            }
            let s = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            let d = Ipv4Addr::new(body[4], body[5], body[6], body[7]);
            ProxyHeader::Proxy {
                source: SocketAddr::new(IpAddr::V4(s), port(&body[8..10])),
                destination: SocketAddr::new(IpAddr::V4(d), port(&body[10..12])),
            }
        }
        0x21 | 0x22 => {
            if body.len() < 36 {
                return Err(ProtocolError::malformed(
                    "PROXY v2 header",
                    "IPv6 block too short",
                ));
            }
            let mut s = [0u8; 16];
            let mut d = [0u8; 16];
            s.copy_from_slice(&body[..16]);
            d.copy_from_slice(&body[16..32]);
            ProxyHeader::Proxy {
                source: SocketAddr::new(IpAddr::V6(Ipv6Addr::from(s)), port(&body[32..34])),
                destination: SocketAddr::new(IpAddr::V6(Ipv6Addr::from(d)), port(&body[34..36])),
            }
        }
        // UNSPEC or Unix sockets: no client address to report.
        _ => ProxyHeader::Local,
    };
    Ok(Some((hdr, total)))
}

/// The parent side: a TCP listener whose connections are forwarded to an enclave port.
///
/// ```no_run
/// # async fn f() -> Result<(), nitro_net::Error> {
/// use nitro_net::{Addr, IngressServer};
/// let listener = "tcp:0.0.0.0:443".parse::<Addr>()?.bind().await?;
/// let server = IngressServer::new("vsock:16:443".parse()?).proxy_protocol(true).spawn(listener);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct IngressServer {
    target: Addr,
    proxy_protocol: bool,
    limits: Limits,
}

impl IngressServer {
    /// Forwards to `target` (the enclave's port, for example `vsock:16:443`,
    /// `hybrid:/run/vm.vsock:443`, `uds:DIR:443`).
    pub fn new(target: Addr) -> Self {
        IngressServer {
            target,
            proxy_protocol: false,
            limits: Limits::default(),
        }
    }

    /// Sends a PROXY protocol v2 header with the client's address first (default off).
    #[must_use]
    pub fn proxy_protocol(mut self, on: bool) -> Self {
        self.proxy_protocol = on;
        self
    }

    /// Sets limits and timeouts.
    #[must_use]
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Serves on `listener` (normally TCP) until the handle is shut down.
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
        spawn_server(
            "ingress",
            listener,
            limits,
            shutdown,
            move |s, peer, ctx| this.clone().handle(s, peer, ctx),
        )
    }

    async fn handle(self: Arc<Self>, client: Stream, peer: PeerAddr, mut ctx: ConnCtx) {
        let Some(slot) = ctx.try_slot() else {
            ctx.registry.counters.refused();
            tracing::warn!(%peer, limit = ctx.limits.max_connections, "ingress: connection limit reached, closing");
            return;
        };
        let mut enclave = match self
            .target
            .connect_timeout(ctx.limits.connect_timeout)
            .await
        {
            Ok(mut s) => {
                s.limit_writes(ctx.limits.max_write);
                s
            }
            Err(e) => {
                ctx.registry.counters.refused();
                tracing::warn!(%peer, target = %self.target, error = %crate::error::chain(&e), "ingress: enclave unreachable");
                return;
            }
        };
        if self.proxy_protocol {
            let local = client.as_tcp().and_then(|t| t.local_addr().ok());
            let header = match (&peer, local) {
                (PeerAddr::Tcp(src), Some(dst)) => encode_proxy_v2(*src, dst),
                _ => {
                    // Not TCP: a LOCAL header (no address) keeps the framing the enclave expects.
                    let mut v = PROXY_V2_SIGNATURE.to_vec();
                    v.extend_from_slice(&[0x20, 0x00, 0, 0]);
                    v
                }
            };
            if let Err(e) = enclave.write_all(&header).await {
                tracing::warn!(%peer, error = %crate::error::chain(&e), "ingress: writing the PROXY header failed");
                return;
            }
        }
        ctx.handshake_done();
        let guard = ctx
            .registry
            .register(peer.to_string(), self.target.to_string());
        tracing::info!(conn = guard.id, %peer, target = %self.target, "ingress: connected");
        let r = relay_streams(client, enclave, &ctx.limits, &guard.bytes, guard.totals()).await;
        if let Err(e) = r {
            tracing::debug!(conn = guard.id, error = %crate::error::chain(&e), "ingress: closed with an error");
        }
        drop(slot);
    }
}

/// The enclave side, as a stream API: accepts the parent's ingress connections on a
/// transport listener (`vsock:PORT`, `uds:DIR:PORT`) and reads the PROXY v2 header when the
/// parent sends one.
#[derive(Debug)]
pub struct IngressListener {
    listener: Listener,
    proxy_protocol: bool,
    header_timeout: Duration,
    max_write: Option<usize>,
}

/// One ingress connection handed to the application.
#[derive(Debug)]
#[non_exhaustive]
pub struct IngressConnection {
    /// The byte stream (after the PROXY header, if any).
    pub stream: Stream,
    /// The client's address from the PROXY header, when the parent sent one.
    pub client: Option<SocketAddr>,
    /// Who connected on the transport (the parent).
    pub transport_peer: PeerAddr,
}

impl IngressListener {
    /// Accepts on `listener`; `proxy_protocol` must match the parent's setting.
    pub fn new(listener: Listener, proxy_protocol: bool) -> Self {
        IngressListener {
            listener,
            proxy_protocol,
            header_timeout: Duration::from_secs(10),
            max_write: None,
        }
    }

    /// Caps every write to the accepted streams at `max` bytes (see
    /// [`Limits::max_write`](crate::Limits::max_write); default `None`, no cap).
    #[must_use]
    pub fn max_write(mut self, max: Option<usize>) -> Self {
        self.max_write = max;
        self
    }

    /// Time allowed for the PROXY header (default 10 s).
    #[must_use]
    pub fn header_timeout(mut self, t: Duration) -> Self {
        self.header_timeout = t;
        self
    }

    /// The next connection. A connection whose PROXY header is malformed or late is dropped
    /// (and logged) and the next one is awaited.
    pub async fn accept(&self) -> Result<IngressConnection, Error> {
        loop {
            let (mut stream, peer) = self.listener.accept().await?;
            stream.limit_writes(self.max_write);
            if !self.proxy_protocol {
                return Ok(IngressConnection {
                    stream,
                    client: None,
                    transport_peer: peer,
                });
            }
            match tokio::time::timeout(self.header_timeout, read_proxy_header(&mut stream)).await {
                Ok(Ok(h)) => {
                    let client = match h {
                        ProxyHeader::Proxy { source, .. } => Some(source),
                        ProxyHeader::Local => None,
                    };
                    return Ok(IngressConnection {
                        stream,
                        client,
                        transport_peer: peer,
                    });
                }
                Ok(Err(e)) => {
                    tracing::warn!(%peer, error = %crate::error::chain(&e), "ingress: bad PROXY header, connection dropped")
                }
                Err(_) => {
                    tracing::warn!(%peer, "ingress: no PROXY header in time, connection dropped")
                }
            }
        }
    }

    /// The transport address listened on.
    pub fn local_addr(&self) -> &Addr {
        self.listener.local_addr()
    }

    /// The transport listener.
    pub fn listener(&self) -> &Listener {
        &self.listener
    }
}

/// Reads exactly one PROXY v2 header.
async fn read_proxy_header<S: AsyncRead + Unpin>(s: &mut S) -> Result<ProxyHeader, Error> {
    let mut buf = vec![0u8; 16];
    s.read_exact(&mut buf)
        .await
        .map_err(|e| Error::io("PROXY header", e))?;
    if let Some((h, _)) = parse_proxy_v2(&buf)? {
        return Ok(h);
    }
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    // parse_proxy_v2 has checked len against PROXY_V2_MAX.
    buf.resize(16 + len, 0);
    s.read_exact(&mut buf[16..])
        .await
        .map_err(|e| Error::io("PROXY header", e))?;
    match parse_proxy_v2(&buf)? {
        Some((h, _)) => Ok(h),
        None => Err(ProtocolError::UnexpectedEof("PROXY header").into()),
    }
}

/// The enclave side, forwarding: every connection accepted on a transport listener is relayed
/// to a local TCP (or other) address, bytes unchanged (a PROXY header, if the parent sends
/// one, reaches the application, which must expect it).
///
/// ```no_run
/// # async fn f() -> Result<(), nitro_net::Error> {
/// use nitro_net::{Addr, IngressForward};
/// let listener = "vsock:443".parse::<Addr>()?.bind().await?;
/// let fwd = IngressForward::new("tcp:127.0.0.1:8443".parse()?).spawn(listener);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct IngressForward {
    target: Addr,
    limits: Limits,
}

impl IngressForward {
    /// Forwards to `target`, typically `tcp:127.0.0.1:PORT`.
    pub fn new(target: Addr) -> Self {
        IngressForward {
            target,
            limits: Limits::default(),
        }
    }

    /// Sets limits and timeouts.
    #[must_use]
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
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
        spawn_server(
            "ingress-forward",
            listener,
            limits,
            shutdown,
            move |s, peer, ctx| this.clone().handle(s, peer, ctx),
        )
    }

    async fn handle(self: Arc<Self>, from_parent: Stream, peer: PeerAddr, mut ctx: ConnCtx) {
        let Some(slot) = ctx.try_slot() else {
            ctx.registry.counters.refused();
            tracing::warn!(%peer, "ingress-forward: connection limit reached, closing");
            return;
        };
        let app = match self
            .target
            .connect_timeout(ctx.limits.connect_timeout)
            .await
        {
            Ok(s) => s,
            Err(e) => {
                ctx.registry.counters.refused();
                tracing::warn!(%peer, target = %self.target, error = %crate::error::chain(&e), "ingress-forward: application unreachable");
                return;
            }
        };
        ctx.handshake_done();
        let guard = ctx
            .registry
            .register(peer.to_string(), self.target.to_string());
        let r = relay_streams(from_parent, app, &ctx.limits, &guard.bytes, guard.totals()).await;
        if let Err(e) = r {
            tracing::debug!(conn = guard.id, error = %crate::error::chain(&e), "ingress-forward: closed with an error");
        }
        drop(slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_v2_round_trips() {
        let cases: [(&str, &str); 3] = [
            ("1.2.3.4:5", "10.0.0.1:443"),
            ("[2001:db8::1]:5", "[2001:db8::2]:443"),
            ("1.2.3.4:5", "[::1]:443"),
        ];
        for (s, d) in cases {
            let (s, d): (SocketAddr, SocketAddr) = (s.parse().unwrap(), d.parse().unwrap());
            let h = encode_proxy_v2(s, d);
            for cut in 0..h.len() {
                assert_eq!(parse_proxy_v2(&h[..cut]), Ok(None));
            }
            let (got, used) = parse_proxy_v2(&h).unwrap().unwrap();
            assert_eq!(used, h.len());
            let ProxyHeader::Proxy {
                source,
                destination,
            } = got
            else {
                panic!()
            };
            let canon = |a: SocketAddr| match a.ip() {
                IpAddr::V6(v6) => v6
                    .to_ipv4_mapped()
                    .map_or(a, |v4| SocketAddr::new(v4.into(), a.port())),
                _ => a,
            };
            assert_eq!((canon(source), canon(destination)), (s, canon(d)));
        }
    }

    #[test]
    fn proxy_v2_errors_and_tlvs() {
        assert!(parse_proxy_v2(b"PROXY TCP4 1.2.3.4").is_err());
        let mut h = encode_proxy_v2("1.2.3.4:5".parse().unwrap(), "5.6.7.8:9".parse().unwrap());
        let mut bad = h.clone();
        bad[12] = 0x11;
        assert!(parse_proxy_v2(&bad).is_err());
        let mut bad = h.clone();
        bad[12] = 0x2f;
        assert!(parse_proxy_v2(&bad).is_err());
        let mut bad = h.clone();
        bad[15] = 4; // IPv4 family with a 4-byte block
        assert!(parse_proxy_v2(&bad[..20]).is_err());
        let mut big = h.clone();
        big[14] = 0xff;
        assert!(parse_proxy_v2(&big).is_err());
        // A TLV after the addresses is skipped.
        h[15] += 4;
        h.extend_from_slice(&[0x04, 0, 1, 0x42]);
        assert_eq!(parse_proxy_v2(&h).unwrap().unwrap().1, h.len());
        let local = [&PROXY_V2_SIGNATURE[..], &[0x20, 0, 0, 0]].concat();
        assert_eq!(parse_proxy_v2(&local), Ok(Some((ProxyHeader::Local, 16))));
    }

    /// The PROXY v2 reader over a 3-byte pipe: the header, and not one byte of the
    /// application's data after it, is consumed.
    #[tokio::test]
    async fn proxy_header_reader_over_duplex() {
        use tokio::io::AsyncWriteExt;
        let src: SocketAddr = "[2001:db8::7]:40000".parse().unwrap();
        let dst: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        let mut sent = encode_proxy_v2(src, dst);
        sent.extend_from_slice(b"\x16\x03\x01 client hello");
        let (mut parent, mut enclave) = tokio::io::duplex(3);
        let w = tokio::spawn(async move {
            parent.write_all(&sent).await.unwrap();
        });
        let h = read_proxy_header(&mut enclave).await.unwrap();
        assert_eq!(
            h,
            ProxyHeader::Proxy {
                source: src,
                destination: dst
            }
        );
        let mut rest = Vec::new();
        enclave.read_to_end(&mut rest).await.unwrap();
        w.await.unwrap();
        assert_eq!(rest, b"\x16\x03\x01 client hello");

        // Cut inside the addresses: an error, never a header made of partial bytes.
        let full = encode_proxy_v2(src, dst);
        let (mut parent, mut enclave) = tokio::io::duplex(64);
        parent.write_all(&full[..full.len() - 1]).await.unwrap();
        drop(parent);
        assert!(read_proxy_header(&mut enclave).await.is_err());
        // Not a PROXY header at all.
        let (mut parent, mut enclave) = tokio::io::duplex(64);
        parent.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert!(matches!(
            read_proxy_header(&mut enclave).await,
            Err(Error::Protocol(_))
        ));
    }
}
