//! The credentials type and the provider trait, exported at the crate root; the sources and
//! the parent protocol are in [`credentials`](crate::credentials).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::credentials::parse_rfc3339;
use crate::error::{CredentialsErrorKind as Kind, Error};
use crate::secret::SecretString;
use crate::transport::BoxFuture;

/// An AWS access key, with optional session token and expiry.
///
/// `Debug` shows the access key id (an identifier AWS logs too) and redacts the rest.
///
/// ```
/// use nitro_kms::Credentials;
/// let c = Credentials::new("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", None, None);
/// let shown = format!("{c:?}");
/// assert!(shown.contains("AKIDEXAMPLE"));
/// assert!(!shown.contains("wJalr"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    access_key_id: String,
    secret_access_key: SecretString,
    session_token: Option<SecretString>,
    expiration: Option<SystemTime>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key)
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "** redacted **"),
            )
            .field("expiration", &self.expiration)
            .finish()
    }
}

impl Credentials {
    /// Credentials from their parts.
    pub fn new(
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<SecretString>,
        session_token: Option<SecretString>,
        expiration: Option<SystemTime>,
    ) -> Self {
        Self {
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
            session_token,
            expiration,
        }
    }

    /// Reads `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, and the optional `AWS_SESSION_TOKEN`
    /// and `AWS_CREDENTIAL_EXPIRATION` (RFC 3339).
    pub fn from_env() -> Result<Self, Error> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let akid = var("AWS_ACCESS_KEY_ID")
            .ok_or_else(|| Error::credentials(Kind::Missing, "AWS_ACCESS_KEY_ID is not set"))?;
        let secret = var("AWS_SECRET_ACCESS_KEY")
            .ok_or_else(|| Error::credentials(Kind::Missing, "AWS_SECRET_ACCESS_KEY is not set"))?;
        let token = var("AWS_SESSION_TOKEN").map(SecretString::new);
        let expiration = var("AWS_CREDENTIAL_EXPIRATION")
            .map(|e| parse_rfc3339(&e))
            .transpose()?;
        Ok(Self::new(akid, secret, token, expiration))
    }

    /// The access key id.
    pub fn access_key_id(&self) -> &str {
        &self.access_key_id
    }

    /// The secret access key.
    pub fn secret_access_key(&self) -> &SecretString {
        &self.secret_access_key
    }

    /// The session token of temporary credentials.
    pub fn session_token(&self) -> Option<&SecretString> {
        self.session_token.as_ref()
    }

    /// When the credentials expire (`None`: long-term credentials).
    pub fn expiration(&self) -> Option<SystemTime> {
        self.expiration
    }

    /// Whether the credentials expire before `now + margin`.
    pub fn expires_within(&self, now: SystemTime, margin: Duration) -> bool {
        self.expiration
            .is_some_and(|e| e <= now.checked_add(margin).unwrap_or(now))
    }
}

/// A source of credentials. Object safe: share one as `Arc<dyn ProvideCredentials>`.
pub trait ProvideCredentials: Send + Sync + fmt::Debug {
    /// Returns current credentials.
    fn provide_credentials(&self) -> BoxFuture<'_, Result<Credentials, Error>>;
}

impl ProvideCredentials for Credentials {
    fn provide_credentials(&self) -> BoxFuture<'_, Result<Credentials, Error>> {
        let c = self.clone();
        Box::pin(async move { Ok(c) })
    }
}

impl<T: ProvideCredentials + ?Sized> ProvideCredentials for Arc<T> {
    fn provide_credentials(&self) -> BoxFuture<'_, Result<Credentials, Error>> {
        (**self).provide_credentials()
    }
}
