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
            .map_err(|e| Error::Config(format!("invalid PEM certificate: {e}")))?;
        if certs.is_empty() {
            return Err(Error::Config("no CERTIFICATE in PEM input".into()));
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
                .map_err(|e| Error::Config(format!("invalid root certificate: {e}")))?;
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Config(format!("TLS: {e}")))?
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
            .map_err(|e| Error::Config(format!("invalid endpoint URL {url:?}: {e}")))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err(Error::Config(format!(
                    "endpoint {url:?} must start with https:// or http://"
                )));
            }
        };
        let host = uri
            .host()
            .ok_or_else(|| Error::Config(format!("endpoint {url:?} has no host")))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if uri.path() != "/" && !uri.path().is_empty() {
            return Err(Error::Config(format!(
                "endpoint {url:?} must not have a path"
            )));
        }
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

struct Idle {
    endpoint: Endpoint,
    sender: SendRequest<Full<Bytes>>,
    since: Instant,
}

/// The HTTP(S) client.
pub(crate) struct HttpClient {
    connector: Arc<dyn Connect>,
    tls: Arc<rustls::ClientConfig>,
    idle: Mutex<Vec<Idle>>,
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
            idle: Mutex::new(Vec::new()),
            connect_timeout,
        }
    }

    fn take_idle(&self, endpoint: &Endpoint) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = self.idle.lock().ok()?;
        let now = Instant::now();
        idle.retain(|c| !c.sender.is_closed() && now.duration_since(c.since) < IDLE_TIMEOUT);
        let pos = idle
            .iter()
            .position(|c| &c.endpoint == endpoint && c.sender.is_ready())?;
        Some(idle.swap_remove(pos).sender)
    }

    fn put_idle(&self, endpoint: &Endpoint, sender: SendRequest<Full<Bytes>>) {
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_IDLE
        {
            idle.push(Idle {
                endpoint: endpoint.clone(),
                sender,
                since: Instant::now(),
            });
        }
    }

    async fn connect(&self, endpoint: &Endpoint) -> Result<SendRequest<Full<Bytes>>, Error> {
        let what = format!("connecting to {}:{}", endpoint.host, endpoint.port);
        let stream: BoxStream = tokio::time::timeout(
            self.connect_timeout,
            self.connector.connect(&endpoint.host, endpoint.port),
        )
        .await
        .map_err(|_| Error::Timeout {
            what: "connect",
            after: self.connect_timeout,
        })?
        .map_err(|e| Error::io(what, e))?;
        if endpoint.tls {
            let name = ServerName::try_from(endpoint.host.clone())
                .map_err(|e| Error::Config(format!("invalid TLS server name: {e}")))?;
            let tls = tokio_rustls::TlsConnector::from(self.tls.clone());
            let stream = tokio::time::timeout(self.connect_timeout, tls.connect(name, stream))
                .await
                .map_err(|_| Error::Timeout {
                    what: "TLS handshake",
                    after: self.connect_timeout,
                })?
                .map_err(Error::Tls)?;
            self.handshake(Box::new(stream)).await
        } else {
            self.handshake(stream).await
        }
    }

    async fn handshake(&self, stream: BoxStream) -> Result<SendRequest<Full<Bytes>>, Error> {
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

    /// Sends `req` to `endpoint` and reads the whole response (at most `max_body` bytes), all
    /// within `timeout` (connecting excluded, it has its own limit).
    pub(crate) async fn send(
        &self,
        endpoint: &Endpoint,
        req: http::Request<Bytes>,
        timeout: Duration,
        max_body: usize,
    ) -> Result<Response, Error> {
        let (sender, reused) = match self.take_idle(endpoint) {
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
            self.put_idle(endpoint, sender);
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
