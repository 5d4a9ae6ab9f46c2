//! `CreateKey`.

use std::time::SystemTime;

use super::super::policy::{self, KeyPolicy};
use super::super::store::{KeyEntry, KeyKind};
use super::super::wire::{CreateKeyRequest, KeyMetadataResponse};
use super::super::{Caller, LocalKms, check_len, epoch, err, json};
use crate::error::ServiceError;

/// Checks a policy document (`MalformedPolicyDocumentException`).
pub(super) fn check_policy(text: &str) -> Result<(), ServiceError> {
    check_len("policy", text.len(), 1, policy::MAX_POLICY_LEN)?;
    KeyPolicy::parse(text)
        .map(|_| ())
        .map_err(|e| err(400, "MalformedPolicyDocumentException", e.to_string()))
}

pub(super) fn run(
    kms: &LocalKms,
    req: CreateKeyRequest,
    caller: &Caller,
    now: SystemTime,
) -> Result<Vec<u8>, ServiceError> {
    kms.same_account(caller, "CreateKey")?;
    let spec = req
        .key_spec
        .as_deref()
        .or(req.customer_master_key_spec.as_deref())
        .unwrap_or("SYMMETRIC_DEFAULT");
    if req.key_spec.is_some() && req.customer_master_key_spec.is_some() {
        return Err(err(
            400,
            "ValidationException",
            "Specify KeySpec or CustomerMasterKeySpec, not both",
        ));
    }
    match req.origin.as_deref() {
        None | Some("AWS_KMS") => {}
        Some(other) => {
            return Err(err(
                400,
                "UnsupportedOperationException",
                format!("the local KMS creates AWS_KMS keys only, not {other}"),
            ));
        }
    }
    if req.multi_region == Some(true) {
        return Err(err(
            400,
            "UnsupportedOperationException",
            "the local KMS has no multi-Region keys",
        ));
    }
    let kind = KeyKind::from_spec(spec, req.key_usage.as_deref())?;
    let description = req.description.unwrap_or_default();
    check_len("description", description.len(), 0, 8192)?;
    let policy = match req.policy {
        Some(p) => {
            check_policy(&p)?;
            p
        }
        None => policy::default_policy(&kms.config.account_id),
    };
    let tags = super::tags::validate(req.tags.unwrap_or_default())?;
    let mut entry = KeyEntry::generate(kind, policy, description, epoch(now))?;
    entry.tags = tags.into_iter().map(|t| (t.tag_key, t.tag_value)).collect();
    let metadata = super::describe_key::metadata(kms, &entry);
    let mut store = kms.lock()?;
    store.keys.insert(entry.id.clone(), entry);
    kms.save(&store)?;
    let mut resp = KeyMetadataResponse::default();
    resp.key_metadata = metadata;
    json(&resp)
}
