//! `ListKeys` (every key of the account, pending deletion included, as AWS lists them).

use super::super::wire::{KeyListEntry, ListKeysResponse, ListRequest};
use super::super::{LocalKms, json};
use super::page;
use crate::error::ServiceError;

pub(super) fn run(kms: &LocalKms, req: ListRequest) -> Result<Vec<u8>, ServiceError> {
    let store = kms.lock()?;
    let items: Vec<(String, KeyListEntry)> = store
        .keys
        .keys()
        .map(|id| {
            (
                id.clone(),
                KeyListEntry {
                    key_id: id.clone(),
                    key_arn: kms.key_arn(id),
                },
            )
        })
        .collect();
    let (keys, truncated, next_marker) = page(items, req.marker.as_deref(), req.limit, 100, 1000)?;
    json(&ListKeysResponse {
        keys,
        truncated,
        next_marker,
    })
}
