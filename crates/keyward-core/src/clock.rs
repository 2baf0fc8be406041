//! Time and randomness as injectable capabilities.
//!
//! Nothing in Keyward reads the wall clock or the OS random source directly: code that needs
//! either takes a `&dyn Clock` / `&dyn Randomness`, so tests can pin time (recovery windows,
//! expiry) and make ids reproducible.

use std::sync::Mutex;

use jiff::{SignedDuration, Timestamp};

/// How long until `later`, never negative.
pub fn until(now: Timestamp, later: Timestamp) -> std::time::Duration {
    let d: SignedDuration = later.duration_since(now);
    d.try_into().unwrap_or_default()
}

pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> Timestamp;
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock that only moves when told to; for tests.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<Timestamp>,
}

impl ManualClock {
    pub fn new(start: Timestamp) -> Self {
        Self {
            now: Mutex::new(start),
        }
    }

    pub fn advance(&self, by: SignedDuration) {
        let mut now = self.now.lock().unwrap_or_else(|poison| poison.into_inner());
        *now = now.saturating_add(by).unwrap_or(*now);
    }

    pub fn set(&self, to: Timestamp) {
        *self.now.lock().unwrap_or_else(|poison| poison.into_inner()) = to;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.now.lock().unwrap_or_else(|poison| poison.into_inner())
    }
}

/// A source of cryptographically secure random bytes. The production implementation
/// (`keyward_crypto::OsRandomness`) reads the OS CSPRNG.
pub trait Randomness: Send + Sync + std::fmt::Debug {
    fn fill(&self, dest: &mut [u8]);

    fn u128(&self) -> u128 {
        let mut bytes = [0u8; 16];
        self.fill(&mut bytes);
        u128::from_le_bytes(bytes)
    }
}
