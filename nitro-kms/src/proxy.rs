//! An attesting KMS proxy for applications inside the enclave: an HTTP endpoint on loopback
//! that speaks the KMS JSON 1.1 protocol, so that **any AWS SDK or tool** (boto3, the `aws`
//! CLI, the Go/Java/JavaScript SDKs, the AWS Encryption SDK, ...) gets attested KMS calls
//! without a line of enclave-specific code. Point it at the proxy with the standard variable:
//!
//! ```sh
//! export AWS_ENDPOINT_URL_KMS=http://127.0.0.1:8000   # or AWS_ENDPOINT_URL
//! aws kms decrypt --ciphertext-blob fileb://secret.bin --query Plaintext --output text
//! ```
//!
//! # What it does
//!
//! For every request (`POST /`, `X-Amz-Target: TrentService.<Operation>`, JSON body):
//!
//! - `Decrypt`, `GenerateDataKey`, `GenerateDataKeyPair`, `GenerateRandom`, `DeriveSharedSecret`
//!   (the operations KMS can answer with `CiphertextForRecipient`): the proxy adds `Recipient`
//!   with the attestation document of its [`Recipient`](crate::Recipient) key pair (fresh per
//!   [`Recipient::lifetime`](crate::Recipient::lifetime)), signs the request with the
//!   enclave's credentials, sends it through the client's transport (in an enclave: the
//!   nitro-net tunnel, with TLS ending inside the enclave), opens `CiphertextForRecipient` with
//!   the private key and answers exactly as KMS answers without `Recipient`: the secret in
//!   `Plaintext` / `PrivateKeyPlaintext` / `SharedSecret`, every other member as KMS sent it.
//!   `CiphertextForRecipient` is never returned to the caller. A KMS response without the
//!   envelope fails closed (HTTP 502, see below): the plaintext path is never taken.
//! - A request that already carries `Recipient` is refused (`ValidationException`): an
//!   application doing its own attestation should talk to KMS (through the tunnel) itself.
//! - Every other operation (`Encrypt`, `ReEncrypt`, `GenerateDataKeyWithoutPlaintext`,
//!   `Sign`, `DescribeKey`, ...) is passed through unchanged, re-signed. `ReEncrypt` takes no
//!   `Recipient` in KMS (the plaintext never leaves KMS), so it needs no attestation.
//! - KMS errors pass through verbatim: status, body, `x-amzn-RequestId`, `x-amzn-ErrorType`.
//!   Errors of the proxy itself (the NSM failed, KMS unreachable, an envelope that does not
//!   open) are HTTP 500/502 with `{"__type": "NitroKmsProxyException", "message": ...}`.
//!
//! # Security model: why the caller's signature is ignored
//!
//! The caller's `Authorization` header, access key, region and security token are ignored; the
//! proxy signs with the credentials of its [`KmsClient`] (the enclave's role, through
//! [`ProvideCredentials`](crate::ProvideCredentials)). SDKs insist on *some* credentials, so
//! give them dummies (`AWS_ACCESS_KEY_ID=enclave AWS_SECRET_ACCESS_KEY=enclave`).
//!
//! This is safe because the proxy grants nothing that the caller does not already have:
//!
//! - It accepts connections from loopback only ([`KmsProxy::bind`] refuses other addresses,
//!   [`KmsProxy::serve`] drops non-loopback peers). Inside an enclave, loopback is reachable
//!   only by processes running in the same enclave: the parent instance has no route to it.
//! - Any process in the enclave can already read the enclave's credentials and ask the NSM for
//!   an attestation document with a public key of its choice. The proxy is a convenience, not a
//!   privilege boundary.
//! - What KMS checks is the **enclave image** (PCRs in the attestation document, matched by the
//!   key policy's `kms:RecipientAttestation:*` conditions), not the process: an attestation
//!   document binds the enclave image, never one program within it. Every program in the
//!   image is trusted equally, with or without this proxy.
//!
//! What it means: do not run code you do not trust in an enclave whose image a key policy
//! admits; and do not forward the proxy's port anywhere (e.g. through an ingress tunnel): a
//! remote caller would get plaintexts.
//!
//! Plaintexts travel only over loopback inside the enclave, in the HTTP response to the caller.
//!
//! ```no_run
//! # #[cfg(feature = "device")]
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use nitro_kms::{KmsClient, Recipient, proxy::KmsProxy};
//!
//! let nsm = Arc::new(nitro_kms::nitro_attest::NsmDevice::open()?);
//! let kms = KmsClient::builder_from_env()?
//!     .connector(nitro_kms::transport::TcpConnector) // the nitro-net tunnel in an enclave
//!     .recipient(Recipient::new(nsm))
//!     .build()?;
//! let running = KmsProxy::new(kms)?.spawn("127.0.0.1:8000").await?;
//! println!("AWS_ENDPOINT_URL_KMS=http://{}", running.local_addr());
//! # Ok(()) }
//! ```

