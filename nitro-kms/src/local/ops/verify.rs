//! `Verify`: `SignatureValid: true`, or `KMSInvalidSignatureException` (AWS never answers
//! `false`).

use super::super::crypto;
use super::super::wire::{SignRequest, VerifyResponse};
use super::super::{Caller, LocalKms, err, json};
use crate::error::ServiceError;

pub(super) fn run(
    kms: &LocalKms,
    req: SignRequest,
    caller: &Caller,
) -> Result<Vec<u8>, ServiceError> {
    kms.with_signing_key(
        &req,
        caller,
        "Verify",
        Some(&req.signature),
        |key, message, message_type, algorithm| {
            if !crypto::verify(key, algorithm, message, message_type, &req.signature)? {
                return Err(err(400, "KMSInvalidSignatureException", ""));
            }
            let mut resp = VerifyResponse::default();
            resp.key_id = kms.key_arn(&key.id);
            resp.signature_valid = true;
            resp.signing_algorithm = algorithm.to_owned();
            json(&resp)
        },
    )
}
