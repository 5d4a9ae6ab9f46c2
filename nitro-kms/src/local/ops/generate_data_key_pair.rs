//! `GenerateDataKeyPair` and `GenerateDataKeyPairWithoutPlaintext`: the private key encrypted
//! under a symmetric KMS key.

use std::time::SystemTime;

use super::super::wire::{GenerateDataKeyPairRequest, GenerateDataKeyPairResponse};
use super::super::{Caller, LocalKms, json, required, store};
use super::DataKeyOpening;
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
    // Generated before the store is locked: RSA key generation takes a while.
    let (private, public) = store::generate_key_pair(spec)?;
    let opening = DataKeyOpening {
        operation: "GenerateDataKeyPair",
        key_id: req.key_id.as_deref(),
        context: req.encryption_context.as_ref(),
        recipient: req.recipient.as_ref(),
        with_plaintext,
        dry_run: req.dry_run,
    };
    kms.with_data_key_wrapping_key(opening, caller, now, |key, recipient| {
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
            match recipient {
                Some(r) => resp.ciphertext_for_recipient = Some(LocalKms::seal_for(r, &private)?),
                None => resp.private_key_plaintext = Some(private),
            }
        }
        json(&resp)
    })
}
