//! What compliance checks know of each current value — its traits (format match, entropy
//! estimate, keyed fingerprint), never the value — kept in memory by key and version.

use std::collections::HashMap;

use keyward_core::compliance::SecretTraits;
use keyward_core::id::KeyId;

/// Traits of the values already looked at, by key and version.
#[derive(Debug, Default)]
pub struct TraitsCache(std::sync::Mutex<HashMap<(KeyId, u32), SecretTraits>>);

impl TraitsCache {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(KeyId, u32), SecretTraits>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}