use std::net::{IpAddr, SocketAddr};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value};
use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::task::JoinHandle;
use zeroize::Zeroizing;

use crate::client::{KmsClient, open_for_recipient};
use crate::error::{Error, chain};
use crate::recipient::AttestedKey;
use crate::secret::Plaintext;
use crate::transport::AsyncStream;

/// Largest request body accepted (KMS's own inputs are far smaller).
pub const MAX_REQUEST: usize = 1024 * 1024;

/// `__type` of the errors the proxy itself produces.
pub const PROXY_ERROR_CODE: &str = "NitroKmsProxyException";

/// The operations answered through `CiphertextForRecipient`, with the member that carries the
/// secret when KMS answers without `Recipient`.
pub const ATTESTED_OPERATIONS: &[(&str, &str)] = &[
    ("Decrypt", "Plaintext"),
    ("GenerateDataKey", "Plaintext"),
    ("GenerateDataKeyPair", "PrivateKeyPlaintext"),
    ("GenerateRandom", "Plaintext"),
    ("DeriveSharedSecret", "SharedSecret"),
];

const JSON_11: &str = "application/x-amz-json-1.1";

/// The proxy: a [`KmsClient`] with a [`Recipient`](crate::Recipient) behind the KMS protocol.
///
/// Cheap to clone. [`handle`](Self::handle) is the whole protocol logic on an
/// `http::Request<Bytes>` (usable from any HTTP server); [`serve_connection`](Self::serve_connection)
/// serves HTTP/1.1 on any byte stream; [`serve`](Self::serve) and [`spawn`](Self::spawn)
/// accept loopback TCP connections.
#[derive(Clone, Debug)]
pub struct KmsProxy {
    client: KmsClient,
}

impl KmsProxy {
    /// A proxy sending through `client`, which must have a [`Recipient`](crate::Recipient)
    /// (without one, the proxy would have to ask KMS for plaintexts on the wire).
    pub fn new(client: KmsClient) -> Result<Self, Error> {
        if client.recipient().is_none() {
            return Err(Error::InvalidArgument(
                "the KMS proxy needs a KmsClient with a Recipient".into(),
            ));
        }
        Ok(Self { client })
    }

    /// The client requests go through.
    pub fn client(&self) -> &KmsClient {
        &self.client
    }

