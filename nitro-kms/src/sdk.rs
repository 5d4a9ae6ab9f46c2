//! The official AWS SDK for Rust inside an enclave (feature `aws-sdk`).
//!
//! - [`NitroHttpClient`]: an [`HttpClient`] for `aws-smithy-runtime-api`, so that any
//!   `aws_sdk_*::Client` (KMS, S3, ...) sends its requests over a [`Connect`] stream (a nitro-net
//!   egress tunnel in an enclave), with TLS by rustls in this process: the parent only relays
//!   ciphertext. It reuses this crate's TLS configuration ([`TlsRoots`]) and keep-alive pool.
//! - [`SdkCredentials`]: any of this crate's [`ProvideCredentials`] (e.g. credentials from the
//!   parent) as the SDK's credentials provider.
//! - `SdkRecipient` (feature `aws-sdk-kms`): the `RecipientInfo` of an `aws_sdk_kms` request,
//!   from a [`Recipient`](crate::Recipient), and the opening of `CiphertextForRecipient` with the
//!   matching private key.
//!
//! ```no_run
//! # #[cfg(feature = "aws-sdk-kms")]
//! # async fn f(egress: impl nitro_kms::transport::Connect, nsm: std::sync::Arc<dyn nitro_kms::nitro_attest::Nsm>,
//! #            creds: impl nitro_kms::ProvideCredentials + 'static) -> Result<(), Box<dyn std::error::Error>> {
//! use nitro_kms::sdk::{NitroHttpClient, SdkCredentials, SdkRecipient};
//! use nitro_kms::{Recipient, TlsRoots};
//!
//! let http = NitroHttpClient::builder(egress).tls_roots(TlsRoots::WebPki).build()?;
//! let config = aws_sdk_kms::Config::builder()
//!     .behavior_version(aws_sdk_kms::config::BehaviorVersion::latest())
//!     .region(aws_sdk_kms::config::Region::new("eu-west-1"))
//!     .http_client(http)
//!     .credentials_provider(SdkCredentials::new(creds))
//!     .build();
//! let kms = aws_sdk_kms::Client::from_conf(config);
//!
//! let recipient = SdkRecipient::current(&Recipient::new(nsm)).await?;
//! let out = kms
//!     .generate_data_key()
//!     .key_id("alias/app")
//!     .key_spec(aws_sdk_kms::types::DataKeySpec::Aes256)
//!     .recipient(recipient.recipient_info())
//!     .send()
//!     .await?;
//! let data_key = recipient.open_response(
//!     "GenerateDataKey",
//!     out.ciphertext_for_recipient(),
//!     out.plaintext(),
//! )?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::future as creds_future;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use hyper::client::conn::http1::SendRequest;

use crate::TlsRoots;
use crate::aws_credentials::ProvideCredentials;
use crate::error::Error;
use crate::http::{Endpoint, Pool, handshake, open_stream};
use crate::transport::Connect;

/// Connect timeout when the SDK configures none (connecting and the TLS handshake, each).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// An HTTP client for the official AWS SDK for Rust that opens its connections with a
/// [`Connect`] (a nitro-net egress tunnel, plain TCP, ...) and runs TLS (rustls, aws-lc-rs) in
/// this process, trusting [`TlsRoots`] (by default the embedded Mozilla roots: an enclave has
/// no trust store).
///
/// HTTP/1.1 with a keep-alive pool shared by every SDK client given a clone. Bodies stream
/// both ways (S3 downloads are not buffered). The SDK's connect timeout applies to opening the
/// stream and to the TLS handshake, its read timeout to waiting for response headers. Plain
/// `http://` URLs are refused unless [`NitroHttpClientBuilder::dangerous_allow_plain_http`] was
/// called: in an enclave they would show the parent every request.
///
/// ```
/// use nitro_kms::sdk::NitroHttpClient;
/// use nitro_kms::transport::TcpConnector;
///
/// let http = NitroHttpClient::builder(TcpConnector).build().unwrap();
/// let config = aws_smithy_runtime_api::client::http::SharedHttpClient::new(http);
/// # let _ = config;
/// ```
#[derive(Clone)]
pub struct NitroHttpClient {
    inner: Arc<Inner>,
}

