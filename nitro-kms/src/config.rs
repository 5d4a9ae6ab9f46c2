//! The configuration every AWS client of this crate shares (KMS, S3): one builder type whose
//! common setters are written once, with the service's own settings as its parameter.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::aws_credentials::ProvideCredentials;
use crate::client::{Clock, SystemClock};
use crate::credentials::EnvironmentCredentials;
use crate::error::Error;
use crate::http::{Endpoint, HttpClient, Response, TlsRoots};
use crate::sigv4::{self, Service};
use crate::transport::{Connect, TcpConnector};

/// Builds an AWS client: [`KmsClientBuilder`](crate::KmsClientBuilder) (from
/// [`KmsClient::builder`](crate::KmsClient::builder)) or
/// [`S3ClientBuilder`](crate::S3ClientBuilder) (from
/// [`S3Client::builder`](crate::S3Client::builder)).
///
/// The setters here (endpoint, credentials, connector, TLS roots, timeouts, clock) are the same
/// for every service; `S` holds the service's own settings, set by the methods of the
/// [`KmsClientBuilder`](crate::KmsClientBuilder) and [`S3ClientBuilder`](crate::S3ClientBuilder)
/// aliases.
///
/// ```
/// use std::time::Duration;
/// use nitro_kms::{KmsClient, S3Client};
///
/// let kms = KmsClient::builder("eu-west-1")
///     .connect_timeout(Duration::from_secs(2))
///     .fips(true)
///     .build()?;
/// let s3 = S3Client::builder("eu-west-1")
///     .connect_timeout(Duration::from_secs(2))
///     .path_style(true)
///     .build()?;
/// # let _ = (kms, s3);
/// # Ok::<(), nitro_kms::Error>(())
/// ```
pub struct ClientBuilder<S> {
    pub(crate) aws: AwsSettings,
    pub(crate) service: S,
}

/// The settings common to every service.
pub(crate) struct AwsSettings {
    pub(crate) region: String,
    pub(crate) endpoint: Option<String>,
    credentials: Option<Arc<dyn ProvideCredentials>>,
    connector: Option<Arc<dyn Connect>>,
    roots: TlsRoots,
    connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) clock: Arc<dyn Clock>,
    allow_plain_http: bool,
}

impl AwsSettings {
    /// The defaults: TCP, the Mozilla roots, `AWS_*` credentials, the system clock, 5 s to
    /// connect, and `request_timeout` (the service's default) per request.
    pub(crate) fn new(region: String, request_timeout: Duration) -> Self {
        Self {
            region,
            endpoint: None,
            credentials: None,
            connector: None,
            roots: TlsRoots::default(),
            connect_timeout: Duration::from_secs(5),
            request_timeout,
            clock: Arc::new(SystemClock),
            allow_plain_http: false,
        }
    }

    /// Parses the endpoint (the configured one, else `default_url`) and refuses plain HTTP
    /// unless it was allowed.
    pub(crate) fn endpoint(&self, default_url: impl FnOnce() -> String) -> Result<Endpoint, Error> {
        let url = self.endpoint.clone().unwrap_or_else(default_url);
        let endpoint = Endpoint::parse(&url)?;
        if !endpoint.tls && !self.allow_plain_http {
            return Err(Error::InvalidArgument(format!(
                "endpoint {url} is plain HTTP; TLS must end inside the enclave (use https://, or dangerous_allow_plain_http() for test servers)"
            )));
        }
        Ok(endpoint)
    }

    /// What a built client keeps: the HTTP client (the connector, TCP by default, with TLS to
    /// the configured roots), the credential source (`AWS_*` environment variables by
    /// default), the region, the clock and the request timeout.
    pub(crate) fn into_client(self) -> Result<AwsClient, Error> {
        let tls = self.roots.client_config()?;
        let connector = self.connector.unwrap_or_else(|| Arc::new(TcpConnector));
        Ok(AwsClient {
            region: self.region,
            http: HttpClient::new(connector, tls, self.connect_timeout),
            credentials: self
                .credentials
                .unwrap_or_else(|| Arc::new(EnvironmentCredentials)),
            clock: self.clock,
            request_timeout: self.request_timeout,
        })
    }
}

/// The part of a built client every service shares, and its signed request path.
pub(crate) struct AwsClient {
    pub(crate) region: String,
    http: HttpClient,
    credentials: Arc<dyn ProvideCredentials>,
    clock: Arc<dyn Clock>,
    request_timeout: Duration,
}

