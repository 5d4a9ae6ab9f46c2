//! A local KMS for development and tests: the KMS JSON protocol, keys in memory or in a state
//! file, key policies with the `kms:RecipientAttestation:*` conditions, attestation documents
//! (Nitro Enclaves and NitroTPM) verified with nitro-attest, and `CiphertextForRecipient` in the
//! BER shape real KMS produces.
//!
//! Operations (one module each under `ops/`): `Encrypt`, `Decrypt`, `ReEncrypt`,
//! `GenerateDataKey`, `GenerateDataKeyWithoutPlaintext`, `GenerateDataKeyPair`,
//! `GenerateDataKeyPairWithoutPlaintext`, `GenerateRandom`, `DeriveSharedSecret`, `Sign`,
//! `Verify`, `GetPublicKey`, `CreateKey`, `DescribeKey`, `ListKeys`, `EnableKey`, `DisableKey`,
//! `UpdateKeyDescription`,
//! `PutKeyPolicy`, `GetKeyPolicy`, `CreateAlias`, `UpdateAlias`, `DeleteAlias`, `ListAliases`,
//! `EnableKeyRotation`, `DisableKeyRotation`, `GetKeyRotationStatus`, `RotateKeyOnDemand`,
//! `ScheduleKeyDeletion`, `CancelKeyDeletion`, `TagResource`, `UntagResource`,
//! `ListResourceTags`. Keys: `SYMMETRIC_DEFAULT`; `ECC_NIST_P256/P384/P521` and
//! `ECC_SECG_P256K1` for `SIGN_VERIFY`; `ECC_NIST_*` for `KEY_AGREEMENT`; `RSA_2048/3072/4096`
//! for `SIGN_VERIFY` and `ENCRYPT_DECRYPT`. Every request must carry a valid SigV4 signature
//! from one of the configured credentials, with `X-Amz-Target` among the signed headers.
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
//! their IAM policies allowed everything); `GenerateRandom`, `CreateKey`, `ListKeys` and
//! `ListAliases` are allowed for every authenticated caller of the account (AWS governs them
//! with IAM policies only); the alias operations are authorised by the key policy of the key
//! alone; symmetric ciphertext blobs have their own format and only this local KMS can decrypt
//! them; a key whose deletion date has passed is deleted when the next request arrives, and a
//! due rotation happens the same way; grants, HMAC keys, imported key material, custom key
//! stores, multi-Region keys and `ListKeyRotations` are not implemented.

// Responses are structs filled field by field.
#![allow(clippy::field_reassign_with_default)]

mod blob;
mod crypto;
mod ops;
pub mod policy;
pub mod server;
mod store;
mod trust;
mod wire;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use serde::Serialize;
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

use crate::aws_credentials::Credentials;
use crate::error::{Error, ServiceError};
use crate::secret::Plaintext;
use policy::{Decision, KeyPolicy, RequestContext};
use store::{KeyEntry, KeyState, Store};
pub use trust::AttestationTrust;
use trust::Trust;
use wire::Context;

/// Default account id of the local KMS (the one AWS documentation uses).
pub const DEFAULT_ACCOUNT_ID: &str = "111122223333";

/// Largest request body the local KMS reads.
pub const MAX_REQUEST: usize = 1024 * 1024;

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

/// The local KMS.
#[derive(Debug)]
pub struct LocalKms {
    config: LocalKmsConfig,
    trust: Mutex<Trust>,
    store: Mutex<Store>,
}

pub(crate) fn err(status: u16, code: &str, message: impl Into<String>) -> ServiceError {
    ServiceError::new(status, code, message)
}

pub(crate) fn validation(message: impl Into<String>) -> ServiceError {
    err(400, "ValidationException", message)
}

pub(crate) fn internal(message: impl Into<String>) -> ServiceError {
    err(500, "KMSInternalException", message)
}

