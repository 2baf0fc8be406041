//! What the proxy has learned about each key from provider answers: rejected (401/403) or
//! quota-limited. Raised here at once (so the very next request avoids the key), written
//! to the store off the request path (so the API and other instances see it), and read back
//! through the snapshot. The newer of the local and the stored state wins.

use std::collections::HashMap;
use std::sync::Mutex;

use jiff::Timestamp;
use keyward_core::id::KeyId;
use keyward_core::usage::KeyFlag;

#[derive(Debug, Clone)]
enum Local {
    Raised(KeyFlag),
    Cleared(Timestamp),
}

#[derive(Debug, Default)]
pub struct KeyHealth {
    local: Mutex<HashMap<KeyId, Local>>,
}

impl KeyHealth {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<KeyId, Local>> {
        self.local.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The key's flag in force at `now`, given what the store said (`stored`).
    pub fn flag(&self, key: &KeyId, stored: Option<&KeyFlag>, now: Timestamp) -> Option<KeyFlag> {
        let local = self.lock().get(key).cloned();
        let effective = match (local, stored) {
            (None, stored) => stored.cloned(),
            (Some(Local::Raised(mine)), Some(theirs)) if theirs.since > mine.since => {
                Some(theirs.clone())
            }
            (Some(Local::Raised(mine)), _) => Some(mine),
            (Some(Local::Cleared(at)), Some(theirs)) if theirs.since > at => Some(theirs.clone()),
            (Some(Local::Cleared(_)), _) => None,
        };
        effective.filter(|f| f.in_force(now))
    }

    pub fn raise(&self, flag: KeyFlag) {
        self.lock().insert(flag.key_id.clone(), Local::Raised(flag));
    }

    pub fn clear(&self, key: &KeyId, now: Timestamp) {
        self.lock().insert(key.clone(), Local::Cleared(now));
    }

    /// Forgets keys no longer in the snapshot.
    pub fn retain(&self, keep: impl Fn(&KeyId) -> bool) {
        self.lock().retain(|k, _| keep(k));
    }
}

#[cfg(test)]
mod tests {
    use keyward_core::usage::KeyFlagKind;

    use super::*;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).expect("ts")
    }

    fn flag(since: i64, until: Option<i64>) -> KeyFlag {
        KeyFlag {
            key_id: "key_01JD0000000000000000000000".parse().expect("id"),
            kind: KeyFlagKind::QuotaLimited,
            reason: "429".into(),
            since: ts(since),
            until: until.map(ts),
        }
    }

    #[test]
    fn the_newer_state_wins_and_lapsed_flags_are_gone() {
        let health = KeyHealth::default();
        let key = flag(0, None).key_id;
        assert_eq!(
            health.flag(&key, Some(&flag(10, Some(20))), ts(15)),
            Some(flag(10, Some(20)))
        );
        assert_eq!(
            health.flag(&key, Some(&flag(10, Some(20))), ts(20)),
            None,
            "lapsed"
        );
        health.raise(flag(30, None));
        assert_eq!(
            health.flag(&key, Some(&flag(10, None)), ts(31)),
            Some(flag(30, None))
        );
        health.clear(&key, ts(40));
        assert_eq!(
            health.flag(&key, Some(&flag(30, None)), ts(41)),
            None,
            "cleared here after it was stored"
        );
        assert_eq!(
            health.flag(&key, Some(&flag(50, None)), ts(51)),
            Some(flag(50, None)),
            "raised elsewhere later"
        );
    }
}
