//! `DescribeKey` (and the `KeyMetadata` other operations return).

use super::super::store::{KeyEntry, KeyState};
use super::super::wire::{KeyIdRequest, KeyMetadata, KeyMetadataResponse};
use super::super::{Caller, KeyRef, LocalKms, json};
use crate::error::ServiceError;

fn names(list: &[&str]) -> Option<Vec<String>> {
    (!list.is_empty()).then(|| list.iter().map(|s| (*s).to_owned()).collect())
}

/// A key's `KeyMetadata`.
pub(super) fn metadata(kms: &LocalKms, key: &KeyEntry) -> KeyMetadata {
    let mut m = KeyMetadata::default();
    m.aws_account_id = kms.config.account_id.clone();
    m.key_id = key.id.clone();
    m.arn = kms.key_arn(&key.id);
    m.creation_date = key.created;
    m.enabled = key.state() == KeyState::Enabled;
    m.description = key.description.clone();
    m.key_usage = key.kind.usage().name().into();
    m.key_state = key.state().name().into();
    m.deletion_date = key.deletion.map(|d| d.date);
    m.pending_deletion_window_in_days = key.deletion.map(|d| d.window_days);
    m.origin = "AWS_KMS".into();
    m.key_manager = "CUSTOMER".into();
    m.key_spec = key.kind.spec().into();
    m.customer_master_key_spec = key.kind.spec().into();
    m.encryption_algorithms = names(key.kind.encryption_algorithms());
    m.signing_algorithms = names(key.kind.signing_algorithms());
    m.key_agreement_algorithms = names(key.kind.key_agreement_algorithms());
    m.multi_region = false;
    m
}

pub(super) fn run(
    kms: &LocalKms,
    req: KeyIdRequest,
    caller: &Caller,
) -> Result<Vec<u8>, ServiceError> {
    let store = kms.lock()?;
    let key = kms.find(&store, req.key_id.as_deref(), KeyRef::AliasAllowed)?;
    kms.authorize_admin(key, caller, "DescribeKey")?;
    let mut resp = KeyMetadataResponse::default();
    resp.key_metadata = metadata(kms, key);
    json(&resp)
}
