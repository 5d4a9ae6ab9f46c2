//! Enclave-side local listeners that open tunnels: an HTTP `CONNECT` proxy and a SOCKS5 proxy
//! (for unmodified programs, through `HTTPS_PROXY` / `ALL_PROXY`), and fixed forwards
//! (`127.0.0.1:PORT → host:port`) for programs that cannot use a proxy.
//!
//! The request parsers are pure functions over bytes ([`parse_http_connect`],
//! [`parse_socks5_greeting`], [`parse_socks5_request`]).

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::relay::relay_streams;
use crate::server::{ConnCtx, Limits, ServerHandle, Shutdown, spawn_server};
use crate::{EgressClient, Error, Listener, PeerAddr, ProtocolError, RefusalCode, Stream};

/// Largest HTTP `CONNECT` request head accepted (request line + headers).
pub const MAX_HTTP_HEAD: usize = 8 * 1024;

/// What a local proxy listener does with each connection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProxyKind {
    /// HTTP `CONNECT host:port` proxy.
    HttpConnect,
    /// SOCKS5 (no authentication, `CONNECT` command, names resolved by the parent).
    Socks5,
    /// Every connection goes to one fixed destination.
    Forward {
        /// Destination host (name or IP literal).
        host: String,
        /// Destination port.
        port: u16,
    },
}

impl fmt::Display for ProxyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyKind::HttpConnect => f.write_str("http-connect"),
            ProxyKind::Socks5 => f.write_str("socks5"),
            ProxyKind::Forward { host, port } => write!(f, "forward to {host}:{port}"),
        }
    }
}

/// A local listener (normally on loopback inside the enclave) whose connections are tunnelled
/// through an [`EgressClient`].
///
/// ```no_run
/// # async fn f() -> Result<(), nitro_net::Error> {
/// use nitro_net::{Addr, EgressClient, LocalProxy};
///
/// let egress = EgressClient::new("vsock:8000".parse()?);
/// let http = LocalProxy::http_connect(egress.clone())
///     .spawn("tcp:127.0.0.1:3128".parse::<Addr>()?.bind().await?);
/// let kms = LocalProxy::forward(egress, "kms.us-east-1.amazonaws.com", 443)
///     .spawn("tcp:127.0.0.1:8443".parse::<Addr>()?.bind().await?);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct LocalProxy {
    egress: EgressClient,
    kind: ProxyKind,
    limits: Limits,
}

impl LocalProxy {
    /// An HTTP `CONNECT` proxy.
    pub fn http_connect(egress: EgressClient) -> Self {
        Self::new(egress, ProxyKind::HttpConnect)
    }

    /// A SOCKS5 proxy.
    pub fn socks5(egress: EgressClient) -> Self {
        Self::new(egress, ProxyKind::Socks5)
    }

    /// A fixed forward to `host:port`.
    pub fn forward(egress: EgressClient, host: impl Into<String>, port: u16) -> Self {
        Self::new(
            egress,
            ProxyKind::Forward {
                host: host.into(),
                port,
            },
        )
    }

