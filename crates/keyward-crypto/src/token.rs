//! Bearer tokens Keyward issues (management API tokens now, app tokens later).
//!
//! Format: `<prefix>_<public id>_<secret>` — e.g. `kwm_k3j9x0a7qz2m_9f…`. The public id
//! (12 lowercase letters and digits) finds the stored record; the secret (256 random bits,
//! base64url) is stored only as its SHA-256 and compared in constant time. A fast hash is
//! right here: the secret is random, so there is nothing to brute-force.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keyward_core::Randomness;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Prefix of management API tokens.
pub const MANAGEMENT_PREFIX: &str = "kwm";
/// Prefix of session tokens (the sign-in cookie).
pub const SESSION_PREFIX: &str = "kws";
/// Prefix of app tokens (what applications present to the proxy).
pub const APP_PREFIX: &str = "kwp";
const PUBLIC_ID_LEN: usize = 12;
const SECRET_BYTES: usize = 32;
const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// A freshly issued token: show `token` once, store `public_id` and `secret_hash`.
#[derive(Debug)]
pub struct IssuedToken {
    pub public_id: String,
    pub secret_hash: Vec<u8>,
    pub token: SecretString,
}

/// A token as presented by a caller, split into its parts.
#[derive(Debug)]
pub struct PresentedToken {
    pub public_id: String,
    secret: SecretString,
}

pub fn issue(prefix: &str, random: &dyn Randomness) -> IssuedToken {
    let mut id_bytes = [0u8; PUBLIC_ID_LEN];
    random.fill(&mut id_bytes);
    let public_id: String = id_bytes
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect();
    let mut secret = zeroize::Zeroizing::new([0u8; SECRET_BYTES]);
    random.fill(secret.as_mut());
    let secret = zeroize::Zeroizing::new(URL_SAFE_NO_PAD.encode(secret.as_ref()));
    IssuedToken {
        secret_hash: hash_secret(&secret),
        token: SecretString::from(format!("{prefix}_{public_id}_{}", secret.as_str())),
        public_id,
    }
}

/// A random 256-bit secret (base64url) and its SHA-256, for values shown once and checked
/// later (e.g. a session's CSRF token).
pub fn random_secret(random: &dyn Randomness) -> (SecretString, Vec<u8>) {
    let mut bytes = zeroize::Zeroizing::new([0u8; SECRET_BYTES]);
    random.fill(bytes.as_mut());
    let secret = zeroize::Zeroizing::new(URL_SAFE_NO_PAD.encode(bytes.as_ref()));
    (
        SecretString::from(secret.as_str().to_owned()),
        hash_secret(&secret),
    )
}

/// Whether `presented` is the secret whose hash is `stored_hash` (constant time).
pub fn secret_matches(presented: &str, stored_hash: &[u8]) -> bool {
    hash_secret(presented).ct_eq(stored_hash).into()
}

/// Splits a presented token; `None` if it does not have this prefix's shape.
pub fn parse(prefix: &str, presented: &str) -> Option<PresentedToken> {
    let rest = presented.strip_prefix(prefix)?.strip_prefix('_')?;
    let (public_id, secret) = rest.split_once('_')?;
    let id_ok =
        public_id.len() == PUBLIC_ID_LEN && public_id.bytes().all(|b| ALPHABET.contains(&b));
    let secret_ok = secret.len() == 43
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (id_ok && secret_ok).then(|| PresentedToken {
        public_id: public_id.to_owned(),
        secret: SecretString::from(secret.to_owned()),
    })
}

impl PresentedToken {
    /// Constant-time comparison of the presented secret's hash with the stored one.
    pub fn matches(&self, stored_hash: &[u8]) -> bool {
        hash_secret(self.secret.expose_secret())
            .ct_eq(stored_hash)
            .into()
    }
}

/// The stored form of a secret Keyward shows once and checks later (SHA-256).
pub fn secret_hash(secret: &str) -> Vec<u8> {
    hash_secret(secret)
}

fn hash_secret(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::OsRandomness;

    #[test]
    fn issued_tokens_parse_and_match_only_their_hash() {
        let issued = issue(MANAGEMENT_PREFIX, &OsRandomness);
        let presented = parse(MANAGEMENT_PREFIX, issued.token.expose_secret()).expect("parses");
        assert_eq!(presented.public_id, issued.public_id);
        assert!(presented.matches(&issued.secret_hash));
        let other = issue(MANAGEMENT_PREFIX, &OsRandomness);
        assert!(!presented.matches(&other.secret_hash));
        assert!(!issued.secret_hash.is_empty());
        assert!(!format!("{presented:?}").contains(&issued.token.expose_secret()[17..]));
    }

    #[test]
    fn malformed_tokens_do_not_parse() {
        let good = issue(MANAGEMENT_PREFIX, &OsRandomness);
        let good = good.token.expose_secret();
        assert!(parse("kwp", good).is_none());
        assert!(parse(MANAGEMENT_PREFIX, &good[..good.len() - 1]).is_none());
        assert!(parse(MANAGEMENT_PREFIX, "kwm_short_x").is_none());
        assert!(parse(MANAGEMENT_PREFIX, "").is_none());
        assert!(parse(MANAGEMENT_PREFIX, &good.replace("kwm_", "kwm_A")).is_none());
    }
}
