//! Envelope encryption.
//!
//! Every key version is sealed with its own random 256-bit data key (DEK) under AES-256-GCM;
//! the DEK is wrapped (AES-256-GCM again) by a master key (KEK). Associated data binds both
//! layers to the row — `key id | version | purpose`, and for the wrap also the KEK id — so a
//! ciphertext copied to another key or version, or any edited byte, fails to open, closed.
//! Master-key rotation rewraps DEKs and never touches value ciphertexts.

use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use std::sync::Arc;

use keyward_core::Randomness;
use keyward_core::key::{SealContext, SealedSecret};
use secrecy::SecretString;
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

use crate::CryptoError;
use crate::hsm::Hsm;

/// Recorded with every sealed value; anything else is refused when opening.
pub const ALGORITHM: &str = "aes256gcm+kek-aes256gcm/v1";
const NONCE_LEN: usize = 12;
const KEY_LEN: usize = 32;
const VERIFIER_PLAINTEXT: &[u8] = b"keyward master key verifier v1";

/// A 256-bit master key: held in memory (a key file, the environment, a passphrase) or
/// living in a PKCS#11 token, where it never leaves and wrapping happens on the token. A
/// memory key's id is a fingerprint of its bytes, a token key's of its `CKA_ID`, so the same
/// key always has the same id and two different keys (practically) never share one.
pub struct MasterKey {
    id: String,
    material: Material,
}

enum Material {
    Memory(Zeroizing<[u8; KEY_LEN]>),
    Hsm {
        hsm: Arc<Hsm>,
        handle: cryptoki::object::ObjectHandle,
        /// When the key was generated (from its `CKA_ID`).
        created_at: keyward_core::Timestamp,
    },
}

impl MasterKey {
    pub fn from_bytes(mut bytes: [u8; KEY_LEN]) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"keyward kek id v1\0");
        hasher.update(bytes);
        let digest = hasher.finalize();
        let id = format!("kek_{}", hex::encode(&digest[..8]));
        let key = Zeroizing::new(bytes);
        bytes.zeroize();
        Self {
            id,
            material: Material::Memory(key),
        }
    }

    pub(crate) fn in_hsm(
        id: String,
        hsm: Arc<Hsm>,
        handle: cryptoki::object::ObjectHandle,
        created_at: keyward_core::Timestamp,
    ) -> Self {
        Self {
            id,
            material: Material::Hsm {
                hsm,
                handle,
                created_at,
            },
        }
    }

    /// When a token key was generated; `None` for a key held in memory.
    pub fn generated_at(&self) -> Option<keyward_core::Timestamp> {
        match &self.material {
            Material::Memory(_) => None,
            Material::Hsm { created_at, .. } => Some(*created_at),
        }
    }

    pub fn generate(random: &dyn Randomness) -> Self {
        let mut bytes = [0u8; KEY_LEN];
        random.fill(&mut bytes);
        Self::from_bytes(bytes)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The label of the token this key lives in; `None` for a key held in memory.
    pub fn token(&self) -> Option<&str> {
        match &self.material {
            Material::Memory(_) => None,
            Material::Hsm { hsm, .. } => Some(hsm.token_label()),
        }
    }

    /// Another copy of this key (for a keyring with another current key).
    fn duplicate(&self) -> Self {
        Self {
            id: self.id.clone(),
            material: match &self.material {
                Material::Memory(key) => Material::Memory(key.clone()),
                Material::Hsm {
                    hsm,
                    handle,
                    created_at,
                } => Material::Hsm {
                    hsm: hsm.clone(),
                    handle: *handle,
                    created_at: *created_at,
                },
            },
        }
    }

    /// The raw key, for writing the key file or printing it once on request; a token key's
    /// bytes cannot be read.
    pub(crate) fn bytes(&self) -> Option<&[u8; KEY_LEN]> {
        match &self.material {
            Material::Memory(key) => Some(key),
            Material::Hsm { .. } => None,
        }
    }

    /// AES-256-GCM under this key; returns `ciphertext ‖ tag`.
    fn encrypt(
        &self,
        nonce: &[u8; NONCE_LEN],
        msg: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        match &self.material {
            Material::Memory(key) => Aes256Gcm::new(&(**key).into())
                .encrypt(&Nonce::from(*nonce), Payload { msg, aad })
                .map_err(|_| CryptoError::Integrity),
            Material::Hsm { hsm, handle, .. } => hsm.encrypt(*handle, nonce, aad, msg),
        }
    }

    /// Opens `ciphertext ‖ tag` under this key.
    fn decrypt(
        &self,
        nonce: &[u8; NONCE_LEN],
        ciphertext: &[u8],
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        match &self.material {
            Material::Memory(key) => Aes256Gcm::new(&(**key).into())
                .decrypt(
                    &Nonce::from(*nonce),
                    Payload {
                        msg: ciphertext,
                        aad,
                    },
                )
                .map(Zeroizing::new)
                .map_err(|_| CryptoError::Integrity),
            Material::Hsm { hsm, handle, .. } => hsm.decrypt(*handle, nonce, aad, ciphertext),
        }
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey")
            .field("id", &self.id)
            .field("token", &self.token())
            .finish_non_exhaustive()
    }
}

