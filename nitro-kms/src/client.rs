//! The KMS client: JSON 1.1 over HTTPS, SigV4, retries, and `Recipient` handling.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cms::Envelope;
use crate::config::{AwsClient, AwsSettings, ClientBuilder};
use crate::error::{Error, ServiceError};
use crate::http::{Endpoint, Response};
use crate::model::*;
use crate::recipient::{AttestedKey, Recipient};
use crate::secret::Plaintext;
use crate::sigv4::Service;

/// Largest KMS response body accepted.
const MAX_RESPONSE: usize = 1024 * 1024;

/// The time source used for SigV4 (an enclave's clock may need correcting, see
/// `nitro_net::time`).
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current time.
    fn now(&self) -> SystemTime;
}

/// [`SystemTime::now`].
#[derive(Clone, Copy, Debug, Default)]
#[allow(clippy::exhaustive_structs)] // a unit struct: nothing to add later
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// Retry policy: up to `max_attempts` attempts, with "full jitter" exponential backoff (a
/// random delay between zero and `min(max_backoff, initial_backoff × 2^(attempt-1))`) after
/// throttling, 5xx, and transient network errors.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryConfig {
    /// Total attempts including the first (default 3; 1 disables retries).
    pub max_attempts: u32,
    /// Base delay (default 100 ms).
    pub initial_backoff: Duration,
    /// Delay cap (default 5 s).
    pub max_backoff: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl RetryConfig {
    /// A policy with `max_attempts` attempts and the default delays.
    pub fn new(max_attempts: u32) -> Self {
        Self {
            max_attempts: max_attempts.max(1),
            ..Self::default()
        }
    }

    /// The delay before attempt `attempt + 1` (`attempt` ≥ 1), given a uniform random `r` in
    /// `[0, 1)`. Pure.
    pub fn backoff(&self, attempt: u32, r: f64) -> Duration {
        let exp = self.initial_backoff.saturating_mul(
            1u32.checked_shl(attempt.saturating_sub(1))
                .unwrap_or(u32::MAX),
        );
        exp.min(self.max_backoff).mul_f64(r.clamp(0.0, 1.0))
    }
}

/// The default KMS endpoint of a region: `https://kms.<region>.amazonaws.com` (or `kms-fips.`),
/// with the `amazonaws.com.cn` suffix in the China regions.
pub fn default_endpoint(region: &str, fips: bool) -> String {
    let suffix = if region.starts_with("cn-") {
        "amazonaws.com.cn"
    } else {
        "amazonaws.com"
    };
    let service = if fips { "kms-fips" } else { "kms" };
    format!("https://{service}.{region}.{suffix}")
}

/// Builds a [`KmsClient`]: the setters every AWS client shares are on [`ClientBuilder`], the
/// KMS ones ([`fips`](ClientBuilder::fips), [`recipient`](ClientBuilder::recipient),
/// [`retry`](ClientBuilder::retry)) below.
pub type KmsClientBuilder = ClientBuilder<KmsSettings>;

mod settings {
    /// The KMS settings of a [`KmsClientBuilder`](crate::KmsClientBuilder).
    pub struct KmsSettings {
        pub(crate) fips: bool,
        pub(crate) recipient: Option<crate::Recipient>,
        pub(crate) retry: crate::RetryConfig,
    }
}
use settings::KmsSettings;

impl ClientBuilder<KmsSettings> {
    /// Uses the FIPS endpoint (`kms-fips.<region>`) when no endpoint is set.
    #[must_use]
    pub fn fips(mut self, fips: bool) -> Self {
        self.service.fips = fips;
        self
    }

    /// Sends `Recipient` with every attestation-capable call (Decrypt, GenerateDataKey,
    /// GenerateDataKeyPair, GenerateRandom, DeriveSharedSecret), opens `CiphertextForRecipient`
    /// and fails closed when it is missing.
    #[must_use]
    pub fn recipient(mut self, recipient: Recipient) -> Self {
        self.service.recipient = Some(recipient);
        self
    }

    /// Retry policy (default [`RetryConfig::default`]).
    #[must_use]
    pub fn retry(mut self, retry: RetryConfig) -> Self {
        self.service.retry = retry;
        self
    }

