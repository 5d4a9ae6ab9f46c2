//! A local KMS for development and tests: the KMS JSON protocol, keys in memory or in a state
//! file, key policies with the `kms:RecipientAttestation:*` conditions, attestation documents
//! verified with nitro-attest, and `CiphertextForRecipient` in the BER shape real KMS produces.
//!
//! Operations: `Encrypt`, `Decrypt`, `GenerateDataKey`, `GenerateDataKeyWithoutPlaintext`,
//! `GenerateDataKeyPair`, `GenerateRandom`, `DeriveSharedSecret`, `CreateKey`, `DescribeKey`,
//! `PutKeyPolicy`, `GetKeyPolicy`, `ListKeys`, `EnableKey`, `DisableKey`, and `GetPublicKey` for
//! key-agreement keys. Every request must carry
//! a valid SigV4 signature from one of the configured credentials.
//!
//! [`LocalKms::handle`] is the protocol core (bytes in, bytes out, time passed in);
//! [`server`] puts it behind HTTP(S).
//!
//! **Not a security boundary.** Key material sits in memory and, with a state file, in plain
//! text on disk (mode 0600). It exists so that applications and tests exercise the real
//! attested flow without AWS.
//!
//! Differences from AWS KMS worth knowing: there is no IAM, so a key policy statement naming the
//! account (`arn:aws:iam::<account>:root`) admits every configured caller of that account (as if
//! their IAM policies allowed everything); `GenerateRandom` is allowed for every authenticated
//! caller (AWS governs it with IAM policies only); ciphertext blobs have their own format and
//! only this local KMS can decrypt them; aliases, grants, key rotation and multi-Region keys are
//! not implemented.

// Responses are `#[non_exhaustive]` structs filled field by field.
#![allow(clippy::field_reassign_with_default)]

pub mod policy;
pub mod server;
mod store;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::rsa::PublicEncryptingKey;
use nitro_attest::{Timestamp, TrustAnchors, Verifier};
use serde::Serialize;
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

use crate::cms;
use crate::credentials::Credentials;
use crate::error::{Error, ServiceError};
use crate::model::*;
use crate::secret::Plaintext;
use policy::{Decision, KeyPolicy, RequestContext};
use store::{KeyEntry, KeyKind, Store};

/// Default account id of the local KMS (the one AWS documentation uses).
pub const DEFAULT_ACCOUNT_ID: &str = "111122223333";

/// Largest request body the local KMS reads.
pub const MAX_REQUEST: usize = 1024 * 1024;

/// How the local KMS checks the attestation document in `Recipient`.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum AttestationTrust {
    /// Signature and certificate chain verified against these anchors: the AWS root
    /// ([`AttestationTrust::aws`]) for documents from real enclaves, or a simulator's root.
    Anchors(TrustAnchors),
    /// Roots (one or more PEM certificates) read from a file, and read again whenever the file
    /// changes: lets development tools (such as the `kms` example's `--recipient sim`) add
    /// simulator roots while the local KMS runs. A missing or empty file trusts nothing.
    RootsPemFile(PathBuf),
    /// **No signature or chain check**: for QEMU's `nitro-enclave` machine, whose emulated NSM
    /// produces unsigned documents. The payload is still parsed and its PCRs still go through
    /// the key policy, but anyone can forge such a document: development only.
    DangerousUnsignedEmulator,
}

impl AttestationTrust {
    /// The AWS Nitro Enclaves root (what real KMS trusts).
    pub fn aws() -> Self {
        Self::Anchors(TrustAnchors::aws())
    }

    /// A non-AWS root (DER), e.g. [`nitro_attest::SimulatedNsm::root_certificate_der`].
    pub fn root_der(der: &[u8]) -> Result<Self, Error> {
        Ok(Self::Anchors(TrustAnchors::non_aws_root_der(der)?))
    }

    /// Several non-AWS roots (DER), e.g. of several simulators (each [`SimulatedNsm`] has its
    /// own root).
    ///
    /// [`SimulatedNsm`]: nitro_attest::SimulatedNsm
    pub fn roots_der<'a>(roots: impl IntoIterator<Item = &'a [u8]>) -> Result<Self, Error> {
        let mut roots = roots.into_iter();
        let first = roots
            .next()
            .ok_or_else(|| Error::Config("no root certificate".into()))?;
        let mut anchors = TrustAnchors::non_aws_root_der(first)?;
        for r in roots {
            anchors = anchors.with_non_aws_root_der(r)?;
        }
        Ok(Self::Anchors(anchors))
    }

    /// A non-AWS root (PEM).
    pub fn root_pem(pem: &str) -> Result<Self, Error> {
        Ok(Self::Anchors(TrustAnchors::non_aws_root_pem(pem)?))
    }

    /// See [`AttestationTrust::DangerousUnsignedEmulator`].
    pub fn dangerous_unsigned_emulator() -> Self {
        Self::DangerousUnsignedEmulator
    }
}

