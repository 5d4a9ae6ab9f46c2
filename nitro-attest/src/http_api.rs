//! The attestation HTTP API (feature `http-api`): see [`AttestationApi`].

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

use crate::document::MAX_OPTIONAL_FIELD;
use crate::error::{Error, NsmErrorCode, Result};
use crate::nsm::Nsm;

/// The path of the attestation HTTP API's endpoint ([`AttestationApi`]).
pub const ATTESTATION_PATH: &str = "/v1/attestation";

/// Largest request body the attestation HTTP API ([`AttestationApi`]) accepts (`413` beyond):
/// the base64 of three maximal fields plus JSON fits with room to spare.
pub const ATTESTATION_MAX_BODY: usize = 8 * 1024;

/// How long a client may take to send the request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The attestation HTTP API (feature `http-api`): `POST /v1/attestation` on loopback, so that
/// an unmodified service in the enclave (any language, any HTTP client) can obtain an
/// attestation document from the NSM, over any [`Nsm`]: the real `/dev/nsm`
/// ([`NsmDevice`](crate::NsmDevice)), the [`SimulatedNsm`](crate::SimulatedNsm), or another
/// implementation.
///
/// # Protocol
///
/// ```text
/// POST /v1/attestation HTTP/1.1
/// Content-Type: application/json            (optional; an empty body is `{}`)
/// Accept: application/cbor | application/json (optional; default application/cbor)
///
/// {"nonce": "<base64>", "user_data": "<base64>", "public_key": "<base64>"}
/// ```
///
/// Every field is optional (absent or `null`: not in the document); values are standard
/// base64, padded or not. Unknown fields are refused.
///
/// | answer | when |
/// |---|---|
/// | `200`, `application/cbor`, the COSE_Sign1 document exactly as the NSM produced it | by default, `Accept: application/cbor`, `*/*` |
/// | `200`, `application/json`, `{"document": "<base64>"}` | `Accept: application/json` preferred |
/// | `400 bad_request` | malformed JSON, unknown field, bad base64 |
/// | `404 not_found`, `405 method_not_allowed` (with `Allow: POST`) | other paths and methods |
/// | `406 not_acceptable` | `Accept` admits neither CBOR nor JSON |
/// | `413 too_large` | body over [`ATTESTATION_MAX_BODY`], a field over [`MAX_OPTIONAL_FIELD`], or the whole NSM request over [`NSM_REQUEST_MAX_SIZE`] (the NSM's `InputTooLarge`) |
/// | `415 unsupported_media_type` | a `Content-Type` other than `application/json` (or curl's default `application/x-www-form-urlencoded`: the body is read as JSON) |
/// | `500 nsm_error` | any other NSM failure |
///
/// Errors are JSON: `{"error": {"code": "too_large", "message": "..."}}`. Every answer carries
/// `Cache-Control: no-store`.
///
/// # Size limits
///
/// The NSM takes requests of at most [`NSM_REQUEST_MAX_SIZE`] (4 KiB) of CBOR, all three fields
/// together. The device does not check the specification's per-field limit of 1 KiB, but
/// verifiers do (this crate's parser included): a document with a larger field would be
/// refused everywhere, so the API refuses such a field up front with `413`.
///
/// # Who may call
///
/// Anyone who can reach the endpoint can have the enclave attest arbitrary `user_data`, nonce
/// and public key (this is what the NSM device offers every process in the enclave too), so
/// it must never be reachable from outside: [`AttestationApi::serve`] drops connections whose
/// peer is not a loopback address, and [`AttestationApi::bind_loopback`] refuses non-loopback
/// addresses. [`AttestationApi::serve_connection`] serves any accepted stream (vsock, Unix
/// socket, ...): the caller decides who may connect.
///
/// [`MAX_OPTIONAL_FIELD`]: crate::MAX_OPTIONAL_FIELD
/// [`NSM_REQUEST_MAX_SIZE`]: crate::NSM_REQUEST_MAX_SIZE
///
/// ```no_run
/// # #[cfg(feature = "device")]
/// # async fn run() -> Result<(), nitro_attest::Error> {
/// use std::sync::Arc;
/// use nitro_attest::{AttestationApi, NsmDevice};
/// let api = AttestationApi::new(Arc::new(NsmDevice::open()?));
/// let listener = AttestationApi::<NsmDevice>::bind_loopback("127.0.0.1:8901".parse().unwrap()).await?;
/// api.serve(listener).await
/// # }
/// ```
pub struct AttestationApi<N: ?Sized> {
    nsm: Arc<N>,
}