    /// Builds the client.
    pub fn build(self) -> Result<KmsClient, Error> {
        let (region, fips) = (&self.aws.region, self.service.fips);
        let endpoint = self.aws.endpoint(|| default_endpoint(region, fips))?;
        Ok(KmsClient {
            inner: Arc::new(Inner {
                endpoint,
                aws: self.aws.into_client()?,
                retry: self.service.retry,
                server_date: Mutex::new(None),
            }),
            recipient: self.service.recipient,
        })
    }
}

struct Inner {
    endpoint: Endpoint,
    aws: AwsClient,
    retry: RetryConfig,
    server_date: Mutex<Option<SystemTime>>,
}

/// An AWS KMS client (or a client of any KMS-compatible endpoint, such as the local KMS).
///
/// Cheap to clone; clones share connections. With a [`Recipient`], the five
/// attestation-capable operations send it, open `CiphertextForRecipient` with the enclave's
/// private key, and put the recovered secret in the usual plaintext field of the response
/// (`plaintext`, `private_key_plaintext`, `shared_secret`; never empty when the call succeeds,
/// with or without a `Recipient`) — the raw envelope stays in
/// `ciphertext_for_recipient`. A response that lacks the envelope is an error
/// ([`Error::MissingCiphertextForRecipient`], [`Error::RecipientIgnored`]): the plaintext path is
/// never taken silently.
///
/// ```no_run
/// # #[cfg(feature = "device")]
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use nitro_kms::{KmsClient, Recipient, model::DecryptRequest};
///
/// // Feature `device`; or any other `nitro_attest::Nsm`.
/// let nsm = Arc::new(nitro_kms::nitro_attest::NsmDevice::open()?);
/// let kms = KmsClient::builder("eu-west-1")
///     .connector(nitro_kms::transport::TcpConnector) // the nitro-net tunnel in an enclave
///     .recipient(Recipient::new(nsm))
///     .build()?;
/// let secret = kms.decrypt(DecryptRequest::new(std::fs::read("secret.bin")?)).await?;
/// let plaintext = secret.plaintext; // opened from CiphertextForRecipient
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct KmsClient {
    inner: Arc<Inner>,
    recipient: Option<Recipient>,
}

impl fmt::Debug for KmsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KmsClient")
            .field("region", &self.inner.aws.region)
            .field("endpoint", &self.inner.endpoint.base_url())
            .field("recipient", &self.recipient.is_some())
            .finish()
    }
}

impl KmsClient {
    /// A builder for a client of `region`.
    pub fn builder(region: impl Into<String>) -> KmsClientBuilder {
        ClientBuilder {
            aws: AwsSettings::new(region.into(), Duration::from_secs(10)),
            service: KmsSettings {
                fips: false,
                recipient: None,
                retry: RetryConfig::default(),
            },
        }
    }

    /// A builder for the region named by the environment, as the AWS SDKs read it: `AWS_REGION`,
    /// else `AWS_DEFAULT_REGION`; `AWS_USE_FIPS_ENDPOINT=true` selects the FIPS endpoint.
    ///
    /// `AWS_ENDPOINT_URL_KMS` / `AWS_ENDPOINT_URL` are deliberately **not** read: inside an
    /// enclave they typically point the application's AWS SDKs at the local
    /// KMS proxy (`proxy::KmsProxy`, feature `proxy`), whereas this client must reach KMS itself (with TLS
    /// ending in the enclave). Set [`endpoint`](ClientBuilder::endpoint) explicitly instead.
    ///
    /// ```
    /// # fn main() -> Result<(), nitro_kms::Error> {
    /// use nitro_kms::KmsClient;
    ///
    /// let env = |name: &str| (name == "AWS_DEFAULT_REGION").then(|| "eu-central-1".to_owned());
    /// let kms = KmsClient::builder_from_lookup(env)?.build()?;
    /// assert_eq!(kms.region(), "eu-central-1");
    /// assert_eq!(kms.endpoint(), "https://kms.eu-central-1.amazonaws.com");
    /// assert!(KmsClient::builder_from_lookup(|_| None).is_err());
    /// # Ok(()) }
    /// ```
    pub fn builder_from_env() -> Result<KmsClientBuilder, Error> {
        Self::builder_from_lookup(|name| std::env::var(name).ok())
    }

