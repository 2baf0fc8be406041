//! Identity: who someone is and what they may do — users and password checks
//! ([`users`]), sign-in sessions ([`sessions`]), second factors and the MFA policy
//! ([`mfa`], QR codes in [`qr`]), the first owner ([`setup`]), and access — roles, grants,
//! allowlists and management tokens ([`access`]).

pub mod access;
pub mod mfa;
pub mod passwords;
pub mod qr;
pub mod sessions;
pub mod setup;
pub mod users;