impl<N: ?Sized> Clone for AttestationApi<N> {
    fn clone(&self) -> Self {
        Self {
            nsm: self.nsm.clone(),
        }
    }
}

impl<N: ?Sized> std::fmt::Debug for AttestationApi<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttestationApi").finish_non_exhaustive()
    }
}

impl<N: Nsm + ?Sized + 'static> AttestationApi<N> {
    /// The API over `nsm`.
    pub fn new(nsm: Arc<N>) -> Self {
        Self { nsm }
    }

    /// Binds a TCP listener on `addr`, which must be a loopback address (`127.0.0.0/8` or
    /// `::1`).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a non-loopback address, [`Error::Io`] if binding fails.
    pub async fn bind_loopback(addr: SocketAddr) -> Result<TcpListener> {
        if !is_loopback(addr) {
            return Err(Error::InvalidArgument(format!(
                "the attestation API listens on loopback only, not on {addr}"
            )));
        }
        TcpListener::bind(addr)
            .await
            .map_err(|e| Error::io(format!("binding the attestation API to {addr}"), e))
    }

    /// Accepts connections forever, serving each on its own task; connections from peers that
    /// are not loopback addresses are closed without a response.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when accepting fails.
    pub async fn serve(&self, listener: TcpListener) -> Result<()> {
        self.serve_until(listener, std::future::pending()).await
    }

    /// As [`serve`](Self::serve), until `shutdown` completes (connections being served finish
    /// on their own tasks).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when accepting fails.
    pub async fn serve_until(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<()> {
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                r = listener.accept() => {
                    r.map_err(|e| Error::io("accepting an attestation API connection", e))?
                }
                () = &mut shutdown => return Ok(()),
            };
            if !is_loopback(peer) {
                drop(stream);
                continue;
            }
            let _ = stream.set_nodelay(true);
            let api = self.clone();
            tokio::spawn(async move {
                let _ = api.serve_connection(stream).await;
            });
        }
    }

    /// Serves HTTP/1.1 on one accepted stream (TCP, vsock, Unix socket, an in-memory pipe...)
    /// until the client closes it. The caller decides who may connect.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] for a connection-level HTTP failure (the client sent garbage, timed out
    /// sending its headers, or went away).
    pub async fn serve_connection<IO>(&self, io: IO) -> Result<()>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let api = self.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            let api = api.clone();
            async move { Ok::<_, Infallible>(api.handle(req).await) }
        });
        hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .serve_connection(TokioIo::new(io), service)
            .await
            .map_err(|e| {
                Error::io(
                    "serving an attestation API connection",
                    std::io::Error::other(e),
                )
            })
    }

    /// Answers one request (reads at most [`ATTESTATION_MAX_BODY`] bytes of body; the NSM call runs on
    /// the blocking thread pool).
    pub async fn handle<B>(&self, req: Request<B>) -> Response<Full<Bytes>>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (parts, body) = req.into_parts();
        let head = match check_head(&parts.method, parts.uri.path(), &parts.headers) {
            Ok(h) => h,
            Err(e) => return e.into_response(),
        };
        let body = match Limited::new(body, ATTESTATION_MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                let e = if e.is::<http_body_util::LengthLimitError>() {
                    error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "too_large",
                        &format!("request body over {ATTESTATION_MAX_BODY} bytes"),
                    )
                } else {
                    error(StatusCode::BAD_REQUEST, "bad_request", "unreadable body")
                };
                return e.into_response();
            }
        };
        let fields = match parse_body(&body) {
            Ok(f) => f,
            Err(e) => return e.into_response(),
        };
        let nsm = self.nsm.clone();
        let result = tokio::task::spawn_blocking(move || {
            nsm.attestation(
                fields.user_data.as_deref(),
                fields.nonce.as_deref(),
                fields.public_key.as_deref(),
            )
        })
        .await;
        match result {
            Ok(Ok(doc)) => document(doc, head.json),
            Ok(Err(Error::Nsm(NsmErrorCode::InputTooLarge))) => error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                "the NSM request would exceed 4096 bytes (InputTooLarge)",
            )
            .into_response(),
            Ok(Err(e)) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "nsm_error",
                &e.to_string(),
            )
            .into_response(),
            Err(_) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "nsm_error",
                "the NSM call panicked",
            )
            .into_response(),
        }
    }
}

