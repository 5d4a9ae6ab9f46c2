//! The local KMS over HTTP/1.1, with or without TLS (tokio-rustls, aws-lc-rs).
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use nitro_kms::Credentials;
//! use nitro_kms::local::{AttestationTrust, LocalKms, LocalKmsConfig, server};
//!
//! let kms = LocalKms::new(
//!     LocalKmsConfig::new(AttestationTrust::aws())
//!         .credentials(Credentials::new("AKIDLOCAL", "local-secret", None, None)),
//! )?;
//! let tls = server::tls_config(&std::fs::read("cert.pem")?, &std::fs::read("key.pem")?)?;
//! let running = server::spawn(Arc::new(kms), "127.0.0.1:4443", Some(tls)).await?;
//! println!("local KMS on https://{}", running.local_addr());
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::task::JoinHandle;

use super::{LocalKms, MAX_REQUEST};
use crate::error::{Error, ServiceError};
use crate::sigv4;
use crate::transport::AsyncStream;

/// A rustls server configuration (aws-lc-rs provider, HTTP/1.1 ALPN) from PEM files: the
/// certificate chain (leaf first) and its private key (PKCS#8, PKCS#1 or SEC1).
pub fn tls_config(
    cert_chain_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<rustls::ServerConfig>, Error> {
    let certs = CertificateDer::pem_slice_iter(cert_chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::InvalidArgument(format!("invalid certificate PEM: {e}")))?;
    if certs.is_empty() {
        return Err(Error::InvalidArgument(
            "no CERTIFICATE in the certificate PEM".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| Error::InvalidArgument(format!("invalid private key PEM: {e}")))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::InvalidArgument(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| Error::InvalidArgument(format!("TLS certificate/key: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves one connection (any byte stream: TCP, vsock, Unix socket, ...) until the client
/// closes it.
pub async fn serve_connection<S: AsyncStream>(
    kms: Arc<LocalKms>,
    stream: S,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Result<(), Error> {
    match tls {
        Some(tls) => {
            let stream = tokio_rustls::TlsAcceptor::from(tls)
                .accept(stream)
                .await
                .map_err(Error::Tls)?;
            serve_http(kms, stream).await
        }
        None => serve_http(kms, stream).await,
    }
}

async fn serve_http<S: AsyncStream>(kms: Arc<LocalKms>, stream: S) -> Result<(), Error> {
    let service = service_fn(move |req| {
        let kms = kms.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(&kms, req).await) }
    });
    hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await
        .map_err(|e| Error::Http(e.to_string()))
}

/// Accepts TCP connections forever, serving each on its own task.
pub async fn serve(
    kms: Arc<LocalKms>,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Result<(), Error> {
    loop {
        let (stream, peer) = listener
            .accept()
            .await
            .map_err(|e| Error::io("accepting a connection", e))?;
        let _ = stream.set_nodelay(true);
        let (kms, tls) = (kms.clone(), tls.clone());
        tokio::spawn(async move {
            if let Err(e) = serve_connection(kms, stream, tls).await {
                tracing::debug!(%peer, "local KMS connection ended: {}", crate::error::chain(&e));
            }
        });
    }
}

/// A local KMS serving in the background; stopped when dropped.
#[derive(Debug)]
pub struct RunningServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl RunningServer {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `addr` (use port 0 for any free port) and serves in a background task.
pub async fn spawn(
    kms: Arc<LocalKms>,
    addr: impl ToSocketAddrs,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Result<RunningServer, Error> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Error::io("binding the local KMS", e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::io("binding the local KMS", e))?;
    let task = tokio::spawn(async move {
        if let Err(e) = serve(kms, listener, tls).await {
            tracing::warn!("local KMS stopped: {}", crate::error::chain(&e));
        }
    });
    Ok(RunningServer { addr, task })
}

fn request_id() -> String {
    use aws_lc_rs::rand::SecureRandom;
    let mut b = [0u8; 16];
    let _ = aws_lc_rs::rand::SystemRandom::new().fill(&mut b);
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        h.get(0..8).unwrap_or(""),
        h.get(8..12).unwrap_or(""),
        h.get(12..16).unwrap_or(""),
        h.get(16..20).unwrap_or(""),
        h.get(20..32).unwrap_or("")
    )
}

fn respond(status: StatusCode, body: Vec<u8>, error_type: Option<&str>) -> Response<Full<Bytes>> {
    let mut builder = Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/x-amz-json-1.1")
        .header("x-amzn-RequestId", request_id());
    if let Some(t) = error_type {
        builder = builder.header("x-amzn-ErrorType", t);
    }
    builder
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

fn error_response(e: &ServiceError) -> Response<Full<Bytes>> {
    // Real KMS spells the message key `Message` for AccessDeniedException, `message` elsewhere.
    let message_key = if e.code == "AccessDeniedException" {
        "Message"
    } else {
        "message"
    };
    let body = serde_json::json!({ "__type": e.code, message_key: e.message });
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    respond(status, body.to_string().into_bytes(), Some(&e.code))
}

async fn handle(kms: &LocalKms, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match handle_inner(kms, req).await {
        Ok(body) => respond(StatusCode::OK, body, None),
        Err(e) => {
            tracing::debug!("local KMS: {e}");
            error_response(&e)
        }
    }
}

async fn handle_inner(kms: &LocalKms, req: Request<Incoming>) -> Result<Vec<u8>, ServiceError> {
    let (parts, body) = req.into_parts();
    if parts.method != http::Method::POST {
        return Err(ServiceError::new(
            405,
            "UnknownOperationException",
            "only POST is supported",
        ));
    }
    let body = Limited::new(body, MAX_REQUEST)
        .collect()
        .await
        .map_err(|e| ServiceError::new(413, "ValidationException", format!("request body: {e}")))?
        .to_bytes();
    let operation = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.strip_prefix("TrentService."))
        .ok_or_else(|| {
            ServiceError::new(
                400,
                "UnknownOperationException",
                "missing or foreign X-Amz-Target",
            )
        })?
        .to_owned();
    let now = SystemTime::now();
    let verified = sigv4::verify_request(&parts, &body, kms.region(), "kms", now, |akid| {
        kms.caller(akid).map(|(c, _)| c)
    })?;
    let (_, caller) = kms
        .caller(&verified.access_key_id)
        .ok_or_else(|| ServiceError::new(400, "UnrecognizedClientException", "unknown caller"))?;
    kms.handle(&operation, &body, &caller, now)
}
