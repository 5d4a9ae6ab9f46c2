//! `EnableKeyRotation`, `DisableKeyRotation`, `GetKeyRotationStatus`, `RotateKeyOnDemand`
//! (symmetric keys). Rotation adds key material and keeps the old material, so ciphertexts
//! made before a rotation keep decrypting; automatic rotation happens when a request arrives
//! after the due date.

use std::time::SystemTime;

use super::super::store::{DAY, KeyEntry, KeyState, Rotation};
use super::super::wire::{
    EnableKeyRotationRequest, GetKeyRotationStatusResponse, KeyIdRequest, KeyIdResponse,
};
use super::super::{Caller, KeyRef, LocalKms, epoch, err, json, validation};
use crate::error::ServiceError;

/// Default and bounds of `RotationPeriodInDays`.
const DEFAULT_PERIOD: u32 = 365;
const MIN_PERIOD: i64 = 90;
const MAX_PERIOD: i64 = 2560;
/// Most `RotateKeyOnDemand` calls per key.
const MAX_ON_DEMAND: u32 = 10;

fn symmetric_only(kms: &LocalKms, key: &KeyEntry) -> Result<(), ServiceError> {
    if !key.kind.is_symmetric() {
        return Err(err(
            400,
            "UnsupportedOperationException",
            format!(
                "{} is a {} key: only symmetric encryption keys rotate",
                kms.key_arn(&key.id),
                key.kind.spec()
            ),
        ));
    }
    Ok(())
}

/// What a rotation change asks of the key: symmetric, and usable (enabled, or an error that
/// says why not).
fn rotatable(kms: &LocalKms, key: &KeyEntry) -> Result<(), ServiceError> {
    symmetric_only(kms, key)?;
    match key.state() {
        KeyState::Enabled => Ok(()),
        _ => kms.usable(key),
    }
}

pub(super) fn enable(
    kms: &LocalKms,
    req: EnableKeyRotationRequest,
    caller: &Caller,
    now: SystemTime,
) -> Result<Vec<u8>, ServiceError> {
    let period = match req.rotation_period_in_days {
        None => DEFAULT_PERIOD,
        Some(p) if (MIN_PERIOD..=MAX_PERIOD).contains(&p) => p as u32,
        Some(p) => {
            return Err(validation(format!(
                "1 validation error detected: Value '{p}' at 'rotationPeriodInDays' failed to satisfy constraint: Member must have value between {MIN_PERIOD} and {MAX_PERIOD}"
            )));
        }
    };
    kms.change_key(
        req.key_id.as_deref(),
        caller,
        "EnableKeyRotation",
        |key| rotatable(kms, key),
        |key| {
            key.rotation = Some(Rotation {
                period_days: period,
                next: epoch(now) + f64::from(period) * DAY,
            });
            Ok(b"{}".to_vec())
        },
    )
}

pub(super) fn disable(
    kms: &LocalKms,
    req: KeyIdRequest,
    caller: &Caller,
) -> Result<Vec<u8>, ServiceError> {
    kms.change_key(
        req.key_id.as_deref(),
        caller,
        "DisableKeyRotation",
        |key| rotatable(kms, key),
        |key| {
            key.rotation = None;
            Ok(b"{}".to_vec())
        },
    )
}

pub(super) fn status(
    kms: &LocalKms,
    req: KeyIdRequest,
    caller: &Caller,
) -> Result<Vec<u8>, ServiceError> {
    let store = kms.lock()?;
    let key = kms.find(&store, req.key_id.as_deref(), KeyRef::KeyOnly)?;
    kms.authorize_admin(key, caller, "GetKeyRotationStatus")?;
    symmetric_only(kms, key)?;
    json(&GetKeyRotationStatusResponse {
        key_rotation_enabled: key.rotation.is_some(),
        key_id: kms.key_arn(&key.id),
        rotation_period_in_days: key.rotation.map(|r| r.period_days),
        next_rotation_date: key.rotation.map(|r| r.next),
    })
}

pub(super) fn on_demand(
    kms: &LocalKms,
    req: KeyIdRequest,
    caller: &Caller,
    now: SystemTime,
) -> Result<Vec<u8>, ServiceError> {
    let id = kms.change_key(
        req.key_id.as_deref(),
        caller,
        "RotateKeyOnDemand",
        |key| rotatable(kms, key),
        |key| {
            if key.on_demand_rotations >= MAX_ON_DEMAND {
                return Err(err(
                    400,
                    "LimitExceededException",
                    format!(
                        "{} has been rotated on demand {MAX_ON_DEMAND} times, the most AWS allows",
                        kms.key_arn(&key.id)
                    ),
                ));
            }
            key.rotate(epoch(now))?;
            key.on_demand_rotations += 1;
            Ok(key.id.clone())
        },
    )?;
    json(&KeyIdResponse {
        key_id: kms.key_arn(&id),
    })
}
