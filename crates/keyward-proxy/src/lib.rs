//! Keyward's data plane: routing `/proxy/{service}/…`, app-token checks, key injection,
//! limits, cache, retries, streaming and metering.
//!
//! Architecture invariant: the request path never awaits the database. It reads an
//! immutable [`Snapshot`] of services, app tokens and keys (values still sealed), which the
//! server rebuilds from the store whenever something changes and swaps in atomically.

mod cache;
mod forward;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
mod health;
mod limits;
mod links;
mod manage;
mod meter;
mod probe;
mod quota;
mod redact;
pub mod shared;
mod snapshot;
mod upstream;
mod validate;

pub use forward::{
    CACHE_HEADER, ENVIRONMENT_HEADER, EVENT_CHANNEL_CAPACITY, Inbound, Proxy, ProxyConfig,
    ProxyEvent, ProxyGauges, SharedGauges, TOKEN_HEADER, WARNING_HEADER,
};
pub use limits::TokenRateLimits;
pub use manage::CreatedKey;
pub use quota::{Meters, Spend};
pub use snapshot::{Alternate, LiveKey, Route, Snapshot};
pub use upstream::{BoxError, Outbound, ProxyBody};
pub use validate::{Validation, Verdict};