/// The keyring a running server uses: replaced whole when its master keys change (a new
/// key file, another current key after a rotation by another process) while every call
/// goes on with the keyring it read.
#[derive(Debug)]
pub struct LiveKeyring {
    inner: std::sync::RwLock<std::sync::Arc<Keyring>>,
}

impl LiveKeyring {
    pub fn new(keyring: Keyring) -> Self {
        Self {
            inner: std::sync::RwLock::new(std::sync::Arc::new(keyring)),
        }
    }

    /// The keyring now.
    pub fn get(&self) -> std::sync::Arc<Keyring> {
        self.inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Replaces the keyring for every call that starts from now on.
    pub fn replace(&self, keyring: Keyring) {
        *self
            .inner
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = std::sync::Arc::new(keyring);
    }
}

/// The master keys a process holds: the current one (wraps new data keys) and older ones
/// (still unwrap data keys until they are rewrapped).
#[derive(Debug)]
pub struct Keyring {
    keys: Vec<MasterKey>,
    current: usize,
}

impl Keyring {
    /// The last key is current; duplicates (same id) are dropped.
    pub fn new(keys: Vec<MasterKey>) -> Result<Self, CryptoError> {
        let mut unique: Vec<MasterKey> = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(pos) = unique.iter().position(|k| k.id == key.id) {
                unique.remove(pos);
            }
            unique.push(key);
        }
        let current = unique
            .len()
            .checked_sub(1)
            .ok_or(CryptoError::KeyFile("no master key was provided".into()))?;
        Ok(Self {
            keys: unique,
            current,
        })
    }

