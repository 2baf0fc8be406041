//! Management API tokens: how automation authenticates to `/api/v1`.
//!
//! The token's secret is shown once at creation; the store keeps only its hash, looked up by
//! the public id embedded in the token (`kwm_<public id>_<secret>`).

use jiff::Timestamp;

use crate::access::{Role, Scope};
use crate::id::TokenId;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagementToken {
    pub id: TokenId,
    /// The non-secret part of the token string, used for lookup.
    pub public_id: String,
    pub name: String,
    pub role: Role,
    /// SHA-256 of the secret part (the secret is 256 random bits, so a fast hash is enough).
    pub secret_hash: Vec<u8>,
    pub created_by: String,
    /// The user or token that minted this one (`None`: the console — the CLI).
    pub created_by_id: Option<String>,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub last_used_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
    /// The part of the vault the token's role applies to.
    pub scope: Scope,
    /// Where the token may be used from (empty: anywhere the role allows).
    pub allowed_networks: Vec<ipnet::IpNet>,
}

impl ManagementToken {
    pub fn usable_at(&self, now: Timestamp) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|at| at > now)
    }
}
