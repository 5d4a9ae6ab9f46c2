//! Enclave side of the egress tunnel: open a TCP connection to `host:port` through the parent.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::policy::NameVerdict;
use crate::protocol::{RESPONSE_HEADER_LEN, Request, Response};
use crate::stats::{ByteCounters, Counters, CountersSnapshot};
use crate::{Addr, Error, Policy, ProtocolError, Refusal, RefusalCode, Stream};

/// Settings of an [`EgressClient`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientConfig {
    /// Limit for establishing the transport connection to the parent (default 5 s).
    pub connect_timeout: Duration,
    /// Limit for the parent's answer, which includes its name resolution and its own connect
    /// to the destination (default 20 s).
    pub response_timeout: Duration,
    /// How many times a failed transport connection to the parent is retried, with exponential
    /// back-off from 50 ms (default 2). Refusals by the parent are never retried.
    pub connect_retries: u32,
    /// A policy enforced *inside the enclave* (default none): destinations it denies are
    /// refused before anything is sent to the parent, and a tunnel whose destination address,
    /// as reported by the parent, it denies is closed before any byte goes through. Built into
    /// the enclave image, this policy is covered by its measurements (attested), unlike the
    /// parent's. The parent still controls the network: authenticate peers with TLS.
    pub policy: Option<Arc<Policy>>,
    /// Largest single write to the parent (the request and every write through a
    /// [`TunnelStream`]); `None` (default) means no cap. See
    /// [`Limits::max_write`](crate::Limits::max_write).
    pub max_write: Option<usize>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(20),
            connect_retries: 2,
            policy: None,
            max_write: None,
        }
    }
}

/// The enclave's handle on the parent's egress server: opens TCP connections to `host:port`
/// through the tunnel. Cheap to clone (shared counters).
///
/// ```no_run
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
///
/// let egress = nitro_net::EgressClient::new("vsock:3:8000".parse()?);
/// let mut s = egress.connect("example.com", 80).await?;
/// s.write_all(b"HEAD / HTTP/1.0\r\nHost: example.com\r\n\r\n").await?;
/// s.shutdown().await?; // half-close: the answer still arrives
/// let mut answer = Vec::new();
/// s.read_to_end(&mut answer).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct EgressClient {
    inner: Arc<ClientInner>,
}

#[derive(Debug)]
struct ClientInner {
    parent: Addr,
    config: ClientConfig,
    counters: Counters,
}

impl EgressClient {
    /// A client for the egress server listening at `parent` (for example `vsock:3:8000`, or
    /// `vsock:8000` for the configured parent CID, or `uds:DIR:PORT` in development).
    pub fn new(parent: Addr) -> Self {
        Self::with_config(parent, ClientConfig::default())
    }

    /// A client with explicit settings.
    pub fn with_config(parent: Addr, config: ClientConfig) -> Self {
        EgressClient {
            inner: Arc::new(ClientInner {
                parent,
                config,
                counters: Counters::default(),
            }),
        }
    }

    /// The parent's address.
    pub fn parent(&self) -> &Addr {
        &self.inner.parent
    }

    /// The settings.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// Connection and byte totals of every tunnel opened through this client (and its clones).
    pub fn stats(&self) -> CountersSnapshot {
        self.inner.counters.snapshot()
    }

    /// Opens a TCP connection to `host:port` through the parent. `host` is a DNS name (resolved
    /// on the parent) or an IP literal. Errors: [`Error::Refused`] with the parent's code and
    /// reason (denied by policy, resolution failed, connection refused, ...), or a transport
    /// error.
    pub async fn connect(&self, host: &str, port: u16) -> Result<TunnelStream, Error> {
        let (stream, peer) = self.open(host, port).await?;
        self.inner.counters.opened();
        let conn = Arc::new(ByteCounters::default());
        Ok(TunnelStream {
            stream,
            peer,
            conn,
            client: self.inner.clone(),
        })
    }

