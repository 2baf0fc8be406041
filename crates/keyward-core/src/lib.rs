//! Keyward's domain: what a service, key, version, environment and role *are*, the rules
//! that keep them valid, and the ports (traits) through which the rest of the system stores
//! them.
//!
//! Architecture invariant: this crate does no IO. It has no async runtime, no SQL and no
//! HTTP; time and randomness arrive as parameters ([`Clock`], [`Randomness`]) so every rule
//! here can be tested deterministically. The store ports are `async` traits only so that
//! implementations elsewhere can await; nothing in here awaits anything.

pub mod access;
pub mod app_token;
pub mod catalog;
pub mod clock;
pub mod error;
pub mod id;
pub mod key;
pub mod label;
pub mod master_key;
pub mod ports;
pub mod secret;
pub mod service;
pub mod token;
pub mod usage;
pub mod user;

pub use clock::{Clock, ManualClock, Randomness, SystemClock};
pub use error::{Error, ErrorKind, Result};
pub use jiff::Timestamp;
