//! Second factors: TOTP secrets (RFC 6238 as every authenticator app speaks it — HMAC-SHA1,
//! six digits, 30-second steps) and single-use recovery codes.
//!
//! A TOTP secret is key material: it is stored only sealed under the master key, bound to
//! its user (a sealed secret copied to another user's row does not open), and leaves this
//! module only as a [`SecretString`] for the one enrolment response that shows it.
//! Replays are the caller's to refuse: [`TotpSecret::matching_step`] names the time step a
//! code belongs to, and the store accepts each step at most once per user.

use keyward_core::Randomness;
use keyward_core::key::SealContext;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use totp_rs::{Builder, Secret, Totp};
use zeroize::Zeroizing;

use crate::{CryptoError, Keyring, sealed_from_text, sealed_to_text};

/// Seconds per TOTP step.
pub const STEP_SECS: u64 = 30;
/// 160 bits, the length RFC 4226 recommends and authenticator apps expect.
const SECRET_BYTES: usize = 20;
/// Steps either side of now that still count (a phone's clock a little off).
const SKEW: u16 = 1;
/// How many recovery codes a user gets.
pub const RECOVERY_CODE_COUNT: usize = 10;
const RECOVERY_ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
/// 16 characters of 5 bits: 80 random bits, so a fast hash at rest is enough.
const RECOVERY_CODE_LEN: usize = 16;

pub struct TotpSecret(Zeroizing<Vec<u8>>);

impl std::fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TotpSecret(…)")
    }
}

fn seal_name(user_id: &str) -> String {
    format!("totp:{user_id}")
}

impl TotpSecret {
    pub fn generate(random: &dyn Randomness) -> Self {
        let mut bytes = Zeroizing::new(vec![0u8; SECRET_BYTES]);
        random.fill(bytes.as_mut_slice());
        Self(bytes)
    }

    /// Reads the base32 form an authenticator app is given (tests use this to act as the
    /// user's phone).
    pub fn from_base32(text: &str) -> Result<Self, CryptoError> {
        let secret = Secret::try_from_base32(text.trim().to_ascii_uppercase())
            .map_err(|_| CryptoError::Malformed("TOTP secret is not base32"))?;
        Ok(Self(Zeroizing::new(secret.as_bytes().to_vec())))
    }

    fn totp(&self, account: Option<(&str, &str)>) -> Result<Totp, CryptoError> {
        let mut builder = Builder::new()
            .with_secret(self.0.as_slice())
            .with_skew(SKEW)
            .with_step_duration(STEP_SECS);
        if let Some((issuer, name)) = account {
            builder = builder.with_issuer(Some(issuer)).with_account_name(name);
        }
        builder
            .build()
            .map_err(|_| CryptoError::Malformed("TOTP parameters"))
    }

    /// The secret in base32, for typing into an app by hand. Shown once, at enrolment.
    pub fn manual_entry(&self) -> SecretString {
        SecretString::from(Secret::from(self.0.as_slice()).to_base32())
    }

    /// The `otpauth://totp/…` URI a QR code carries. `issuer` and `account` must not
    /// contain `:`.
    pub fn otpauth_uri(&self, issuer: &str, account: &str) -> Result<SecretString, CryptoError> {
        self.totp(Some((issuer, account)))?
            .to_url()
            .map(SecretString::from)
            .map_err(|_| CryptoError::Malformed("TOTP account name"))
    }

    /// The time step `code` belongs to, if it is right at `unix_secs` (± one step).
    pub fn matching_step(&self, code: &str, unix_secs: u64) -> Option<u64> {
        let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
        self.totp(None).ok()?.check(&code, unix_secs)
    }

    /// The code an app shows at `unix_secs`.
    pub fn code_at(&self, unix_secs: u64) -> Result<String, CryptoError> {
        Ok(self.totp(None)?.generate(unix_secs).to_string())
    }

    /// Sealed under the current master key, bound to `user_id`, as one line of text.
    pub fn seal(
        &self,
        keyring: &Keyring,
        random: &dyn Randomness,
        user_id: &str,
    ) -> Result<String, CryptoError> {
        let name = seal_name(user_id);
        let sealed = keyring.seal(random, &self.manual_entry(), &SealContext::internal(&name))?;
        Ok(sealed_to_text(&sealed))
    }

    pub fn unseal(keyring: &Keyring, text: &str, user_id: &str) -> Result<Self, CryptoError> {
        let name = seal_name(user_id);
        let base32 = keyring.unseal(&sealed_from_text(text)?, &SealContext::internal(&name))?;
        Self::from_base32(base32.expose_secret())
    }

    /// The sealed secret rewrapped under the current master key (master-key rotation).
    pub fn rewrap(
        keyring: &Keyring,
        random: &dyn Randomness,
        text: &str,
        user_id: &str,
    ) -> Result<String, CryptoError> {
        let name = seal_name(user_id);
        let moved = keyring.rewrap(
            random,
            &sealed_from_text(text)?,
            &SealContext::internal(&name),
        )?;
        Ok(sealed_to_text(&moved))
    }