    /// Answers one KMS request (the caller's signature and credentials are ignored: see the
    /// [module documentation](self)). Never fails: errors become KMS-shaped error responses.
    pub async fn handle(&self, request: http::Request<Bytes>) -> http::Response<Bytes> {
        let (parts, body) = request.into_parts();
        if parts.method != Method::POST {
            return error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "UnknownOperationException",
                "the KMS protocol uses POST",
            );
        }
        let Some(operation) = parts
            .headers
            .get("x-amz-target")
            .and_then(|v| v.to_str().ok())
            .and_then(|t| t.strip_prefix("TrentService."))
            .filter(|op| !op.is_empty() && op.bytes().all(|b| b.is_ascii_alphanumeric()))
        else {
            return error_response(
                StatusCode::BAD_REQUEST,
                "UnknownOperationException",
                "missing or foreign X-Amz-Target (expected TrentService.<Operation>)",
            );
        };
        match ATTESTED_OPERATIONS.iter().find(|(op, _)| *op == operation) {
            Some(&(operation, field)) => self.attested(operation, field, &body).await,
            None => match self.client.send_raw(operation, body).await {
                Ok(resp) => pass_through(resp),
                Err(e) => upstream_failure(operation, &e),
            },
        }
    }

    async fn attested(
        &self,
        operation: &'static str,
        field: &'static str,
        body: &[u8],
    ) -> http::Response<Bytes> {
        let mut request: Map<String, Value> = match serde_json::from_slice(body) {
            Ok(Value::Object(m)) => m,
            _ => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    "SerializationException",
                    "the request body is not a JSON object",
                );
            }
        };
        if request.contains_key("Recipient") {
            return error_response(
                StatusCode::BAD_REQUEST,
                "ValidationException",
                "the KMS proxy adds Recipient itself and answers in plaintext; \
                 send requests with your own Recipient to KMS directly",
            );
        }
        let Some(recipient) = self.client.recipient() else {
            return proxy_error(StatusCode::INTERNAL_SERVER_ERROR, "no Recipient");
        };
        let key = match recipient.current().await {
            Ok(k) => k,
            Err(e) => {
                let e = chain(&e);
                tracing::warn!(operation, "KMS proxy: {e}");
                return proxy_error(StatusCode::INTERNAL_SERVER_ERROR, &e);
            }
        };
        let info = match serde_json::to_value(key.recipient_info()) {
            Ok(v) => v,
            Err(e) => return proxy_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        };
        request.insert("Recipient".into(), info);
        let body = match serde_json::to_vec(&request) {
            Ok(b) => Bytes::from(b),
            Err(e) => return proxy_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        };
        let resp = match self.client.send_raw(operation, body).await {
            Ok(r) => r,
            Err(e) => return upstream_failure(operation, &e),
        };
        if !resp.status.is_success() {
            return pass_through(resp);
        }
        match open_response(operation, field, &key, &resp.body) {
            Ok(body) => {
                let mut out = pass_through(resp);
                *out.body_mut() = Bytes::from(body);
                out.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static(JSON_11),
                );
                out.headers_mut().remove(http::header::CONTENT_LENGTH);
                out
            }
            Err(e) => {
                let e = chain(&e);
                tracing::warn!(operation, "KMS proxy: refusing the KMS response: {e}");
                proxy_error(StatusCode::BAD_GATEWAY, &e)
            }
        }
    }

    /// Serves HTTP/1.1 on one accepted stream (any transport) until the client closes it.
    ///
    /// **The caller decides who may connect**: accept only streams from inside the enclave
    /// (loopback TCP, a Unix socket). [`serve`](Self::serve) does this for TCP.
    pub async fn serve_connection<S: AsyncStream>(&self, stream: S) -> Result<(), Error> {
        let this = self.clone();
        let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let this = this.clone();
            async move {
                let (parts, body) = req.into_parts();
                let resp = match Limited::new(body, MAX_REQUEST).collect().await {
                    Ok(body) => {
                        this.handle(http::Request::from_parts(parts, body.to_bytes()))
                            .await
                    }
                    Err(e) => error_response(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "ValidationException",
                        &format!("request body: {e}"),
                    ),
                };
                Ok::<_, std::convert::Infallible>(resp.map(Full::new))
            }
        });
        hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await
            .map_err(|e| Error::Http(e.to_string()))
    }

    /// Binds a loopback address (port 0 for any free port). Any other address is refused.
    pub async fn bind(addr: impl ToSocketAddrs) -> Result<TcpListener, Error> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| Error::io("binding the KMS proxy", e))?;
        let local = listener
            .local_addr()
            .map_err(|e| Error::io("binding the KMS proxy", e))?;
        if !is_loopback(local.ip()) {
            return Err(Error::InvalidArgument(format!(
                "the KMS proxy listens on loopback only, not {local}"
            )));
        }
        Ok(listener)
    }

    /// Accepts connections forever, each served on its own task; connections from addresses
    /// other than loopback are closed unanswered.
    pub async fn serve(&self, listener: TcpListener) -> Result<(), Error> {
        loop {
            let (stream, peer) = listener
                .accept()
                .await
                .map_err(|e| Error::io("accepting a KMS proxy connection", e))?;
            if !is_loopback(peer.ip()) {
                tracing::warn!(%peer, "KMS proxy: refused a connection from outside loopback");
                continue;
            }
            let _ = stream.set_nodelay(true);
            let this = self.clone();
            tokio::spawn(async move {
                if let Err(e) = this.serve_connection(stream).await {
                    tracing::debug!(%peer, "KMS proxy connection ended: {}", chain(&e));
                }
            });
        }
    }

    /// [`bind`](Self::bind)s `addr` and [`serve`](Self::serve)s in a background task.
    pub async fn spawn(self, addr: impl ToSocketAddrs) -> Result<RunningProxy, Error> {
        let listener = Self::bind(addr).await?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("binding the KMS proxy", e))?;
        let task = tokio::spawn(async move {
            if let Err(e) = self.serve(listener).await {
                tracing::warn!("KMS proxy stopped: {}", chain(&e));
            }
        });
        Ok(RunningProxy { addr, task })
    }
}