    /// Opens the tunnel and returns the raw transport stream (the callers count bytes).
    pub(crate) async fn open(&self, host: &str, port: u16) -> Result<(Stream, SocketAddr), Error> {
        let enclave_policy = self.inner.config.policy.as_deref();
        let verdict = match enclave_policy.map(|p| p.check_name(host, port)) {
            Some(Err(r)) => {
                self.inner.counters.refused();
                return Err(Error::Refused(Refusal::new(
                    r.code,
                    format!("enclave policy: {}", r.message),
                )));
            }
            Some(Ok(v)) => Some(v),
            None => None,
        };
        let req = Request::Connect {
            host: host.to_owned(),
            port,
        }
        .encode()?;
        let (stream, resp) = self.exchange(&req).await?;
        match resp {
            Response::Connected { peer } => {
                let checked = match (enclave_policy, &verdict) {
                    (Some(_), Some(NameVerdict::Ip(ip)))
                        if crate::policy::canonical_ip(peer.ip()) != *ip =>
                    {
                        Err(Refusal::new(
                            RefusalCode::DeniedByPolicy,
                            format!("asked for {ip}"),
                        ))
                    }
                    (Some(p), Some(v)) => p.check_addresses(v, port, &[peer.ip()]).map(drop),
                    _ => Ok(()),
                };
                if let Err(r) = checked {
                    // Dropping the stream closes the tunnel before any byte was sent.
                    self.inner.counters.refused();
                    tracing::warn!(%host, port, %peer, reason = %r.message, "enclave policy: tunnel closed");
                    return Err(Error::Refused(Refusal::new(
                        RefusalCode::DeniedByPolicy,
                        format!(
                            "enclave policy: the parent connected to {peer}: {}",
                            r.message
                        ),
                    )));
                }
                Ok((stream, peer))
            }
            Response::Refused { refusal, .. } => {
                self.inner.counters.refused();
                Err(Error::Refused(refusal))
            }
            other => Err(ProtocolError::malformed(
                "tunnel response",
                format!("expected a CONNECT answer, got {other:?}"),
            )
            .into()),
        }
    }

    /// Connects to the parent (with retries), sends `request` and reads one response.
    pub(crate) async fn exchange(&self, request: &[u8]) -> Result<(Stream, Response), Error> {
        let cfg = &self.inner.config;
        let mut stream = self.connect_parent().await?;
        let work = async {
            stream
                .write_all(request)
                .await
                .map_err(|e| Error::io(format!("send request to {}", self.inner.parent), e))?;
            read_response(&mut stream).await
        };
        let resp = match tokio::time::timeout(cfg.response_timeout, work).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(Error::timeout(
                    format!("waiting for the answer of {}", self.inner.parent),
                    cfg.response_timeout,
                ));
            }
        };
        Ok((stream, resp))
    }

    async fn connect_parent(&self) -> Result<Stream, Error> {
        let cfg = &self.inner.config;
        let mut backoff = Duration::from_millis(50);
        let mut attempt = 0;
        loop {
            match self.inner.parent.connect_timeout(cfg.connect_timeout).await {
                Ok(mut s) => {
                    s.limit_writes(cfg.max_write);
                    return Ok(s);
                }
                Err(e) if attempt < cfg.connect_retries => {
                    tracing::debug!(parent = %self.inner.parent, error = %crate::error::chain(&e), "retrying connection to the parent");
                    attempt += 1;
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Reads exactly one response, never a byte beyond it (what follows belongs to the stream).
pub(crate) async fn read_response<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Response, Error> {
    let mut buf = vec![0u8; RESPONSE_HEADER_LEN];
    stream
        .read_exact(&mut buf)
        .await
        .map_err(|e| eof_or_io(e, "tunnel response header"))?;
    let len = usize::from(u16::from_be_bytes([buf[5], buf[6]]));
    if let Err(e) = Response::decode(&buf) {
        return Err(e.into());
    }
    let max = crate::protocol::max_response_body(buf[3]);
    if len > max {
        // decode() above already rejected it; keep the allocation bound explicit.
        return Err(ProtocolError::TooLong {
            what: "tunnel response",
            len,
            max,
        }
        .into());
    }
    buf.resize(RESPONSE_HEADER_LEN + len, 0);
    stream
        .read_exact(&mut buf[RESPONSE_HEADER_LEN..])
        .await
        .map_err(|e| eof_or_io(e, "tunnel response body"))?;
    match Response::decode(&buf)? {
        Some((r, _)) => Ok(r),
        None => Err(ProtocolError::UnexpectedEof("tunnel response").into()),
    }
}

fn eof_or_io(e: io::Error, what: &'static str) -> Error {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        ProtocolError::UnexpectedEof(what).into()
    } else {
        Error::io(what, e)
    }
}

/// A TCP connection through the tunnel: `AsyncRead + AsyncWrite`, with half-close
/// ([`AsyncWriteExt::shutdown`] ends the destination's input, reading continues) and byte counters.
#[derive(Debug)]
pub struct TunnelStream {
    stream: Stream,
    peer: SocketAddr,
    conn: Arc<ByteCounters>,
    client: Arc<ClientInner>,
}

impl TunnelStream {
    /// The destination address the parent connected to (after its resolution).
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// Bytes received from the destination so far.
    pub fn bytes_read(&self) -> u64 {
        self.conn.down.load(Ordering::Relaxed)
    }

    /// Bytes sent to the destination so far.
    pub fn bytes_written(&self) -> u64 {
        self.conn.up.load(Ordering::Relaxed)
    }
}

fn add(c: &AtomicU64, n: usize) {
    c.fetch_add(n as u64, Ordering::Relaxed);
}

impl AsyncRead for TunnelStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.stream).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            add(&this.conn.down, n);
            add(&this.client.counters.bytes.down, n);
        }
        r
    }
}