/// Configuration of a [`LocalKms`].
#[derive(Clone, Debug)]
pub struct LocalKmsConfig {
    region: String,
    account_id: String,
    trust: AttestationTrust,
    state_file: Option<PathBuf>,
    callers: Vec<(Credentials, String)>,
    max_document_age: Option<Duration>,
}

impl LocalKmsConfig {
    /// Region `us-east-1`, account [`DEFAULT_ACCOUNT_ID`], keys in memory, no callers yet (add
    /// them with [`LocalKmsConfig::credentials`]).
    pub fn new(trust: AttestationTrust) -> Self {
        Self {
            region: "us-east-1".into(),
            account_id: DEFAULT_ACCOUNT_ID.into(),
            trust,
            state_file: None,
            callers: Vec::new(),
            max_document_age: None,
        }
    }

    /// The region requests must be signed for, and that appears in key ARNs.
    #[must_use]
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.region = region.into();
        self
    }

    /// The account id in ARNs and policies.
    #[must_use]
    pub fn account_id(mut self, account_id: impl Into<String>) -> Self {
        self.account_id = account_id.into();
        self
    }

    /// Keeps keys in `path` (JSON, rewritten atomically after every change, created if absent).
    #[must_use]
    pub fn state_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.state_file = Some(path.into());
        self
    }

    /// Accepts requests signed with `credentials`, as principal
    /// `arn:aws:iam::<account>:user/<access key id>`.
    #[must_use]
    pub fn credentials(self, credentials: Credentials) -> Self {
        let arn = format!(
            "arn:aws:iam::{}:user/{}",
            self.account_id,
            credentials.access_key_id()
        );
        self.credentials_as(credentials, arn)
    }

    /// Accepts requests signed with `credentials`, as principal `principal_arn`.
    #[must_use]
    pub fn credentials_as(
        mut self,
        credentials: Credentials,
        principal_arn: impl Into<String>,
    ) -> Self {
        self.callers.push((credentials, principal_arn.into()));
        self
    }

    /// Refuses attestation documents older than `age` (by their timestamp). Default: any age
    /// while the certificate chain is valid, as AWS KMS.
    #[must_use]
    pub fn max_document_age(mut self, age: Duration) -> Self {
        self.max_document_age = Some(age);
        self
    }
}

/// The authenticated caller of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Caller {
    /// Principal ARN.
    pub principal_arn: String,
    /// Account id.
    pub account_id: String,
}

/// A verified `Recipient`: the public key to encrypt to and the condition keys it provides.
struct VerifiedRecipient {
    public_key: Vec<u8>,
    keys: BTreeMap<String, String>,
}

/// The attestation verifier in use (reloaded from a watched file when configured).
#[derive(Debug)]
struct Trust {
    verifier: Option<Verifier>,
    /// `(modification time, length)` of the watched file when it was read.
    loaded: Option<(SystemTime, u64)>,
}

/// The local KMS.
#[derive(Debug)]
pub struct LocalKms {
    config: LocalKmsConfig,
    trust: Mutex<Trust>,
    store: Mutex<Store>,
}

fn verifier_for(anchors: TrustAnchors) -> Verifier {
    Verifier::new(anchors).with_cache(std::sync::Arc::new(nitro_attest::CertCache::new(64)))
}

/// Reads every certificate of a PEM file into trust anchors (`None`: no certificate).
fn anchors_from_pem_file(path: &std::path::Path) -> Result<Option<TrustAnchors>, Error> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let pem = match std::fs::read(path) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
    };
    let mut anchors: Option<TrustAnchors> = None;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        anchors = Some(match anchors {
            None => TrustAnchors::non_aws_root_der(&cert)?,
            Some(a) => a.with_non_aws_root_der(&cert)?,
        });
    }
    Ok(anchors)
}

fn file_stamp(path: &std::path::Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

fn err(status: u16, code: &str, message: impl Into<String>) -> ServiceError {
    ServiceError::new(status, code, message)
}

fn validation(message: impl Into<String>) -> ServiceError {
    err(400, "ValidationException", message)
}

fn internal(message: impl Into<String>) -> ServiceError {
    err(500, "KMSInternalException", message)
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ServiceError> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| {
        err(
            400,
            "SerializationException",
            format!("cannot read the request: {e}"),
        )
    })
}

fn json<T: Serialize>(v: &T) -> Result<Vec<u8>, ServiceError> {
    serde_json::to_vec(v).map_err(|e| internal(format!("cannot encode the response: {e}")))
}

/// Canonical encryption context bytes (sorted, length-prefixed) for AAD.
fn context_aad(key_id: &str, context: Option<&EncryptionContext>) -> Vec<u8> {
    let mut aad = b"nitro-kms local ciphertext v1\0".to_vec();
    aad.extend_from_slice(key_id.as_bytes());
    aad.push(0);
    for (k, v) in context.into_iter().flatten() {
        aad.extend_from_slice(&(k.len() as u32).to_be_bytes());
        aad.extend_from_slice(k.as_bytes());
        aad.extend_from_slice(&(v.len() as u32).to_be_bytes());
        aad.extend_from_slice(v.as_bytes());
    }
    aad
}

