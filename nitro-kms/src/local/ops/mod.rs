//! One module per operation (related operations share one: aliases, rotation, deletion,
//! tags). Each takes the parsed request and the caller, and returns the response body.

mod aliases;
mod create_key;
mod decrypt;
mod deletion;
mod derive_shared_secret;
mod describe_key;
mod enable_key;
mod encrypt;
mod generate_data_key;
mod generate_data_key_pair;
mod generate_random;
mod get_public_key;
mod key_policy;
mod list_keys;
mod re_encrypt;
mod rotation;
mod sign;
mod tags;
mod update_key_description;
mod verify;

use std::collections::BTreeMap;
use std::time::SystemTime;

use super::crypto::{self, MessageType};
use super::store::KeyEntry;
use super::trust::VerifiedRecipient;
use super::wire::{Context, Recipient, SignRequest};
use super::{Caller, KeyRef, LocalKms, check_len, dry_run, err, parse, required};
use crate::error::ServiceError;

/// Routes an operation to its module.
pub(super) fn dispatch(
    kms: &LocalKms,
    operation: &str,
    body: &[u8],
    caller: &Caller,
    now: SystemTime,
) -> Result<Vec<u8>, ServiceError> {
    match operation {
        "Encrypt" => encrypt::run(kms, parse(body)?, caller),
        "Decrypt" => decrypt::run(kms, parse(body)?, caller, now),
        "ReEncrypt" => re_encrypt::run(kms, parse(body)?, caller),
        "GenerateDataKey" => generate_data_key::run(kms, parse(body)?, caller, now, true),
        "GenerateDataKeyWithoutPlaintext" => {
            generate_data_key::run(kms, parse(body)?, caller, now, false)
        }
        "GenerateDataKeyPair" => generate_data_key_pair::run(kms, parse(body)?, caller, now, true),
        "GenerateDataKeyPairWithoutPlaintext" => {
            generate_data_key_pair::run(kms, parse(body)?, caller, now, false)
        }
        "GenerateRandom" => generate_random::run(kms, parse(body)?, now),
        "DeriveSharedSecret" => derive_shared_secret::run(kms, parse(body)?, caller, now),
        "Sign" => sign::run(kms, parse(body)?, caller),
        "Verify" => verify::run(kms, parse(body)?, caller),
        "GetPublicKey" => get_public_key::run(kms, parse(body)?, caller),
        "CreateKey" => create_key::run(kms, parse(body)?, caller, now),
        "DescribeKey" => describe_key::run(kms, parse(body)?, caller),
        "ListKeys" => list_keys::run(kms, parse(body)?),
        "EnableKey" => enable_key::run(kms, parse(body)?, caller, true),
        "UpdateKeyDescription" => update_key_description::run(kms, parse(body)?, caller),
        "DisableKey" => enable_key::run(kms, parse(body)?, caller, false),
        "PutKeyPolicy" => key_policy::put(kms, parse(body)?, caller),
        "GetKeyPolicy" => key_policy::get(kms, parse(body)?, caller),
        "CreateAlias" => aliases::create(kms, parse(body)?, caller, now),
        "UpdateAlias" => aliases::update(kms, parse(body)?, caller, now),
        "DeleteAlias" => aliases::delete(kms, parse(body)?, caller),
        "ListAliases" => aliases::list(kms, parse(body)?),
        "EnableKeyRotation" => rotation::enable(kms, parse(body)?, caller, now),
        "DisableKeyRotation" => rotation::disable(kms, parse(body)?, caller),
        "GetKeyRotationStatus" => rotation::status(kms, parse(body)?, caller),
        "RotateKeyOnDemand" => rotation::on_demand(kms, parse(body)?, caller, now),
        "ScheduleKeyDeletion" => deletion::schedule(kms, parse(body)?, caller, now),
        "CancelKeyDeletion" => deletion::cancel(kms, parse(body)?, caller),
        "TagResource" => tags::tag(kms, parse(body)?, caller),
        "UntagResource" => tags::untag(kms, parse(body)?, caller),
        "ListResourceTags" => tags::list(kms, parse(body)?, caller),
        other => Err(err(
            400,
            "UnknownOperationException",
            format!("the local KMS does not implement {other}"),
        )),
    }
}

/// The condition keys a verified `Recipient` provides (none without one).
fn condition_keys(recipient: Option<&VerifiedRecipient>) -> BTreeMap<String, String> {
    recipient.map(|r| r.keys.clone()).unwrap_or_default()
}

/// Checks an `EncryptionAlgorithm` name (an unknown one is a validation error; whether the key
/// supports it is checked against the key).
fn encryption_algorithm(name: Option<&str>) -> Result<&str, ServiceError> {
    let name = name.unwrap_or("SYMMETRIC_DEFAULT");
    match name {
        "SYMMETRIC_DEFAULT" | "RSAES_OAEP_SHA_1" | "RSAES_OAEP_SHA_256" | "SM2PKE" => Ok(name),
        other => Err(super::validation(format!(
            "1 validation error detected: Value '{other}' at 'encryptionAlgorithm' failed to satisfy constraint: Member must satisfy enum value set: [SYMMETRIC_DEFAULT, RSAES_OAEP_SHA_1, RSAES_OAEP_SHA_256, SM2PKE]"
        ))),
    }
}

