//! HTTP/1.1 over TLS (rustls, aws-lc-rs) over any [`Connect`] stream, with a small pool of
//! keep-alive connections.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

use crate::error::Error;
use crate::transport::{BoxStream, Connect};

/// Connections idle longer than this are not reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle connections kept per client.
const MAX_IDLE: usize = 8;

/// Which certificate authorities the client trusts.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub enum TlsRoots {
    /// The Mozilla root store embedded by `webpki-roots` (the default; what AWS endpoints
    /// chain to). Nothing is read from the file system: an enclave has no trust store.
    #[default]
    WebPki,
    /// Only these roots (DER): for a local KMS with its own CA.
    Custom(Vec<Vec<u8>>),
    /// The embedded roots plus these (DER).
    WebPkiAnd(Vec<Vec<u8>>),
}

impl TlsRoots {
    /// Only the certificates in `pem` (one or more `CERTIFICATE` blocks).
    pub fn from_pem(pem: &[u8]) -> Result<Self, Error> {
        let certs = CertificateDer::pem_slice_iter(pem)
            .map(|c| c.map(|c| c.as_ref().to_vec()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::InvalidArgument(format!("invalid PEM certificate: {e}")))?;
        if certs.is_empty() {
            return Err(Error::InvalidArgument("no CERTIFICATE in PEM input".into()));
        }
        Ok(Self::Custom(certs))
    }

    pub(crate) fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, Error> {
        let mut store = RootCertStore::empty();
        let extra = match self {
            Self::WebPki => &[][..],
            Self::Custom(c) => c.as_slice(),
            Self::WebPkiAnd(c) => c.as_slice(),
        };
        if !matches!(self, Self::Custom(_)) {
            store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        for der in extra {
            store
                .add(CertificateDer::from(der.clone()))
                .map_err(|e| Error::InvalidArgument(format!("invalid root certificate: {e}")))?;
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::InvalidArgument(format!("TLS: {e}")))?
            .with_root_certificates(store)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// Where requests go: scheme, host, port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub(crate) tls: bool,
    pub(crate) host: String,
    pub(crate) port: u16,
}

impl Endpoint {
    /// Parses `https://host[:port][/]` or `http://host[:port][/]`.
    pub(crate) fn parse(url: &str) -> Result<Self, Error> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| Error::InvalidArgument(format!("invalid endpoint URL {url:?}: {e}")))?;
        if uri.path() != "/" && !uri.path().is_empty() {
            return Err(Error::InvalidArgument(format!(
                "endpoint {url:?} must not have a path"
            )));
        }
        Self::from_uri(&uri)
    }

    /// Scheme, host and port of an absolute `https://` or `http://` URI (its path is ignored).
    pub(crate) fn from_uri(uri: &http::Uri) -> Result<Self, Error> {
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "endpoint \"{uri}\" must start with https:// or http://"
                )));
            }
        };
        let host = uri
            .host()
            .ok_or_else(|| Error::InvalidArgument(format!("endpoint \"{uri}\" has no host")))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        Ok(Self { tls, host, port })
    }

    /// The `Host` header value.
    pub(crate) fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default = if self.tls { 443 } else { 80 };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// `scheme://authority`.
    pub(crate) fn base_url(&self) -> String {
        format!(
            "{}://{}",
            if self.tls { "https" } else { "http" },
            self.authority()
        )
    }
}

/// A response, read completely.
#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

struct Idle<B> {
    endpoint: Endpoint,
    sender: SendRequest<B>,
    since: Instant,
}

/// Keep-alive HTTP/1.1 connections, by endpoint (shared by [`HttpClient`] and the AWS SDK
/// client of `crate::sdk`, which differ in their body types).
pub(crate) struct Pool<B> {
    idle: Mutex<Vec<Idle<B>>>,
}

impl<B> Pool<B> {
    pub(crate) fn new() -> Self {
        Self {
            idle: Mutex::new(Vec::new()),
        }
    }

    /// A connection to `endpoint` ready for a request, if one is pooled.
    pub(crate) fn take(&self, endpoint: &Endpoint) -> Option<SendRequest<B>> {
        let mut idle = self.idle.lock().ok()?;
        let now = Instant::now();
        idle.retain(|c| !c.sender.is_closed() && now.duration_since(c.since) < IDLE_TIMEOUT);
        let pos = idle
            .iter()
            .position(|c| &c.endpoint == endpoint && c.sender.is_ready())?;
        Some(idle.swap_remove(pos).sender)
    }

    /// Keeps `sender` for reuse (dropped when the pool is full). A sender whose response body
    /// is still being read may be put back: it is taken again only once it is ready.
    pub(crate) fn put(&self, endpoint: &Endpoint, sender: SendRequest<B>) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.retain(|c| !c.sender.is_closed());
            if idle.len() < MAX_IDLE {
                idle.push(Idle {
                    endpoint: endpoint.clone(),
                    sender,
                    since: Instant::now(),
                });
            }
        }
    }
}

