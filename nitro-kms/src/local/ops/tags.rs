//! `TagResource`, `UntagResource`, `ListResourceTags` (and the checks `CreateKey` applies to
//! its `Tags`).

use super::super::wire::{ListRequest, ListResourceTagsResponse, Tag, TagResourceRequest};
use super::super::{Caller, KeyRef, LocalKms, err, json, required};
use super::page;
use crate::error::ServiceError;

/// Most tags on one key.
const MAX_TAGS: usize = 50;

fn tag_error(message: impl Into<String>) -> ServiceError {
    err(400, "TagException", message)
}

/// Checks tags: keys of 1 to 128 characters outside the reserved `aws:` prefix, values of at
/// most 256 characters.
pub(super) fn validate(tags: Vec<Tag>) -> Result<Vec<Tag>, ServiceError> {
    for t in &tags {
        if t.tag_key.is_empty() || t.tag_key.chars().count() > 128 {
            return Err(tag_error("TagKey must have 1 to 128 characters"));
        }
        if t.tag_value.chars().count() > 256 {
            return Err(tag_error("TagValue must have at most 256 characters"));
        }
        if t.tag_key.to_ascii_lowercase().starts_with("aws:") {
            return Err(tag_error(format!(
                "Tag key {} uses the reserved aws: prefix",
                t.tag_key
            )));
        }
    }
    if tags.len() > MAX_TAGS {
        return Err(tag_error(format!("at most {MAX_TAGS} tags per key")));
    }
    Ok(tags)
}

pub(super) fn tag(
    kms: &LocalKms,
    req: TagResourceRequest,
    caller: &Caller,
) -> Result<Vec<u8>, ServiceError> {
    let tags = validate(req.tags.ok_or_else(|| required("tags"))?)?;
    kms.change_key(
        req.key_id.as_deref(),
        caller,
        "TagResource",
        |key| {
            kms.not_pending(key)?;
            let mut merged = key.tags.clone();
            for t in &tags {
                merged.insert(t.tag_key.clone(), t.tag_value.clone());
            }
            if merged.len() > MAX_TAGS {
                return Err(tag_error(format!("at most {MAX_TAGS} tags per key")));
            }
            Ok(())
        },
        |key| {
            for t in &tags {
                key.tags.insert(t.tag_key.clone(), t.tag_value.clone());
            }
            Ok(b"{}".to_vec())
        },
    )
}

pub(super) fn untag(
    kms: &LocalKms,
    req: TagResourceRequest,
    caller: &Caller,
) -> Result<Vec<u8>, ServiceError> {
    let keys = req.tag_keys.ok_or_else(|| required("tagKeys"))?;
    kms.change_key(
        req.key_id.as_deref(),
        caller,
        "UntagResource",
        |key| kms.not_pending(key),
        |key| {
            for t in &keys {
                key.tags.remove(t);
            }
            Ok(b"{}".to_vec())
        },
    )
}

pub(super) fn list(
    kms: &LocalKms,
    req: ListRequest,
    caller: &Caller,
) -> Result<Vec<u8>, ServiceError> {
    let store = kms.lock()?;
    let key = kms.find(&store, req.key_id.as_deref(), KeyRef::KeyOnly)?;
    kms.authorize_admin(key, caller, "ListResourceTags")?;
    let items: Vec<(String, Tag)> = key
        .tags
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                Tag {
                    tag_key: k.clone(),
                    tag_value: v.clone(),
                },
            )
        })
        .collect();
    let (tags, truncated, next_marker) = page(items, req.marker.as_deref(), req.limit, 50, 50)?;
    json(&ListResourceTagsResponse {
        tags,
        truncated,
        next_marker,
    })
}
