//! Human users. Login, sessions and MFA build on this later; the headless
//! `keyward admin create` stores the first owner now.

use jiff::Timestamp;

use crate::Error;
use crate::access::Role;
use crate::id::UserId;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: UserId,
    pub username: String,
    /// Argon2id PHC string; never the password.
    pub password_hash: String,
    pub role: Role,
    pub disabled: bool,
    pub created_at: Timestamp,
}

pub const USERNAME_MAX: usize = 64;
/// ASVS 5 §6.2: at least 12 characters, at least 64 allowed, no composition rules.
pub const PASSWORD_MIN: usize = 12;
pub const PASSWORD_MAX: usize = 256;

pub fn validate_username(value: &str) -> Result<String, Error> {
    let value = value.trim();
    let ok = (1..=USERNAME_MAX).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'));
    if ok {
        Ok(value.to_owned())
    } else {
        Err(Error::invalid(
            "invalid_username",
            format!("a username is 1–{USERNAME_MAX} characters of letters, digits and `._-@`"),
        ))
    }
}

/// Checks a new password's length (counted in characters, so passphrases in any script work).
pub fn check_password_length(password: &str) -> Result<(), Error> {
    let len = password.chars().count();
    if len < PASSWORD_MIN {
        Err(Error::invalid(
            "password_too_short",
            format!("a password needs at least {PASSWORD_MIN} characters"),
        ))
    } else if len > PASSWORD_MAX {
        Err(Error::invalid(
            "password_too_long",
            format!("a password can have at most {PASSWORD_MAX} characters"),
        ))
    } else {
        Ok(())
    }
}