    /// A proxy of the given kind.
    pub fn new(egress: EgressClient, kind: ProxyKind) -> Self {
        LocalProxy {
            egress,
            kind,
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
        let name = match self.kind {
            ProxyKind::HttpConnect => "http-proxy",
            ProxyKind::Socks5 => "socks5",
            ProxyKind::Forward { .. } => "forward",
        };
        let limits = self.limits.clone();
        let this = Arc::new(self);
        spawn_server(name, listener, limits, shutdown, move |s, peer, ctx| {
            this.clone().handle(s, peer, ctx)
        })
    }

    async fn handle(self: Arc<Self>, mut client: Stream, peer: PeerAddr, mut ctx: ConnCtx) {
        let hs = ctx.limits.handshake_timeout;
        let (host, port, early) = match &self.kind {
            ProxyKind::Forward { host, port } => (host.clone(), *port, Vec::new()),
            ProxyKind::HttpConnect => {
                match tokio::time::timeout(hs, read_http_connect(&mut client)).await {
                    Ok(Ok(r)) => r,
                    Ok(Err(e)) => {
                        ctx.registry.counters.failed_handshake();
                        tracing::info!(%peer, error = %crate::error::chain(&e), "http-proxy: bad request");
                        let (status, reason) = match &e {
                            Error::Protocol(ProtocolError::MethodNotAllowed { .. }) => {
                                (405, "Method Not Allowed")
                            }
                            _ => (400, "Bad Request"),
                        };
                        let _ = http_reply(&mut client, status, reason, None, &e.to_string()).await;
                        return;
                    }
                    Err(_) => {
                        ctx.registry.counters.failed_handshake();
                        let _ = http_reply(
                            &mut client,
                            408,
                            "Request Timeout",
                            None,
                            "no complete CONNECT request in time",
                        )
                        .await;
                        return;
                    }
                }
            }
            ProxyKind::Socks5 => {
                match tokio::time::timeout(hs, socks5_handshake(&mut client)).await {
                    Ok(Ok(Some(r))) => r,
                    Ok(Ok(None)) => return,
                    Ok(Err(e)) => {
                        ctx.registry.counters.failed_handshake();
                        tracing::info!(%peer, error = %crate::error::chain(&e), "socks5: bad request");
                        return;
                    }
                    Err(_) => {
                        ctx.registry.counters.failed_handshake();
                        return;
                    }
                }
            }
        };
        let Some(slot) = ctx.try_slot() else {
            ctx.registry.counters.refused();
            tracing::warn!(%peer, limit = ctx.limits.max_connections, "{}: connection limit reached", self.kind);
            self.refuse(
                &mut client,
                &Error::Refused(crate::Refusal::new(
                    RefusalCode::Busy,
                    "local connection limit reached",
                )),
            )
            .await;
            return;
        };
        let tunnel = match self.egress.open(&host, port).await {
            Ok(t) => t,
            Err(e) => {
                ctx.registry.counters.refused();
                tracing::warn!(%peer, %host, port, error = %crate::error::chain(&e), "{}: tunnel refused", self.kind);
                self.refuse(&mut client, &e).await;
                return;
            }
        };
        let (mut tunnel, dest) = tunnel;
        tunnel.limit_writes(ctx.limits.max_write);
        match &self.kind {
            ProxyKind::HttpConnect => {
                if client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await
                    .is_err()
                {
                    return;
                }
            }
            ProxyKind::Socks5 => {
                if client
                    .write_all(&socks5_reply(0, Some(dest)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            ProxyKind::Forward { .. } => {}
        }
        ctx.handshake_done();
        let guard = ctx
            .registry
            .register(peer.to_string(), format!("{host}:{port} ({dest})"));
        if !early.is_empty() {
            // Bytes the client sent right after its CONNECT request (a TLS ClientHello, say).
            if tunnel.write_all(&early).await.is_err() {
                return;
            }
            guard
                .bytes
                .up
                .fetch_add(early.len() as u64, std::sync::atomic::Ordering::Relaxed);
            guard
                .totals()
                .up
                .fetch_add(early.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        tracing::debug!(conn = guard.id, %peer, %host, port, "{}: tunnel open", self.kind);
        let r = relay_streams(client, tunnel, &ctx.limits, &guard.bytes, guard.totals()).await;
        if let Err(e) = r {
            tracing::debug!(conn = guard.id, error = %crate::error::chain(&e), "{}: closed with an error", self.kind);
        }
        drop(slot);
    }

    async fn refuse<S>(&self, client: &mut S, e: &Error)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        match &self.kind {
            ProxyKind::HttpConnect => {
                let (status, reason, proxy_status) = http_status_for(e);
                let body = crate::error::chain(e).to_string();
                let _ = http_reply(client, status, reason, Some(proxy_status), &body).await;
            }
            ProxyKind::Socks5 => {
                let _ = client
                    .write_all(&socks5_reply(socks5_code_for(e), None))
                    .await;
                let _ = client.shutdown().await;
            }
            // Nothing to tell a plain TCP client: the connection closes.
            ProxyKind::Forward { .. } => {}
        }
    }
}

/// HTTP status, reason phrase and RFC 9209 `Proxy-Status` error type for a tunnel failure.
fn http_status_for(e: &Error) -> (u16, &'static str, &'static str) {
    match e.refusal().map(|r| r.code) {
        Some(RefusalCode::DeniedByPolicy) => (403, "Forbidden", "http_request_denied"),
        Some(RefusalCode::ResolveFailed) => (502, "Bad Gateway", "dns_error"),
        Some(RefusalCode::ConnectionRefused) => (502, "Bad Gateway", "connection_refused"),
        Some(RefusalCode::ConnectTimeout) => (504, "Gateway Timeout", "connection_timeout"),
        Some(RefusalCode::NetworkUnreachable | RefusalCode::HostUnreachable) => {
            (502, "Bad Gateway", "destination_ip_unroutable")
        }
        Some(RefusalCode::BadRequest) => (400, "Bad Request", "http_request_error"),
        Some(RefusalCode::Busy) => (503, "Service Unavailable", "connection_limit_reached"),
        _ => (502, "Bad Gateway", "proxy_internal_error"),
    }
}

fn socks5_code_for(e: &Error) -> u8 {
    match e.refusal().map(|r| r.code) {
        Some(RefusalCode::DeniedByPolicy) => 0x02,
        Some(RefusalCode::NetworkUnreachable) => 0x03,
        Some(RefusalCode::HostUnreachable | RefusalCode::ResolveFailed) => 0x04,
        Some(RefusalCode::ConnectionRefused) => 0x05,
        Some(RefusalCode::ConnectTimeout) => 0x06,
        _ => 0x01,
    }
}

async fn http_reply<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut S,
    status: u16,
    reason: &str,
    proxy_status: Option<&str>,
    body: &str,
) -> io::Result<()> {
    let body = format!("{body}\n");
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if let Some(ps) = proxy_status {
        // RFC 9209; the details are the parent's reason, quoted.
        let details: String = body
            .trim_end()
            .chars()
            .filter(|c| !c.is_control())
            .map(|c| if c == '"' || c == '\\' { '\'' } else { c })
            .collect();
        head.push_str(&format!(
            "Proxy-Status: nitro-net; error={ps}; details=\"{details}\"\r\n"
        ));
    }
    head.push_str("\r\n");
    client.write_all(head.as_bytes()).await?;
    client.write_all(body.as_bytes()).await?;
    client.shutdown().await?;
    crate::egress::linger_drain(client).await;
    Ok(())
}

/// A parsed `CONNECT` request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HttpConnect {
    /// Host (name or IP literal, IPv6 without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
}

/// Parses an HTTP/1.x `CONNECT host:port` request head from the front of `buf`:
/// `Ok(None)` until the blank line ending the head has arrived, else the request and the
/// length of the head (bytes after it belong to the tunnel).
///
/// ```
/// use nitro_net::internal::parse_http_connect;
/// let (req, used) = parse_http_connect(b"CONNECT kms.us-east-1.amazonaws.com:443 HTTP/1.1\r\nHost: x\r\n\r\n\x16\x03")?
///     .unwrap();
/// assert_eq!((req.host.as_str(), req.port, used), ("kms.us-east-1.amazonaws.com", 443, 61));
/// # Ok::<(), nitro_net::ProtocolError>(())
/// ```
pub fn parse_http_connect(buf: &[u8]) -> Result<Option<(HttpConnect, usize)>, ProtocolError> {
    let window = &buf[..buf.len().min(MAX_HTTP_HEAD)];
    // Fail early on a wrong method, before the whole head has arrived.
    if let Some(sp) = window.iter().position(|&b| b == b' ') {
        let method = &window[..sp];
        if method != b"CONNECT" {
            return Err(ProtocolError::MethodNotAllowed {
                method: String::from_utf8_lossy(method).into_owned(),
            });
        }
    } else if window.len() > 16 {
        return Err(http_malformed("no request line"));
    }
    let Some(end) = window.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() >= MAX_HTTP_HEAD {
            return Err(ProtocolError::TooLong {
                what: "HTTP request head",
                len: buf.len(),
                max: MAX_HTTP_HEAD,
            });
        }
        return Ok(None);
    };
    let head = &window[..end];
    let line_end = head
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(head.len());
    let line = std::str::from_utf8(&head[..line_end])
        .map_err(|_| http_malformed("request line is not UTF-8"))?;
    let mut parts = line.split(' ');
    let (Some(_method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(http_malformed(format!("request line {line:?}")));
    };
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(http_malformed(format!("version {version:?}")));
    }
    let (host, port) = split_authority(target)
        .ok_or_else(|| http_malformed(format!("CONNECT target {target:?} is not host:port")))?;
    Ok(Some((HttpConnect { host, port }, end + 4)))
}

fn http_malformed(reason: impl Into<String>) -> ProtocolError {
    ProtocolError::malformed("CONNECT request", reason)
}

/// `host:port` or `[v6]:port` → (host without brackets, port).
fn split_authority(a: &str) -> Option<(String, u16)> {
    let (host, port) = if let Some(rest) = a.strip_prefix('[') {
        let (h, p) = rest.split_once("]:")?;
        h.parse::<Ipv6Addr>().ok()?;
        (h, p)
    } else {
        let (h, p) = a.rsplit_once(':')?;
        if h.contains(':') {
            return None;
        }
        (h, p)
    };
    if host.is_empty() || port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let port: u16 = port.parse().ok()?;
    (port != 0).then(|| (host.to_owned(), port))
}

/// Reads one `CONNECT` request head; returns the destination and the bytes the client sent
/// after the head (a TLS ClientHello, say), which belong to the tunnel.
async fn read_http_connect<S>(client: &mut S) -> Result<(String, u16, Vec<u8>), Error>
where
    S: AsyncRead + Unpin,
{
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let room = (MAX_HTTP_HEAD + chunk.len())
            .saturating_sub(buf.len())
            .min(chunk.len());
        let n = client
            .read(&mut chunk[..room.max(1)])
            .await
            .map_err(|e| Error::io("reading the CONNECT request", e))?;
        if n == 0 {
            return Err(ProtocolError::UnexpectedEof("CONNECT request").into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some((req, used)) = parse_http_connect(&buf)? {
            let early = buf.split_off(used);
            return Ok((req.host, req.port, early));
        }
    }
}

/// Parses a SOCKS5 greeting (`05 n methods...`): `Ok(None)` if incomplete, else the offered
/// authentication methods and the bytes used.
pub fn parse_socks5_greeting(buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>, ProtocolError> {
    let Some(&v) = buf.first() else {
        return Ok(None);
    };
    if v != 5 {
        return Err(ProtocolError::malformed(
            "SOCKS greeting",
            format!("version {v} (only SOCKS5 is supported)"),
        ));
    }
    let Some(&n) = buf.get(1) else {
        return Ok(None);
    };
    let n = usize::from(n);
    if n == 0 {
        return Err(ProtocolError::malformed(
            "SOCKS greeting",
            "no method offered",
        ));
    }
    if buf.len() < 2 + n {
        return Ok(None);
    }
    Ok(Some((buf[2..2 + n].to_vec(), 2 + n)))
}

/// A parsed SOCKS5 request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Socks5Request {
    /// Command (1 = CONNECT, 2 = BIND, 3 = UDP ASSOCIATE).
    pub command: u8,
    /// Destination host: a name (resolved by the parent) or an IP literal.
    pub host: String,
    /// Destination port.
    pub port: u16,
}

/// Parses a SOCKS5 request (`05 cmd 00 atyp addr port`): `Ok(None)` if incomplete.
pub fn parse_socks5_request(buf: &[u8]) -> Result<Option<(Socks5Request, usize)>, ProtocolError> {
    if buf.len() < 4 {
        if let Some(&v) = buf.first()
            && v != 5
        {
            return Err(ProtocolError::malformed(
                "SOCKS request",
                format!("version {v}"),
            ));
        }
        return Ok(None);
    }
    if buf[0] != 5 {
        return Err(ProtocolError::malformed(
            "SOCKS request",
            format!("version {}", buf[0]),
        ));
    }
    let command = buf[1];
    let (host, addr_end) = match buf[3] {
        1 => {
            if buf.len() < 8 {
                return Ok(None);
            }
            (Ipv4Addr::new(buf[4], buf[5], buf[6], buf[7]).to_string(), 8)
        }
        3 => {
            let Some(&len) = buf.get(4) else {
                return Ok(None);
            };
            let len = usize::from(len);
            if len == 0 {
                return Err(ProtocolError::malformed("SOCKS request", "empty host name"));
            }
            if buf.len() < 5 + len {
                return Ok(None);
            }
            let name = std::str::from_utf8(&buf[5..5 + len])
                .map_err(|_| ProtocolError::malformed("SOCKS request", "host name is not UTF-8"))?;
            (name.to_owned(), 5 + len)
        }
        4 => {
            if buf.len() < 20 {
                return Ok(None);
            }
            let mut o = [0u8; 16];
            o.copy_from_slice(&buf[4..20]);
            (Ipv6Addr::from(o).to_string(), 20)
        }
        t => {
            return Err(ProtocolError::malformed(
                "SOCKS request",
                format!("address type {t}"),
            ));
        }
    };
    if buf.len() < addr_end + 2 {
        return Ok(None);
    }
    let port = u16::from_be_bytes([buf[addr_end], buf[addr_end + 1]]);
    Ok(Some((
        Socks5Request {
            command,
            host,
            port,
        },
        addr_end + 2,
    )))
}

/// A SOCKS5 reply with code `rep` and the bound address (zero when `None`).
fn socks5_reply(rep: u8, bound: Option<SocketAddr>) -> Vec<u8> {
    let bound = bound.unwrap_or_else(|| SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0));
    let mut v = vec![5, rep, 0];
    match bound.ip() {
        IpAddr::V4(ip) => {
            v.push(1);
            v.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            v.push(4);
            v.extend_from_slice(&ip.octets());
        }
    }
    v.extend_from_slice(&bound.port().to_be_bytes());
    v
}

/// A pure incremental parser: `Ok(None)` until a whole message is at the front of the input.
type Parser<T> = fn(&[u8]) -> Result<Option<(T, usize)>, ProtocolError>;

/// Reads from `client` into `buf` until `parse` finds a complete message at its front; removes
/// the message from `buf` (what follows stays there: pipelining clients send ahead).
async fn read_socks<S: AsyncRead + Unpin, T>(
    client: &mut S,
    buf: &mut Vec<u8>,
    parse: Parser<T>,
) -> Result<Option<T>, Error> {
    loop {
        if let Some((v, used)) = parse(buf)? {
            buf.drain(..used);
            return Ok(Some(v));
        }
        if buf.len() > SOCKS_MAX {
            return Err(ProtocolError::TooLong {
                what: "SOCKS message",
                len: buf.len(),
                max: SOCKS_MAX,
            }
            .into());
        }
        let mut chunk = [0u8; 512];
        let n = client
            .read(&mut chunk)
            .await
            .map_err(|e| Error::io("socks5", e))?;
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(ProtocolError::UnexpectedEof("SOCKS message").into())
            };
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Largest SOCKS greeting or request (a 255-byte name plus framing), with room to spare.
const SOCKS_MAX: usize = 600;

/// Greeting and request; answers "no acceptable method" / "command not supported" itself.
/// Returns the destination and the bytes the client sent after its request.
async fn socks5_handshake<S>(client: &mut S) -> Result<Option<(String, u16, Vec<u8>)>, Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = Vec::with_capacity(64);
    let Some(methods) = read_socks(client, &mut buf, parse_socks5_greeting).await? else {
        return Ok(None);
    };
    if !methods.contains(&0) {
        let _ = client.write_all(&[5, 0xff]).await;
        return Err(ProtocolError::malformed(
            "SOCKS greeting",
            "client does not offer 'no authentication'",
        )
        .into());
    }
    client
        .write_all(&[5, 0])
        .await
        .map_err(|e| Error::io("socks5", e))?;
    let Some(req) = read_socks(client, &mut buf, parse_socks5_request).await? else {
        return Ok(None);
    };
    if req.command != 1 {
        let _ = client.write_all(&socks5_reply(0x07, None)).await;
        return Err(ProtocolError::malformed(
            "SOCKS request",
            format!("command {} not supported (only CONNECT)", req.command),
        )
        .into());
    }
    Ok(Some((req.host, req.port, buf)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_connect_parsing() {
        let ok: &[(&[u8], &str, u16)] = &[
            (b"CONNECT a.b:443 HTTP/1.1\r\n\r\n", "a.b", 443),
            (
                b"CONNECT 10.0.0.1:80 HTTP/1.0\r\nHost: 10.0.0.1:80\r\nUser-Agent: curl\r\n\r\n",
                "10.0.0.1",
                80,
            ),
            (b"CONNECT [::1]:8443 HTTP/1.1\r\n\r\n", "::1", 8443),
        ];
        for (req, host, port) in ok {
            let (r, used) = parse_http_connect(req).unwrap().unwrap();
            assert_eq!((r.host.as_str(), r.port, used), (*host, *port, req.len()));
            for cut in 1..req.len() {
                assert_eq!(parse_http_connect(&req[..cut]), Ok(None), "{cut}");
            }
        }
        for bad in [
            &b"GET http://x/ HTTP/1.1\r\n\r\n"[..],
            b"CONNECT a.b HTTP/1.1\r\n\r\n",
            b"CONNECT a.b:0 HTTP/1.1\r\n\r\n",
            b"CONNECT a.b:99999 HTTP/1.1\r\n\r\n",
            b"CONNECT ::1:80 HTTP/1.1\r\n\r\n",
            b"CONNECT [zz]:80 HTTP/1.1\r\n\r\n",
            b"CONNECT a.b:80 HTTP/2\r\n\r\n",
            b"CONNECT a.b:80\r\n\r\n",
            b"CONNECT a.b:80 HTTP/1.1 x\r\n\r\n",
            b"CONNECT :80 HTTP/1.1\r\n\r\n",
            b"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        ] {
            assert!(
                parse_http_connect(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut long = b"CONNECT a:1 HTTP/1.1\r\n".to_vec();
        long.resize(MAX_HTTP_HEAD + 10, b'a');
        assert!(matches!(
            parse_http_connect(&long),
            Err(ProtocolError::TooLong {
                max: MAX_HTTP_HEAD,
                ..
            })
        ));
    }

    #[test]
    fn socks5_parsing() {
        assert_eq!(
            parse_socks5_greeting(&[5, 2, 0, 2]),
            Ok(Some((vec![0, 2], 4)))
        );
        assert_eq!(parse_socks5_greeting(&[5, 2, 0]), Ok(None));
        assert!(parse_socks5_greeting(&[4, 1, 0]).is_err());
        assert!(parse_socks5_greeting(&[5, 0]).is_err());
        let mut name = vec![5, 1, 0, 3, 11];
        name.extend_from_slice(b"example.com");
        name.extend_from_slice(&443u16.to_be_bytes());
        let (r, used) = parse_socks5_request(&name).unwrap().unwrap();
        assert_eq!(
            (r.command, r.host.as_str(), r.port, used),
            (1, "example.com", 443, name.len())
        );
        for cut in 0..name.len() {
            assert_eq!(parse_socks5_request(&name[..cut]), Ok(None));
        }
        let v4 = [5, 1, 0, 1, 127, 0, 0, 1, 0, 80];
        assert_eq!(
            parse_socks5_request(&v4).unwrap().unwrap().0.host,
            "127.0.0.1"
        );
        let mut v6 = vec![5, 1, 0, 4];
        v6.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        v6.extend_from_slice(&[0, 80]);
        assert_eq!(parse_socks5_request(&v6).unwrap().unwrap().0.host, "::1");
        assert!(parse_socks5_request(&[5, 1, 0, 9, 0, 0]).is_err());
        assert!(parse_socks5_request(&[5, 1, 0, 3, 0, 0, 0]).is_err());
        assert!(parse_socks5_request(&[5, 1, 0, 3, 1, 0xff, 0, 0]).is_err());
        assert!(parse_socks5_request(&[4, 1, 0, 1]).is_err());
    }

    #[test]
    fn socks5_replies() {
        assert_eq!(socks5_reply(2, None), vec![5, 2, 0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            socks5_reply(0, Some("[::1]:1".parse().unwrap())).len(),
            4 + 16 + 2
        );
    }

    /// The HTTP `CONNECT` reader over a 7-byte in-memory pipe (every read is partial): the
    /// destination comes out, and the bytes after the head (returned as early data plus what
    /// is still in the pipe) are exactly the client's, none lost or duplicated.
    #[tokio::test]
    async fn http_connect_reader_over_duplex() {
        let head = b"CONNECT [2001:db8::1]:8443 HTTP/1.1\r\nHost: x\r\n\r\n";
        let after: Vec<u8> = (0..200u8).collect();
        let (mut client, mut server) = tokio::io::duplex(7);
        let mut sent = head.to_vec();
        sent.extend_from_slice(&after);
        // The writer ends (and drops its half) once everything is in the pipe.
        let writer = tokio::spawn(async move { client.write_all(&sent).await.unwrap() });
        let (host, port, early) = read_http_connect(&mut server).await.unwrap();
        assert_eq!((host.as_str(), port), ("2001:db8::1", 8443));
        let mut rest = early;
        server.read_to_end(&mut rest).await.unwrap();
        writer.await.unwrap();
        assert_eq!(rest, after);
    }

    #[tokio::test]
    async fn http_connect_reader_errors_over_duplex() {
        // Not CONNECT: refused as soon as the method is known (no wait for the head's end).
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"GET http://x/ HTT").await.unwrap();
        let e = read_http_connect(&mut server).await.unwrap_err();
        assert!(
            matches!(&e, Error::Protocol(ProtocolError::MethodNotAllowed { method }) if method == "GET"),
            "{e:?}"
        );
        // The client goes away mid-head.
        let (mut client, mut server) = tokio::io::duplex(64);
        client
            .write_all(b"CONNECT a.b:443 HTTP/1.1\r\n")
            .await
            .unwrap();
        drop(client);
        let e = read_http_connect(&mut server).await.unwrap_err();
        assert!(
            matches!(e, Error::Protocol(ProtocolError::UnexpectedEof(_))),
            "{e:?}"
        );
        // A head that never ends is cut at the limit, with bounded reading.
        let (mut client, mut server) = tokio::io::duplex(1024);
        let w = tokio::spawn(async move {
            let _ = client.write_all(b"CONNECT a.b:443 HTTP/1.1\r\n").await;
            let filler = [b'a'; 512];
            while client.write_all(&filler).await.is_ok() {}
        });
        let e = read_http_connect(&mut server).await.unwrap_err();
        assert!(
            matches!(
                e,
                Error::Protocol(ProtocolError::TooLong {
                    max: MAX_HTTP_HEAD,
                    ..
                })
            ),
            "{e:?}"
        );
        drop(server);
        w.await.unwrap();
    }

    /// The whole SOCKS5 dialogue over a 3-byte pipe: greeting, method choice, request by
    /// name, and the bytes after the request kept for the tunnel.
    #[tokio::test]
    async fn socks5_handshake_over_duplex() {
        let (mut client, mut server) = tokio::io::duplex(3);
        let peer = tokio::spawn(async move {
            client.write_all(&[5, 2, 2, 0]).await.unwrap();
            let mut choice = [0u8; 2];
            client.read_exact(&mut choice).await.unwrap();
            assert_eq!(choice, [5, 0]);
            let mut req = vec![5, 1, 0, 3, 11];
            req.extend_from_slice(b"example.com");
            req.extend_from_slice(&443u16.to_be_bytes());
            req.extend_from_slice(b"hello");
            client.write_all(&req).await.unwrap();
        });
        let (host, port, early) = socks5_handshake(&mut server).await.unwrap().unwrap();
        assert_eq!((host.as_str(), port), ("example.com", 443));
        let mut rest = early;
        server.read_to_end(&mut rest).await.unwrap();
        peer.await.unwrap();
        assert_eq!(rest, b"hello");

        // A client that closes before saying anything: a clean end, not an error.
        let (client, mut server) = tokio::io::duplex(3);
        drop(client);
        assert!(socks5_handshake(&mut server).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn socks5_handshake_refusals_over_duplex() {
        // Only username/password offered: "no acceptable method" (0xff), then an error.
        let (mut client, mut server) = tokio::io::duplex(16);
        client.write_all(&[5, 1, 2]).await.unwrap();
        assert!(socks5_handshake(&mut server).await.is_err());
        let mut answer = [0u8; 2];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(answer, [5, 0xff]);
        // BIND: "command not supported" (7).
        let (mut client, mut server) = tokio::io::duplex(64);
        client
            .write_all(&[5, 1, 0, 5, 2, 0, 1, 127, 0, 0, 1, 0, 80])
            .await
            .unwrap();
        assert!(socks5_handshake(&mut server).await.is_err());
        let mut answer = [0u8; 12];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(answer[..2], [5, 0]);
        assert_eq!(answer[2..4], [5, 7]);
    }

    /// A refusal reaches an HTTP client as a status line, `Proxy-Status`, and the reason
    /// with its source chain; the reply is complete when the client reads to the end.
    #[tokio::test]
    async fn http_reply_over_duplex() {
        let (mut client, mut server) = tokio::io::duplex(5);
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            client.read_to_end(&mut all).await.unwrap();
            String::from_utf8(all).unwrap()
        });
        http_reply(
            &mut server,
            403,
            "Forbidden",
            Some("http_request_denied"),
            "no \"rule\"",
        )
        .await
        .unwrap();
        drop(server);
        let text = reader.await.unwrap();
        assert!(text.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{text}");
        assert!(
            text.contains(
                "Proxy-Status: nitro-net; error=http_request_denied; details=\"no 'rule'\""
            ),
            "{text}"
        );
        assert!(text.ends_with("\r\n\r\nno \"rule\"\n"), "{text}");
    }
}
