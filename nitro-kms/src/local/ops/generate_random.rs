//! `GenerateRandom` (allowed for every authenticated caller: AWS governs it with IAM only).

use std::time::SystemTime;

use super::super::wire::{GenerateRandomRequest, GenerateRandomResponse};
use super::super::{LocalKms, err, json, random, validation};
use crate::error::ServiceError;

pub(super) fn run(
    kms: &LocalKms,
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
    let recipient = kms.verify_recipient(req.recipient.as_ref(), now)?;
    let bytes = random(n as usize)?;
    let mut resp = GenerateRandomResponse::default();
    match &recipient {
        Some(r) => resp.ciphertext_for_recipient = Some(LocalKms::seal_for(r, &bytes)?),
        None => resp.plaintext = Some(bytes),
    }
    json(&resp)
}