/// Ciphertext blob: version `0x01` ‖ key id length (1 byte) ‖ key id ‖ 12-byte nonce ‖
/// AES-256-GCM(plaintext) ‖ 16-byte tag; AAD binds the key id and the encryption context.
const BLOB_VERSION: u8 = 1;

fn check_len(field: &str, len: usize, min: usize, max: usize) -> Result<(), ServiceError> {
    if len < min || len > max {
        return Err(validation(format!(
            "1 validation error detected: Value at '{field}' failed to satisfy constraint: Member must have length between {min} and {max}"
        )));
    }
    Ok(())
}

impl LocalKms {
    /// A local KMS; loads the state file when configured and present.
    pub fn new(config: LocalKmsConfig) -> Result<Self, Error> {
        if config.callers.is_empty() {
            return Err(Error::Config(
                "the local KMS needs at least one set of caller credentials".into(),
            ));
        }
        let trust = match &config.trust {
            AttestationTrust::Anchors(a) => Trust {
                verifier: Some(verifier_for(a.clone())),
                loaded: None,
            },
            AttestationTrust::RootsPemFile(path) => Trust {
                verifier: anchors_from_pem_file(path)?.map(verifier_for),
                loaded: file_stamp(path),
            },
            AttestationTrust::DangerousUnsignedEmulator => Trust {
                verifier: None,
                loaded: None,
            },
        };
        let store = match &config.state_file {
            Some(path) => Store::load(path)?,
            None => Store::default(),
        };
        Ok(Self {
            config,
            trust: Mutex::new(trust),
            store: Mutex::new(store),
        })
    }

    /// The region.
    pub fn region(&self) -> &str {
        &self.config.region
    }

    /// The caller authenticated by `access_key_id`, with its credentials (for SigV4
    /// verification).
    pub fn caller(&self, access_key_id: &str) -> Option<(Credentials, Caller)> {
        self.config
            .callers
            .iter()
            .find(|(c, _)| c.access_key_id() == access_key_id)
            .map(|(c, arn)| {
                (
                    c.clone(),
                    Caller {
                        principal_arn: arn.clone(),
                        account_id: self.config.account_id.clone(),
                    },
                )
            })
    }

    fn key_arn(&self, id: &str) -> String {
        format!(
            "arn:aws:kms:{}:{}:key/{id}",
            self.config.region, self.config.account_id
        )
    }

    /// Handles one operation (the `X-Amz-Target` suffix) for an authenticated caller. `now` is
    /// used for attestation checks and key creation dates.
    pub fn handle(
        &self,
        operation: &str,
        body: &[u8],
        caller: &Caller,
        now: SystemTime,
    ) -> Result<Vec<u8>, ServiceError> {
        if body.len() > MAX_REQUEST {
            return Err(validation("request too large"));
        }
        match operation {
            "Encrypt" => self.encrypt(parse(body)?, caller),
            "Decrypt" => self.decrypt(parse(body)?, caller, now),
            "GenerateDataKey" => self.generate_data_key(parse(body)?, caller, now, true),
            "GenerateDataKeyWithoutPlaintext" => {
                self.generate_data_key(parse(body)?, caller, now, false)
            }
            "GenerateDataKeyPair" => self.generate_data_key_pair(parse(body)?, caller, now),
            "GenerateRandom" => self.generate_random(parse(body)?, now),
            "DeriveSharedSecret" => self.derive_shared_secret(parse(body)?, caller, now),
            "CreateKey" => self.create_key(parse(body)?, caller, now),
            "DescribeKey" => self.describe_key(parse(body)?, caller),
            "PutKeyPolicy" => self.put_key_policy(parse(body)?, caller),
            "GetKeyPolicy" => self.get_key_policy(parse(body)?, caller),
            "ListKeys" => self.list_keys(parse(body)?),
            "GetPublicKey" => self.get_public_key(parse(body)?, caller),
            "EnableKey" => self.set_enabled(parse(body)?, caller, true),
            "DisableKey" => self.set_enabled(parse(body)?, caller, false),
            other => Err(err(
                400,
                "UnknownOperationException",
                format!("the local KMS does not implement {other}"),
            )),
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Store>, ServiceError> {
        self.store
            .lock()
            .map_err(|_| internal("key store lock poisoned"))
    }

    fn save(&self, store: &Store) -> Result<(), ServiceError> {
        if let Some(path) = &self.config.state_file {
            store
                .save(path)
                .map_err(|e| internal(format!("cannot write the state file: {e}")))?;
        }
        Ok(())
    }

    /// Resolves a key id or key ARN.
    fn find<'a>(&self, store: &'a Store, key_id: &str) -> Result<&'a KeyEntry, ServiceError> {
        let id = key_id
            .strip_prefix(&format!(
                "arn:aws:kms:{}:{}:key/",
                self.config.region, self.config.account_id
            ))
            .unwrap_or(key_id);
        store.keys.get(id).ok_or_else(|| {
            err(
                400,
                "NotFoundException",
                format!("Key '{}' does not exist", self.key_arn(id)),
            )
        })
    }

