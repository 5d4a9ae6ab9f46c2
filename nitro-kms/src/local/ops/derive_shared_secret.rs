//! `DeriveSharedSecret`: ECDH with a `KEY_AGREEMENT` key, optionally for a `Recipient`.

use std::time::SystemTime;

use super::super::wire::{DeriveSharedSecretRequest, DeriveSharedSecretResponse};
use super::super::{
    Caller, KeyRef, LocalKms, check_len, crypto, dry_run, json, required, validation,
};
use super::condition_keys;
use crate::error::ServiceError;

pub(super) fn run(
    kms: &LocalKms,
    req: DeriveSharedSecretRequest,
    caller: &Caller,
    now: SystemTime,
) -> Result<Vec<u8>, ServiceError> {
    match req.key_agreement_algorithm.as_deref() {
        Some("ECDH") => {}
        None => return Err(required("keyAgreementAlgorithm")),
        Some(_) => return Err(validation("KeyAgreementAlgorithm must be ECDH")),
    }
    check_len("publicKey", req.public_key.len(), 1, 8192)?;
    let recipient = kms.verify_recipient(req.recipient.as_ref(), now)?;
    let store = kms.lock()?;
    let key = kms.find(&store, req.key_id.as_deref(), KeyRef::AliasAllowed)?;
    kms.authorize_use(
        key,
        caller,
        "DeriveSharedSecret",
        &condition_keys(recipient.as_ref()),
        None,
    )?;
    dry_run(req.dry_run)?;
    let secret = crypto::ecdh(key, &req.public_key)?;
    let mut resp = DeriveSharedSecretResponse::default();
    resp.key_id = kms.key_arn(&key.id);
    resp.key_agreement_algorithm = "ECDH".into();
    resp.key_origin = "AWS_KMS".into();
    match &recipient {
        Some(r) => resp.ciphertext_for_recipient = Some(LocalKms::seal_for(r, &secret)?),
        None => resp.shared_secret = Some(secret),
    }
    json(&resp)
}
