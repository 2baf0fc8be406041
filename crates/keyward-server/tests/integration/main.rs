//! End-to-end tests against the real server: in-process on port 0 for the API, and the
//! real `keyward` binary as a child process where restarts, kills and output matter.
//! One test binary with modules, so the (large) link happens once.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "tests"
)]

mod browser;
mod browser_ui;
mod chrome;
mod fake_llm;
mod helpers;
mod softhsm;

mod access;
mod alerts;
mod anomaly;
mod app_tokens;
mod approvals;
mod audit;
mod auth;
mod backup;
mod catalog;
mod cluster;
mod compliance;
mod durability;
mod email;
mod expiry;
mod freshness;
mod guided_rotation;
mod health;
mod hsm;
mod keys;
mod leaks;
mod llm;
mod matrix;
mod mfa;
mod notifications;
mod online_rotation;
mod postgres_tls;
mod providers;
mod proxy;
mod retention;
mod revocation;
mod rotation_policy;
mod sdk;
mod sessions;
mod shared_limits;
mod tls;
mod ui;
mod ui_approvals;
mod users;
mod validation;
mod vault;
