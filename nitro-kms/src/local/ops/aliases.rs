//! `CreateAlias`, `UpdateAlias`, `DeleteAlias`, `ListAliases`. Aliases are authorised by the
//! key policy of the key(s) involved (AWS also asks IAM about the alias resource; there is no
//! IAM here).

use std::time::SystemTime;

use super::super::store::AliasEntry;
use super::super::wire::{AliasListEntry, AliasRequest, ListAliasesResponse, ListRequest};
use super::super::{Caller, KeyRef, LocalKms, epoch, err, json, required};
use super::page;
use crate::error::ServiceError;

/// Checks an alias name: `alias/` then letters, digits, `/`, `_`, `-` and `:` (256 characters
/// at most), not in the reserved `alias/aws/` namespace.
pub(crate) fn check_name(name: &str) -> Result<(), ServiceError> {
    if name.is_empty() || name.len() > 256 {
        return Err(super::super::validation(
            "1 validation error detected: Value at 'aliasName' failed to satisfy constraint: Member must have length between 1 and 256",
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-' | b':'))
    {
        return Err(super::super::validation(format!(
            "1 validation error detected: Value '{name}' at 'aliasName' failed to satisfy constraint: Member must satisfy regular expression pattern: ^[a-zA-Z0-9:/_-]+$"
        )));
    }
    let Some(rest) = name.strip_prefix("alias/") else {
        return Err(err(
            400,
            "InvalidAliasNameException",
            format!("Alias must start with the prefix \"alias/\": {name}"),
        ));
    };
    if rest.is_empty() || name.starts_with("alias/aws/") {
        return Err(err(
            400,
            "InvalidAliasNameException",
            format!("{name}: the alias/aws/ prefix is reserved for AWS managed keys"),
        ));
    }
    Ok(())
}

pub(super) fn create(
    kms: &LocalKms,
    req: AliasRequest,
    caller: &Caller,
    now: SystemTime,
) -> Result<Vec<u8>, ServiceError> {
    kms.same_account(caller, "CreateAlias")?;
    let name = req.alias_name.ok_or_else(|| required("aliasName"))?;
    check_name(&name)?;
    let mut store = kms.lock()?;
    let target = {
        let key = kms.find(&store, req.target_key_id.as_deref(), KeyRef::KeyOnly)?;
        kms.authorize_admin(key, caller, "CreateAlias")?;
        kms.not_pending(key)?;
        key.id.clone()
    };
    if store.aliases.contains_key(&name) {
        return Err(err(
            400,
            "AlreadyExistsException",
            format!(
                "An alias with the name {} already exists",
                kms.alias_arn(&name)
            ),
        ));
    }
    let t = epoch(now);
    store.aliases.insert(
        name.clone(),
        AliasEntry {
            name,
            target,
            created: t,
            updated: t,
        },
    );
    kms.save(&store)?;
    Ok(b"{}".to_vec())
}

fn not_found(kms: &LocalKms, name: &str) -> ServiceError {
    err(
        400,
        "NotFoundException",
        format!("Alias {} is not found.", kms.alias_arn(name)),
    )
}

pub(super) fn update(
    kms: &LocalKms,
    req: AliasRequest,
    caller: &Caller,
    now: SystemTime,
) -> Result<Vec<u8>, ServiceError> {
    let name = req.alias_name.ok_or_else(|| required("aliasName"))?;
    check_name(&name)?;
    let mut store = kms.lock()?;
    let old = store
        .aliases
        .get(&name)
        .map(|a| a.target.clone())
        .ok_or_else(|| not_found(kms, &name))?;
    let target = {
        let new = kms.find(&store, req.target_key_id.as_deref(), KeyRef::KeyOnly)?;
        let old = store
            .keys
            .get(&old)
            .ok_or_else(|| super::super::internal("alias names a missing key"))?;
        kms.authorize_admin(old, caller, "UpdateAlias")?;
        kms.authorize_admin(new, caller, "UpdateAlias")?;
        kms.not_pending(new)?;
        if old.kind.is_symmetric() != new.kind.is_symmetric()
            || old.kind.usage() != new.kind.usage()
        {
            return Err(super::super::validation(format!(
                "{} and {} are not the same type of key with the same key usage",
                kms.key_arn(&old.id),
                kms.key_arn(&new.id)
            )));
        }
        new.id.clone()
    };
    if let Some(a) = store.aliases.get_mut(&name) {
        a.target = target;
        a.updated = epoch(now);
    }
    kms.save(&store)?;
    Ok(b"{}".to_vec())
}

pub(super) fn delete(
    kms: &LocalKms,
    req: AliasRequest,
    caller: &Caller,
) -> Result<Vec<u8>, ServiceError> {
    let name = req.alias_name.ok_or_else(|| required("aliasName"))?;
    check_name(&name)?;
    let mut store = kms.lock()?;
    let target = store
        .aliases
        .get(&name)
        .map(|a| a.target.clone())
        .ok_or_else(|| not_found(kms, &name))?;
    if let Some(key) = store.keys.get(&target) {
        kms.authorize_admin(key, caller, "DeleteAlias")?;
    }
    store.aliases.remove(&name);
    kms.save(&store)?;
    Ok(b"{}".to_vec())
}

pub(super) fn list(kms: &LocalKms, req: ListRequest) -> Result<Vec<u8>, ServiceError> {
    let store = kms.lock()?;
    let only = match req.key_id.as_deref() {
        Some(k) => Some(kms.resolve(&store, Some(k), KeyRef::KeyOnly)?),
        None => None,
    };
    let items: Vec<(String, AliasListEntry)> = store
        .aliases
        .values()
        .filter(|a| only.as_ref().is_none_or(|k| &a.target == k))
        .map(|a| {
            (
                a.name.clone(),
                AliasListEntry {
                    alias_name: a.name.clone(),
                    alias_arn: kms.alias_arn(&a.name),
                    target_key_id: a.target.clone(),
                    creation_date: a.created,
                    last_updated_date: a.updated,
                },
            )
        })
        .collect();
    let (aliases, truncated, next_marker) = page(items, req.marker.as_deref(), req.limit, 50, 100)?;
    json(&ListAliasesResponse {
        aliases,
        truncated,
        next_marker,
    })
}