struct Inner {
    connector: Arc<dyn Connect>,
    tls: Arc<rustls::ClientConfig>,
    pool: Pool<SdkBody>,
    allow_plain_http: bool,
}

impl fmt::Debug for NitroHttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NitroHttpClient")
            .field("allow_plain_http", &self.inner.allow_plain_http)
            .finish_non_exhaustive()
    }
}

/// Builds a [`NitroHttpClient`].
#[must_use]
pub struct NitroHttpClientBuilder {
    connector: Arc<dyn Connect>,
    roots: TlsRoots,
    allow_plain_http: bool,
}

impl fmt::Debug for NitroHttpClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NitroHttpClientBuilder")
            .field("roots", &self.roots)
            .field("allow_plain_http", &self.allow_plain_http)
            .finish_non_exhaustive()
    }
}

impl NitroHttpClientBuilder {
    /// Which certificate authorities TLS trusts (default [`TlsRoots::WebPki`]).
    pub fn tls_roots(mut self, roots: TlsRoots) -> Self {
        self.roots = roots;
        self
    }

    /// Also sends requests to `http://` URLs, without TLS (moto, the instance metadata service
    /// on the parent). Inside an enclave, whoever relays the stream reads and may change them.
    pub fn dangerous_allow_plain_http(mut self) -> Self {
        self.allow_plain_http = true;
        self
    }

    /// The client; fails when a custom root certificate is invalid.
    pub fn build(self) -> Result<NitroHttpClient, Error> {
        Ok(NitroHttpClient {
            inner: Arc::new(Inner {
                connector: self.connector,
                tls: self.roots.client_config()?,
                pool: Pool::new(),
                allow_plain_http: self.allow_plain_http,
            }),
        })
    }
}

impl NitroHttpClient {
    /// A builder whose streams come from `connector`.
    pub fn builder(connector: impl Connect) -> NitroHttpClientBuilder {
        NitroHttpClientBuilder {
            connector: Arc::new(connector),
            roots: TlsRoots::default(),
            allow_plain_http: false,
        }
    }
}

impl HttpClient for NitroHttpClient {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        _components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(NitroConnector {
            client: self.clone(),
            connect_timeout: settings
                .connect_timeout()
                .unwrap_or(DEFAULT_CONNECT_TIMEOUT),
            read_timeout: settings.read_timeout(),
        })
    }
}

/// The connector for one set of SDK timeout settings; shares the client's pool.
#[derive(Clone, Debug)]
struct NitroConnector {
    client: NitroHttpClient,
    connect_timeout: Duration,
    read_timeout: Option<Duration>,
}

impl HttpConnector for NitroConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let this = self.clone();
        HttpConnectorFuture::new(async move { this.send(request).await.map_err(connector_error) })
    }
}

/// How an error of this crate is reported to the SDK's retry logic.
fn connector_error(e: Error) -> ConnectorError {
    match e {
        Error::Timeout { .. } => ConnectorError::timeout(e.into()),
        Error::Io { .. } | Error::Tls(_) | Error::Http(_) => ConnectorError::io(e.into()),
        other => ConnectorError::other(other.into(), None),
    }
}

/// A request whose head can be sent again with another body (for a retry on a fresh connection).
fn with_body(head: &http::request::Parts, body: SdkBody) -> http::Request<SdkBody> {
    let mut req = http::Request::new(body);
    *req.method_mut() = head.method.clone();
    *req.uri_mut() = head.uri.clone();
    *req.version_mut() = head.version;
    *req.headers_mut() = head.headers.clone();
    req
}

impl NitroConnector {
    async fn connect(&self, endpoint: &Endpoint) -> Result<SendRequest<SdkBody>, Error> {
        let inner = &self.client.inner;
        let stream = open_stream(
            &*inner.connector,
            &inner.tls,
            endpoint,
            self.connect_timeout,
        )
        .await?;
        handshake(stream).await
    }

