//! AWS credentials: static, from the environment, or from the parent instance over a stream,
//! with expiry-aware caching. Secrets are zeroized on drop and never printed.
//!
//! # The parent protocol
//!
//! An enclave has no instance metadata service: its parent reads the instance-role credentials
//! and hands them over. [`serve_credentials`] (parent side) answers requests on any byte stream
//! (vsock in production, a Unix socket in development) from any [`ProvideCredentials`] source;
//! [`ParentCredentials`] (enclave side) asks for them. Wrap it in [`RefreshingCredentials`] to
//! fetch again shortly before they expire.
//!
//! Frames are a 4-byte big-endian length followed by that many bytes of JSON (at most
//! [`MAX_FRAME`]):
//!
//! ```text
//! enclave → parent   {"Version":1,"Type":"GetCredentials"}
//! parent → enclave   {"Version":1,"AccessKeyId":"…","SecretAccessKey":"…","Token":"…","Expiration":"2030-01-01T00:00:00Z"}
//!                or  {"Version":1,"Error":"why"}
//! ```
//!
//! The field names are those of the instance metadata service's credential documents. A
//! connection may carry several request/response pairs; either side may close it.
//!
//! The parent is untrusted for confidentiality, but credentials only grant what the role
//! allows: KMS releases attestation-gated secrets only to an enclave whose document matches the
//! key policy, whoever signs the request.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use zeroize::Zeroizing;

use crate::aws_credentials::{Credentials, ProvideCredentials};
use crate::error::{CredentialsErrorKind as Kind, Error};
use crate::secret::SecretString;
use crate::transport::{AsyncStream, BoxFuture, BoxStream};

/// Largest frame of the parent protocol (session tokens are a few KiB).
pub const MAX_FRAME: usize = 64 * 1024;

/// Credentials are refreshed this long before they expire (default of
/// [`RefreshingCredentials`]).
pub const DEFAULT_REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);

/// Reads the standard environment variables on every call ([`Credentials::from_env`]).
#[derive(Clone, Copy, Debug, Default)]
#[allow(clippy::exhaustive_structs)] // a unit struct: nothing to add later
pub struct EnvironmentCredentials;

impl ProvideCredentials for EnvironmentCredentials {
    fn provide_credentials(&self) -> BoxFuture<'_, Result<Credentials, Error>> {
        Box::pin(async { Credentials::from_env() })
    }
}

/// Caches another provider's credentials and fetches new ones when they are within
/// `margin` of expiring (or have expired). Concurrent callers share one refresh.
#[derive(Debug)]
pub struct RefreshingCredentials {
    source: Arc<dyn ProvideCredentials>,
    margin: Duration,
    cached: tokio::sync::Mutex<Option<Credentials>>,
}

impl RefreshingCredentials {
    /// Caches `source`, refreshing [`DEFAULT_REFRESH_MARGIN`] before expiry.
    pub fn new(source: impl ProvideCredentials + 'static) -> Self {
        Self {
            source: Arc::new(source),
            margin: DEFAULT_REFRESH_MARGIN,
            cached: tokio::sync::Mutex::new(None),
        }
    }

    /// Sets how long before expiry credentials are refreshed.
    #[must_use]
    pub fn refresh_margin(mut self, margin: Duration) -> Self {
        self.margin = margin;
        self
    }

    /// The credentials valid at `now`, fetching new ones if needed. Pure apart from the
    /// source: time is an argument.
    pub async fn credentials_at(&self, now: SystemTime) -> Result<Credentials, Error> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref()
            && !c.expires_within(now, self.margin)
        {
            return Ok(c.clone());
        }
        let fresh = self.source.provide_credentials().await?;
        if fresh.expires_within(now, Duration::ZERO) {
            return Err(Error::credentials(
                Kind::Expired,
                "the credential source returned expired credentials",
            ));
        }
        *cached = Some(fresh.clone());
        Ok(fresh)
    }
}

impl ProvideCredentials for RefreshingCredentials {
    fn provide_credentials(&self) -> BoxFuture<'_, Result<Credentials, Error>> {
        Box::pin(self.credentials_at(SystemTime::now()))
    }
}

