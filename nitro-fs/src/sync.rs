//! Locking helpers shared by the modules.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`; a lock poisoned by a thread that panicked while holding it is taken over
/// rather than turned into a second panic.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
