//! `Sign` with a `SIGN_VERIFY` key: ECDSA (DER-encoded signature, as KMS returns it) or RSA
//! (PSS with a salt as long as the digest, or PKCS#1 v1.5); `RAW` messages are hashed here,
//! `DIGEST` messages are the hash already.

use super::super::crypto;
use super::super::wire::{SignRequest, SignResponse};
use super::super::{Caller, LocalKms, json};
use crate::error::ServiceError;

pub(super) fn run(
    kms: &LocalKms,
    req: SignRequest,
    caller: &Caller,
) -> Result<Vec<u8>, ServiceError> {
    kms.with_signing_key(
        &req,
        caller,
        "Sign",
        None,
        |key, message, message_type, algorithm| {
            let mut resp = SignResponse::default();
            resp.signature = crypto::sign(key, algorithm, message, message_type)?;
            resp.key_id = kms.key_arn(&key.id);
            resp.signing_algorithm = algorithm.to_owned();
            json(&resp)
        },
    )
}