    /// Which master key wraps a sealed secret.
    pub fn sealed_by(text: &str) -> Result<String, CryptoError> {
        Ok(sealed_from_text(text)?.kek_id)
    }
}

/// Fresh recovery codes (`abcd-efgh-ijkl-mnop`), each with the hash to store.
pub fn recovery_codes(random: &dyn Randomness) -> Vec<(SecretString, Vec<u8>)> {
    (0..RECOVERY_CODE_COUNT)
        .map(|_| {
            let mut bytes = Zeroizing::new([0u8; RECOVERY_CODE_LEN]);
            random.fill(bytes.as_mut());
            let mut code = Zeroizing::new(String::with_capacity(RECOVERY_CODE_LEN + 3));
            for (i, b) in bytes.iter().enumerate() {
                if i > 0 && i % 4 == 0 {
                    code.push('-');
                }
                // 256 is a multiple of 32: no bias.
                code.push(char::from(RECOVERY_ALPHABET[usize::from(*b) % 32]));
            }
            let hash = recovery_code_hash(&code);
            (SecretString::from(code.as_str().to_owned()), hash)
        })
        .collect()
}

/// The stored form of a recovery code as typed: case, spaces and dashes do not matter.
pub fn recovery_code_hash(presented: &str) -> Vec<u8> {
    let normal: Zeroizing<String> = Zeroizing::new(
        presented
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '-')
            .flat_map(char::to_lowercase)
            .collect(),
    );
    Sha256::new()
        .chain_update(b"keyward-recovery-code|")
        .chain_update(normal.as_bytes())
        .finalize()
        .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MasterKey;

    #[derive(Debug)]
    struct Counter(std::sync::atomic::AtomicU8);
    impl Randomness for Counter {
        fn fill(&self, dest: &mut [u8]) {
            for b in dest {
                *b = self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
    fn random() -> Counter {
        Counter(std::sync::atomic::AtomicU8::new(3))
    }

    #[test]
    fn rfc_6238_vector_and_the_step_a_code_belongs_to() {
        // RFC 6238 appendix B, SHA-1 secret "12345678901234567890", T = 59 s → 94287082
        // (8 digits); the 6-digit code is its last six.
        let secret = TotpSecret(Zeroizing::new(b"12345678901234567890".to_vec()));
        assert_eq!(secret.code_at(59).expect("code"), "287082");
        assert_eq!(secret.matching_step("287082", 59), Some(1));
        assert_eq!(
            secret.matching_step("287 082", 59),
            Some(1),
            "spaces ignored"
        );
        // One step of drift either way is accepted, two are not.
        assert_eq!(secret.matching_step("287082", 59 + 30), Some(1));
        assert_eq!(secret.matching_step("287082", 59 + 60), None);
        assert_eq!(secret.matching_step("000000", 59), None);
        assert_eq!(secret.matching_step("abcdef", 59), None);
        assert_eq!(secret.matching_step("", 59), None);
    }

    #[test]
    fn sealed_secrets_open_only_for_their_user() {
        let ring = Keyring::new(vec![MasterKey::from_bytes([7u8; 32])]).expect("ring");
        let secret = TotpSecret::generate(&random());
        let text = secret.seal(&ring, &random(), "usr_a").expect("seal");
        assert!(!text.contains(secret.manual_entry().expose_secret()));
        let back = TotpSecret::unseal(&ring, &text, "usr_a").expect("unseal");
        assert_eq!(back.code_at(1000).ok(), secret.code_at(1000).ok());
        assert!(TotpSecret::unseal(&ring, &text, "usr_b").is_err());
        let uri = secret.otpauth_uri("Keyward", "kim").expect("uri");
        assert!(
            uri.expose_secret()
                .starts_with("otpauth://totp/Keyward:kim?")
        );
        assert!(
            uri.expose_secret()
                .contains(secret.manual_entry().expose_secret())
        );
        let again = TotpSecret::from_base32(&secret.manual_entry().expose_secret().to_lowercase())
            .expect("base32");
        assert_eq!(again.code_at(5).ok(), secret.code_at(5).ok());
    }

    #[test]
    fn recovery_codes_are_distinct_and_typed_loosely() {
        let codes = recovery_codes(&crate::OsRandomness);
        assert_eq!(codes.len(), RECOVERY_CODE_COUNT);
        let (code, hash) = &codes[0];
        assert_eq!(code.expose_secret().len(), 19);
        assert_eq!(
            &recovery_code_hash(&code.expose_secret().to_uppercase().replace('-', " ")),
            hash
        );
        let mut hashes: Vec<_> = codes.iter().map(|(_, h)| h.clone()).collect();
        hashes.sort();
        hashes.dedup();
        assert_eq!(hashes.len(), RECOVERY_CODE_COUNT);
    }
}