impl AsyncWrite for TunnelStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.stream).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            add(&this.conn.up, n);
            add(&this.client.counters.bytes.up, n);
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

impl Drop for TunnelStream {
    fn drop(&mut self) {
        self.client.counters.closed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tunnel response reader over a 2-byte pipe: never a byte beyond the response.
    #[tokio::test]
    async fn response_reader_over_duplex() {
        let resp = Response::Connected {
            peer: "[2001:db8::1]:443".parse().unwrap(),
        };
        let mut sent = resp.encode();
        sent.extend_from_slice(b"server first");
        let (mut parent, mut enclave) = tokio::io::duplex(2);
        let w = tokio::spawn(async move {
            parent.write_all(&sent).await.unwrap();
        });
        assert_eq!(read_response(&mut enclave).await.unwrap(), resp);
        let mut rest = Vec::new();
        enclave.read_to_end(&mut rest).await.unwrap();
        w.await.unwrap();
        assert_eq!(rest, b"server first");
    }

    #[tokio::test]
    async fn response_reader_errors_over_duplex() {
        // The parent closes mid-header, then mid-body.
        let sent = Response::Time {
            nonce: 1,
            unix_seconds: 1_700_000_000,
            nanos: 5,
        }
        .encode();
        for cut in [3, sent.len() - 1] {
            let (mut parent, mut enclave) = tokio::io::duplex(64);
            parent.write_all(&sent[..cut]).await.unwrap();
            drop(parent);
            let e = read_response(&mut enclave).await.unwrap_err();
            assert!(
                matches!(e, Error::Protocol(ProtocolError::UnexpectedEof(_))),
                "{cut}: {e:?}"
            );
        }
        // A length above the limit is refused from the header, before any allocation.
        let mut huge = sent[..RESPONSE_HEADER_LEN].to_vec();
        huge[5..7].copy_from_slice(&u16::MAX.to_be_bytes());
        let (mut parent, mut enclave) = tokio::io::duplex(64);
        parent.write_all(&huge).await.unwrap();
        let e = read_response(&mut enclave).await.unwrap_err();
        assert!(matches!(e, Error::Protocol(_)), "{e:?}");
    }
}
