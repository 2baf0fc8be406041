//! Keyward's use cases, one module per thing users do, over the store ports and the data
//! plane: [`keys`], [`app_tokens`], [`catalog`], [`usage`], [`identity`] (users, sessions,
//! MFA, first-run setup, access), [`approvals`], [`audit`], [`lifecycle`] (rotation policy,
//! guided rotation, health, compliance), [`alerts`] (the anomaly watcher and its alerts),
//! [`notifications`] and the [`vault`] (master key).
//!
//! Architecture invariant: nothing of HTTP, HTML or the command line lives here — no axum,
//! maud, clap, hyper server, tower-http or status codes (`tests/dependencies.rs` checks the
//! crate graph). The REST API, the web UI and the CLI in `keyward-server` are thin faces of
//! these use cases; refusals are `keyward_core::Error`s whose kind the edges translate.

pub mod actor;
pub mod alerts;
pub mod allowance;
pub mod app;
pub mod app_tokens;
pub mod approvals;
pub mod audit;
pub mod backup;
pub mod catalog;
pub mod forecasts;
pub mod identity;
pub mod key_file;
pub mod keys;
pub mod lifecycle;
pub mod masters;
pub mod notifications;
pub mod pipeline;
pub mod recommendations;
pub mod retention;
pub mod usage;
pub mod vault;

pub use actor::Actor;
pub use app::{App, AppOptions, RedisOptions};
pub use identity::access::TokenLimits;
pub use keys::NewKey;
pub use keys::impact::Impact;
