//! `ScheduleKeyDeletion` (7 to 30 days, default 30; the key is `PendingDeletion` and refuses
//! use with `KMSInvalidStateException`) and `CancelKeyDeletion` (the key comes back
//! `Disabled`, as in AWS).

use std::time::SystemTime;

use super::super::store::{DAY, Deletion, KeyState};
use super::super::wire::{
    KeyIdRequest, KeyIdResponse, ScheduleKeyDeletionRequest, ScheduleKeyDeletionResponse,
};
use super::super::{Caller, KeyRef, LocalKms, epoch, err, json, validation};
use crate::error::ServiceError;

pub(super) fn schedule(
    kms: &LocalKms,
    req: ScheduleKeyDeletionRequest,
    caller: &Caller,
    now: SystemTime,
) -> Result<Vec<u8>, ServiceError> {
    let days = match req.pending_window_in_days {
        None => 30,
        Some(d) if (7..=30).contains(&d) => d as u32,
        Some(d) => {
            return Err(validation(format!(
                "1 validation error detected: Value '{d}' at 'pendingWindowInDays' failed to satisfy constraint: Member must have value between 7 and 30"
            )));
        }
    };
    let mut store = kms.lock()?;
    let id = {
        let key = kms.find(&store, req.key_id.as_deref(), KeyRef::KeyOnly)?;
        kms.authorize_admin(key, caller, "ScheduleKeyDeletion")?;
        kms.not_pending(key)?;
        key.id.clone()
    };
    let date = epoch(now) + f64::from(days) * DAY;
    if let Some(k) = store.keys.get_mut(&id) {
        k.enabled = false;
        k.deletion = Some(Deletion {
            date,
            window_days: days,
        });
    }
    kms.save(&store)?;
    json(&ScheduleKeyDeletionResponse {
        key_id: kms.key_arn(&id),
        deletion_date: date,
        key_state: KeyState::PendingDeletion.name().into(),
        pending_window_in_days: days,
    })
}

pub(super) fn cancel(
    kms: &LocalKms,
    req: KeyIdRequest,
    caller: &Caller,
) -> Result<Vec<u8>, ServiceError> {
    let mut store = kms.lock()?;
    let id = {
        let key = kms.find(&store, req.key_id.as_deref(), KeyRef::KeyOnly)?;
        kms.authorize_admin(key, caller, "CancelKeyDeletion")?;
        if key.state() != KeyState::PendingDeletion {
            return Err(err(
                400,
                "KMSInvalidStateException",
                format!("{} is not pending deletion.", kms.key_arn(&key.id)),
            ));
        }
        key.id.clone()
    };
    if let Some(k) = store.keys.get_mut(&id) {
        k.deletion = None;
        k.enabled = false;
    }
    kms.save(&store)?;
    json(&KeyIdResponse {
        key_id: kms.key_arn(&id),
    })
}