/// Opens a stream to `endpoint` through `connector` and, for `https`, runs the TLS handshake
/// (rustls, in this process) on it; each step within `connect_timeout`.
pub(crate) async fn open_stream(
    connector: &dyn Connect,
    tls: &Arc<rustls::ClientConfig>,
    endpoint: &Endpoint,
    connect_timeout: Duration,
) -> Result<BoxStream, Error> {
    let what = format!("connecting to {}:{}", endpoint.host, endpoint.port);
    let stream: BoxStream = tokio::time::timeout(
        connect_timeout,
        connector.connect(&endpoint.host, endpoint.port),
    )
    .await
    .map_err(|_| Error::Timeout {
        what: "connect",
        after: connect_timeout,
    })?
    .map_err(|e| Error::io(what, e))?;
    if !endpoint.tls {
        return Ok(stream);
    }
    let name = ServerName::try_from(endpoint.host.clone())
        .map_err(|e| Error::InvalidArgument(format!("invalid TLS server name: {e}")))?;
    let tls = tokio_rustls::TlsConnector::from(tls.clone());
    let stream = tokio::time::timeout(connect_timeout, tls.connect(name, stream))
        .await
        .map_err(|_| Error::Timeout {
            what: "TLS handshake",
            after: connect_timeout,
        })?
        .map_err(Error::Tls)?;
    Ok(Box::new(stream))
}

/// The HTTP/1.1 client handshake on `stream`; the connection is driven by a spawned task.
pub(crate) async fn handshake<B>(stream: BoxStream) -> Result<SendRequest<B>, Error>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| Error::Http(e.to_string()))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("HTTP connection ended: {e}");
        }
    });
    Ok(sender)
}

/// The HTTP(S) client.
pub(crate) struct HttpClient {
    connector: Arc<dyn Connect>,
    tls: Arc<rustls::ClientConfig>,
    pool: Pool<Full<Bytes>>,
    connect_timeout: Duration,
}

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClient")
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

impl HttpClient {
    pub(crate) fn new(
        connector: Arc<dyn Connect>,
        tls: Arc<rustls::ClientConfig>,
        connect_timeout: Duration,
    ) -> Self {
        Self {
            connector,
            tls,
            pool: Pool::new(),
            connect_timeout,
        }
    }

    async fn connect(&self, endpoint: &Endpoint) -> Result<SendRequest<Full<Bytes>>, Error> {
        let stream =
            open_stream(&*self.connector, &self.tls, endpoint, self.connect_timeout).await?;
        handshake(stream).await
    }

    /// Sends `req` to `endpoint` and reads the whole response (at most `max_body` bytes), all
    /// within `timeout` (connecting excluded, it has its own limit).
    pub(crate) async fn send(
        &self,
        endpoint: &Endpoint,
        req: http::Request<Bytes>,
        timeout: Duration,
        max_body: usize,
    ) -> Result<Response, Error> {
        let (sender, reused) = match self.pool.take(endpoint) {
            Some(s) => (s, true),
            None => (self.connect(endpoint).await?, false),
        };
        let (parts, body) = req.into_parts();
        let attempt = |mut sender: SendRequest<Full<Bytes>>, req: http::Request<Full<Bytes>>| async move {
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| Error::Http(e.to_string()))?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, max_body)
                .collect()
                .await
                .map_err(|e| Error::Http(format!("reading the response body: {e}")))?
                .to_bytes();
            Ok::<_, Error>((sender, parts, body))
        };
        let make = || http::Request::from_parts(parts.clone(), Full::new(body.clone()));
        let result = tokio::time::timeout(timeout, async {
            match attempt(sender, make()).await {
                Err(_) if reused => {
                    // A pooled connection the server had already closed: once more on a fresh one.
                    let fresh = self.connect(endpoint).await?;
                    attempt(fresh, make()).await
                }
                other => other,
            }
        })
        .await
        .map_err(|_| Error::Timeout {
            what: "request",
            after: timeout,
        })??;
        let (sender, parts, body) = result;
        let close = parts
            .headers
            .get(http::header::CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        if !close {
            self.pool.put(endpoint, sender);
        }
        Ok(Response {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let e = Endpoint::parse("https://kms.eu-west-1.amazonaws.com").unwrap();
        assert_eq!(
            (e.tls, e.host.as_str(), e.port),
            (true, "kms.eu-west-1.amazonaws.com", 443)
        );
        assert_eq!(e.authority(), "kms.eu-west-1.amazonaws.com");
        let e = Endpoint::parse("http://127.0.0.1:5000/").unwrap();
        assert_eq!(e.authority(), "127.0.0.1:5000");
        let e = Endpoint::parse("https://[::1]:8443").unwrap();
        assert_eq!(e.host, "::1");
        assert_eq!(e.authority(), "[::1]:8443");
        assert!(Endpoint::parse("ftp://x").is_err());
        assert!(Endpoint::parse("https://x/path").is_err());
        assert!(Endpoint::parse("kms.amazonaws.com").is_err());
    }

    #[test]
    fn roots() {
        assert!(TlsRoots::WebPki.client_config().is_ok());
        assert!(TlsRoots::from_pem(b"nothing").is_err());
        assert!(
            TlsRoots::Custom(vec![vec![1, 2, 3]])
                .client_config()
                .is_err()
        );
    }
}
