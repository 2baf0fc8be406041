//! The audit trail's keys: an Ed25519 key that signs chain checkpoints, and an HMAC key that
//! turns a secret into a fingerprint the trail may show (the same secret always gives the
//! same fingerprint, which says nothing about the secret without the key).
//!
//! Both are generated once per vault and stored sealed under the master key
//! ([`AuditKeys::seal`]), so a database copy alone can neither forge checkpoints nor test
//! guesses against fingerprints.

use aws_lc_rs::hmac;
use aws_lc_rs::signature::{self, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use base64::Engine;
use keyward_core::Randomness;
use keyward_core::key::SealContext;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::{CryptoError, Keyring, sealed_from_text, sealed_to_text};

const SEED_LEN: usize = 32;
const SEAL_NAME: &str = "audit-keys";

pub struct AuditKeys {
    signing: Ed25519KeyPair,
    key_id: String,
    fingerprint: hmac::Key,
}

impl std::fmt::Debug for AuditKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditKeys")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl AuditKeys {
    /// Fresh keys from `random`.
    pub fn generate(random: &dyn Randomness) -> Result<Self, CryptoError> {
        Self::generate_with_material(random).map(|(keys, _)| keys)
    }

    fn from_material(material: &[u8]) -> Result<Self, CryptoError> {
        let (seed, mac) = material.split_at(SEED_LEN);
        if mac.len() != SEED_LEN {
            return Err(CryptoError::Malformed("audit key length"));
        }
        let signing = Ed25519KeyPair::from_seed_unchecked(seed)
            .map_err(|_| CryptoError::Malformed("audit signing key"))?;
        let key_id = hex::encode(&Sha256::digest(signing.public_key().as_ref())[..8]);
        Ok(Self {
            signing,
            key_id,
            fingerprint: hmac::Key::new(hmac::HMAC_SHA256, mac),
        })
    }

    /// The keys sealed under the keyring's current master key, as one line of text.
    pub fn seal(
        &self,
        keyring: &Keyring,
        random: &dyn Randomness,
        material: &AuditKeyMaterial,
    ) -> Result<String, CryptoError> {
        let sealed = keyring.seal(random, &material.0, &SealContext::internal(SEAL_NAME))?;
        Ok(sealed_to_text(&sealed))
    }

    /// Opens keys stored by [`AuditKeys::seal`].
    pub fn unseal(keyring: &Keyring, text: &str) -> Result<Self, CryptoError> {
        let sealed = sealed_from_text(text)?;
        let hex_material = keyring.unseal(&sealed, &SealContext::internal(SEAL_NAME))?;
        let material = Zeroizing::new(
            hex::decode(hex_material.expose_secret())
                .map_err(|_| CryptoError::Malformed("audit key material"))?,
        );
        Self::from_material(&material)
    }

    /// The sealed keys with their data key rewrapped under the current master key (master
    /// key rotation); the ciphertext is unchanged.
    pub fn rewrap(
        keyring: &Keyring,
        random: &dyn Randomness,
        text: &str,
    ) -> Result<String, CryptoError> {
        let rewrapped = keyring.rewrap(
            random,
            &sealed_from_text(text)?,
            &SealContext::internal(SEAL_NAME),
        )?;
        Ok(sealed_to_text(&rewrapped))
    }

    /// Which master key the sealed keys are wrapped by.
    pub fn sealed_by(text: &str) -> Result<String, CryptoError> {
        Ok(sealed_from_text(text)?.kek_id)
    }

    /// Generates keys together with the material to seal them (the material is only ever
    /// held long enough to seal it).
    pub fn generate_with_material(
        random: &dyn Randomness,
    ) -> Result<(Self, AuditKeyMaterial), CryptoError> {
        let mut material = Zeroizing::new([0u8; 2 * SEED_LEN]);
        random.fill(material.as_mut());
        let keys = Self::from_material(material.as_ref())?;
        Ok((
            keys,
            AuditKeyMaterial(SecretString::from(hex::encode(material.as_ref()))),
        ))
    }

    /// Names the signing key in checkpoints (a hash of its public half).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Ed25519 signature over `message`, hex.
    pub fn sign(&self, message: &[u8]) -> String {
        hex::encode(self.signing.sign(message).as_ref())
    }

    /// Whether `signature_hex` is this key's signature over `message`.
    pub fn verify(&self, message: &[u8], signature_hex: &str) -> bool {
        let Ok(signature) = hex::decode(signature_hex) else {
            return false;
        };
        UnparsedPublicKey::new(&signature::ED25519, self.signing.public_key().as_ref())
            .verify(message, &signature)
            .is_ok()
    }

    /// A session's CSRF token: an HMAC of the session's cookie value under a subkey of the
    /// fingerprint key. Any instance can recompute it from the cookie (to put it in the
    /// forms of server-rendered pages); nobody without the vault's keys can.
    pub fn session_csrf(&self, session_token: &SecretString) -> SecretString {
        let subkey = hmac::sign(&self.fingerprint, b"keyward/session-csrf/v1");
        let key = hmac::Key::new(hmac::HMAC_SHA256, subkey.as_ref());
        let tag = hmac::sign(&key, session_token.expose_secret().as_bytes());
        SecretString::from(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    /// A notification webhook's signing secret (`whsec_<64 hex>`), derived from the
    /// webhook's id under a subkey of the fingerprint key: never stored, the same on every
    /// instance, rewrapped with the audit keys during master-key rotation.
    pub fn webhook_secret(&self, webhook_id: &str) -> SecretString {
        let subkey = hmac::sign(&self.fingerprint, b"keyward/webhook-secret/v1");
        let key = hmac::Key::new(hmac::HMAC_SHA256, subkey.as_ref());
        let tag = hmac::sign(&key, webhook_id.as_bytes());
        SecretString::from(format!("whsec_{}", hex::encode(tag.as_ref())))
    }

    /// A keyed fingerprint of a secret, safe to show in the trail: `hmac:<32 hex>`.
    pub fn fingerprint(&self, secret: &SecretString) -> String {
        let tag = hmac::sign(&self.fingerprint, secret.expose_secret().as_bytes());
        format!("hmac:{}", hex::encode(&tag.as_ref()[..16]))
    }
}

/// The raw key material on its way into the sealed store.
pub struct AuditKeyMaterial(SecretString);

impl std::fmt::Debug for AuditKeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditKeyMaterial(…)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MasterKey;

    #[derive(Debug)]
    struct Fixed(u8);
    impl Randomness for Fixed {
        fn fill(&self, dest: &mut [u8]) {
            dest.iter_mut()
                .enumerate()
                .for_each(|(i, b)| *b = self.0.wrapping_add(i as u8));
        }
    }

    fn keyring() -> Keyring {
        Keyring::new(vec![MasterKey::from_bytes([7u8; 32])]).expect("keyring")
    }

    #[test]
    fn sealed_keys_come_back_and_sign_alike() {
        let (keys, material) = AuditKeys::generate_with_material(&Fixed(1)).expect("keys");
        let ring = keyring();
        let text = keys.seal(&ring, &Fixed(9), &material).expect("seal");
        assert!(
            !text.contains(&hex::encode([1u8, 2, 3])),
            "material is not in the clear"
        );
        let back = AuditKeys::unseal(&ring, &text).expect("unseal");
        assert_eq!(back.key_id(), keys.key_id());
        let sig = keys.sign(b"checkpoint");
        assert!(back.verify(b"checkpoint", &sig));
        assert!(!back.verify(b"checkpoint!", &sig));
        assert!(!back.verify(b"checkpoint", "00"));
        let secret = SecretString::from("sk-live-123");
        assert_eq!(keys.fingerprint(&secret), back.fingerprint(&secret));
        assert!(!keys.fingerprint(&secret).contains("sk-live"));
        let session = SecretString::from("kws_abc_def");
        assert_eq!(
            keys.session_csrf(&session).expose_secret(),
            back.session_csrf(&session).expose_secret(),
            "every instance derives the same token"
        );
        assert_ne!(
            keys.session_csrf(&session).expose_secret(),
            keys.session_csrf(&SecretString::from("kws_abc_deg"))
                .expose_secret()
        );
        let other = AuditKeys::generate(&Fixed(2)).expect("other");
        assert_ne!(other.fingerprint(&secret), keys.fingerprint(&secret));
        assert!(!other.verify(b"checkpoint", &sig));
    }

    #[test]
    fn a_wrong_master_key_or_an_edit_fails_closed() {
        let (keys, material) = AuditKeys::generate_with_material(&Fixed(1)).expect("keys");
        let text = keys.seal(&keyring(), &Fixed(9), &material).expect("seal");
        let other = Keyring::new(vec![MasterKey::from_bytes([8u8; 32])]).expect("ring");
        assert!(AuditKeys::unseal(&other, &text).is_err());
        assert!(AuditKeys::unseal(&keyring(), &text.replace('.', "")).is_err());
        // Rewrapped under a newer master key, the same keys come back.
        let newer = MasterKey::from_bytes([9u8; 32]);
        let mut both = Keyring::new(vec![MasterKey::from_bytes([7u8; 32]), newer]).expect("ring");
        let newest = both.ids().last().expect("id").to_owned();
        both.set_current(&newest).expect("current");
        let moved = AuditKeys::rewrap(&both, &Fixed(3), &text).expect("rewrap");
        assert_eq!(AuditKeys::sealed_by(&moved).expect("kek"), newest);
        let only_new = Keyring::new(vec![MasterKey::from_bytes([9u8; 32])]).expect("ring");
        assert_eq!(
            AuditKeys::unseal(&only_new, &moved)
                .expect("unseal")
                .key_id(),
            keys.key_id()
        );
    }
}

/// The `X-Keyward-Signature` header of a webhook delivery: `t=<unix seconds>,v1=<hex>`,
/// where the hex is HMAC-SHA256 under the webhook's secret (the whole `whsec_…` text as
/// bytes) of `<t>.<body>`. Receivers recompute it, compare in constant time and reject old
/// timestamps (replays).
pub fn webhook_signature(secret: &SecretString, timestamp: i64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.expose_secret().as_bytes());
    let mut context = hmac::Context::with_key(&key);
    context.update(timestamp.to_string().as_bytes());
    context.update(b".");
    context.update(body);
    format!("t={timestamp},v1={}", hex::encode(context.sign().as_ref()))
}

#[cfg(test)]
mod webhook_tests {
    use super::*;

    #[test]
    fn signatures_follow_the_documented_algorithm() {
        // HMAC-SHA256("whsec_test", "1700000000.{}"), computed independently (openssl dgst).
        let secret = SecretString::from("whsec_test".to_owned());
        assert_eq!(
            webhook_signature(&secret, 1_700_000_000, b"{}"),
            format!(
                "t=1700000000,v1={}",
                "35495024f4ef3f94e5a93e22221544c4b75e9a42300cd965ab81cb85cd994e91"
            )
        );
    }
}