    async fn send(&self, request: HttpRequest) -> Result<HttpResponse, Error> {
        let req = request
            .try_into_http1x()
            .map_err(|e| Error::InvalidArgument(format!("SDK request: {e}")))?;
        let endpoint = Endpoint::from_uri(req.uri())?;
        if !endpoint.tls && !self.client.inner.allow_plain_http {
            return Err(Error::InvalidArgument(format!(
                "refusing plain http:// to {} (NitroHttpClientBuilder::dangerous_allow_plain_http)",
                endpoint.authority()
            )));
        }
        let (mut head, body) = req.into_parts();
        // HTTP/1.1 connections take the origin form; the authority goes into `Host` (without a
        // default port, as SigV4 signed it).
        head.uri = head
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse()
            .map_err(|e| Error::InvalidArgument(format!("SDK request path: {e}")))?;
        if !head.headers.contains_key(http::header::HOST) {
            let host = http::HeaderValue::from_str(&endpoint.authority())
                .map_err(|e| Error::InvalidArgument(format!("Host header: {e}")))?;
            head.headers.insert(http::header::HOST, host);
        }

        let pool = &self.client.inner.pool;
        let pooled = pool.take(&endpoint);
        // Kept only when the request may have to go out twice (a pooled connection that the
        // server closed meanwhile) and its body can be replayed.
        let replay = pooled.as_ref().and_then(|_| body.try_clone());
        let reused = pooled.is_some();
        let mut sender = match pooled {
            Some(s) => s,
            None => self.connect(&endpoint).await?,
        };
        let response = match self.exchange(&mut sender, with_body(&head, body)).await {
            Err(Error::Http(_)) if reused && replay.is_some() => {
                sender = self.connect(&endpoint).await?;
                let body = replay.unwrap_or_else(SdkBody::empty);
                self.exchange(&mut sender, with_body(&head, body)).await?
            }
            other => other?,
        };
        let close = response
            .headers()
            .get(http::header::CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        if !close {
            // Reusable once the SDK has read the body.
            pool.put(&endpoint, sender);
        }
        HttpResponse::try_from(response.map(SdkBody::from_body_1_x))
            .map_err(|e| Error::Http(format!("response: {e}")))
    }

    /// Sends `req` and waits for the response head (within the read timeout).
    async fn exchange(
        &self,
        sender: &mut SendRequest<SdkBody>,
        req: http::Request<SdkBody>,
    ) -> Result<http::Response<hyper::body::Incoming>, Error> {
        let fut = sender.send_request(req);
        let resp = match self.read_timeout {
            Some(limit) => tokio::time::timeout(limit, fut)
                .await
                .map_err(|_| Error::Timeout {
                    what: "waiting for the response",
                    after: limit,
                })?,
            None => fut.await,
        };
        resp.map_err(|e| Error::Http(e.to_string()))
    }
}

/// One of this crate's credential providers (static, environment, from the parent, refreshing)
/// as the AWS SDK's credentials provider (`aws_credential_types::provider::ProvideCredentials`).
///
/// The SDK caches identities itself and asks again before they expire; wrap a provider that
/// talks to the parent in [`RefreshingCredentials`](crate::credentials::RefreshingCredentials)
/// all the same when it is shared with this crate's own clients.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use aws_credential_types::provider::ProvideCredentials as _;
/// use nitro_kms::Credentials;
/// use nitro_kms::sdk::SdkCredentials;
///
/// let sdk = SdkCredentials::new(Credentials::new("AKIDEXAMPLE", "secret", None, None));
/// let c = sdk.provide_credentials().await.unwrap();
/// assert_eq!(c.access_key_id(), "AKIDEXAMPLE");
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct SdkCredentials {
    source: Arc<dyn ProvideCredentials>,
}

impl SdkCredentials {
    /// Wraps `source`.
    pub fn new(source: impl ProvideCredentials + 'static) -> Self {
        Self {
            source: Arc::new(source),
        }
    }
}

impl aws_credential_types::provider::ProvideCredentials for SdkCredentials {
    fn provide_credentials<'a>(&'a self) -> creds_future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        creds_future::ProvideCredentials::new(async move {
            let c = self
                .source
                .provide_credentials()
                .await
                .map_err(CredentialsError::provider_error)?;
            Ok(aws_credential_types::Credentials::new(
                c.access_key_id(),
                c.secret_access_key().expose(),
                c.session_token().map(|t| t.expose().to_owned()),
                c.expiration(),
                "nitro-kms",
            ))
        })
    }
}

