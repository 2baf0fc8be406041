//! A key's life after it is stored: the rotation policy and where each key stands against
//! it ([`rotation_policy`]), guided rotations with a dual-key window
//! ([`guided_rotation`]), health — passive call statistics, probes, service disruption
//! ([`health`]) — and strength and compliance checks ([`compliance`]).

pub mod compliance;
pub mod guided_rotation;
pub mod health;
pub mod rotation_policy;
pub mod traits;