    pub fn current_id(&self) -> &str {
        &self.keys[self.current].id
    }

    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|k| k.id.as_str())
    }

    pub fn contains(&self, kek_id: &str) -> bool {
        self.keys.iter().any(|k| k.id == kek_id)
    }

    /// Copies of the keys that live in a PKCS#11 token (kept when a key file is re-read).
    pub fn token_keys(&self) -> Vec<MasterKey> {
        self.keys
            .iter()
            .filter(|k| k.token().is_some())
            .map(MasterKey::duplicate)
            .collect()
    }

    /// These keys and `more` (newest last), with the same current key: a key added while
    /// running (another process generated it on the token).
    pub fn with(&self, more: Vec<MasterKey>) -> Result<Self, CryptoError> {
        let current = self.current_id().to_owned();
        let mut keys: Vec<MasterKey> = self.keys.iter().map(MasterKey::duplicate).collect();
        keys.extend(more);
        let mut keyring = Self::new(keys)?;
        keyring.set_current(&current)?;
        Ok(keyring)
    }

    /// The token `kek_id` lives in, if it is held and lives in one.
    pub fn token_of(&self, kek_id: &str) -> Option<&str> {
        self.key(kek_id).ok().and_then(MasterKey::token)
    }

    /// Makes `kek_id` the key new data keys are wrapped with (the vault's record decides
    /// which key is current, not the order keys were configured in).
    pub fn set_current(&mut self, kek_id: &str) -> Result<(), CryptoError> {
        self.current = self
            .keys
            .iter()
            .position(|k| k.id == kek_id)
            .ok_or_else(|| CryptoError::UnknownKek(kek_id.to_owned()))?;
        Ok(())
    }

    /// The same keys with `kek_id` current (a running server following a rotation).
    pub fn switched(&self, kek_id: &str) -> Result<Self, CryptoError> {
        let mut keyring = Self {
            keys: self.keys.iter().map(MasterKey::duplicate).collect(),
            current: self.current,
        };
        keyring.set_current(kek_id)?;
        Ok(keyring)
    }

    fn key(&self, kek_id: &str) -> Result<&MasterKey, CryptoError> {
        self.keys
            .iter()
            .find(|k| k.id == kek_id)
            .ok_or_else(|| CryptoError::UnknownKek(kek_id.to_owned()))
    }

    /// Seals a key version's value under a fresh data key wrapped by the current KEK.
    pub fn seal(
        &self,
        random: &dyn Randomness,
        plaintext: &SecretString,
        context: &SealContext<'_>,
    ) -> Result<SealedSecret, CryptoError> {
        use secrecy::ExposeSecret;
        let mut dek = Zeroizing::new([0u8; KEY_LEN]);
        random.fill(dek.as_mut());
        let nonce = random_nonce(random);
        let ciphertext = Aes256Gcm::new(&(*dek).into())
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext.expose_secret().as_bytes(),
                    aad: value_aad(context).as_bytes(),
                },
            )
            .map_err(|_| CryptoError::Integrity)?;
        let kek = &self.keys[self.current];
        let wrapped_dek = wrap(kek, random, &dek, context)?;
        Ok(SealedSecret {
            algorithm: ALGORITHM.to_owned(),
            kek_id: kek.id.clone(),
            wrapped_dek,
            nonce: nonce.to_vec(),
            ciphertext,
        })
    }

    /// Opens a sealed value. Named loudly: the result is plaintext and may only be used for
    /// injection into an upstream request or an audited reveal.
    pub fn unseal(
        &self,
        sealed: &SealedSecret,
        context: &SealContext<'_>,
    ) -> Result<SecretString, CryptoError> {
        check_algorithm(sealed)?;
        let dek = unwrap(self.key(&sealed.kek_id)?, &sealed.wrapped_dek, context)?;
        let nonce: [u8; NONCE_LEN] = sealed
            .nonce
            .as_slice()
            .try_into()
            .map_err(|_| CryptoError::Malformed("nonce length"))?;
        let plaintext = Zeroizing::new(
            Aes256Gcm::new(&(*dek).into())
                .decrypt(
                    &Nonce::from(nonce),
                    Payload {
                        msg: &sealed.ciphertext,
                        aad: value_aad(context).as_bytes(),
                    },
                )
                .map_err(|_| CryptoError::Integrity)?,
        );
        let text = std::str::from_utf8(&plaintext)
            .map_err(|_| CryptoError::Malformed("value is not UTF-8"))?;
        Ok(SecretString::from(text.to_owned()))
    }

    /// Re-wraps the data key of `sealed` under the current KEK; the value ciphertext is
    /// unchanged. A no-op copy if it is already wrapped by the current KEK.
    pub fn rewrap(
        &self,
        random: &dyn Randomness,
        sealed: &SealedSecret,
        context: &SealContext<'_>,
    ) -> Result<SealedSecret, CryptoError> {
        check_algorithm(sealed)?;
        let current = &self.keys[self.current];
        if sealed.kek_id == current.id {
            return Ok(sealed.clone());
        }
        let dek = unwrap(self.key(&sealed.kek_id)?, &sealed.wrapped_dek, context)?;
        Ok(SealedSecret {
            kek_id: current.id.clone(),
            wrapped_dek: wrap(current, random, &dek, context)?,
            ..sealed.clone()
        })
    }

    /// A value only the holder of `kek_id` can produce, stored next to the KEK's record so
    /// that start-up can prove the configured master key is the vault's.
    pub fn verifier(&self, random: &dyn Randomness, kek_id: &str) -> Result<Vec<u8>, CryptoError> {
        let kek = self.key(kek_id)?;
        let nonce = random_nonce(random);
        let mut out = nonce.to_vec();
        out.extend(kek.encrypt(&nonce, VERIFIER_PLAINTEXT, kek.id.as_bytes())?);
        Ok(out)
    }

    pub fn check_verifier(&self, kek_id: &str, verifier: &[u8]) -> Result<(), CryptoError> {
        let kek = self.key(kek_id)?;
        let (nonce, ciphertext) = split_nonce(verifier)?;
        let plain = kek.decrypt(&nonce, ciphertext, kek.id.as_bytes())?;
        if plain.as_slice() == VERIFIER_PLAINTEXT {
            Ok(())
        } else {
            Err(CryptoError::Integrity)
        }
    }
}