#[cfg(feature = "aws-sdk-kms")]
pub use kms::SdkRecipient;

#[cfg(feature = "aws-sdk-kms")]
mod kms {
    use std::sync::Arc;

    use aws_sdk_kms::primitives::Blob;
    use aws_sdk_kms::types::{KeyEncryptionMechanism, RecipientInfo};

    use crate::error::Error;
    use crate::recipient::{AttestedKey, Recipient};
    use crate::secret::Plaintext;

    /// An attested key pair of a [`Recipient`], for `aws_sdk_kms` requests (feature
    /// `aws-sdk-kms`): [`recipient_info`](Self::recipient_info) is the request's `Recipient`
    /// member (attestation document carrying the public key, RSAES-OAEP-SHA-256), and
    /// [`open`](Self::open) decrypts the response's `CiphertextForRecipient` (CMS
    /// `EnvelopedData`) with the private key, which never leaves the enclave.
    ///
    /// Take one per request (or per batch of requests) and open with the same value: it pins
    /// the key pair, even if the [`Recipient`] rotates meanwhile.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::sync::Arc;
    /// use nitro_kms::Recipient;
    /// use nitro_kms::sdk::SdkRecipient;
    ///
    /// let nsm = Arc::new(nitro_kms::nitro_attest::SimulatedNsm::builder().seed(1).build()?);
    /// let recipient = SdkRecipient::current(&Recipient::new(nsm)).await?;
    /// let info = recipient.recipient_info();
    /// assert!(info.attestation_document().is_some());
    /// // Without CiphertextForRecipient the response is refused (fail closed).
    /// assert!(recipient.open_response("Decrypt", None, None).is_err());
    /// # Ok(()) }
    /// ```
    #[derive(Clone, Debug)]
    pub struct SdkRecipient {
        key: Arc<AttestedKey>,
    }

    impl SdkRecipient {
        /// The recipient's current key pair (generated, and attested, when it has none or its
        /// lifetime is over).
        pub async fn current(recipient: &Recipient) -> Result<Self, Error> {
            Ok(Self {
                key: recipient.current().await?,
            })
        }

        /// Uses an existing attested key pair.
        pub fn from_attested_key(key: Arc<AttestedKey>) -> Self {
            Self { key }
        }

        /// The attested key pair.
        pub fn attested_key(&self) -> &Arc<AttestedKey> {
            &self.key
        }

        /// The `Recipient` member of a Decrypt, GenerateDataKey, GenerateDataKeyPair,
        /// GenerateRandom, DeriveSharedSecret or ReEncrypt... request.
        pub fn recipient_info(&self) -> RecipientInfo {
            RecipientInfo::builder()
                .key_encryption_algorithm(KeyEncryptionMechanism::RsaesOaepSha256)
                .attestation_document(Blob::new(self.key.attestation_document().to_vec()))
                .build()
        }

        /// Opens a `CiphertextForRecipient`.
        pub fn open(&self, ciphertext_for_recipient: &Blob) -> Result<Plaintext, Error> {
            Ok(crate::cms::open(
                ciphertext_for_recipient.as_ref(),
                self.key.key(),
            )?)
        }

