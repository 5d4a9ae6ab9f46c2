//! `UpdateKeyDescription` (refused while the key is pending deletion).

use super::super::wire::UpdateKeyDescriptionRequest;
use super::super::{Caller, KeyRef, LocalKms, check_len, required};
use crate::error::ServiceError;

pub(super) fn run(
    kms: &LocalKms,
    req: UpdateKeyDescriptionRequest,
    caller: &Caller,
) -> Result<Vec<u8>, ServiceError> {
    let description = req.description.ok_or_else(|| required("description"))?;
    check_len("description", description.len(), 0, 8192)?;
    let mut store = kms.lock()?;
    let id = {
        let key = kms.find(&store, req.key_id.as_deref(), KeyRef::KeyOnly)?;
        kms.authorize_admin(key, caller, "UpdateKeyDescription")?;
        kms.not_pending(key)?;
        key.id.clone()
    };
    if let Some(k) = store.keys.get_mut(&id) {
        k.description = description;
    }
    kms.save(&store)?;
    Ok(b"{}".to_vec())
}
