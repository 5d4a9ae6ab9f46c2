//! `GetPublicKey`: the DER SubjectPublicKeyInfo of an asymmetric key, with its spec, usage and
//! algorithms.

use std::collections::BTreeMap;

use super::super::wire::{GetPublicKeyResponse, KeyIdRequest};
use super::super::{Caller, KeyRef, LocalKms, crypto, json};
use crate::error::ServiceError;

fn names(list: &[&str]) -> Option<Vec<String>> {
    (!list.is_empty()).then(|| list.iter().map(|s| (*s).to_owned()).collect())
}

pub(super) fn run(
    kms: &LocalKms,
    req: KeyIdRequest,
    caller: &Caller,
) -> Result<Vec<u8>, ServiceError> {
    let store = kms.lock()?;
    let key = kms.find(&store, req.key_id.as_deref(), KeyRef::AliasAllowed)?;
    kms.authorize_use(key, caller, "GetPublicKey", &BTreeMap::new(), None)?;
    let mut resp = GetPublicKeyResponse::default();
    resp.public_key = crypto::public_key(key)?;
    resp.key_id = kms.key_arn(&key.id);
    resp.key_spec = key.kind.spec().into();
    resp.customer_master_key_spec = key.kind.spec().into();
    resp.key_usage = key.kind.usage().name().into();
    resp.encryption_algorithms = names(key.kind.encryption_algorithms());
    resp.signing_algorithms = names(key.kind.signing_algorithms());
    resp.key_agreement_algorithms = names(key.kind.key_agreement_algorithms());
    json(&resp)
}
