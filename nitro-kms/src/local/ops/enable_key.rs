//! `EnableKey` and `DisableKey` (refused while the key is pending deletion).

use super::super::wire::KeyIdRequest;
use super::super::{Caller, LocalKms};
use crate::error::ServiceError;

pub(super) fn run(
    kms: &LocalKms,
    req: KeyIdRequest,
    caller: &Caller,
    enabled: bool,
) -> Result<Vec<u8>, ServiceError> {
    kms.change_key(
        req.key_id.as_deref(),
        caller,
        if enabled { "EnableKey" } else { "DisableKey" },
        |key| kms.not_pending(key),
        |key| {
            key.enabled = enabled;
            Ok(b"{}".to_vec())
        },
    )
}
