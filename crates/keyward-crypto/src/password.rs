//! Argon2id password hashing for human users (OWASP defaults: 19 MiB, 2 passes).
//!
//! CPU- and memory-heavy by design; callers on an async runtime must run these on a
//! blocking thread and cap how many run at once.

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use keyward_core::Randomness;
use secrecy::{ExposeSecret, SecretString};

use crate::CryptoError;

/// Returns the PHC string (`$argon2id$v=19$m=19456,t=2,p=1$…`).
pub fn hash(password: &SecretString, random: &dyn Randomness) -> Result<String, CryptoError> {
    let mut salt = [0u8; 16];
    random.fill(&mut salt);
    Argon2::default()
        .hash_password_with_salt(password.expose_secret().as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|_| CryptoError::Malformed("password hash"))
}

/// Whether `password` matches the PHC string. A malformed stored hash never matches.
pub fn verify(password: &SecretString, phc: &str) -> bool {
    Argon2::default()
        .verify_password(password.expose_secret().as_bytes(), phc)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::OsRandomness;

    #[test]
    fn hashes_verify_and_never_contain_the_password() {
        let pw = SecretString::from("a long enough passphrase".to_owned());
        let phc = hash(&pw, &OsRandomness).expect("hash");
        assert!(phc.starts_with("$argon2id$"));
        assert!(!phc.contains("passphrase"));
        assert!(verify(&pw, &phc));
        assert!(!verify(
            &SecretString::from("another passphrase!".to_owned()),
            &phc
        ));
        assert!(!verify(&pw, "not a hash"));
    }
}