/// An AWS SDK credentials provider (`aws_credential_types::provider::ProvideCredentials`) used
/// as one of this crate's: on the parent, to serve the SDK's credentials (instance role,
/// profile, web identity, ...) to the enclave with [`serve_credentials`].
///
/// It asks the SDK provider on every call (the SDK's own providers do not cache; the SDK
/// clients do): wrap it in [`RefreshingCredentials`] to keep credentials until shortly before
/// they expire. With feature `aws-config`, [`default_chain`] and [`instance_role`] build the
/// usual providers.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use nitro_kms::ProvideCredentials;
/// use nitro_kms::credentials::AwsSdkCredentials;
///
/// let sdk = aws_credential_types::Credentials::new("AKIDSDK", "secret", None, None, "example");
/// let ours = AwsSdkCredentials::new(sdk);
/// assert_eq!(ours.provide_credentials().await.unwrap().access_key_id(), "AKIDSDK");
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct AwsSdkCredentials {
    provider: aws_credential_types::provider::SharedCredentialsProvider,
}

impl AwsSdkCredentials {
    /// Wraps an SDK credentials provider.
    pub fn new(
        provider: impl aws_credential_types::provider::ProvideCredentials + 'static,
    ) -> Self {
        Self {
            provider: aws_credential_types::provider::SharedCredentialsProvider::new(provider),
        }
    }
}

impl ProvideCredentials for AwsSdkCredentials {
    fn provide_credentials(&self) -> BoxFuture<'_, Result<Credentials, Error>> {
        Box::pin(async move {
            use aws_credential_types::provider::ProvideCredentials as _;
            let c = self
                .provider
                .provide_credentials()
                .await
                .map_err(|e| Error::credentials(Kind::Unavailable, crate::error::chain(&e)))?;
            Ok(Credentials::new(
                c.access_key_id(),
                SecretString::new(c.secret_access_key().to_owned()),
                c.session_token().map(|t| SecretString::new(t.to_owned())),
                c.expiry(),
            ))
        })
    }
}

/// `aws-config`'s default credentials chain on the parent instance (feature `aws-config`):
/// environment variables, the shared config and credentials files (profile, SSO excluded), web
/// identity (`AWS_WEB_IDENTITY_TOKEN_FILE`), the ECS container endpoint, then the instance
/// role through IMDSv2 (`AWS_EC2_METADATA_SERVICE_ENDPOINT` overrides the address). Its HTTP
/// requests (IMDS, STS) go through this crate's HTTP client over plain TCP, with rustls and the
/// embedded Mozilla roots.
///
/// Wrap it in [`RefreshingCredentials`] and serve it with [`serve_credentials`]: the enclave
/// never talks to IMDS, the parent does.
///
/// ```no_run
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// use nitro_kms::credentials::{RefreshingCredentials, default_chain};
///
/// let source = RefreshingCredentials::new(default_chain().await?);
/// # Ok(()) }
/// ```
#[cfg(feature = "aws-config")]
#[cfg_attr(docsrs, doc(cfg(feature = "aws-config")))]
pub async fn default_chain() -> Result<AwsSdkCredentials, Error> {
    let chain = aws_config::default_provider::credentials::DefaultCredentialsChain::builder()
        .configure(parent_provider_config()?)
        .build()
        .await;
    Ok(AwsSdkCredentials::new(chain))
}

/// The instance role only, through IMDSv2 (feature `aws-config`); see [`default_chain`].
#[cfg(feature = "aws-config")]
#[cfg_attr(docsrs, doc(cfg(feature = "aws-config")))]
pub fn instance_role() -> Result<AwsSdkCredentials, Error> {
    let imds = aws_config::imds::credentials::ImdsCredentialsProvider::builder()
        .configure(&parent_provider_config()?)
        .build();
    Ok(AwsSdkCredentials::new(imds))
}

/// `aws-config`'s provider configuration with our HTTP client. IMDS is plain HTTP on a
/// link-local address (this runs on the parent, never in the enclave).
#[cfg(feature = "aws-config")]
fn parent_provider_config() -> Result<aws_config::provider_config::ProviderConfig, Error> {
    let http = crate::sdk::NitroHttpClient::builder(crate::transport::TcpConnector)
        .dangerous_allow_plain_http()
        .build()?;
    Ok(aws_config::provider_config::ProviderConfig::default().with_http_client(http))
}

type StreamOpener = dyn Fn() -> BoxFuture<'static, std::io::Result<BoxStream>> + Send + Sync;

