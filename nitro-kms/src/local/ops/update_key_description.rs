//! `UpdateKeyDescription` (refused while the key is pending deletion).

use super::super::wire::UpdateKeyDescriptionRequest;
use super::super::{Caller, LocalKms, check_len, required};
use crate::error::ServiceError;

pub(super) fn run(
    kms: &LocalKms,
    req: UpdateKeyDescriptionRequest,
    caller: &Caller,
) -> Result<Vec<u8>, ServiceError> {
    let description = req.description.ok_or_else(|| required("description"))?;
    check_len("description", description.len(), 0, 8192)?;
    kms.change_key(
        req.key_id.as_deref(),
        caller,
        "UpdateKeyDescription",
        |key| kms.not_pending(key),
        |key| {
            key.description = description;
            Ok(b"{}".to_vec())
        },
    )
}
