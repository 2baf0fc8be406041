//! Keyward's domain: what a service, key, version, environment and role *are*, the rules
//! that keep them valid, and the ports (traits) through which the rest of the system stores
//! them.
//!
//! Architecture invariant: this crate does no IO. It has no async runtime, no SQL and no
//! HTTP; time and randomness arrive as parameters ([`Clock`], [`Randomness`]) so every rule
//! here can be tested deterministically. The store ports are `async` traits only so that
//! implementations elsewhere can await; nothing in here awaits anything.

/// `as_str`, `ALL`, `FromStr` (with a stable error code listing the accepted values) and
/// `Display` for a plain enum stored and sent as snake_case text.
macro_rules! string_enum {
    ($ty:ty { $($variant:ident = $text:literal),+ $(,)? }, $code:literal, $what:literal) => {
        impl $ty {
            pub const ALL: &'static [$ty] = &[$(<$ty>::$variant),+];
            pub fn as_str(self) -> &'static str {
                match self { $(<$ty>::$variant => $text),+ }
            }
        }
        impl std::str::FromStr for $ty {
            type Err = $crate::Error;
            fn from_str(s: &str) -> Result<Self, $crate::Error> {
                match s {
                    $($text => Ok(<$ty>::$variant),)+
                    other => Err($crate::Error::invalid($code, format!(
                        concat!("`{}` is not a ", $what, " (expected one of: {})"),
                        $crate::label::printable(other),
                        [$($text),+].join(", ")
                    ))),
                }
            }
        }
        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

pub mod access;
pub mod alert;
pub mod anomaly;
pub mod answer;
pub mod app_token;
pub mod approval;
pub mod audit;
pub mod backtest;
pub mod backup;
pub mod budget;
pub mod catalog;
pub mod clock;
pub mod compliance;
pub mod error;
pub mod forecast;
pub mod guided_rotation;
pub mod health;
pub mod id;
pub mod key;
pub mod label;
pub mod market;
pub mod master_key;
pub mod mfa;
pub mod notification;
pub mod pattern;
pub mod ports;
pub mod recommend;
pub mod response;
pub mod rollup;
pub mod rotation;
pub mod secret;
pub mod service;
pub mod session;
pub mod sighting;
pub mod throttle;
pub mod token;
pub mod usage;
pub mod user;

pub use clock::{Clock, ManualClock, Randomness, SystemClock};
pub use error::{Error, ErrorKind, Result};
pub use jiff::Timestamp;