    /// [`builder_from_env`](Self::builder_from_env) with variables looked up by `lookup` (pure:
    /// for tests, or a configuration source other than the process environment).
    pub fn builder_from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<KmsClientBuilder, Error> {
        let region = ["AWS_REGION", "AWS_DEFAULT_REGION"]
            .iter()
            .filter_map(|name| lookup(name))
            .map(|r| r.trim().to_owned())
            .find(|r| !r.is_empty())
            .ok_or_else(|| {
                Error::InvalidArgument("no region: set AWS_REGION (or AWS_DEFAULT_REGION)".into())
            })?;
        if !region
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(Error::InvalidArgument(format!("invalid region {region:?}")));
        }
        let fips =
            lookup("AWS_USE_FIPS_ENDPOINT").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
        Ok(Self::builder(region).fips(fips))
    }

    /// The region requests are signed for.
    pub fn region(&self) -> &str {
        &self.inner.aws.region
    }

    /// The endpoint URL.
    pub fn endpoint(&self) -> String {
        self.inner.endpoint.base_url()
    }

    /// The configured recipient.
    pub fn recipient(&self) -> Option<&Recipient> {
        self.recipient.as_ref()
    }

    /// A client sharing this one's connections, with a different recipient (or none).
    pub fn with_recipient(&self, recipient: Option<Recipient>) -> KmsClient {
        KmsClient {
            inner: self.inner.clone(),
            recipient,
        }
    }

    /// The `Date` of the last response from a TLS endpoint: a time the parent cannot forge,
    /// with one-second resolution (useful to check an enclave clock).
    pub fn last_server_date(&self) -> Option<SystemTime> {
        self.inner.server_date.lock().ok().and_then(|d| *d)
    }

    /// Sends any KMS operation as raw JSON (for operations this crate does not model).
    pub async fn call_json(
        &self,
        operation: &str,
        request: &serde_json::Value,
    ) -> Result<serde_json::Value, Error> {
        let body = serde_json::to_vec(request)
            .map_err(|e| Error::InvalidArgument(format!("cannot encode request: {e}")))?;
        let resp = self.send_with_retries(operation, Bytes::from(body)).await?;
        serde_json::from_slice(&resp).map_err(|e| Error::InvalidResponse {
            operation: "KMS",
            reason: format!("{operation}: response is not JSON: {e}"),
        })
    }

    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        operation: &'static str,
        request: &Req,
    ) -> Result<Resp, Error> {
        let body = serde_json::to_vec(request)
            .map_err(|e| Error::InvalidArgument(format!("cannot encode request: {e}")))?;
        let resp = self.send_with_retries(operation, Bytes::from(body)).await?;
        // Some servers answer an empty body for operations without output.
        let resp: &[u8] = if resp.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &resp
        };
        serde_json::from_slice(resp).map_err(|e| Error::InvalidResponse {
            operation,
            reason: format!("cannot decode the response: {e}"),
        })
    }

    async fn send_with_retries(&self, operation: &str, body: Bytes) -> Result<Bytes, Error> {
        self.with_retries(operation, || self.send_once(operation, body.clone()))
            .await
    }

    /// Runs `attempt_once` until it succeeds, fails with an error that is not retryable, or the
    /// retry policy's attempts are spent, sleeping the policy's jittered backoff in between.
    async fn with_retries<T, F>(
        &self,
        operation: &str,
        mut attempt_once: impl FnMut() -> F,
    ) -> Result<T, Error>
    where
        F: Future<Output = Result<T, Error>>,
    {
        let retry = &self.inner.retry;
        let mut attempt = 1;
        loop {
            match attempt_once().await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_retryable() && attempt < retry.max_attempts => {
                    let delay = retry.backoff(attempt, random_unit());
                    tracing::debug!(
                        operation,
                        attempt,
                        ?delay,
                        "retrying after: {}",
                        crate::error::chain(&e)
                    );
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn send_once(&self, operation: &str, body: Bytes) -> Result<Bytes, Error> {
        let resp = self.send_raw_once(operation, body).await?;
        if resp.status.is_success() {
            Ok(resp.body)
        } else {
            Err(Error::Service(parse_error(&resp)))
        }
    }

    /// Sends `body` as `operation`, signed with this client's credentials, and returns the HTTP
    /// response whatever its status (for the proxy, which passes KMS errors through verbatim).
    /// Only failures below HTTP (connecting, TLS, timeouts) are retried, per the retry policy.
    #[cfg(feature = "proxy")]
    pub(crate) async fn send_raw(&self, operation: &str, body: Bytes) -> Result<Response, Error> {
        self.with_retries(operation, || self.send_raw_once(operation, body.clone()))
            .await
    }

    async fn send_raw_once(&self, operation: &str, body: Bytes) -> Result<Response, Error> {
        let inner = &self.inner;
        let req = http::Request::builder()
            .method(http::Method::POST)
            .uri("/")
            .header(http::header::HOST, inner.endpoint.authority())
            .header(http::header::CONTENT_TYPE, "application/x-amz-json-1.1")
            .header("x-amz-target", format!("TrentService.{operation}"));
        let resp = inner
            .aws
            .send(&inner.endpoint, req, body, Service::Kms, MAX_RESPONSE)
            .await?;
        if inner.endpoint.tls
            && let Some(date) = resp
                .headers
                .get(http::header::DATE)
                .and_then(|d| d.to_str().ok())
                .and_then(parse_http_date)
            && let Ok(mut d) = inner.server_date.lock()
        {
            *d = Some(date);
        }
        Ok(resp)
    }

    async fn attest(&self) -> Result<Option<Arc<AttestedKey>>, Error> {
        match &self.recipient {
            Some(r) => Ok(Some(r.current().await?)),
            None => Ok(None),
        }
    }

    /// The five attestation-capable operations: with a [`Recipient`], sends its `RecipientInfo`
    /// and opens `CiphertextForRecipient` into the response's secret field; without one,
    /// requires that KMS sent the plaintext. Either way the secret is never empty on success.
    async fn call_attested<R: Attested>(&self, mut request: R) -> Result<R::Response, Error> {
        let key = self.attest().await?;
        if let Some(k) = &key {
            request.set_recipient(k.recipient_info());
        }
        let mut resp: R::Response = self.call(R::OPERATION, &request).await?;
        let (secret, envelope) = R::secret(&mut resp);
        match key {
            Some(k) => *secret = open_for_recipient(R::OPERATION, &k, secret, envelope)?,
            None => require_plaintext(R::OPERATION, secret)?,
        }
        Ok(resp)
    }

    /// `Decrypt`.
    pub async fn decrypt(&self, request: DecryptRequest) -> Result<DecryptResponse, Error> {
        self.call_attested(request).await
    }

    /// `Encrypt` (never attested: the caller supplies the plaintext).
    pub async fn encrypt(&self, request: EncryptRequest) -> Result<EncryptResponse, Error> {
        self.call("Encrypt", &request).await
    }

    /// `GenerateDataKey` (`AES_256` unless the request sets a key spec or length).
    pub async fn generate_data_key(
        &self,
        mut request: GenerateDataKeyRequest,
    ) -> Result<GenerateDataKeyResponse, Error> {
        if request.key_spec.is_none() && request.number_of_bytes.is_none() {
            request.key_spec = Some(DataKeySpec::Aes256);
        }
        self.call_attested(request).await
    }

    /// `GenerateDataKeyWithoutPlaintext` (never attested: no plaintext is returned). The request's
    /// `recipient` is ignored.
    pub async fn generate_data_key_without_plaintext(
        &self,
        mut request: GenerateDataKeyRequest,
    ) -> Result<GenerateDataKeyResponse, Error> {
        if request.key_spec.is_none() && request.number_of_bytes.is_none() {
            request.key_spec = Some(DataKeySpec::Aes256);
        }
        request.recipient = None;
        self.call("GenerateDataKeyWithoutPlaintext", &request).await
    }

    /// `GenerateDataKeyPair`.
    pub async fn generate_data_key_pair(
        &self,
        request: GenerateDataKeyPairRequest,
    ) -> Result<GenerateDataKeyPairResponse, Error> {
        self.call_attested(request).await
    }

    /// `GenerateRandom`.
    pub async fn generate_random(
        &self,
        request: GenerateRandomRequest,
    ) -> Result<GenerateRandomResponse, Error> {
        self.call_attested(request).await
    }

    /// `DeriveSharedSecret`.
    pub async fn derive_shared_secret(
        &self,
        request: DeriveSharedSecretRequest,
    ) -> Result<DeriveSharedSecretResponse, Error> {
        self.call_attested(request).await
    }

    /// `CreateKey`.
    pub async fn create_key(
        &self,
        request: CreateKeyRequest,
    ) -> Result<KeyMetadataResponse, Error> {
        self.call("CreateKey", &request).await
    }

    /// `DescribeKey` of `key_id`.
    pub async fn describe_key(&self, key_id: &str) -> Result<KeyMetadataResponse, Error> {
        self.call("DescribeKey", &serde_json::json!({ "KeyId": key_id }))
            .await
    }

    /// `GetPublicKey` of `key_id`.
    pub async fn get_public_key(&self, key_id: &str) -> Result<GetPublicKeyResponse, Error> {
        self.call("GetPublicKey", &serde_json::json!({ "KeyId": key_id }))
            .await
    }

    /// `PutKeyPolicy`.
    pub async fn put_key_policy(&self, request: PutKeyPolicyRequest) -> Result<(), Error> {
        let _: serde_json::Value = self.call("PutKeyPolicy", &request).await?;
        Ok(())
    }

    /// `GetKeyPolicy`.
    pub async fn get_key_policy(
        &self,
        request: GetKeyPolicyRequest,
    ) -> Result<GetKeyPolicyResponse, Error> {
        self.call("GetKeyPolicy", &request).await
    }

    /// `ListKeys`.
    pub async fn list_keys(&self, request: ListKeysRequest) -> Result<ListKeysResponse, Error> {
        self.call("ListKeys", &request).await
    }
}

/// A request whose response can carry `CiphertextForRecipient` ([`KmsClient::call_attested`]).
trait Attested: Serialize {
    type Response: DeserializeOwned;
    const OPERATION: &'static str;
    fn set_recipient(&mut self, info: RecipientInfo);
    /// The response's secret field and its `CiphertextForRecipient`.
    fn secret(resp: &mut Self::Response) -> (&mut Plaintext, Option<&[u8]>);
}

macro_rules! attested {
    ($($request:ty => $response:ty, $operation:literal, $field:ident;)*) => {$(
        impl Attested for $request {
            type Response = $response;
            const OPERATION: &'static str = $operation;
            fn set_recipient(&mut self, info: RecipientInfo) {
                self.recipient = Some(info);
            }
            fn secret(resp: &mut $response) -> (&mut Plaintext, Option<&[u8]>) {
                (&mut resp.$field, resp.ciphertext_for_recipient.as_deref())
            }
        }
    )*};
}

attested! {
    DecryptRequest => DecryptResponse, "Decrypt", plaintext;
    GenerateDataKeyRequest => GenerateDataKeyResponse, "GenerateDataKey", plaintext;
    GenerateDataKeyPairRequest => GenerateDataKeyPairResponse, "GenerateDataKeyPair", private_key_plaintext;
    GenerateRandomRequest => GenerateRandomResponse, "GenerateRandom", plaintext;
    DeriveSharedSecretRequest => DeriveSharedSecretResponse, "DeriveSharedSecret", shared_secret;
}

/// Opens the envelope of an attested response, failing closed when it is missing.
pub(crate) fn open_for_recipient(
    operation: &'static str,
    key: &AttestedKey,
    plaintext: &Plaintext,
    envelope: Option<&[u8]>,
) -> Result<Plaintext, Error> {
    match envelope {
        Some(envelope) => {
            let opened = Envelope::parse(envelope)?.open(key.key())?;
            require_plaintext(operation, &opened)?;
            Ok(opened)
        }
        None if !plaintext.is_empty() => Err(Error::RecipientIgnored { operation }),
        None => Err(Error::MissingCiphertextForRecipient { operation }),
    }
}

/// Without a `Recipient`, the plaintext field must be present (KMS never returns an empty one).
fn require_plaintext(operation: &'static str, plaintext: &Plaintext) -> Result<(), Error> {
    if plaintext.is_empty() {
        return Err(Error::InvalidResponse {
            operation,
            reason: "the response carries no plaintext".into(),
        });
    }
    Ok(())
}

/// Reads a KMS error response liberally: `__type` (namespace and `:suffix` removed) or the
/// `x-amzn-ErrorType` header, `message` or `Message`.
pub(crate) fn parse_error(resp: &Response) -> ServiceError {
    let header = |name: &str| {
        resp.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let json: Option<serde_json::Value> = serde_json::from_slice(&resp.body).ok();
    let field = |names: &[&str]| -> Option<String> {
        let obj = json.as_ref()?.as_object()?;
        names
            .iter()
            .find_map(|n| obj.get(*n).and_then(|v| v.as_str()).map(str::to_owned))
    };
    let code = field(&["__type", "code", "Code"])
        .or_else(|| header("x-amzn-errortype"))
        .map(|c| normalize_code(&c))
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| format!("HTTP{}", resp.status.as_u16()));
    let message = field(&["message", "Message", "errorMessage"]).unwrap_or_else(|| {
        if json.is_some() {
            String::new()
        } else {
            // A non-JSON body (an HTML error page): a short printable excerpt.
            String::from_utf8_lossy(resp.body.get(..200).unwrap_or(&resp.body))
                .chars()
                .filter(|c| !c.is_control())
                .collect::<String>()
                .trim()
                .to_owned()
        }
    });
    let mut err = ServiceError::new(resp.status.as_u16(), code, message);
    err.request_id = header("x-amzn-requestid");
    err
}

fn normalize_code(code: &str) -> String {
    let code = code.rsplit('#').next().unwrap_or(code);
    let code = code.split(':').next().unwrap_or(code);
    code.trim().to_owned()
}

fn parse_http_date(s: &str) -> Option<SystemTime> {
    httpdate::parse_http_date(s).ok()
}

/// A uniform random number in `[0, 1)`.
fn random_unit() -> f64 {
    use aws_lc_rs::rand::SecureRandom;
    let mut b = [0u8; 8];
    if aws_lc_rs::rand::SystemRandom::new().fill(&mut b).is_err() {
        return 0.5;
    }
    (u64::from_be_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, headers: &[(&str, &str)], body: &str) -> Response {
        let mut h = http::HeaderMap::new();
        for (k, v) in headers {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        Response {
            status: http::StatusCode::from_u16(status).unwrap(),
            headers: h,
            body: Bytes::from(body.to_owned()),
        }
    }

    #[test]
    fn errors_parsed_liberally() {
        let e = parse_error(&resp(
            400,
            &[("x-amzn-RequestId", "rid")],
            r#"{"__type":"com.amazonaws.kms#NotFoundException","message":"no key"}"#,
        ));
        assert_eq!(
            (e.code.as_str(), e.message.as_str()),
            ("NotFoundException", "no key")
        );
        assert_eq!(e.request_id.as_deref(), Some("rid"));
        let e = parse_error(&resp(
            400,
            &[],
            r#"{"__type":"AccessDeniedException","Message":"User: x is not authorized"}"#,
        ));
        assert_eq!(e.message, "User: x is not authorized");
        let e = parse_error(&resp(
            400,
            &[],
            r#"{"__type":"InvalidCiphertextException"}"#,
        ));
        assert_eq!(
            (e.code.as_str(), e.message.as_str()),
            ("InvalidCiphertextException", "")
        );
        let e = parse_error(&resp(
            400,
            &[(
                "x-amzn-ErrorType",
                "ThrottlingException:http://internal.amazon.com/",
            )],
            "",
        ));
        assert_eq!(e.code, "ThrottlingException");
        assert!(e.is_retryable());
        let e = parse_error(&resp(500, &[], "<html><body>boom</body></html>"));
        assert_eq!(e.code, "HTTP500");
        assert!(e.message.contains("boom"));
        assert!(e.is_retryable());
    }

    #[test]
    fn backoff_is_bounded_and_grows() {
        let r = RetryConfig::default();
        assert_eq!(r.backoff(1, 0.0), Duration::ZERO);
        assert_eq!(r.backoff(1, 1.0), Duration::from_millis(100));
        assert_eq!(r.backoff(3, 1.0), Duration::from_millis(400));
        assert_eq!(r.backoff(40, 1.0), Duration::from_secs(5));
        let u = random_unit();
        assert!((0.0..1.0).contains(&u));
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            default_endpoint("eu-west-1", false),
            "https://kms.eu-west-1.amazonaws.com"
        );
        assert_eq!(
            default_endpoint("us-east-1", true),
            "https://kms-fips.us-east-1.amazonaws.com"
        );
        assert_eq!(
            default_endpoint("cn-north-1", false),
            "https://kms.cn-north-1.amazonaws.com.cn"
        );
        assert!(
            KmsClient::builder("r")
                .endpoint("http://127.0.0.1:1")
                .build()
                .is_err()
        );
        assert!(
            KmsClient::builder("r")
                .endpoint("http://127.0.0.1:1")
                .dangerous_allow_plain_http()
                .build()
                .is_ok()
        );
    }

    #[test]
    fn http_dates() {
        let t = parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(),
            784111777
        );
        // The obsolete forms HTTP/1.1 recipients must accept (RFC 9110 section 5.6.7).
        assert_eq!(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"), Some(t));
        assert_eq!(parse_http_date("Sun Nov  6 08:49:37 1994"), Some(t));
        assert!(parse_http_date("yesterday").is_none());
    }
}
