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
