//! The `keyward` binary's library: configuration, vault start-up, the management
//! operations ([`app`]), the HTTP API ([`http`]) and the CLI ([`cli`]).
//!
//! Architecture invariant: this is the only crate that knows HTTP status codes, and it has
//! no SQL; persistence goes through `keyward_core::ports::Store`.

pub mod access;
pub mod app;
pub mod approvals;
pub mod audit;
pub mod cli;
pub mod compliance;
pub mod config;
pub mod guided_rotation;
pub mod health;
pub mod http;
pub mod metrics;
pub mod mfa;
pub mod notifications;
mod qr;
pub mod rotation;
pub mod server;
pub mod sessions;
pub mod setup;
pub mod ui;
pub mod users;
pub mod vault;