/// Enclave side of the parent protocol: each call opens a stream to the parent and asks for
/// credentials. Wrap it in [`RefreshingCredentials`] so that it is only asked when needed.
///
/// ```no_run
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// use nitro_kms::ProvideCredentials;
/// use nitro_kms::credentials::{ParentCredentials, RefreshingCredentials};
///
/// let parent = ParentCredentials::new(|| tokio::net::UnixStream::connect("/run/creds.sock"));
/// let creds = RefreshingCredentials::new(parent);
/// let c = creds.provide_credentials().await?;
/// # Ok(()) }
/// ```
pub struct ParentCredentials {
    open: Arc<StreamOpener>,
}

impl fmt::Debug for ParentCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParentCredentials").finish_non_exhaustive()
    }
}

impl ParentCredentials {
    /// Asks the parent reached through the streams `open` returns.
    pub fn new<F, Fut, S>(open: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::io::Result<S>> + Send + 'static,
        S: AsyncStream,
    {
        Self {
            open: Arc::new(move || {
                let fut = open();
                Box::pin(async move { Ok(Box::new(fut.await?) as BoxStream) })
            }),
        }
    }
}

impl ProvideCredentials for ParentCredentials {
    fn provide_credentials(&self) -> BoxFuture<'_, Result<Credentials, Error>> {
        Box::pin(async move {
            let mut stream = (self.open)()
                .await
                .map_err(|e| Error::io("connecting to the parent's credential service", e))?;
            request_credentials(&mut stream).await
        })
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireRequest {
    version: u32,
    #[serde(rename = "Type")]
    kind: String,
}

#[derive(Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct WireResponse {
    version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    access_key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    secret_access_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expiration: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl WireResponse {
    fn error(message: String) -> Self {
        let mut r = Self::default();
        r.version = 1;
        r.error = Some(message);
        r
    }
}

impl Drop for WireResponse {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        if let Some(s) = self.secret_access_key.as_mut() {
            s.zeroize();
        }
        if let Some(s) = self.token.as_mut() {
            s.zeroize();
        }
    }
}

/// Sends one request on `stream` and reads the answer (enclave side).
pub async fn request_credentials<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
) -> Result<Credentials, Error> {
    let req = WireRequest {
        version: 1,
        kind: "GetCredentials".into(),
    };
    let body = serde_json::to_vec(&req)
        .map_err(|e| Error::credentials(Kind::Unavailable, format!("encoding the request: {e}")))?;
    write_frame(stream, &body).await?;
    let frame = read_frame(stream)
        .await?
        .ok_or_else(|| Error::credentials(Kind::Unavailable, "the parent closed the connection"))?;
    let mut resp: WireResponse =
        serde_json::from_slice(&frame).map_err(|e| Error::InvalidResponse {
            operation: "GetCredentials",
            reason: format!("not a credentials document: {e}"),
        })?;
    if resp.version != 1 {
        return Err(Error::InvalidResponse {
            operation: "GetCredentials",
            reason: format!("unsupported version {}", resp.version),
        });
    }
    if let Some(err) = resp.error.take() {
        return Err(Error::credentials(
            Kind::Unavailable,
            format!("the parent could not provide credentials: {err}"),
        ));
    }
    let akid = resp.access_key_id.take();
    let secret = resp.secret_access_key.take().map(SecretString::new);
    let (Some(akid), Some(secret)) = (akid, secret) else {
        return Err(Error::InvalidResponse {
            operation: "GetCredentials",
            reason: "AccessKeyId or SecretAccessKey missing".into(),
        });
    };
    let token = resp.token.take().map(SecretString::new);
    let expiration = resp.expiration.as_deref().map(parse_rfc3339).transpose()?;
    Ok(Credentials::new(akid, secret, token, expiration))
}

/// Parent side: answers credential requests on `stream` from `source` until the enclave closes
/// it. Errors of the source are sent to the enclave as error answers.
pub async fn serve_credentials<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    source: &dyn ProvideCredentials,
) -> Result<(), Error> {
    while let Some(frame) = read_frame(&mut stream).await? {
        let req: Result<WireRequest, _> = serde_json::from_slice(&frame);
        let resp = match req {
            Ok(r) if r.version == 1 && r.kind == "GetCredentials" => {
                match source.provide_credentials().await {
                    Ok(c) => WireResponse {
                        version: 1,
                        access_key_id: Some(c.access_key_id().to_owned()),
                        secret_access_key: Some(c.secret_access_key().expose().to_owned()),
                        token: c.session_token().map(|t| t.expose().to_owned()),
                        expiration: c.expiration().map(format_rfc3339).transpose()?,
                        error: None,
                    },
                    Err(e) => WireResponse::error(crate::error::chain(&e)),
                }
            }
            _ => WireResponse::error("unsupported request".into()),
        };
        let body = Zeroizing::new(serde_json::to_vec(&resp).map_err(|e| {
            Error::credentials(Kind::Unavailable, format!("encoding the answer: {e}"))
        })?);
        write_frame(&mut stream, &body).await?;
    }
    Ok(())
}