    /// Evaluates the key policy; `keys` are the request's condition keys.
    fn authorize(
        &self,
        key: &KeyEntry,
        caller: &Caller,
        action: &str,
        keys: &BTreeMap<String, String>,
        context: Option<&EncryptionContext>,
    ) -> Result<(), ServiceError> {
        let policy = KeyPolicy::parse(&key.policy)
            .map_err(|e| internal(format!("stored policy unreadable: {e}")))?;
        let mut ctx = RequestContext {
            principal_arn: caller.principal_arn.clone(),
            account_id: caller.account_id.clone(),
            action: format!("kms:{action}"),
            resource: self.key_arn(&key.id),
            keys: BTreeMap::new(),
        };
        for (k, v) in keys {
            ctx.set(k, v.clone());
        }
        for (k, v) in context.into_iter().flatten() {
            ctx.set(&format!("kms:EncryptionContext:{k}"), v.clone());
        }
        ctx.set("kms:CallerAccount", caller.account_id.clone());
        ctx.set("aws:PrincipalArn", caller.principal_arn.clone());
        let resource = self.key_arn(&key.id);
        match policy.evaluate(&ctx) {
            Decision::Allow => {}
            Decision::ImplicitDeny => {
                return Err(err(
                    400,
                    "AccessDeniedException",
                    format!(
                        "User: {} is not authorized to perform: kms:{action} on resource: {resource} because no resource-based policy allows the kms:{action} action",
                        caller.principal_arn
                    ),
                ));
            }
            Decision::ExplicitDeny => {
                return Err(err(
                    400,
                    "AccessDeniedException",
                    format!(
                        "User: {} is not authorized to perform: kms:{action} on resource: {resource} with an explicit deny in a resource-based policy",
                        caller.principal_arn
                    ),
                ));
            }
        }
        if !key.enabled {
            return Err(err(
                400,
                "DisabledException",
                format!("{resource} is disabled."),
            ));
        }
        Ok(())
    }

    /// The verifier, reloading a watched roots file when it changed.
    fn current_verifier(&self) -> Result<Option<Verifier>, ServiceError> {
        let mut trust = self
            .trust
            .lock()
            .map_err(|_| internal("trust lock poisoned"))?;
        if let AttestationTrust::RootsPemFile(path) = &self.config.trust {
            let stamp = file_stamp(path);
            if stamp != trust.loaded {
                trust.verifier = anchors_from_pem_file(path)
                    .map_err(|e| internal(format!("cannot reload the trusted roots: {e}")))?
                    .map(verifier_for);
                trust.loaded = stamp;
            }
        }
        Ok(trust.verifier.clone())
    }

    /// Verifies `Recipient` and returns its public key and condition keys.
    fn verify_recipient(
        &self,
        recipient: Option<&RecipientInfo>,
        now: SystemTime,
    ) -> Result<Option<VerifiedRecipient>, ServiceError> {
        let Some(r) = recipient else {
            return Ok(None);
        };
        match r.key_encryption_algorithm.as_ref().map(|a| a.as_str()) {
            Some(RSAES_OAEP_SHA_256) => {}
            other => {
                return Err(validation(format!(
                    "Recipient.KeyEncryptionAlgorithm must be RSAES_OAEP_SHA_256, not {other:?}"
                )));
            }
        }
        let doc = r
            .attestation_document
            .as_deref()
            .ok_or_else(|| validation("Recipient.AttestationDocument is required"))?;
        check_len("recipient.attestationDocument", doc.len(), 1, 262_144)?;
        let mut policy = nitro_attest::Policy::new().allow_debug(true);
        if let Some(age) = self.config.max_document_age {
            policy = policy.max_age(age);
        }
        let now_ts = Timestamp::from_system_time(now);
        let payload = match &self.config.trust {
            AttestationTrust::DangerousUnsignedEmulator => {
                nitro_attest::dangerous::check_policy_without_signature(doc, now_ts, &policy)
            }
            _ => {
                let verifier = self.current_verifier()?.ok_or_else(|| {
                    validation("Invalid attestation document: the local KMS trusts no root yet")
                })?;
                verifier
                    .verify(doc, now_ts, &policy)
                    .map(nitro_attest::VerifiedDocument::into_document)
            }
        }
        .map_err(|e| validation(format!("Invalid attestation document: {e}")))?;
        let public_key = payload
            .public_key
            .clone()
            .ok_or_else(|| validation("The attestation document has no public_key"))?;
        let rsa = PublicEncryptingKey::from_der(&public_key).map_err(|_| {
            validation("The attestation document's public_key is not an RSA SubjectPublicKeyInfo")
        })?;
        if !(2048..=4096).contains(&rsa.key_size_bits()) {
            return Err(validation(
                "The recipient RSA key must have 2048 to 4096 bits",
            ));
        }
        let mut keys = BTreeMap::new();
        for (index, value) in &payload.pcrs {
            keys.insert(
                format!("kms:RecipientAttestation:PCR{index}"),
                hex::encode(value),
            );
        }
        if let Some(pcr0) = payload.pcr(0) {
            keys.insert(
                "kms:RecipientAttestation:ImageSha384".to_owned(),
                hex::encode(pcr0),
            );
        }
        Ok(Some(VerifiedRecipient { public_key, keys }))
    }

