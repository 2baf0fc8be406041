//! What the store records about master keys (KEKs): never the key, only its id, whether it
//! is the one new data keys are wrapped with, and a verifier that proves at start-up that
//! the configured master key is the one this vault was sealed with.

use jiff::Timestamp;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterKeyRecord {
    /// Fingerprint-derived id, e.g. `kek_3f9a…`.
    pub kek_id: String,
    pub current: bool,
    /// A known constant sealed under this KEK; opening it proves possession.
    pub verifier: Vec<u8>,
    pub created_at: Timestamp,
}

/// How many key versions each KEK wraps; a KEK with none may be retired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KekUsage {
    pub kek_id: String,
    pub versions: u64,
}

/// How long an instance's last report counts it as alive (instances report every 2 s).
pub const INSTANCE_LIVE_WITHIN: jiff::SignedDuration = jiff::SignedDuration::from_secs(10);

/// What a running instance says about the master keys it holds, every few seconds: a
/// rotation waits until every live instance holds the new key, and retiring a key is
/// refused while a live instance still wraps new data with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceReport {
    /// Fresh at every start.
    pub id: String,
    /// The KEK it wraps new data keys with.
    pub current_kek: String,
    /// Every KEK it holds (the current one included).
    pub keks: Vec<String>,
    /// Keyward's version.
    pub version: String,
    pub started_at: Timestamp,
    pub seen_at: Timestamp,
}
