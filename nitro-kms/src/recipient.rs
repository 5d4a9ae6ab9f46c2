//! The enclave's `Recipient`: an RSA-2048 key pair whose public key is bound into an NSM
//! attestation document, reused for a configurable lifetime.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nitro_attest::Nsm;

use crate::cms::RecipientKey;
use crate::error::Error;
use crate::model::RecipientInfo;

/// Default lifetime of a key pair and its attestation document.
///
/// Generating an RSA-2048 key costs about 100 ms; KMS accepts a document as long as its
/// certificate chain is valid (the NSM's leaf certificates live about three hours) and does not
/// track reuse. Shorter lifetimes limit how long a leaked private key stays useful.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(10 * 60);

/// A key pair with the attestation document that carries its public key.
pub struct AttestedKey {
    key: RecipientKey,
    document: Vec<u8>,
    created: Instant,
}

impl fmt::Debug for AttestedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttestedKey")
            .field("key", &self.key)
            .field("document_len", &self.document.len())
            .field("created", &self.created)
            .finish()
    }
}

impl AttestedKey {
    /// Generates a key pair and asks `nsm` for a document carrying its public key (DER SPKI)
    /// and the optional `user_data` and `nonce`. Blocking (key generation, NSM ioctl).
    pub fn generate(
        nsm: &dyn Nsm,
        user_data: Option<&[u8]>,
        nonce: Option<&[u8]>,
        now: Instant,
    ) -> Result<Self, Error> {
        let key = RecipientKey::generate()?;
        let document = nsm.attestation(user_data, nonce, Some(key.public_key_der()))?;
        Ok(Self {
            key,
            document,
            created: now,
        })
    }

    /// The private key that opens `CiphertextForRecipient`.
    pub fn key(&self) -> &RecipientKey {
        &self.key
    }

    /// The raw attestation document (COSE_Sign1).
    pub fn attestation_document(&self) -> &[u8] {
        &self.document
    }

    /// The `Recipient` request member.
    pub fn recipient_info(&self) -> RecipientInfo {
        RecipientInfo::new(self.document.clone())
    }

    /// When it was generated.
    pub fn created(&self) -> Instant {
        self.created
    }
}

/// Attested key pairs for `Recipient`, generated on demand through an [`Nsm`] (the real device or
/// a simulator) and reused for [`Recipient::lifetime`].
///
/// Cheap to clone (clones share the cached key pair).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use std::time::{Duration, Instant};
/// use nitro_kms::Recipient;
///
/// let nsm = Arc::new(nitro_attest::SimulatedNsm::builder().seed(7).build()?);
/// let recipient = Recipient::new(nsm).lifetime(Duration::from_secs(60));
/// let now = Instant::now();
/// let a = recipient.current_at(now)?;
/// let b = recipient.current_at(now + Duration::from_secs(30))?;
/// assert!(Arc::ptr_eq(&a, &b)); // reused within the lifetime
/// let c = recipient.current_at(now + Duration::from_secs(61))?;
/// assert!(!Arc::ptr_eq(&a, &c)); // a fresh key pair afterwards
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Recipient {
    nsm: Arc<dyn Nsm>,
    lifetime: Duration,
    user_data: Option<Vec<u8>>,
    nonce: Option<Vec<u8>>,
    current: Arc<Mutex<Option<Arc<AttestedKey>>>>,
    // Serialises generation so that concurrent callers share one key pair.
    generating: Arc<tokio::sync::Mutex<()>>,
}

impl fmt::Debug for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recipient")
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

impl Recipient {
    /// A recipient attested by `nsm`, with [`DEFAULT_LIFETIME`].
    pub fn new(nsm: Arc<dyn Nsm>) -> Self {
        Self {
            nsm,
            lifetime: DEFAULT_LIFETIME,
            user_data: None,
            nonce: None,
            current: Arc::new(Mutex::new(None)),
            generating: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// How long a key pair and its document are reused (zero: a fresh pair for every call).
    #[must_use]
    pub fn lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime;
        self
    }

    /// `user_data` to put in every document (e.g. to identify the application).
    #[must_use]
    pub fn user_data(mut self, user_data: impl Into<Vec<u8>>) -> Self {
        self.user_data = Some(user_data.into());
        self
    }

    /// `nonce` to put in every document.
    #[must_use]
    pub fn nonce(mut self, nonce: impl Into<Vec<u8>>) -> Self {
        self.nonce = Some(nonce.into());
        self
    }

    /// The NSM used.
    pub fn nsm(&self) -> &Arc<dyn Nsm> {
        &self.nsm
    }

    fn cached(&self, now: Instant) -> Option<Arc<AttestedKey>> {
        let guard = self.current.lock().ok()?;
        guard
            .as_ref()
            .filter(|k| now.saturating_duration_since(k.created) < self.lifetime)
            .cloned()
    }

    fn store(&self, key: &Arc<AttestedKey>) {
        if let Ok(mut guard) = self.current.lock() {
            *guard = Some(key.clone());
        }
    }

    /// The key pair valid at `now`, generating one (blocking) when there is none or it is older
    /// than the lifetime.
    pub fn current_at(&self, now: Instant) -> Result<Arc<AttestedKey>, Error> {
        if let Some(k) = self.cached(now) {
            return Ok(k);
        }
        let fresh = Arc::new(AttestedKey::generate(
            self.nsm.as_ref(),
            self.user_data.as_deref(),
            self.nonce.as_deref(),
            now,
        )?);
        self.store(&fresh);
        Ok(fresh)
    }

    /// The current key pair, generating one on a blocking thread when needed.
    pub async fn current(&self) -> Result<Arc<AttestedKey>, Error> {
        if let Some(k) = self.cached(Instant::now()) {
            return Ok(k);
        }
        let _guard = self.generating.lock().await;
        let now = Instant::now();
        if let Some(k) = self.cached(now) {
            return Ok(k);
        }
        let this = self.clone();
        let fresh = tokio::task::spawn_blocking(move || {
            AttestedKey::generate(
                this.nsm.as_ref(),
                this.user_data.as_deref(),
                this.nonce.as_deref(),
                now,
            )
        })
        .await
        .map_err(|_| Error::Crypto("key generation task failed"))??;
        let fresh = Arc::new(fresh);
        self.store(&fresh);
        Ok(fresh)
    }

    /// Forgets the current key pair: the next call generates a new one.
    pub fn rotate(&self) {
        if let Ok(mut guard) = self.current.lock() {
            *guard = None;
        }
    }
}