fn check_algorithm(sealed: &SealedSecret) -> Result<(), CryptoError> {
    if sealed.algorithm == ALGORITHM {
        Ok(())
    } else {
        Err(CryptoError::Malformed("unknown algorithm"))
    }
}

fn random_nonce(random: &dyn Randomness) -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    random.fill(&mut nonce);
    nonce
}

fn split_nonce(bytes: &[u8]) -> Result<([u8; NONCE_LEN], &[u8]), CryptoError> {
    let (nonce, rest) = bytes
        .split_at_checked(NONCE_LEN)
        .ok_or(CryptoError::Malformed("too short"))?;
    let nonce: [u8; NONCE_LEN] = nonce
        .try_into()
        .map_err(|_| CryptoError::Malformed("nonce length"))?;
    Ok((nonce, rest))
}

fn value_aad(context: &SealContext<'_>) -> String {
    format!(
        "keyward/v1|{}|{}|{}",
        context.purpose, context.subject, context.version
    )
}

fn wrap_aad(kek_id: &str, context: &SealContext<'_>) -> String {
    format!("keyward/v1|dek|{kek_id}|{}", value_aad(context))
}

fn wrap(
    kek: &MasterKey,
    random: &dyn Randomness,
    dek: &[u8; KEY_LEN],
    context: &SealContext<'_>,
) -> Result<Vec<u8>, CryptoError> {
    let nonce = random_nonce(random);
    let mut out = nonce.to_vec();
    out.extend(kek.encrypt(&nonce, dek, wrap_aad(&kek.id, context).as_bytes())?);
    Ok(out)
}

/// Opens a wrapped data key. A token key's data keys come from its short-lived cache when
/// they can (see `hsm::DekCache`): the proxy unwraps on every request.
fn unwrap(
    kek: &MasterKey,
    wrapped: &[u8],
    context: &SealContext<'_>,
) -> Result<Zeroizing<[u8; KEY_LEN]>, CryptoError> {
    let aad = wrap_aad(&kek.id, context);
    let open = || {
        let (nonce, ciphertext) = split_nonce(wrapped)?;
        let dek = kek.decrypt(&nonce, ciphertext, aad.as_bytes())?;
        let mut out = Zeroizing::new([0u8; KEY_LEN]);
        if dek.len() != KEY_LEN {
            return Err(CryptoError::Malformed("data key length"));
        }
        out.copy_from_slice(&dek);
        Ok(out)
    };
    match &kek.material {
        Material::Hsm { hsm, .. } => hsm.cached_dek(&kek.id, wrapped, aad.as_bytes(), open),
        Material::Memory(_) => open(),
    }
}

/// These mirror HashiCorp Vault's barrier tests (`vault/barrier_aes_gcm_test.go`):
/// confidentiality, integrity, move-integrity, unique ciphertexts, rotation, wrong key.
/// A sealed secret as one line of text (base64 parts joined by `.`), for Keyward's own
/// secrets kept in a single column (audit keys, TOTP secrets).
pub fn sealed_to_text(sealed: &SealedSecret) -> String {
    [
        sealed.algorithm.as_bytes(),
        sealed.kek_id.as_bytes(),
        &sealed.wrapped_dek,
        &sealed.nonce,
        &sealed.ciphertext,
    ]
    .iter()
    .map(|part| B64.encode(part))
    .collect::<Vec<_>>()
    .join(".")
}