/// `true` for `127.0.0.0/8`, `::1` and `::ffff:127.0.0.0/104`.
fn is_loopback(addr: SocketAddr) -> bool {
    match addr {
        SocketAddr::V4(a) => a.ip().is_loopback(),
        SocketAddr::V6(a) => {
            a.ip().is_loopback() || a.ip().to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// What the request line and headers decided.
struct Head {
    /// Answer with base64 JSON instead of CBOR.
    json: bool,
}

fn check_head(
    method: &Method,
    path: &str,
    headers: &http::HeaderMap,
) -> std::result::Result<Head, ApiError> {
    if path != ATTESTATION_PATH {
        return Err(error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no such endpoint (use POST {ATTESTATION_PATH})"),
        ));
    }
    if method != Method::POST {
        let mut e = error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "use POST",
        );
        e.allow_post = true;
        return Err(e);
    }
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let essence = ct
            .to_str()
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        // curl sends `application/x-www-form-urlencoded` with `-d` unless told otherwise;
        // the body is JSON either way.
        if essence != "application/json" && essence != "application/x-www-form-urlencoded" {
            return Err(error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the request body must be application/json",
            ));
        }
    }
    let mut accepts = Vec::new();
    for v in headers.get_all(header::ACCEPT) {
        accepts.push(v.to_str().unwrap_or("").to_owned());
    }
    match negotiate(&accepts.join(",")) {
        Some(json) => Ok(Head { json }),
        None => Err(error(
            StatusCode::NOT_ACCEPTABLE,
            "not_acceptable",
            "the document is served as application/cbor or application/json",
        )),
    }
}

/// Chooses the answer's format from an `Accept` value: `Some(false)` for CBOR, `Some(true)`
/// for JSON, `None` if neither is acceptable. Highest quality wins; CBOR on ties and for
/// wildcards; no header means CBOR.
fn negotiate(accept: &str) -> Option<bool> {
    if accept.trim().is_empty() {
        return Some(false);
    }
    let (mut cbor, mut json) = (0.0f32, 0.0f32);
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let mut q = 1.0f32;
        for p in parts {
            if let Some(v) = p.trim().strip_prefix("q=") {
                q = v.trim().parse().unwrap_or(0.0);
            }
        }
        match media.as_str() {
            "application/cbor" => cbor = cbor.max(q),
            "application/json" => json = json.max(q),
            "*/*" | "application/*" => {
                cbor = cbor.max(q);
                json = json.max(q * 0.999);
            }
            _ => {}
        }
    }
    if cbor <= 0.0 && json <= 0.0 {
        None
    } else {
        Some(json > cbor)
    }
}

/// The decoded request fields.
#[derive(Debug, Default, PartialEq, Eq)]
struct Fields {
    nonce: Option<Vec<u8>>,
    user_data: Option<Vec<u8>>,
    public_key: Option<Vec<u8>>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    #[serde(default)]
    nonce: Option<String>,
    #[serde(default)]
    user_data: Option<String>,
    #[serde(default)]
    public_key: Option<String>,
}

fn parse_body(body: &[u8]) -> std::result::Result<Fields, ApiError> {
    let bad = |m: String| error(StatusCode::BAD_REQUEST, "bad_request", &m);
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Fields::default());
    }
    let b: Body = serde_json::from_slice(body).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    let decode = |name: &str, v: Option<String>| -> std::result::Result<_, _> {
        let Some(v) = v else { return Ok(None) };
        // A base64 text over 4/3 of the limit cannot decode within it: refuse before decoding.
        if v.len() > MAX_OPTIONAL_FIELD.div_ceil(3) * 4 {
            return Err(too_large(name));
        }
        let bytes = STANDARD
            .decode(&v)
            .or_else(|_| STANDARD_NO_PAD.decode(&v))
            .map_err(|e| bad(format!("`{name}` is not base64: {e}")))?;
        if bytes.len() > MAX_OPTIONAL_FIELD {
            return Err(too_large(name));
        }
        Ok(Some(bytes))
    };
    Ok(Fields {
        nonce: decode("nonce", b.nonce)?,
        user_data: decode("user_data", b.user_data)?,
        public_key: decode("public_key", b.public_key)?,
    })
}

fn too_large(name: &str) -> ApiError {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        &format!("`{name}` is over {MAX_OPTIONAL_FIELD} bytes"),
    )
}

