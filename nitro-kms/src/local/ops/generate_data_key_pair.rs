//! `GenerateDataKeyPair` and `GenerateDataKeyPairWithoutPlaintext`: the private key encrypted
//! under a symmetric KMS key.

use std::time::SystemTime;

use super::super::wire::{GenerateDataKeyPairRequest, GenerateDataKeyPairResponse};
use super::super::{Caller, KeyRef, LocalKms, dry_run, err, json, required, store};
use super::condition_keys;
use crate::error::ServiceError;

pub(super) fn run(
    kms: &LocalKms,
    req: GenerateDataKeyPairRequest,
    caller: &Caller,
    now: SystemTime,
    with_plaintext: bool,
) -> Result<Vec<u8>, ServiceError> {
    let spec = req
        .key_pair_spec
        .as_deref()
        .ok_or_else(|| required("keyPairSpec"))?;
    let recipient = if with_plaintext {
        kms.verify_recipient(req.recipient.as_ref(), now)?
    } else {
        None
    };
    let action = if with_plaintext {
        "GenerateDataKeyPair"
    } else {
        "GenerateDataKeyPairWithoutPlaintext"
    };
    let (private, public) = store::generate_key_pair(spec)?;
    let store = kms.lock()?;
    let key = kms.find(&store, req.key_id.as_deref(), KeyRef::AliasAllowed)?;
    kms.authorize_use(
        key,
        caller,
        action,
        &condition_keys(recipient.as_ref()),
        req.encryption_context.as_ref(),
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
    let mut resp = GenerateDataKeyPairResponse::default();
    resp.private_key_ciphertext_blob = super::encrypt::seal(
        key,
        "SYMMETRIC_DEFAULT",
        &private,
        req.encryption_context.as_ref(),
    )?;
    resp.public_key = public;
    resp.key_id = kms.key_arn(&key.id);
    resp.key_pair_spec = spec.to_owned();
    if with_plaintext {
        match &recipient {
            Some(r) => resp.ciphertext_for_recipient = Some(LocalKms::seal_for(r, &private)?),
            None => resp.private_key_plaintext = Some(private),
        }
    }
    json(&resp)
}
