//! `GenerateDataKey` and `GenerateDataKeyWithoutPlaintext` (symmetric keys only).

use std::time::SystemTime;

use super::super::wire::{GenerateDataKeyRequest, GenerateDataKeyResponse};
use super::super::{Caller, LocalKms, json, random, validation};
use super::DataKeyOpening;
use crate::error::ServiceError;

pub(super) fn run(
    kms: &LocalKms,
    req: GenerateDataKeyRequest,
    caller: &Caller,
    now: SystemTime,
    with_plaintext: bool,
) -> Result<Vec<u8>, ServiceError> {
    let len = match (req.key_spec.as_deref(), req.number_of_bytes) {
        (Some("AES_256"), None) => 32,
        (Some("AES_128"), None) => 16,
        (Some(other), None) => {
            return Err(validation(format!(
                "1 validation error detected: Value '{other}' at 'keySpec' failed to satisfy constraint: Member must satisfy enum value set: [AES_256, AES_128]"
            )));
        }
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
    let opening = DataKeyOpening {
        operation: "GenerateDataKey",
        key_id: req.key_id.as_deref(),
        context: req.encryption_context.as_ref(),
        recipient: req.recipient.as_ref(),
        with_plaintext,
        dry_run: req.dry_run,
    };
    kms.with_data_key_wrapping_key(opening, caller, now, |key, recipient| {
        let data_key = random(len)?;
        let mut resp = GenerateDataKeyResponse::default();
        resp.ciphertext_blob = super::encrypt::seal(
            key,
            "SYMMETRIC_DEFAULT",
            &data_key,
            req.encryption_context.as_ref(),
        )?;
        resp.key_id = kms.key_arn(&key.id);
        if with_plaintext {
            match recipient {
                Some(r) => resp.ciphertext_for_recipient = Some(LocalKms::seal_for(r, &data_key)?),
                None => resp.plaintext = Some(data_key),
            }
        }
        json(&resp)
    })
}