/// A [`KmsProxy`] serving in the background; stopped when dropped.
#[derive(Debug)]
pub struct RunningProxy {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl RunningProxy {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<address>`: the value for `AWS_ENDPOINT_URL_KMS`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for RunningProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// Replaces `CiphertextForRecipient` in a successful attested response by the plaintext it
/// carries, in `field`. Pure.
fn open_response(
    operation: &'static str,
    field: &str,
    key: &AttestedKey,
    body: &[u8],
) -> Result<Vec<u8>, Error> {
    let invalid = |reason: &str| Error::InvalidResponse {
        operation,
        reason: reason.to_owned(),
    };
    let mut resp: Map<String, Value> = match serde_json::from_slice(body) {
        Ok(Value::Object(m)) => m,
        _ => return Err(invalid("not a JSON object")),
    };
    let envelope = match resp.remove("CiphertextForRecipient") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(
            STANDARD
                .decode(s.as_bytes())
                .map_err(|_| invalid("CiphertextForRecipient is not base64"))?,
        ),
        Some(_) => return Err(invalid("CiphertextForRecipient is not a string")),
    };
    // Whether KMS (or something on the way) answered in plaintext despite Recipient.
    let sent_plaintext = match resp.get(field) {
        Some(Value::String(s)) if !s.is_empty() => Plaintext::from(vec![1]),
        _ => Plaintext::default(),
    };
    let plaintext = open_for_recipient(operation, key, &sent_plaintext, envelope.as_deref())?;
    let encoded = Zeroizing::new(STANDARD.encode(plaintext.as_bytes()));
    resp.insert(field.to_owned(), Value::String(encoded.as_str().to_owned()));
    let out = serde_json::to_vec(&resp).map_err(|e| invalid(&e.to_string()));
    // The JSON value held a copy of the encoded secret.
    if let Some(Value::String(s)) = resp.get_mut(field) {
        zeroize::Zeroize::zeroize(s);
    }
    out
}

fn pass_through(resp: crate::http::Response) -> http::Response<Bytes> {
    let mut out = http::Response::new(resp.body);
    *out.status_mut() = resp.status;
    for name in [
        http::header::CONTENT_TYPE.as_str(),
        "x-amzn-requestid",
        "x-amzn-errortype",
        http::header::DATE.as_str(),
    ] {
        if let Some(v) = resp.headers.get(name) {
            out.headers_mut()
                .insert(http::HeaderName::from_static(name), v.clone());
        }
    }
    out.headers_mut()
        .entry(http::header::CONTENT_TYPE)
        .or_insert(HeaderValue::from_static(JSON_11));
    out
}

fn error_response(status: StatusCode, code: &str, message: &str) -> http::Response<Bytes> {
    let body = serde_json::json!({ "__type": code, "message": message }).to_string();
    let mut out = http::Response::new(Bytes::from(body));
    *out.status_mut() = status;
    out.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(JSON_11),
    );
    if let Ok(v) = HeaderValue::from_str(code) {
        out.headers_mut().insert("x-amzn-errortype", v);
    }
    out
}

fn proxy_error(status: StatusCode, message: &str) -> http::Response<Bytes> {
    error_response(status, PROXY_ERROR_CODE, message)
}

fn upstream_failure(operation: &str, e: &Error) -> http::Response<Bytes> {
    let message = chain(e);
    tracing::warn!(operation, "KMS proxy: KMS unreachable: {message}");
    let status = if matches!(e, Error::Timeout { .. }) {
        StatusCode::GATEWAY_TIMEOUT
    } else {
        StatusCode::BAD_GATEWAY
    };
    proxy_error(status, &format!("{operation}: {message}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_only() {
        for ok in ["127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1"] {
            assert!(is_loopback(ok.parse().unwrap()), "{ok}");
        }
        for bad in ["0.0.0.0", "10.0.0.1", "::", "::ffff:10.0.0.1", "fe80::1"] {
            assert!(!is_loopback(bad.parse().unwrap()), "{bad}");
        }
    }

    fn attested_key() -> AttestedKey {
        let nsm = nitro_attest::SimulatedNsm::builder()
            .seed(3)
            .build()
            .unwrap();
        AttestedKey::generate(&nsm, None, None, std::time::Instant::now()).unwrap()
    }

    #[test]
    fn envelope_replaced_by_plaintext() {
        let key = attested_key();
        let envelope = crate::cms::seal(key.key().public_key_der(), b"secret").unwrap();
        let body = serde_json::json!({
            "KeyId": "arn:k", "EncryptionAlgorithm": "SYMMETRIC_DEFAULT", "Plaintext": null,
            "CiphertextForRecipient": STANDARD.encode(&envelope), "Extra": 1,
        });
        let out = open_response("Decrypt", "Plaintext", &key, body.to_string().as_bytes()).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["Plaintext"], STANDARD.encode(b"secret"));
        assert_eq!(v["KeyId"], "arn:k");
        assert_eq!(v["Extra"], 1);
        assert!(v.get("CiphertextForRecipient").is_none());
        let out = open_response(
            "GenerateDataKeyPair",
            "PrivateKeyPlaintext",
            &key,
            body.to_string().as_bytes(),
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["PrivateKeyPlaintext"], STANDARD.encode(b"secret"));
    }

    #[test]
    fn hostile_responses_fail_closed() {
        let key = attested_key();
        let other = attested_key();
        let foreign = crate::cms::seal(other.key().public_key_der(), b"secret").unwrap();
        for (body, what) in [
            (r#"{"KeyId":"k"}"#.to_owned(), "no envelope"),
            (
                r#"{"Plaintext":"c2VjcmV0"}"#.to_owned(),
                "plaintext instead of envelope",
            ),
            (
                r#"{"CiphertextForRecipient":"!!"}"#.to_owned(),
                "not base64",
            ),
            (r#"{"CiphertextForRecipient":7}"#.to_owned(), "not a string"),
            (r#"{"CiphertextForRecipient":"AAAA"}"#.to_owned(), "not CMS"),
            (
                format!(
                    r#"{{"CiphertextForRecipient":"{}"}}"#,
                    STANDARD.encode(&foreign)
                ),
                "another recipient",
            ),
            ("[]".to_owned(), "not an object"),
            ("".to_owned(), "empty"),
        ] {
            assert!(
                open_response("Decrypt", "Plaintext", &key, body.as_bytes()).is_err(),
                "{what}"
            );
        }
    }

    #[test]
    fn errors_are_kms_shaped() {
        let r = error_response(StatusCode::BAD_REQUEST, "ValidationException", "no");
        assert_eq!(r.status(), 400);
        let v: Value = serde_json::from_slice(r.body()).unwrap();
        assert_eq!(v["__type"], "ValidationException");
        assert_eq!(v["message"], "no");
        assert_eq!(r.headers()["x-amzn-errortype"], "ValidationException");
    }
}