/// A required member that is absent (botocore checks these before sending; raw callers may not).
pub(crate) fn required(field: &str) -> ServiceError {
    validation(format!(
        "1 validation error detected: Value null at '{field}' failed to satisfy constraint: Member must not be null"
    ))
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

pub(crate) fn json<T: Serialize>(v: &T) -> Result<Vec<u8>, ServiceError> {
    serde_json::to_vec(v).map_err(|e| internal(format!("cannot encode the response: {e}")))
}

pub(crate) fn check_len(
    field: &str,
    len: usize,
    min: usize,
    max: usize,
) -> Result<(), ServiceError> {
    if len < min || len > max {
        return Err(validation(format!(
            "1 validation error detected: Value at '{field}' failed to satisfy constraint: Member must have length between {min} and {max}"
        )));
    }
    Ok(())
}

pub(crate) fn dry_run(flag: Option<bool>) -> Result<(), ServiceError> {
    if flag == Some(true) {
        return Err(err(
            412,
            "DryRunOperationException",
            "The request would have succeeded, but the DryRun option is set.",
        ));
    }
    Ok(())
}

pub(crate) fn random(len: usize) -> Result<Plaintext, ServiceError> {
    let mut buf = Zeroizing::new(vec![0u8; len]);
    SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| internal("no randomness"))?;
    Ok(Plaintext::from(buf))
}

/// Seconds since the Unix epoch.
pub(crate) fn epoch(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// How a key id may be given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyRef {
    /// Key id, key ARN, alias name or alias ARN (cryptographic operations, `DescribeKey`).
    AliasAllowed,
    /// Key id or key ARN only (key management operations).
    KeyOnly,
}

impl LocalKms {
    /// A local KMS; loads the state file when configured and present.
    pub fn new(config: LocalKmsConfig) -> Result<Self, Error> {
        if config.callers.is_empty() {
            return Err(Error::InvalidArgument(
                "the local KMS needs at least one set of caller credentials".into(),
            ));
        }
        let trust = Trust::new(&config.trust)?;
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

    pub(crate) fn key_arn(&self, id: &str) -> String {
        format!(
            "arn:aws:kms:{}:{}:key/{id}",
            self.config.region, self.config.account_id
        )
    }

    pub(crate) fn alias_arn(&self, name: &str) -> String {
        format!(
            "arn:aws:kms:{}:{}:{name}",
            self.config.region, self.config.account_id
        )
    }

    /// Handles one operation (the `X-Amz-Target` suffix) for an authenticated caller. `now` is
    /// used for attestation checks, creation dates, rotation and deletion.
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
        {
            let mut store = self.lock()?;
            if store.tick(epoch(now))? {
                self.save(&store)?;
            }
        }
        ops::dispatch(self, operation, body, caller, now)
    }

