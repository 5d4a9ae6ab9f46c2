//! `ScheduleKeyDeletion` (7 to 30 days, default 30; the key is `PendingDeletion` and refuses
//! use with `KMSInvalidStateException`) and `CancelKeyDeletion` (the key comes back
//! `Disabled`, as in AWS).

use std::time::SystemTime;

use super::super::store::{DAY, Deletion, KeyState};
use super::super::wire::{
    KeyIdRequest, KeyIdResponse, ScheduleKeyDeletionRequest, ScheduleKeyDeletionResponse,
};
use super::super::{Caller, LocalKms, epoch, err, json, validation};
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
    let date = epoch(now) + f64::from(days) * DAY;
    let id = kms.change_key(
        req.key_id.as_deref(),
        caller,
        "ScheduleKeyDeletion",
        |key| kms.not_pending(key),
        |key| {
            key.enabled = false;
            key.deletion = Some(Deletion {
                date,
                window_days: days,
            });
            Ok(key.id.clone())
        },
    )?;
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
    let id = kms.change_key(
        req.key_id.as_deref(),
        caller,
        "CancelKeyDeletion",
        |key| {
            if key.state() != KeyState::PendingDeletion {
                return Err(err(
                    400,
                    "KMSInvalidStateException",
                    format!("{} is not pending deletion.", kms.key_arn(&key.id)),
                ));
            }
            Ok(())
        },
        |key| {
            key.deletion = None;
            key.enabled = false;
            Ok(key.id.clone())
        },
    )?;
    json(&KeyIdResponse {
        key_id: kms.key_arn(&id),
    })
}