const PROTOCOL: &str = "credential protocol";

async fn write_frame<S: AsyncWrite + Unpin>(stream: &mut S, body: &[u8]) -> Result<(), Error> {
    crate::frame::write_frame(stream, &[body], MAX_FRAME, PROTOCOL).await
}

/// Reads one frame; `None` on a clean end of stream before a frame starts.
async fn read_frame<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Option<Zeroizing<Vec<u8>>>, Error> {
    crate::frame::read_frame(stream, MAX_FRAME, PROTOCOL).await
}

pub(crate) fn parse_rfc3339(s: &str) -> Result<SystemTime, Error> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| Error::credentials(Kind::Invalid, format!("invalid expiration {s:?}: {e}")))?;
    Ok(SystemTime::from(t))
}

pub(crate) fn format_rfc3339(t: SystemTime) -> Result<String, Error> {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .map_err(|e| Error::credentials(Kind::Invalid, format!("cannot format expiration: {e}")))
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[derive(Debug)]
    struct Counting(std::sync::atomic::AtomicU32, Duration);

    impl ProvideCredentials for Counting {
        fn provide_credentials(&self) -> BoxFuture<'_, Result<Credentials, Error>> {
            let n = self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let exp = SystemTime::UNIX_EPOCH + self.1;
            Box::pin(async move {
                Ok(Credentials::new(
                    format!("AKID{n}"),
                    "secret",
                    Some("token".into()),
                    Some(exp),
                ))
            })
        }
    }

    #[tokio::test]
    async fn refresh_before_expiry() {
        let src = Counting(Default::default(), Duration::from_secs(3600));
        let r = RefreshingCredentials::new(Arc::new(src)).refresh_margin(Duration::from_secs(300));
        let t = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        assert_eq!(
            r.credentials_at(t(0)).await.unwrap().access_key_id(),
            "AKID0"
        );
        assert_eq!(
            r.credentials_at(t(3000)).await.unwrap().access_key_id(),
            "AKID0"
        );
        // Within the margin: fetched again (the source still returns the same expiry, which
        // is in the future, so it is accepted).
        assert_eq!(
            r.credentials_at(t(3400)).await.unwrap().access_key_id(),
            "AKID1"
        );
        // Past expiry: the source's answer is expired too, refused.
        assert!(r.credentials_at(t(3700)).await.is_err());
    }

    #[tokio::test]
    async fn parent_protocol_roundtrip() {
        let (mut enclave, parent) = tokio::io::duplex(64);
        let creds = Credentials::new(
            "AKIDPARENT",
            "s3cr3t",
            Some("tok".into()),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000)),
        );
        let server_creds = creds.clone();
        let server = tokio::spawn(async move { serve_credentials(parent, &server_creds).await });
        for _ in 0..3 {
            assert_eq!(request_credentials(&mut enclave).await.unwrap(), creds);
        }
        drop(enclave);
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn hostile_frames() {
        // Oversized length.
        let (mut a, mut b) = tokio::io::duplex(64);
        tokio::spawn(async move {
            let _ = b.write_all(&u32::MAX.to_be_bytes()).await;
            let mut sink = vec![0u8; 128];
            let _ = b.read(&mut sink).await;
        });
        assert!(request_credentials(&mut a).await.is_err());
        // Garbage JSON, and an error answer.
        for body in [
            &b"not json"[..],
            br#"{"Version":1,"Error":"no role"}"#,
            br#"{"Version":2}"#,
        ] {
            let (mut a, mut b) = tokio::io::duplex(256);
            let body = body.to_vec();
            tokio::spawn(async move {
                let _ = read_frame(&mut b).await;
                let _ = write_frame(&mut b, &body).await;
            });
            assert!(request_credentials(&mut a).await.is_err());
        }
    }

    #[test]
    fn rfc3339() {
        let t = parse_rfc3339("2030-01-02T03:04:05Z").unwrap();
        assert_eq!(format_rfc3339(t).unwrap(), "2030-01-02T03:04:05Z");
        assert!(parse_rfc3339("yesterday").is_err());
    }
}
