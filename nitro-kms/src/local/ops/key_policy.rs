//! `PutKeyPolicy` and `GetKeyPolicy` (the policy named `default`).

use super::super::wire::{GetKeyPolicyRequest, GetKeyPolicyResponse, PutKeyPolicyRequest};
use super::super::{Caller, KeyRef, LocalKms, err, json, required};
use crate::error::ServiceError;

fn check_name(name: Option<&str>) -> Result<(), ServiceError> {
    match name {
        None | Some("default") => Ok(()),
        Some(other) => Err(err(
            400,
            "ValidationException",
            format!("PolicyName must be default, not {other}"),
        )),
    }
}

pub(super) fn put(
    kms: &LocalKms,
    req: PutKeyPolicyRequest,
    caller: &Caller,
) -> Result<Vec<u8>, ServiceError> {
    let policy = req.policy.ok_or_else(|| required("policy"))?;
    let mut store = kms.lock()?;
    let id = {
        let key = kms.find(&store, req.key_id.as_deref(), KeyRef::KeyOnly)?;
        check_name(req.policy_name.as_deref())?;
        super::create_key::check_policy(&policy)?;
        kms.authorize_admin(key, caller, "PutKeyPolicy")?;
        key.id.clone()
    };
    if let Some(k) = store.keys.get_mut(&id) {
        k.policy = policy;
    }
    kms.save(&store)?;
    Ok(b"{}".to_vec())
}

pub(super) fn get(
    kms: &LocalKms,
    req: GetKeyPolicyRequest,
    caller: &Caller,
) -> Result<Vec<u8>, ServiceError> {
    let store = kms.lock()?;
    let key = kms.find(&store, req.key_id.as_deref(), KeyRef::KeyOnly)?;
    check_name(req.policy_name.as_deref())?;
    kms.authorize_admin(key, caller, "GetKeyPolicy")?;
    json(&GetKeyPolicyResponse {
        policy: key.policy.clone(),
        policy_name: "default".into(),
    })
}