/// Reads what [`sealed_to_text`] wrote.
pub fn sealed_from_text(text: &str) -> Result<SealedSecret, CryptoError> {
    let malformed = || CryptoError::Malformed("sealed text");
    let parts: Vec<Vec<u8>> = text
        .split('.')
        .map(|p| B64.decode(p))
        .collect::<Result<_, _>>()
        .map_err(|_| malformed())?;
    let [algorithm, kek_id, wrapped_dek, nonce, ciphertext] =
        <[Vec<u8>; 5]>::try_from(parts).map_err(|_| malformed())?;
    let text_of = |b: Vec<u8>| String::from_utf8(b).map_err(|_| malformed());
    Ok(SealedSecret {
        algorithm: text_of(algorithm)?,
        kek_id: text_of(kek_id)?,
        wrapped_dek,
        nonce,
        ciphertext,
    })
}

#[cfg(test)]
mod tests {
    use keyward_core::Timestamp;
    use keyward_core::id::KeyId;
    use secrecy::ExposeSecret;

    use super::*;
    use crate::OsRandomness;

    const CANARY: &str = "sk-proj-CANARY0123456789abcdefghijklmnopqrstuvwxyzABCDEFGH";

    fn key_id() -> KeyId {
        KeyId::generate(Timestamp::UNIX_EPOCH, &OsRandomness)
    }

    fn ring() -> Keyring {
        Keyring::new(vec![MasterKey::generate(&OsRandomness)]).expect("one key")
    }