    fn seal_for(recipient: &VerifiedRecipient, secret: &[u8]) -> Result<Vec<u8>, ServiceError> {
        cms::seal(&recipient.public_key, secret)
            .map_err(|e| internal(format!("cannot build CiphertextForRecipient: {e}")))
    }

    fn encrypt_blob(
        key: &KeyEntry,
        plaintext: &[u8],
        context: Option<&EncryptionContext>,
    ) -> Result<Vec<u8>, ServiceError> {
        let KeyKind::Symmetric = key.kind else {
            return Err(err(
                400,
                "InvalidKeyUsageException",
                "the key is not a symmetric encryption key",
            ));
        };
        let aead = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &key.material)
                .map_err(|_| internal("bad key material"))?,
        );
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| internal("no randomness"))?;
        let mut buf = Zeroizing::new(plaintext.to_vec());
        aead.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(context_aad(&key.id, context)),
            &mut *buf,
        )
        .map_err(|_| internal("encryption failed"))?;
        let mut blob = vec![BLOB_VERSION, key.id.len() as u8];
        blob.extend_from_slice(key.id.as_bytes());
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&buf);
        Ok(blob)
    }

    /// Splits a blob into key id, nonce, and sealed bytes.
    fn split_blob(blob: &[u8]) -> Option<(&str, [u8; NONCE_LEN], &[u8])> {
        let (&version, rest) = blob.split_first()?;
        if version != BLOB_VERSION {
            return None;
        }
        let (&id_len, rest) = rest.split_first()?;
        let id = rest.get(..usize::from(id_len))?;
        let rest = rest.get(usize::from(id_len)..)?;
        let nonce: [u8; NONCE_LEN] = rest.get(..NONCE_LEN)?.try_into().ok()?;
        let sealed = rest.get(NONCE_LEN..)?;
        if sealed.len() < 16 {
            return None;
        }
        Some((std::str::from_utf8(id).ok()?, nonce, sealed))
    }

    fn decrypt_blob(
        key: &KeyEntry,
        nonce: [u8; NONCE_LEN],
        sealed: &[u8],
        context: Option<&EncryptionContext>,
    ) -> Result<Plaintext, ServiceError> {
        let invalid = || err(400, "InvalidCiphertextException", "");
        let aead = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &key.material)
                .map_err(|_| internal("bad key material"))?,
        );
        let mut buf = Zeroizing::new(sealed.to_vec());
        let len = aead
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context_aad(&key.id, context)),
                &mut buf,
            )
            .map_err(|_| invalid())?
            .len();
        buf.truncate(len);
        Ok(Plaintext::from(buf))
    }

    fn encrypt(&self, req: EncryptRequest, caller: &Caller) -> Result<Vec<u8>, ServiceError> {
        let plaintext = req.plaintext.unwrap_or_default();
        check_len("plaintext", plaintext.len(), 1, 4096)?;
        check_algorithm(req.encryption_algorithm.as_ref().map(|a| a.as_str()))?;
        let store = self.lock()?;
        let key = self.find(&store, &req.key_id)?;
        self.authorize(
            key,
            caller,
            "Encrypt",
            &BTreeMap::new(),
            req.encryption_context.as_ref(),
        )?;
        dry_run(req.dry_run)?;
        let blob = Self::encrypt_blob(key, &plaintext, req.encryption_context.as_ref())?;
        let mut resp = EncryptResponse::default();
        resp.ciphertext_blob = blob;
        resp.key_id = Some(self.key_arn(&key.id));
        resp.encryption_algorithm = Some("SYMMETRIC_DEFAULT".into());
        json(&resp)
    }

    fn decrypt(
        &self,
        req: DecryptRequest,
        caller: &Caller,
        now: SystemTime,
    ) -> Result<Vec<u8>, ServiceError> {
        check_len("ciphertextBlob", req.ciphertext_blob.len(), 1, 6144)?;
        check_algorithm(req.encryption_algorithm.as_ref().map(|a| a.as_str()))?;
        let recipient = self.verify_recipient(req.recipient.as_ref(), now)?;
        let (id, nonce, sealed) = Self::split_blob(&req.ciphertext_blob)
            .ok_or_else(|| err(400, "InvalidCiphertextException", ""))?;
        let store = self.lock()?;
        let key = self
            .find(&store, id)
            .map_err(|_| err(400, "InvalidCiphertextException", ""))?;
        if let Some(want) = &req.key_id
            && self.find(&store, want)?.id != key.id
        {
            return Err(err(
                400,
                "IncorrectKeyException",
                "The key ID in the request does not identify a CMK that can perform this operation.",
            ));
        }
        let condition_keys = recipient
            .as_ref()
            .map(|r| r.keys.clone())
            .unwrap_or_default();
        self.authorize(
            key,
            caller,
            "Decrypt",
            &condition_keys,
            req.encryption_context.as_ref(),
        )?;
        dry_run(req.dry_run)?;
        let plaintext = Self::decrypt_blob(key, nonce, sealed, req.encryption_context.as_ref())?;
        let mut resp = DecryptResponse::default();
        resp.key_id = Some(self.key_arn(&key.id));
        resp.encryption_algorithm = Some("SYMMETRIC_DEFAULT".into());
        match &recipient {
            Some(r) => resp.ciphertext_for_recipient = Some(Self::seal_for(r, &plaintext)?),
            None => resp.plaintext = plaintext,
        }
        json(&resp)
    }

    fn generate_data_key(
        &self,
        req: GenerateDataKeyRequest,
        caller: &Caller,
        now: SystemTime,
        with_plaintext: bool,
    ) -> Result<Vec<u8>, ServiceError> {
        let len = match (&req.key_spec, req.number_of_bytes) {
            (Some(spec), None) => spec
                .key_len()
                .ok_or_else(|| validation(format!("unsupported KeySpec {spec}")))?,
            (None, Some(n)) if (1..=1024).contains(&n) => n as usize,
            (None, Some(_)) => return Err(validation("NumberOfBytes must be between 1 and 1024")),
            (None, None) => {
                return Err(validation(
                    "Please specify either number of bytes or key spec.",
                ));
            }
            (Some(_), Some(_)) => {
                return Err(validation(
                    "Please specify either number of bytes or key spec, not both.",
                ));
            }
        };
        let recipient = if with_plaintext {
            self.verify_recipient(req.recipient.as_ref(), now)?
        } else {
            None
        };
        let action = if with_plaintext {
            "GenerateDataKey"
        } else {
            "GenerateDataKeyWithoutPlaintext"
        };
        let store = self.lock()?;
        let key = self.find(&store, &req.key_id)?;
        let condition_keys = recipient
            .as_ref()
            .map(|r| r.keys.clone())
            .unwrap_or_default();
        self.authorize(
            key,
            caller,
            action,
            &condition_keys,
            req.encryption_context.as_ref(),
        )?;
        dry_run(req.dry_run)?;
        let data_key = random(len)?;
        let mut resp = GenerateDataKeyResponse::default();
        resp.ciphertext_blob = Self::encrypt_blob(key, &data_key, req.encryption_context.as_ref())?;
        resp.key_id = Some(self.key_arn(&key.id));
        if with_plaintext {
            match &recipient {
                Some(r) => resp.ciphertext_for_recipient = Some(Self::seal_for(r, &data_key)?),
                None => resp.plaintext = data_key,
            }
        }
        json(&resp)
    }

    fn generate_data_key_pair(
        &self,
        req: GenerateDataKeyPairRequest,
        caller: &Caller,
        now: SystemTime,
    ) -> Result<Vec<u8>, ServiceError> {
        let recipient = self.verify_recipient(req.recipient.as_ref(), now)?;
        let (private, public) = store::generate_key_pair(req.key_pair_spec.as_str())?;
        let store = self.lock()?;
        let key = self.find(&store, &req.key_id)?;
        let condition_keys = recipient
            .as_ref()
            .map(|r| r.keys.clone())
            .unwrap_or_default();
        self.authorize(
            key,
            caller,
            "GenerateDataKeyPair",
            &condition_keys,
            req.encryption_context.as_ref(),
        )?;
        dry_run(req.dry_run)?;
        let mut resp = GenerateDataKeyPairResponse::default();
        resp.private_key_ciphertext_blob =
            Self::encrypt_blob(key, &private, req.encryption_context.as_ref())?;
        resp.public_key = public;
        resp.key_id = Some(self.key_arn(&key.id));
        resp.key_pair_spec = Some(req.key_pair_spec.clone());
        match &recipient {
            Some(r) => resp.ciphertext_for_recipient = Some(Self::seal_for(r, &private)?),
            None => resp.private_key_plaintext = private,
        }
        json(&resp)
    }

    fn generate_random(
        &self,
        req: GenerateRandomRequest,
        now: SystemTime,
    ) -> Result<Vec<u8>, ServiceError> {
        let n = req.number_of_bytes.unwrap_or(0);
        if !(1..=1024).contains(&n) {
            return Err(validation("NumberOfBytes must be between 1 and 1024"));
        }
        if req.custom_key_store_id.is_some() {
            return Err(err(
                400,
                "CustomKeyStoreNotFoundException",
                "the local KMS has no custom key stores",
            ));
        }
        let recipient = self.verify_recipient(req.recipient.as_ref(), now)?;
        let bytes = random(n as usize)?;
        let mut resp = GenerateRandomResponse::default();
        match &recipient {
            Some(r) => resp.ciphertext_for_recipient = Some(Self::seal_for(r, &bytes)?),
            None => resp.plaintext = bytes,
        }
        json(&resp)
    }

    fn derive_shared_secret(
        &self,
        req: DeriveSharedSecretRequest,
        caller: &Caller,
        now: SystemTime,
    ) -> Result<Vec<u8>, ServiceError> {
        if req.key_agreement_algorithm != "ECDH" {
            return Err(validation("KeyAgreementAlgorithm must be ECDH"));
        }
        check_len("publicKey", req.public_key.len(), 1, 8192)?;
        let recipient = self.verify_recipient(req.recipient.as_ref(), now)?;
        let store = self.lock()?;
        let key = self.find(&store, &req.key_id)?;
        let condition_keys = recipient
            .as_ref()
            .map(|r| r.keys.clone())
            .unwrap_or_default();
        self.authorize(key, caller, "DeriveSharedSecret", &condition_keys, None)?;
        dry_run(req.dry_run)?;
        let secret = store::ecdh(key, &req.public_key)?;
        let mut resp = DeriveSharedSecretResponse::default();
        resp.key_id = Some(self.key_arn(&key.id));
        resp.key_agreement_algorithm = Some("ECDH".into());
        resp.key_origin = Some("AWS_KMS".into());
        match &recipient {
            Some(r) => resp.ciphertext_for_recipient = Some(Self::seal_for(r, &secret)?),
            None => resp.shared_secret = secret,
        }
        json(&resp)
    }

    fn metadata(&self, key: &KeyEntry) -> KeyMetadata {
        let mut m = KeyMetadata::default();
        m.aws_account_id = Some(self.config.account_id.clone());
        m.key_id = key.id.clone();
        m.arn = Some(self.key_arn(&key.id));
        m.creation_date = Some(key.created);
        m.enabled = Some(key.enabled);
        m.description = Some(key.description.clone());
        m.key_state = Some(if key.enabled { "Enabled" } else { "Disabled" }.into());
        m.origin = Some("AWS_KMS".into());
        m.key_manager = Some("CUSTOMER".into());
        m.key_spec = Some(key.kind.spec().into());
        m.customer_master_key_spec = Some(key.kind.spec().into());
        m.multi_region = Some(false);
        match key.kind {
            KeyKind::Symmetric => {
                m.key_usage = Some("ENCRYPT_DECRYPT".into());
                m.encryption_algorithms = Some(vec!["SYMMETRIC_DEFAULT".into()]);
            }
            _ => {
                m.key_usage = Some("KEY_AGREEMENT".into());
                m.key_agreement_algorithms = Some(vec!["ECDH".into()]);
            }
        }
        m
    }

    fn create_key(
        &self,
        req: CreateKeyRequest,
        caller: &Caller,
        now: SystemTime,
    ) -> Result<Vec<u8>, ServiceError> {
        let spec = req
            .key_spec
            .as_ref()
            .map_or("SYMMETRIC_DEFAULT", |s| s.as_str());
        let usage =
            req.key_usage
                .as_ref()
                .map(|u| u.as_str())
                .unwrap_or(if spec == "SYMMETRIC_DEFAULT" {
                    "ENCRYPT_DECRYPT"
                } else {
                    "KEY_AGREEMENT"
                });
        let kind = KeyKind::from_spec(spec, usage)?;
        let policy = match req.policy {
            Some(p) => {
                KeyPolicy::parse(&p)
                    .map_err(|e| err(400, "MalformedPolicyDocumentException", e.to_string()))?;
                p
            }
            None => policy::default_policy(&self.config.account_id),
        };
        if caller.account_id != self.config.account_id {
            return Err(err(400, "AccessDeniedException", "cross-account CreateKey"));
        }
        let created = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let entry = KeyEntry::generate(kind, policy, req.description.unwrap_or_default(), created)?;
        let metadata = self.metadata(&entry);
        let mut store = self.lock()?;
        store.keys.insert(entry.id.clone(), entry);
        self.save(&store)?;
        let mut resp = KeyMetadataResponse::default();
        resp.key_metadata = metadata;
        json(&resp)
    }

    fn describe_key(
        &self,
        req: serde_json::Value,
        caller: &Caller,
    ) -> Result<Vec<u8>, ServiceError> {
        let key_id = req
            .get("KeyId")
            .and_then(|v| v.as_str())
            .ok_or_else(|| validation("KeyId is required"))?;
        let store = self.lock()?;
        let key = self.find(&store, key_id)?;
        self.authorize_admin(key, caller, "DescribeKey")?;
        let mut resp = KeyMetadataResponse::default();
        resp.key_metadata = self.metadata(key);
        json(&resp)
    }

    /// Administrative actions: the policy decides, enabled state does not matter.
    fn authorize_admin(
        &self,
        key: &KeyEntry,
        caller: &Caller,
        action: &str,
    ) -> Result<(), ServiceError> {
        let mut probe = key.clone();
        probe.enabled = true;
        self.authorize(&probe, caller, action, &BTreeMap::new(), None)
    }

    fn put_key_policy(
        &self,
        req: PutKeyPolicyRequest,
        caller: &Caller,
    ) -> Result<Vec<u8>, ServiceError> {
        if req.policy_name.as_deref().is_some_and(|n| n != "default") {
            return Err(validation("PolicyName must be default"));
        }
        KeyPolicy::parse(&req.policy)
            .map_err(|e| err(400, "MalformedPolicyDocumentException", e.to_string()))?;
        let mut store = self.lock()?;
        let id = {
            let key = self.find(&store, &req.key_id)?;
            self.authorize_admin(key, caller, "PutKeyPolicy")?;
            key.id.clone()
        };
        if let Some(k) = store.keys.get_mut(&id) {
            k.policy = req.policy;
        }
        self.save(&store)?;
        Ok(b"{}".to_vec())
    }

    fn get_key_policy(
        &self,
        req: GetKeyPolicyRequest,
        caller: &Caller,
    ) -> Result<Vec<u8>, ServiceError> {
        let store = self.lock()?;
        let key = self.find(&store, &req.key_id)?;
        self.authorize_admin(key, caller, "GetKeyPolicy")?;
        let mut resp = GetKeyPolicyResponse::default();
        resp.policy = key.policy.clone();
        resp.policy_name = Some("default".into());
        json(&resp)
    }

    fn list_keys(&self, req: ListKeysRequest) -> Result<Vec<u8>, ServiceError> {
        let limit = req.limit.unwrap_or(100).clamp(1, 1000) as usize;
        let store = self.lock()?;
        let mut ids: Vec<&String> = store.keys.keys().collect();
        ids.sort();
        let start = match &req.marker {
            Some(m) => ids.iter().position(|id| *id > m).unwrap_or(ids.len()),
            None => 0,
        };
        let page: Vec<&String> = ids.iter().skip(start).take(limit).copied().collect();
        let mut resp = ListKeysResponse::default();
        resp.truncated = start + page.len() < ids.len();
        resp.next_marker = resp
            .truncated
            .then(|| page.last().map(|s| (*s).clone()))
            .flatten();
        resp.keys = page
            .into_iter()
            .map(|id| {
                let mut e = KeyListEntry::default();
                e.key_id = id.clone();
                e.key_arn = Some(self.key_arn(id));
                e
            })
            .collect();
        json(&resp)
    }

    fn get_public_key(
        &self,
        req: serde_json::Value,
        caller: &Caller,
    ) -> Result<Vec<u8>, ServiceError> {
        let key_id = req
            .get("KeyId")
            .and_then(|v| v.as_str())
            .ok_or_else(|| validation("KeyId is required"))?;
        let store = self.lock()?;
        let key = self.find(&store, key_id)?;
        self.authorize(key, caller, "GetPublicKey", &BTreeMap::new(), None)?;
        let public_key = store::public_key(key)?;
        let mut resp = GetPublicKeyResponse::default();
        resp.key_id = Some(self.key_arn(&key.id));
        resp.public_key = public_key;
        resp.key_spec = Some(key.kind.spec().into());
        resp.key_usage = Some("KEY_AGREEMENT".into());
        resp.key_agreement_algorithms = Some(vec!["ECDH".into()]);
        json(&resp)
    }

    fn set_enabled(
        &self,
        req: serde_json::Value,
        caller: &Caller,
        enabled: bool,
    ) -> Result<Vec<u8>, ServiceError> {
        let key_id = req
            .get("KeyId")
            .and_then(|v| v.as_str())
            .ok_or_else(|| validation("KeyId is required"))?;
        let mut store = self.lock()?;
        let id = {
            let key = self.find(&store, key_id)?;
            self.authorize_admin(
                key,
                caller,
                if enabled { "EnableKey" } else { "DisableKey" },
            )?;
            key.id.clone()
        };
        if let Some(k) = store.keys.get_mut(&id) {
            k.enabled = enabled;
        }
        self.save(&store)?;
        Ok(b"{}".to_vec())
    }
}

fn check_algorithm(alg: Option<&str>) -> Result<(), ServiceError> {
    match alg {
        None | Some("SYMMETRIC_DEFAULT") => Ok(()),
        Some(other) => Err(err(
            400,
            "InvalidKeyUsageException",
            format!("the local KMS supports SYMMETRIC_DEFAULT only, not {other}"),
        )),
    }
}

fn dry_run(flag: Option<bool>) -> Result<(), ServiceError> {
    if flag == Some(true) {
        return Err(err(
            412,
            "DryRunOperationException",
            "The request would have succeeded, but the DryRun option is set.",
        ));
    }
    Ok(())
}

fn random(len: usize) -> Result<Plaintext, ServiceError> {
    let mut buf = Zeroizing::new(vec![0u8; len]);
    SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| internal("no randomness"))?;
    Ok(Plaintext::from(buf))
}
