//! Server-side sign-in sessions. The browser holds `kws_<public id>_<secret>` in an
//! HttpOnly cookie; the store holds only the secret's hash, so a copy of the database opens
//! no session. Each session also has a CSRF token (also stored hashed) that every
//! state-changing request made with the cookie must echo.

use jiff::{SignedDuration, Timestamp};

use crate::id::UserId;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Finds the session; safe to show (admins end sessions by it).
    pub public_id: String,
    pub secret_hash: Vec<u8>,
    pub csrf_hash: Vec<u8>,
    pub user_id: UserId,
    pub created_at: Timestamp,
    pub last_seen_at: Timestamp,
    /// The absolute end, however active the session is.
    pub expires_at: Timestamp,
    /// When the user last passed an MFA check in this session (step-up looks at it).
    pub mfa_at: Option<Timestamp>,
    pub source: Option<String>,
}

/// How long sessions live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionPolicy {
    /// Ends a session nobody used for this long.
    pub idle: SignedDuration,
    /// Ends every session this long after sign-in.
    pub absolute: SignedDuration,
}

impl Default for SessionPolicy {
    fn default() -> Self {
        Self {
            idle: SignedDuration::from_mins(30),
            absolute: SignedDuration::from_hours(12),
        }
    }
}

impl Session {
    /// Whether the session may still be used at `now`.
    pub fn alive_at(&self, now: Timestamp, policy: &SessionPolicy) -> bool {
        now < self.expires_at && now.duration_since(self.last_seen_at) < policy.idle
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Zero;
    impl crate::Randomness for Zero {
        fn fill(&self, dest: &mut [u8]) {
            dest.fill(0);
        }
    }

    #[test]
    fn sessions_end_when_idle_or_at_their_absolute_limit() {
        let policy = SessionPolicy::default();
        let start = Timestamp::from_second(1_764_000_000).expect("time");
        let at = |mins: i64| start + SignedDuration::from_mins(mins);
        let mut s = Session {
            public_id: "p".into(),
            secret_hash: vec![],
            csrf_hash: vec![],
            user_id: UserId::generate(start, &Zero),
            created_at: start,
            last_seen_at: start,
            expires_at: at(12 * 60),
            mfa_at: None,
            source: None,
        };
        assert!(s.alive_at(at(29), &policy));
        assert!(!s.alive_at(at(30), &policy), "idle for 30 minutes");
        // Kept busy, it still ends at the absolute limit.
        s.last_seen_at = at(12 * 60 - 1);
        assert!(s.alive_at(at(12 * 60 - 1), &policy));
        assert!(!s.alive_at(at(12 * 60), &policy));
    }
}
