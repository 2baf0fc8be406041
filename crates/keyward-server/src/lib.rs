//! The `keyward` binary's library: the edges around the use cases in `keyward_app` —
//! configuration, the route table ([`routes`]), the HTTP API ([`http`]), the web UI ([`ui`]), the CLI ([`cli`]), the
//! background jobs ([`jobs`]), metrics and the server itself.
//!
//! Architecture invariant: this is the only crate that knows HTTP status codes and HTML, and
//! it decides nothing: handlers and pages translate requests into use cases and their
//! answers or refusals back into responses.

pub mod backups;
pub mod cli;
pub mod config;
pub mod http;
pub mod jobs;
pub mod metrics;
pub mod routes;
pub mod server;
pub mod tls;
pub mod ui;