/// A page of a sorted listing: `(items, truncated, next marker)`. The marker is the last
/// item's sort key.
fn page<T>(
    items: Vec<(String, T)>,
    marker: Option<&str>,
    limit: Option<i64>,
    default_limit: i64,
    max_limit: i64,
) -> Result<(Vec<T>, bool, Option<String>), ServiceError> {
    let limit = limit.unwrap_or(default_limit);
    if !(1..=max_limit).contains(&limit) {
        return Err(super::validation(format!(
            "1 validation error detected: Value '{limit}' at 'limit' failed to satisfy constraint: Member must have value between 1 and {max_limit}"
        )));
    }
    let start = match marker {
        Some(m) => items
            .iter()
            .position(|(k, _)| k.as_str() > m)
            .unwrap_or(items.len()),
        None => 0,
    };
    let total = items.len();
    let take = usize::try_from(limit).unwrap_or(usize::MAX);
    let chosen: Vec<(String, T)> = items.into_iter().skip(start).take(take).collect();
    let truncated = start + chosen.len() < total;
    let next = if truncated {
        chosen.last().map(|(k, _)| k.clone())
    } else {
        None
    };
    Ok((
        chosen.into_iter().map(|(_, v)| v).collect(),
        truncated,
        next,
    ))
}

/// What `GenerateDataKey` and `GenerateDataKeyPair` (with and without plaintext) ask of the
/// KMS key that encrypts the new data key.
struct DataKeyOpening<'a> {
    /// `GenerateDataKey` or `GenerateDataKeyPair`: the policy is checked against it, or against
    /// its `WithoutPlaintext` variant.
    operation: &'static str,
    key_id: Option<&'a str>,
    context: Option<&'a Context>,
    /// The request's `Recipient`, verified only for the plaintext variants.
    recipient: Option<&'a Recipient>,
    with_plaintext: bool,
    dry_run: Option<bool>,
}

impl LocalKms {
    /// The opening the data-key operations share: verifies the `Recipient` (plaintext variants
    /// only), finds the key (aliases allowed), authorizes the operation with the recipient's
    /// condition keys, requires a symmetric encryption key and honours `DryRun`; then runs
    /// `generate` with the key and the verified recipient while the store is locked.
    fn with_data_key_wrapping_key<T>(
        &self,
        req: DataKeyOpening<'_>,
        caller: &Caller,
        now: SystemTime,
        generate: impl FnOnce(&KeyEntry, Option<&VerifiedRecipient>) -> Result<T, ServiceError>,
    ) -> Result<T, ServiceError> {
        let (action, recipient) = if req.with_plaintext {
            (
                req.operation.to_owned(),
                self.verify_recipient(req.recipient, now)?,
            )
        } else {
            (format!("{}WithoutPlaintext", req.operation), None)
        };
        let store = self.lock()?;
        let key = self.find(&store, req.key_id, KeyRef::AliasAllowed)?;
        self.authorize_use(
            key,
            caller,
            &action,
            &condition_keys(recipient.as_ref()),
            req.context,
        )?;
        if !key.kind.is_symmetric() {
            return Err(err(
                400,
                "InvalidKeyUsageException",
                format!(
                    "{action} needs a symmetric encryption KMS key; {} is {}",
                    key.id,
                    key.kind.spec()
                ),
            ));
        }
        dry_run(req.dry_run)?;
        generate(key, recipient.as_ref())
    }
}

impl LocalKms {
    /// The opening and closing the key-management operations share: finds the key by id or
    /// ARN (aliases are refused, as in AWS), authorizes the administrative `action`, runs
    /// `check` on it, then `change` on the stored key, and saves the store.
    fn change_key<T>(
        &self,
        key_id: Option<&str>,
        caller: &Caller,
        action: &str,
        check: impl FnOnce(&KeyEntry) -> Result<(), ServiceError>,
        change: impl FnOnce(&mut KeyEntry) -> Result<T, ServiceError>,
    ) -> Result<T, ServiceError> {
        let mut store = self.lock()?;
        let id = {
            let key = self.find(&store, key_id, KeyRef::KeyOnly)?;
            self.authorize_admin(key, caller, action)?;
            check(key)?;
            key.id.clone()
        };
        let key = store
            .keys
            .get_mut(&id)
            .ok_or_else(|| super::internal("the key left the locked store"))?;
        let out = change(key)?;
        self.save(&store)?;
        Ok(out)
    }
}

impl LocalKms {
    /// The opening `Sign` and `Verify` share: checks the message (and, for `Verify`, the
    /// `signature` length), its type and the algorithm; finds the key (aliases allowed),
    /// authorizes `action`, checks that the key signs with the algorithm, honours `DryRun`; then
    /// runs `operate` with the key, the message, its type and the algorithm.
    fn with_signing_key<T>(
        &self,
        req: &SignRequest,
        caller: &Caller,
        action: &str,
        signature: Option<&[u8]>,
        operate: impl FnOnce(&KeyEntry, &[u8], MessageType, &str) -> Result<T, ServiceError>,
    ) -> Result<T, ServiceError> {
        let message = req.message.as_ref().ok_or_else(|| required("message"))?;
        check_len("message", message.len(), 1, 4096)?;
        if let Some(signature) = signature {
            check_len("signature", signature.len(), 1, 6144)?;
        }
        let message_type = MessageType::parse(req.message_type.as_deref())?;
        let algorithm = req
            .signing_algorithm
            .as_deref()
            .ok_or_else(|| required("signingAlgorithm"))?;
        let store = self.lock()?;
        let key = self.find(&store, req.key_id.as_deref(), KeyRef::AliasAllowed)?;
        self.authorize_use(key, caller, action, &BTreeMap::new(), None)?;
        // Usage and algorithm first, so that DryRun reports them as AWS does.
        crypto::check_signing(key, algorithm)?;
        dry_run(req.dry_run)?;
        operate(key, message.as_bytes(), message_type, algorithm)
    }
}
