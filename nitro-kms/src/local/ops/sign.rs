//! `Sign` with a `SIGN_VERIFY` key: ECDSA (DER-encoded signature, as KMS returns it) or RSA
//! (PSS with a salt as long as the digest, or PKCS#1 v1.5); `RAW` messages are hashed here,
//! `DIGEST` messages are the hash already.

use std::collections::BTreeMap;

use super::super::crypto::{self, MessageType};
use super::super::wire::{SignRequest, SignResponse};
use super::super::{Caller, KeyRef, LocalKms, check_len, dry_run, json, required};
use crate::error::ServiceError;

pub(super) fn run(
    kms: &LocalKms,
    req: SignRequest,
    caller: &Caller,
) -> Result<Vec<u8>, ServiceError> {
    let message = req.message.ok_or_else(|| required("message"))?;
    check_len("message", message.len(), 1, 4096)?;
    let message_type = MessageType::parse(req.message_type.as_deref())?;
    let algorithm = req
        .signing_algorithm
        .as_deref()
        .ok_or_else(|| required("signingAlgorithm"))?;
    let store = kms.lock()?;
    let key = kms.find(&store, req.key_id.as_deref(), KeyRef::AliasAllowed)?;
    kms.authorize_use(key, caller, "Sign", &BTreeMap::new(), None)?;
    // Usage and algorithm first, so that DryRun reports them as AWS does.
    crypto::check_signing(key, algorithm)?;
    dry_run(req.dry_run)?;
    let signature = crypto::sign(key, algorithm, &message, message_type)?;
    let mut resp = SignResponse::default();
    resp.key_id = kms.key_arn(&key.id);
    resp.signature = signature;
    resp.signing_algorithm = algorithm.to_owned();
    json(&resp)
}
