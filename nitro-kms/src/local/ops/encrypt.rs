//! `Encrypt`: symmetric keys (this KMS's blob) and RSA `ENCRYPT_DECRYPT` keys (RSAES-OAEP).

use std::collections::BTreeMap;

use super::super::store::{KeyEntry, Usage};
use super::super::wire::{Context, EncryptRequest, EncryptResponse};
use super::super::{Caller, KeyRef, LocalKms, blob, check_len, crypto, dry_run, err, json};
use super::encryption_algorithm;
use crate::error::ServiceError;

/// Checks that `key` encrypts with `algorithm`.
pub(super) fn check_key(key: &KeyEntry, algorithm: &str) -> Result<(), ServiceError> {
    if key.kind.usage() != Usage::EncryptDecrypt {
        return Err(err(
            400,
            "InvalidKeyUsageException",
            format!(
                "{} key usage is {}, not ENCRYPT_DECRYPT",
                key.id,
                key.kind.usage().name()
            ),
        ));
    }
    if !key.kind.encryption_algorithms().contains(&algorithm) {
        return Err(err(
            400,
            "InvalidKeyUsageException",
            format!(
                "{algorithm} is not a valid encryption algorithm for a {} key",
                key.kind.spec()
            ),
        ));
    }
    Ok(())
}

/// Encrypts under `key` (already authorised and checked with [`check_key`]).
pub(super) fn seal(
    key: &KeyEntry,
    algorithm: &str,
    plaintext: &[u8],
    context: Option<&Context>,
) -> Result<Vec<u8>, ServiceError> {
    if key.kind.is_symmetric() {
        blob::seal(
            &key.id,
            key.current_version(),
            &key.material,
            plaintext,
            context,
        )
    } else {
        crypto::rsa_encrypt(key, algorithm, plaintext)
    }
}

pub(super) fn run(
    kms: &LocalKms,
    req: EncryptRequest,
    caller: &Caller,
) -> Result<Vec<u8>, ServiceError> {
    let plaintext = req
        .plaintext
        .ok_or_else(|| super::super::required("plaintext"))?;
    check_len("plaintext", plaintext.len(), 1, 4096)?;
    let algorithm = encryption_algorithm(req.encryption_algorithm.as_deref())?;
    let store = kms.lock()?;
    let key = kms.find(&store, req.key_id.as_deref(), KeyRef::AliasAllowed)?;
    kms.authorize_use(
        key,
        caller,
        "Encrypt",
        &BTreeMap::new(),
        req.encryption_context.as_ref(),
    )?;
    check_key(key, algorithm)?;
    dry_run(req.dry_run)?;
    let mut resp = EncryptResponse::default();
    resp.ciphertext_blob = seal(key, algorithm, &plaintext, req.encryption_context.as_ref())?;
    resp.key_id = kms.key_arn(&key.id);
    resp.encryption_algorithm = algorithm.to_owned();
    json(&resp)
}
