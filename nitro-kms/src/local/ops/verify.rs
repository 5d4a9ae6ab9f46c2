//! `Verify`: `SignatureValid: true`, or `KMSInvalidSignatureException` (AWS never answers
//! `false`).

use std::collections::BTreeMap;

use super::super::crypto::{self, MessageType};
use super::super::wire::{SignRequest, VerifyResponse};
use super::super::{Caller, KeyRef, LocalKms, check_len, dry_run, err, json, required};
use crate::error::ServiceError;

pub(super) fn run(
    kms: &LocalKms,
    req: SignRequest,
    caller: &Caller,
) -> Result<Vec<u8>, ServiceError> {
    let message = req.message.ok_or_else(|| required("message"))?;
    check_len("message", message.len(), 1, 4096)?;
    check_len("signature", req.signature.len(), 1, 6144)?;
    let message_type = MessageType::parse(req.message_type.as_deref())?;
    let algorithm = req
        .signing_algorithm
        .as_deref()
        .ok_or_else(|| required("signingAlgorithm"))?;
    let store = kms.lock()?;
    let key = kms.find(&store, req.key_id.as_deref(), KeyRef::AliasAllowed)?;
    kms.authorize_use(key, caller, "Verify", &BTreeMap::new(), None)?;
    crypto::check_signing(key, algorithm)?;
    dry_run(req.dry_run)?;
    if !crypto::verify(key, algorithm, &message, message_type, &req.signature)? {
        return Err(err(400, "KMSInvalidSignatureException", ""));
    }
    let mut resp = VerifyResponse::default();
    resp.key_id = kms.key_arn(&key.id);
    resp.signature_valid = true;
    resp.signing_algorithm = algorithm.to_owned();
    json(&resp)
}
