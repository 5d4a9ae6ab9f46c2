//! `ReEncrypt`: decrypts under the source key and encrypts under the destination key without
//! the plaintext leaving the KMS. Authorised by `kms:ReEncryptFrom` on the source key and
//! `kms:ReEncryptTo` on the destination key. AWS takes no `Recipient` here.

use std::collections::BTreeMap;

use super::super::wire::{ReEncryptRequest, ReEncryptResponse};
use super::super::{Caller, KeyRef, LocalKms, dry_run, json, required};
use super::decrypt::{Opening, open};
use super::encryption_algorithm;
use crate::error::ServiceError;

pub(super) fn run(
    kms: &LocalKms,
    req: ReEncryptRequest,
    caller: &Caller,
) -> Result<Vec<u8>, ServiceError> {
    let source_algorithm = encryption_algorithm(req.source_encryption_algorithm.as_deref())?;
    let destination_algorithm =
        encryption_algorithm(req.destination_encryption_algorithm.as_deref())?;
    let destination_id = req
        .destination_key_id
        .as_deref()
        .ok_or_else(|| required("destinationKeyId"))?;
    let store = kms.lock()?;
    let no_keys = BTreeMap::new();
    let (source, plaintext) = open(
        kms,
        &store,
        caller,
        &Opening {
            ciphertext: &req.ciphertext_blob,
            key_id: req.source_key_id.as_deref(),
            algorithm: source_algorithm,
            context: req.source_encryption_context.as_ref(),
            action: "ReEncryptFrom",
            condition_keys: &no_keys,
        },
        |_| Ok(()),
    )?;
    let destination = kms.find(&store, Some(destination_id), KeyRef::AliasAllowed)?;
    kms.authorize_use(
        destination,
        caller,
        "ReEncryptTo",
        &no_keys,
        req.destination_encryption_context.as_ref(),
    )?;
    super::encrypt::check_key(destination, destination_algorithm)?;
    dry_run(req.dry_run)?;
    let mut resp = ReEncryptResponse::default();
    resp.ciphertext_blob = super::encrypt::seal(
        destination,
        destination_algorithm,
        &plaintext,
        req.destination_encryption_context.as_ref(),
    )?;
    resp.source_key_id = kms.key_arn(&source.id);
    resp.key_id = kms.key_arn(&destination.id);
    resp.source_encryption_algorithm = source_algorithm.to_owned();
    resp.destination_encryption_algorithm = destination_algorithm.to_owned();
    json(&resp)
}