fn response(
    status: StatusCode,
    content_type: &'static str,
    body: Vec<u8>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn document(doc: Vec<u8>, json: bool) -> Response<Full<Bytes>> {
    if json {
        let body = serde_json::json!({ "document": STANDARD.encode(&doc) }).to_string();
        response(StatusCode::OK, "application/json", body.into_bytes())
    } else {
        response(StatusCode::OK, "application/cbor", doc)
    }
}

/// An error answer: status, machine-readable code, message.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    allow_post: bool,
}

fn error(status: StatusCode, code: &'static str, message: &str) -> ApiError {
    ApiError {
        status,
        code,
        message: message.to_owned(),
        allow_post: false,
    }
}

impl ApiError {
    fn into_response(self) -> Response<Full<Bytes>> {
        let body = serde_json::json!({ "error": { "code": self.code, "message": self.message } })
            .to_string();
        let mut r = response(self.status, "application/json", body.into_bytes());
        if self.allow_post {
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The API works with the real device type and with a trait object (compile-time check).
    #[allow(dead_code)] // never called: it only has to type-check
    fn serves_every_nsm_type(listener: TcpListener, dyn_nsm: Arc<dyn Nsm>) {
        #[cfg(feature = "device")]
        fn device(l: TcpListener, d: crate::NsmDevice) -> impl Future<Output = Result<()>> + Send {
            let api = AttestationApi::new(Arc::new(d));
            async move { api.serve(l).await }
        }
        fn assert_send<F: Future + Send>(_: F) {}
        assert_send(AttestationApi::new(dyn_nsm).serve(listener));
    }

    #[test]
    fn accept_negotiation() {
        assert_eq!(negotiate(""), Some(false));
        assert_eq!(negotiate("*/*"), Some(false));
        assert_eq!(negotiate("application/cbor"), Some(false));
        assert_eq!(negotiate("application/json"), Some(true));
        assert_eq!(negotiate("application/json, */*;q=0.1"), Some(true));
        assert_eq!(
            negotiate("application/cbor;q=0.5, application/json"),
            Some(true)
        );
        assert_eq!(
            negotiate("application/json;q=0.5, application/cbor"),
            Some(false)
        );
        assert_eq!(negotiate("text/html"), None);
        assert_eq!(negotiate("application/cbor;q=0"), None);
        assert_eq!(negotiate("application/*"), Some(false));
    }

    #[test]
    fn loopback_peers_only() {
        for ok in [
            "127.0.0.1:1",
            "127.9.8.7:1",
            "[::1]:1",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert!(is_loopback(ok.parse().unwrap()), "{ok}");
        }
        for no in [
            "10.0.0.1:1",
            "0.0.0.0:1",
            "[::]:1",
            "[::ffff:10.0.0.1]:1",
            "[fe80::1]:1",
        ] {
            assert!(!is_loopback(no.parse().unwrap()), "{no}");
        }
    }

    #[test]
    fn body_parsing() {
        assert_eq!(parse_body(b"").unwrap(), Fields::default());
        assert_eq!(parse_body(b" {} ").unwrap(), Fields::default());
        let f = parse_body(br#"{"nonce":"AAE=","user_data":"AAE","public_key":null}"#).unwrap();
        assert_eq!(f.nonce.as_deref(), Some(&[0, 1][..]));
        assert_eq!(f.user_data.as_deref(), Some(&[0, 1][..]));
        assert_eq!(f.public_key, None);
        for (body, status) in [
            (&br#"{"nonce":"!!"}"#[..], StatusCode::BAD_REQUEST),
            (br#"{"nonce":1}"#, StatusCode::BAD_REQUEST),
            (br#"{"other":"AA=="}"#, StatusCode::BAD_REQUEST),
            (br#"[1]"#, StatusCode::BAD_REQUEST),
            (b"{", StatusCode::BAD_REQUEST),
        ] {
            assert_eq!(parse_body(body).unwrap_err().status, status);
        }
        let big = STANDARD.encode(vec![0u8; MAX_OPTIONAL_FIELD + 1]);
        let body = format!(r#"{{"user_data":"{big}"}}"#);
        assert_eq!(
            parse_body(body.as_bytes()).unwrap_err().status,
            StatusCode::PAYLOAD_TOO_LARGE
        );
        let max = STANDARD.encode(vec![0u8; MAX_OPTIONAL_FIELD]);
        let body = format!(r#"{{"user_data":"{max}"}}"#);
        assert_eq!(
            parse_body(body.as_bytes())
                .unwrap()
                .user_data
                .unwrap()
                .len(),
            1024
        );
    }
}