impl AwsClient {
    /// Completes `request` (user agent, `body`), signs it with SigV4 for `service` and sends
    /// it to `endpoint`, reading at most `max_response` bytes of the answer.
    pub(crate) async fn send(
        &self,
        endpoint: &Endpoint,
        request: http::request::Builder,
        body: Bytes,
        service: Service,
        max_response: usize,
    ) -> Result<Response, Error> {
        let creds = self.credentials.provide_credentials().await?;
        let mut req = request
            .header(
                http::header::USER_AGENT,
                concat!("nitro-kms/", env!("CARGO_PKG_VERSION")),
            )
            .body(body)
            .map_err(|e| Error::InvalidArgument(format!("cannot build request: {e}")))?;
        sigv4::sign_request(&mut req, &creds, &self.region, service, self.clock.now())?;
        self.http
            .send(endpoint, req, self.request_timeout, max_response)
            .await
    }
}

impl<S> fmt::Debug for ClientBuilder<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("region", &self.aws.region)
            .field("endpoint", &self.aws.endpoint)
            .finish_non_exhaustive()
    }
}

impl<S> ClientBuilder<S> {
    /// Sends requests to `url` (`https://host[:port]`) instead of the regional endpoint: a VPC
    /// endpoint, a local KMS, a test server. `http://` needs
    /// [`dangerous_allow_plain_http`](Self::dangerous_allow_plain_http).
    #[must_use]
    pub fn endpoint(mut self, url: impl Into<String>) -> Self {
        self.aws.endpoint = Some(url.into());
        self
    }

    /// Where credentials come from (default: the `AWS_*` environment variables, read per call).
    #[must_use]
    pub fn credentials(mut self, provider: impl ProvideCredentials + 'static) -> Self {
        self.aws.credentials = Some(Arc::new(provider));
        self
    }

    /// How streams to the endpoint are opened (default: TCP; in an enclave, the nitro-net
    /// tunnel with feature `nitro-net`, or any [`Connect`]).
    #[must_use]
    pub fn connector(mut self, connector: impl Connect) -> Self {
        self.aws.connector = Some(Arc::new(connector));
        self
    }

    /// Which certificate authorities to trust (default: the embedded Mozilla roots).
    #[must_use]
    pub fn tls_roots(mut self, roots: TlsRoots) -> Self {
        self.aws.roots = roots;
        self
    }

    /// Limit for opening a connection, TLS handshake included (default 5 s).
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.aws.connect_timeout = timeout;
        self
    }

    /// Limit for one attempt of a request, response body included (default 10 s for KMS, 60 s
    /// for S3).
    #[must_use]
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.aws.request_timeout = timeout;
        self
    }

    /// Time source for signing (default: the system clock).
    #[must_use]
    pub fn clock(mut self, clock: impl Clock + 'static) -> Self {
        self.aws.clock = Arc::new(clock);
        self
    }

    /// Accepts `http://` endpoints. **Without TLS the parent (or anyone on the path) can read
    /// plaintexts and forge responses, including `CiphertextForRecipient`.** Only for test
    /// servers such as moto.
    #[must_use]
    pub fn dangerous_allow_plain_http(mut self) -> Self {
        self.aws.allow_plain_http = true;
        self
    }
}

#[cfg(test)]
mod tests {
    use crate::{Error, KmsClient, S3Client};

    #[test]
    fn both_services_share_the_plain_http_rule() {
        let kms = KmsClient::builder("eu-west-1").endpoint("http://127.0.0.1:1");
        assert!(matches!(kms.build(), Err(Error::InvalidArgument(_))));
        let s3 = S3Client::builder("eu-west-1").endpoint("http://127.0.0.1:1");
        assert!(matches!(s3.build(), Err(Error::InvalidArgument(_))));
        let kms = KmsClient::builder("eu-west-1")
            .endpoint("http://127.0.0.1:1")
            .dangerous_allow_plain_http()
            .build()
            .unwrap();
        assert_eq!(kms.endpoint(), "http://127.0.0.1:1");
        assert!(
            S3Client::builder("eu-west-1")
                .endpoint("http://127.0.0.1:1")
                .dangerous_allow_plain_http()
                .build()
                .is_ok()
        );
    }

    #[test]
    fn service_defaults() {
        let kms = KmsClient::builder("eu-west-1").fips(true).build().unwrap();
        assert_eq!(kms.endpoint(), "https://kms-fips.eu-west-1.amazonaws.com");
        let s3 = S3Client::builder("cn-north-1").build().unwrap();
        let shown = format!("{s3:?}");
        assert!(shown.contains("s3.cn-north-1.amazonaws.com.cn"), "{shown}");
        assert!(shown.contains("path_style: false"), "{shown}");
        let s3 = S3Client::builder("eu-west-1")
            .endpoint("https://minio.internal:9000")
            .build()
            .unwrap();
        assert!(format!("{s3:?}").contains("path_style: true"));
    }
}
