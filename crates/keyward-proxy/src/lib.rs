//! Keyward's data plane: routing `/proxy/{service}/…`, app-token checks, key injection,
//! limits, cache, retries, streaming and metering.
//!
//! Architecture invariant: the request path never awaits the database; it serves from an
//! in-memory snapshot kept current by a change feed.
//!
//! Empty on purpose until the proxy issue: the foundation (vault, store, management API)
//! lands first, and this crate is where the data plane will live.