    pub(crate) fn lock(&self) -> Result<std::sync::MutexGuard<'_, Store>, ServiceError> {
        self.store
            .lock()
            .map_err(|_| internal("key store lock poisoned"))
    }

    pub(crate) fn save(&self, store: &Store) -> Result<(), ServiceError> {
        if let Some(path) = &self.config.state_file {
            store
                .save(path)
                .map_err(|e| internal(format!("cannot write the state file: {e}")))?;
        }
        Ok(())
    }

    /// Resolves a key id, key ARN, alias name or alias ARN to a key id.
    pub(crate) fn resolve(
        &self,
        store: &Store,
        key_id: Option<&str>,
        how: KeyRef,
    ) -> Result<String, ServiceError> {
        let key_id = key_id.ok_or_else(|| required("keyId"))?;
        check_len("keyId", key_id.len(), 1, 2048)?;
        let arn_prefix = format!(
            "arn:aws:kms:{}:{}:",
            self.config.region, self.config.account_id
        );
        let local = key_id.strip_prefix(&arn_prefix);
        let alias = match local {
            Some(rest) => rest.starts_with("alias/").then_some(rest),
            None => key_id.starts_with("alias/").then_some(key_id),
        };
        if let Some(alias) = alias {
            if how == KeyRef::KeyOnly {
                return Err(err(
                    400,
                    "NotFoundException",
                    format!(
                        "Invalid keyId {key_id}: this operation takes a key id or key ARN, not an alias"
                    ),
                ));
            }
            return store
                .aliases
                .get(alias)
                .map(|a| a.target.clone())
                .ok_or_else(|| {
                    err(
                        400,
                        "NotFoundException",
                        format!("Alias {} is not found.", self.alias_arn(alias)),
                    )
                });
        }
        let id = match local {
            Some(rest) => rest.strip_prefix("key/").unwrap_or(rest),
            None if key_id.starts_with("arn:") => {
                return Err(err(
                    400,
                    "NotFoundException",
                    format!("Invalid arn {key_id}: not a key of this region and account"),
                ));
            }
            None => key_id,
        };
        if store.keys.contains_key(id) {
            Ok(id.to_owned())
        } else {
            Err(err(
                400,
                "NotFoundException",
                format!("Key '{}' does not exist", self.key_arn(id)),
            ))
        }
    }

    /// The key `key_id` names (see [`LocalKms::resolve`]).
    pub(crate) fn find<'a>(
        &self,
        store: &'a Store,
        key_id: Option<&str>,
        how: KeyRef,
    ) -> Result<&'a KeyEntry, ServiceError> {
        let id = self.resolve(store, key_id, how)?;
        store
            .keys
            .get(&id)
            .ok_or_else(|| internal("resolved key vanished"))
    }

    /// Evaluates the key policy (the key's state is not looked at); `keys` are the request's
    /// condition keys.
    pub(crate) fn authorize(
        &self,
        key: &KeyEntry,
        caller: &Caller,
        action: &str,
        keys: &BTreeMap<String, String>,
        context: Option<&Context>,
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
        ctx.set("kms:KeySpec", key.kind.spec());
        ctx.set("kms:KeyUsage", key.kind.usage().name());
        let resource = self.key_arn(&key.id);
        let why = match policy.evaluate(&ctx) {
            Decision::Allow => return Ok(()),
            Decision::ImplicitDeny => {
                "because no resource-based policy allows the kms:{action} action"
            }
            Decision::ExplicitDeny => "with an explicit deny in a resource-based policy",
        };
        Err(err(
            400,
            "AccessDeniedException",
            format!(
                "User: {} is not authorized to perform: kms:{action} on resource: {resource} {}",
                caller.principal_arn,
                why.replace("{action}", action)
            ),
        ))
    }

    /// Cryptographic use: the key must be enabled.
    pub(crate) fn usable(&self, key: &KeyEntry) -> Result<(), ServiceError> {
        match key.state() {
            KeyState::Enabled => Ok(()),
            KeyState::Disabled => Err(err(
                400,
                "DisabledException",
                format!("{} is disabled.", self.key_arn(&key.id)),
            )),
            KeyState::PendingDeletion => Err(self.pending(key)),
        }
    }

    pub(crate) fn pending(&self, key: &KeyEntry) -> ServiceError {
        err(
            400,
            "KMSInvalidStateException",
            format!("{} is pending deletion.", self.key_arn(&key.id)),
        )
    }

    /// Key management that a key pending deletion refuses.
    pub(crate) fn not_pending(&self, key: &KeyEntry) -> Result<(), ServiceError> {
        match key.state() {
            KeyState::PendingDeletion => Err(self.pending(key)),
            _ => Ok(()),
        }
    }

    /// Policy, then state: what every cryptographic operation checks.
    pub(crate) fn authorize_use(
        &self,
        key: &KeyEntry,
        caller: &Caller,
        action: &str,
        keys: &BTreeMap<String, String>,
        context: Option<&Context>,
    ) -> Result<(), ServiceError> {
        self.authorize(key, caller, action, keys, context)?;
        self.usable(key)
    }

    /// Administrative actions: the policy decides, the state does not matter here.
    pub(crate) fn authorize_admin(
        &self,
        key: &KeyEntry,
        caller: &Caller,
        action: &str,
    ) -> Result<(), ServiceError> {
        self.authorize(key, caller, action, &BTreeMap::new(), None)
    }

    /// Refuses requests from another account for operations AWS does not allow across accounts.
    pub(crate) fn same_account(&self, caller: &Caller, op: &str) -> Result<(), ServiceError> {
        if caller.account_id != self.config.account_id {
            return Err(err(
                400,
                "AccessDeniedException",
                format!("cross-account {op} is not allowed"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const OPERATIONS: &[&str] = &[
        "Encrypt",
        "Decrypt",
        "ReEncrypt",
        "GenerateDataKey",
        "GenerateDataKeyWithoutPlaintext",
        "GenerateDataKeyPair",
        "GenerateDataKeyPairWithoutPlaintext",
        "GenerateRandom",
        "DeriveSharedSecret",
        "Sign",
        "Verify",
        "GetPublicKey",
        "CreateKey",
        "DescribeKey",
        "ListKeys",
        "EnableKey",
        "DisableKey",
        "PutKeyPolicy",
        "GetKeyPolicy",
        "CreateAlias",
        "UpdateAlias",
        "DeleteAlias",
        "ListAliases",
        "EnableKeyRotation",
        "DisableKeyRotation",
        "GetKeyRotationStatus",
        "RotateKeyOnDemand",
        "ScheduleKeyDeletion",
        "CancelKeyDeletion",
        "TagResource",
        "UntagResource",
        "ListResourceTags",
        "UpdateKeyDescription",
    ];

    fn kms() -> (LocalKms, Caller, String) {
        let kms = LocalKms::new(
            LocalKmsConfig::new(AttestationTrust::dangerous_unsigned_emulator())
                .credentials(Credentials::new("AKID", "secret", None, None)),
        )
        .unwrap();
        let (_, caller) = kms.caller("AKID").unwrap();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let created = kms
            .handle(
                "CreateKey",
                br#"{"KeySpec":"ECC_NIST_P256","KeyUsage":"SIGN_VERIFY"}"#,
                &caller,
                now,
            )
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&created).unwrap();
        let id = v["KeyMetadata"]["KeyId"].as_str().unwrap().to_owned();
        kms.handle(
            "CreateAlias",
            format!(r#"{{"AliasName":"alias/k","TargetKeyId":"{id}"}}"#).as_bytes(),
            &caller,
            now,
        )
        .unwrap();
        (kms, caller, id)
    }

    /// JSON values of the kinds a hostile caller sends: wrong types, huge and negative numbers,
    /// key ids in every form, long strings.
    fn value(id: String) -> impl Strategy<Value = serde_json::Value> {
        use serde_json::json;
        prop_oneof![
            Just(json!(null)),
            Just(json!(true)),
            any::<i64>().prop_map(|n| json!(n)),
            Just(json!(u64::MAX)),
            Just(json!(-1)),
            Just(json!("")),
            Just(json!("alias/k")),
            Just(json!("alias/")),
            Just(json!(format!(
                "arn:aws:kms:us-east-1:111122223333:key/{id}"
            ))),
            Just(json!(format!("arn:aws:kms:us-east-1:111122223333:alias/k"))),
            Just(json!(id)),
            Just(json!("RAW")),
            Just(json!("DIGEST")),
            Just(json!("ECDSA_SHA_256")),
            Just(json!("RSAES_OAEP_SHA_256")),
            Just(json!("AAAA")),
            Just(json!("x".repeat(5000))),
            Just(json!([{"TagKey": "k", "TagValue": "v"}])),
            Just(json!({"a": "b"})),
            "[ -~]{0,40}".prop_map(|s| json!(s)),
        ]
    }

    const FIELDS: &[&str] = &[
        "KeyId",
        "Plaintext",
        "CiphertextBlob",
        "Message",
        "MessageType",
        "Signature",
        "SigningAlgorithm",
        "EncryptionAlgorithm",
        "EncryptionContext",
        "DestinationKeyId",
        "SourceKeyId",
        "AliasName",
        "TargetKeyId",
        "NumberOfBytes",
        "KeySpec",
        "KeyUsage",
        "KeyPairSpec",
        "PendingWindowInDays",
        "RotationPeriodInDays",
        "Tags",
        "TagKeys",
        "Limit",
        "Marker",
        "Policy",
        "PublicKey",
        "KeyAgreementAlgorithm",
        "DryRun",
        "Description",
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Hostile requests to every operation: an error or an answer, never a panic, and the
        /// store stays usable.
        #[test]
        fn hostile_requests_never_panic(
            op in 0..OPERATIONS.len(),
            fields in proptest::collection::vec((0..FIELDS.len(), value(String::new())), 0..6),
            raw in proptest::collection::vec(any::<u8>(), 0..64),
            use_raw in any::<bool>(),
        ) {
            let (kms, caller, id) = kms();
            let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
            let body = if use_raw {
                raw
            } else {
                let mut obj = serde_json::Map::new();
                for (f, v) in fields {
                    let v = match v.as_str() {
                        Some("") => serde_json::json!(id),
                        _ => v,
                    };
                    obj.insert(FIELDS[f].to_owned(), v);
                }
                serde_json::to_vec(&obj).unwrap()
            };
            let _ = kms.handle(OPERATIONS[op], &body, &caller, now);
            let sign = kms.handle(
                "Sign",
                br#"{"KeyId":"alias/k","Message":"aGk=","SigningAlgorithm":"ECDSA_SHA_256"}"#,
                &caller,
                now,
            );
            // The key may legitimately be disabled, pending deletion or re-pointed by the
            // hostile request; anything else is a bug.
            if let Err(e) = sign {
                prop_assert!(
                    matches!(
                        e.code.as_str(),
                        "DisabledException" | "KMSInvalidStateException" | "NotFoundException"
                            | "AccessDeniedException"
                    ),
                    "{e:?}"
                );
            }
        }
    }
}
