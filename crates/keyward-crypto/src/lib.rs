//! Keyward's cryptography: envelope encryption of key values, the master keys (KEKs) that
//! wrap data keys, management-token hashing, password hashing and TOTP.
//!
//! Architecture invariant: this is the only crate that handles key material as bytes.
//! Everything secret lives in `secrecy`/`zeroize` types here, and leaves only as a
//! [`SecretString`](secrecy::SecretString) through a loudly named call
//! ([`Keyring::unseal`]). Errors never contain plaintext or key bytes.

pub mod audit;
pub mod backup;
mod envelope;
mod error;
pub mod hsm;
pub mod password;
mod provider;
mod random;
pub mod token;
pub mod totp;

pub use envelope::{ALGORITHM, Keyring, LiveKeyring, MasterKey, sealed_from_text, sealed_to_text};
pub use error::CryptoError;
pub use provider::{KeyringFile, derive_from_passphrase, parse_master_key};
pub use random::OsRandomness;