        /// Opens the response of `operation` (e.g. `"Decrypt"`) to a request sent with
        /// [`recipient_info`](Self::recipient_info), failing closed: a response without
        /// `CiphertextForRecipient` ([`Error::MissingCiphertextForRecipient`]), or one that
        /// also carries a plaintext ([`Error::RecipientIgnored`]: a server that ignored
        /// `Recipient`, as moto does), is refused.
        pub fn open_response(
            &self,
            operation: &'static str,
            ciphertext_for_recipient: Option<&Blob>,
            plaintext: Option<&Blob>,
        ) -> Result<Plaintext, Error> {
            if plaintext.is_some_and(|p| !p.as_ref().is_empty()) {
                return Err(Error::RecipientIgnored { operation });
            }
            let ciphertext = ciphertext_for_recipient
                .ok_or(Error::MissingCiphertextForRecipient { operation })?;
            self.open(ciphertext)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::TcpConnector;

    #[test]
    fn errors_map_to_retryable_kinds() {
        let t = connector_error(Error::Timeout {
            what: "connect",
            after: Duration::from_secs(1),
        });
        assert!(t.is_timeout());
        assert!(connector_error(Error::Http("closed".into())).is_io());
        assert!(connector_error(Error::InvalidArgument("bad".into())).is_other());
    }

    #[tokio::test]
    async fn plain_http_is_refused_by_default() {
        let client = NitroHttpClient::builder(TcpConnector).build().unwrap();
        let conn = NitroConnector {
            client,
            connect_timeout: Duration::from_secs(1),
            read_timeout: None,
        };
        let req = HttpRequest::get("http://127.0.0.1:9/").unwrap();
        let e = conn.send(req).await.unwrap_err();
        assert!(e.to_string().contains("plain http"), "{e}");
    }

    #[tokio::test]
    async fn hostile_responses_are_errors() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let answers: [&[u8]; 3] = [
            b"not http at all\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
        ];
        for answer in answers {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            tokio::spawn(async move {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(answer).await;
            });
            let conn = NitroConnector {
                client: NitroHttpClient::builder(TcpConnector)
                    .dangerous_allow_plain_http()
                    .build()
                    .unwrap(),
                connect_timeout: Duration::from_secs(5),
                read_timeout: Some(Duration::from_secs(5)),
            };
            let url = format!("http://127.0.0.1:{port}/");
            match conn.send(HttpRequest::get(url.as_str()).unwrap()).await {
                Err(e) => assert!(matches!(e, Error::Http(_)), "{e}"),
                // A truncated body is only noticed while reading it.
                Ok(mut resp) => {
                    let body = resp.take_body();
                    let read = http_body_util::BodyExt::collect(body).await;
                    assert!(read.is_err(), "truncated body accepted");
                }
            }
        }
    }

    #[tokio::test]
    async fn connect_and_read_timeouts_apply() {
        // A connector that never completes: the SDK's connect timeout.
        let never = |_host: String, _port: u16| {
            std::future::pending::<std::io::Result<tokio::net::TcpStream>>()
        };
        let conn = NitroConnector {
            client: NitroHttpClient::builder(never).build().unwrap(),
            connect_timeout: Duration::from_millis(100),
            read_timeout: None,
        };
        let e = conn
            .send(HttpRequest::get("https://kms.example/").unwrap())
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                Error::Timeout {
                    what: "connect",
                    ..
                }
            ),
            "{e}"
        );
        assert!(connector_error(e).is_timeout());

        // A server that accepts and never answers: the read timeout.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let silent = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(s);
        });
        let conn = NitroConnector {
            client: NitroHttpClient::builder(TcpConnector)
                .dangerous_allow_plain_http()
                .build()
                .unwrap(),
            connect_timeout: Duration::from_secs(5),
            read_timeout: Some(Duration::from_millis(100)),
        };
        let url = format!("http://127.0.0.1:{port}/");
        let e = conn
            .send(HttpRequest::get(url.as_str()).unwrap())
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                Error::Timeout {
                    what: "waiting for the response",
                    ..
                }
            ),
            "{e}"
        );
        silent.abort();
    }
}
