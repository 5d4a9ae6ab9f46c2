//! `Decrypt`: this KMS's symmetric blobs (any material version: rotation keeps old ciphertexts
//! readable) and RSAES-OAEP ciphertexts of RSA keys; `Recipient` answers with
//! `CiphertextForRecipient`.

use std::collections::BTreeMap;
use std::time::SystemTime;

use super::super::store::{KeyEntry, Store};
use super::super::wire::{Context, DecryptRequest, DecryptResponse};
use super::super::{Caller, KeyRef, LocalKms, blob, check_len, crypto, dry_run, err, json};
use super::{condition_keys, encryption_algorithm};
use crate::error::ServiceError;
use crate::secret::Plaintext;

fn invalid() -> ServiceError {
    err(400, "InvalidCiphertextException", "")
}

/// What a ciphertext is opened with, and how the caller is authorised.
pub(super) struct Opening<'a> {
    pub(super) ciphertext: &'a [u8],
    pub(super) key_id: Option<&'a str>,
    pub(super) algorithm: &'a str,
    pub(super) context: Option<&'a Context>,
    pub(super) action: &'a str,
    pub(super) condition_keys: &'a BTreeMap<String, String>,
}

/// Authorises and opens a ciphertext; the key it was opened with and the plaintext. `before`
/// runs after authorisation and before decryption (the `DryRun` check).
pub(super) fn open<'s>(
    kms: &LocalKms,
    store: &'s Store,
    caller: &Caller,
    o: &Opening<'_>,
    before: impl FnOnce(&'s KeyEntry) -> Result<(), ServiceError>,
) -> Result<(&'s KeyEntry, Plaintext), ServiceError> {
    check_len("ciphertextBlob", o.ciphertext.len(), 1, 6144)?;
    if o.algorithm == "SYMMETRIC_DEFAULT" {
        let parsed = blob::parse(o.ciphertext).ok_or_else(invalid)?;
        let key = store.keys.get(parsed.key_id).ok_or_else(invalid)?;
        if let Some(want) = o.key_id
            && kms.resolve(store, Some(want), KeyRef::AliasAllowed)? != key.id
        {
            return Err(err(
                400,
                "IncorrectKeyException",
                "The key ID in the request does not identify a CMK that can perform this operation.",
            ));
        }
        kms.authorize_use(key, caller, o.action, o.condition_keys, o.context)?;
        if !key.kind.is_symmetric() {
            return Err(invalid());
        }
        before(key)?;
        let material = key.material_version(parsed.version).ok_or_else(invalid)?;
        let plaintext = blob::open(&parsed, material, o.context)?;
        return Ok((key, plaintext));
    }
    let Some(key_id) = o.key_id else {
        return Err(super::super::validation(
            "KeyId is required to decrypt with an asymmetric KMS key",
        ));
    };
    let key = kms.find(store, Some(key_id), KeyRef::AliasAllowed)?;
    kms.authorize_use(key, caller, o.action, o.condition_keys, o.context)?;
    super::encrypt::check_key(key, o.algorithm)?;
    before(key)?;
    let plaintext = crypto::rsa_decrypt(key, o.algorithm, o.ciphertext)?;
    Ok((key, plaintext))
}

pub(super) fn run(
    kms: &LocalKms,
    req: DecryptRequest,
    caller: &Caller,
    now: SystemTime,
) -> Result<Vec<u8>, ServiceError> {
    let algorithm = encryption_algorithm(req.encryption_algorithm.as_deref())?;
    let recipient = kms.verify_recipient(req.recipient.as_ref(), now)?;
    let keys = condition_keys(recipient.as_ref());
    let store = kms.lock()?;
    let (key, plaintext) = open(
        kms,
        &store,
        caller,
        &Opening {
            ciphertext: &req.ciphertext_blob,
            key_id: req.key_id.as_deref(),
            algorithm,
            context: req.encryption_context.as_ref(),
            action: "Decrypt",
            condition_keys: &keys,
        },
        |_| dry_run(req.dry_run),
    )?;
    let mut resp = DecryptResponse::default();
    resp.key_id = kms.key_arn(&key.id);
    resp.encryption_algorithm = algorithm.to_owned();
    match &recipient {
        Some(r) => resp.ciphertext_for_recipient = Some(LocalKms::seal_for(r, &plaintext)?),
        None => resp.plaintext = Some(plaintext),
    }
    json(&resp)
}