    fn secret() -> SecretString {
        SecretString::from(CANARY.to_owned())
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn stored_bytes_differ_from_plaintext_and_round_trip() {
        let ring = ring();
        let id = key_id();
        let ctx = SealContext::key_secret(&id, 1);
        let sealed = ring.seal(&OsRandomness, &secret(), &ctx).expect("seal");
        for part in [&sealed.ciphertext, &sealed.wrapped_dek, &sealed.nonce] {
            assert!(!contains(part, CANARY.as_bytes()));
            assert!(!contains(part, &CANARY.as_bytes()[8..24]));
        }
        assert_eq!(sealed.algorithm, ALGORITHM);
        assert_eq!(sealed.kek_id, ring.current_id());
        let opened = ring.unseal(&sealed, &ctx).expect("unseal");
        assert_eq!(opened.expose_secret(), CANARY);
    }

    #[test]
    fn any_flipped_byte_fails_to_open() {
        let ring = ring();
        let id = key_id();
        let ctx = SealContext::key_secret(&id, 1);
        let sealed = ring.seal(&OsRandomness, &secret(), &ctx).expect("seal");
        for field in 0..3 {
            let len = [
                sealed.ciphertext.len(),
                sealed.wrapped_dek.len(),
                sealed.nonce.len(),
            ][field];
            for i in 0..len {
                let mut bad = sealed.clone();
                match field {
                    0 => bad.ciphertext[i] ^= 0x01,
                    1 => bad.wrapped_dek[i] ^= 0x01,
                    _ => bad.nonce[i] ^= 0x01,
                }
                assert!(
                    ring.unseal(&bad, &ctx).is_err(),
                    "field {field} byte {i} flipped but opened"
                );
            }
        }
        let mut wrong_alg = sealed.clone();
        wrong_alg.algorithm = "none".into();
        assert_eq!(
            ring.unseal(&wrong_alg, &ctx).err(),
            Some(CryptoError::Malformed("unknown algorithm"))
        );
    }

    #[test]
    fn ciphertext_moved_to_another_key_or_version_fails() {
        let ring = ring();
        let id = key_id();
        let sealed = ring
            .seal(&OsRandomness, &secret(), &SealContext::key_secret(&id, 1))
            .expect("seal");
        let other = key_id();
        assert_eq!(
            ring.unseal(&sealed, &SealContext::key_secret(&other, 1))
                .err(),
            Some(CryptoError::Integrity)
        );
        assert_eq!(
            ring.unseal(&sealed, &SealContext::key_secret(&id, 2)).err(),
            Some(CryptoError::Integrity)
        );
        let other_purpose = SealContext {
            purpose: "something-else",
            ..SealContext::key_secret(&id, 1)
        };
        assert_eq!(
            ring.unseal(&sealed, &other_purpose).err(),
            Some(CryptoError::Integrity)
        );
    }

    #[test]
    fn same_plaintext_twice_gives_different_ciphertexts() {
        let ring = ring();
        let id = key_id();
        let ctx = SealContext::key_secret(&id, 1);
        let a = ring.seal(&OsRandomness, &secret(), &ctx).expect("seal");
        let b = ring.seal(&OsRandomness, &secret(), &ctx).expect("seal");
        assert_ne!(a.ciphertext, b.ciphertext);
        assert_ne!(a.wrapped_dek, b.wrapped_dek);
        assert_ne!(a.nonce, b.nonce);
    }

    #[test]
    fn rotation_rewraps_without_touching_the_ciphertext() {
        let old = MasterKey::generate(&OsRandomness);
        let old_bytes = *old.bytes().expect("memory key");
        let old_ring = Keyring::new(vec![old]).expect("ring");
        let id = key_id();
        let ctx = SealContext::key_secret(&id, 3);
        let sealed = old_ring.seal(&OsRandomness, &secret(), &ctx).expect("seal");

        let new = MasterKey::generate(&OsRandomness);
        let new_id = new.id().to_owned();
        let ring = Keyring::new(vec![MasterKey::from_bytes(old_bytes), new]).expect("ring");
        assert_eq!(ring.current_id(), new_id);
        let rewrapped = ring.rewrap(&OsRandomness, &sealed, &ctx).expect("rewrap");
        assert_eq!(rewrapped.kek_id, new_id);
        assert_eq!(rewrapped.ciphertext, sealed.ciphertext);
        assert_ne!(rewrapped.wrapped_dek, sealed.wrapped_dek);

        // After rewrap the old KEK is no longer needed: a ring with only the new key opens it.
        let new_only = Keyring::new(vec![MasterKey::from_bytes(
            *ring.key(&new_id).expect("k").bytes().expect("memory key"),
        )])
        .expect("ring");
        assert_eq!(
            new_only
                .unseal(&rewrapped, &ctx)
                .expect("open")
                .expose_secret(),
            CANARY
        );
        // ...and cannot open what is still wrapped by the old one.
        assert_eq!(
            new_only.unseal(&sealed, &ctx).err(),
            Some(CryptoError::UnknownKek(sealed.kek_id.clone()))
        );
    }

    #[test]
    fn wrong_master_key_is_detected() {
        let ring = ring();
        let id = key_id();
        let ctx = SealContext::key_secret(&id, 1);
        let sealed = ring.seal(&OsRandomness, &secret(), &ctx).expect("seal");
        let verifier = ring
            .verifier(&OsRandomness, ring.current_id())
            .expect("verifier");
        assert!(ring.check_verifier(ring.current_id(), &verifier).is_ok());

        let wrong = ring_with_same_id_but_other_bytes(&ring);
        assert_eq!(
            wrong.check_verifier(ring.current_id(), &verifier),
            Err(CryptoError::Integrity)
        );
        assert_eq!(
            wrong.unseal(&sealed, &ctx).err(),
            Some(CryptoError::Integrity)
        );

        let other = Keyring::new(vec![MasterKey::generate(&OsRandomness)]).expect("ring");
        assert!(matches!(
            other.unseal(&sealed, &ctx),
            Err(CryptoError::UnknownKek(_))
        ));
    }

    /// A forged keyring that claims the right KEK id with different bytes: ids are only
    /// labels, the AEAD is what proves the key.
    fn ring_with_same_id_but_other_bytes(ring: &Keyring) -> Keyring {
        let mut forged = MasterKey::generate(&OsRandomness);
        forged.id = ring.current_id().to_owned();
        Keyring::new(vec![forged]).expect("ring")
    }

    #[test]
    fn debug_output_never_shows_key_bytes() {
        let key = MasterKey::from_bytes([0xAB; 32]);
        let printed = format!(
            "{key:?} {:?}",
            Keyring::new(vec![MasterKey::from_bytes([0xAB; 32])]).expect("ring")
        );
        assert!(!printed.to_lowercase().contains("abab"));
        assert!(!printed.contains("171"));
    }
}
