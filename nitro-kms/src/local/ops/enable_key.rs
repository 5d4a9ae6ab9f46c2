//! `EnableKey` and `DisableKey` (refused while the key is pending deletion).

use super::super::wire::KeyIdRequest;
use super::super::{Caller, KeyRef, LocalKms};
use crate::error::ServiceError;

pub(super) fn run(
    kms: &LocalKms,
    req: KeyIdRequest,
    caller: &Caller,
    enabled: bool,
) -> Result<Vec<u8>, ServiceError> {
    let mut store = kms.lock()?;
    let id = {
        let key = kms.find(&store, req.key_id.as_deref(), KeyRef::KeyOnly)?;
        kms.authorize_admin(
            key,
            caller,
            if enabled { "EnableKey" } else { "DisableKey" },
        )?;
        kms.not_pending(key)?;
        key.id.clone()
    };
    if let Some(k) = store.keys.get_mut(&id) {
        k.enabled = enabled;
    }
    kms.save(&store)?;
    Ok(b"{}".to_vec())
}
