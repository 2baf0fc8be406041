//! Master keys that live in a PKCS#11 token (an HSM, or SoftHSM2 in tests).
//!
//! The key-encryption key is an AES-256 secret key generated *on the token*: sensitive,
//! never extractable, usable only to encrypt and decrypt. Wrapping a data key is
//! `C_Encrypt` with `CKM_AES_GCM` on the token, with the same nonce, associated data and
//! `nonce ‖ ciphertext ‖ tag` layout as a key held in memory — so a sealed record does not
//! say where its KEK lives, and the ordinary rewrap moves a vault between a key file and
//! the token in either direction.
//!
//! Keys are found by label (`pkcs11_key_label`); each has a 16-byte `CKA_ID` — 8 bytes of
//! creation time (milliseconds, big-endian) then 8 random bytes — so ids sort oldest first
//! and the KEK id is a fingerprint of the `CKA_ID` (the key's bytes cannot be read).
//!
//! Calls are blocking FFI; they are short on a local token, and the proxy does not make
//! them per request: unwrapped data keys are kept in memory for `dek_cache` (see
//! [`DekCache`]). A `Session` is `Send` but not `Sync`, so sessions are pooled, one per
//! concurrent caller. Login state belongs to the whole process (PKCS#11 §5.6): a session
//! that reports "not logged in" (the token dropped the login) logs in again once.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as Pkcs11Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::{Slot, TokenInfo};
use keyward_core::{Randomness, Timestamp};
use secrecy::SecretString;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::CryptoError;

/// Where the token is and how to use it (the `pkcs11_*` settings).
#[derive(Clone)]
pub struct Pkcs11Config {
    /// The PKCS#11 module (`.so`), e.g. `/usr/lib/softhsm/libsofthsm2.so`.
    pub module: PathBuf,
    pub token_label: String,
    /// The user PIN; from a secret setting or a file, never logged.
    pub pin: SecretString,
    /// The label of Keyward's master keys on the token.
    pub key_label: String,
    /// How long an unwrapped data key stays in memory (zero: never cached).
    pub dek_cache: Duration,
}

impl fmt::Debug for Pkcs11Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Config")
            .field("module", &self.module)
            .field("token_label", &self.token_label)
            .field("key_label", &self.key_label)
            .field("dek_cache", &self.dek_cache)
            .finish_non_exhaustive()
    }
}

/// The default module path (Debian's SoftHSM2; a real HSM names its own).
pub const SOFTHSM2_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// The default label of Keyward's keys on the token.
pub const DEFAULT_KEY_LABEL: &str = "keyward-master-key";
const ID_LEN: usize = 16;
const TAG_BITS: u64 = 128;

/// An open, logged-in token.
pub struct Hsm {
    context: Pkcs11,
    slot: Slot,
    module: PathBuf,
    token_label: String,
    key_label: String,
    pin: SecretString,
    sessions: Mutex<Vec<Session>>,
    cache: DekCache,
    calls: HsmCalls,
}

/// Operations sent to the token since start, by kind (for `/metrics` and the proof that the
/// proxy is served from the data-key cache).
#[derive(Debug, Default)]
struct HsmCalls {
    encrypt: AtomicU64,
    decrypt: AtomicU64,
    cache_hits: AtomicU64,
}

/// [`HsmCalls`] read at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HsmCallCounts {
    pub encrypt: u64,
    pub decrypt: u64,
    /// Data keys served from memory instead of the token.
    pub cache_hits: u64,
}

impl fmt::Debug for Hsm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hsm")
            .field("module", &self.module)
            .field("token_label", &self.token_label)
            .field("key_label", &self.key_label)
            .finish_non_exhaustive()
    }
}

impl Hsm {
    /// Loads the module, finds the token by label and logs in: a wrong PIN or a missing token
    /// is refused here, before anything else happens.
    pub fn open(config: &Pkcs11Config) -> Result<Arc<Self>, CryptoError> {
        let module = &config.module;
        let context = Pkcs11::new(module).map_err(|e| {
            hsm_error(format!(
                "cannot load the PKCS#11 module {}: {e}",
                module.display()
            ))
        })?;
        // Initialising is process-wide; a second vault opened in the same process (a
        // restore drill, a test) finds it done, which is fine.
        match context.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(Pkcs11Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => {
                return Err(hsm_error(format!(
                    "cannot initialise the PKCS#11 module {}: {e}",
                    module.display()
                )));
            }
        }
        let (slot, token) = find_token(&context, module, &config.token_label)?;
        refuse_risky_login(&token, &config.token_label)?;
        let hsm = Self {
            context,
            slot,
            module: module.clone(),
            token_label: config.token_label.clone(),
            key_label: config.key_label.clone(),
            pin: config.pin.clone(),
            sessions: Mutex::new(Vec::new()),
            cache: DekCache::new(config.dek_cache),
            calls: HsmCalls::default(),
        };
        let session = hsm.new_session()?;
        hsm.sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(session);
        Ok(Arc::new(hsm))
    }

    pub fn token_label(&self) -> &str {
        &self.token_label
    }

    pub fn key_label(&self) -> &str {
        &self.key_label
    }

    pub fn calls(&self) -> HsmCallCounts {
        HsmCallCounts {
            encrypt: self.calls.encrypt.load(Ordering::Relaxed),
            decrypt: self.calls.decrypt.load(Ordering::Relaxed),
            cache_hits: self.calls.cache_hits.load(Ordering::Relaxed),
        }
    }

    /// Whether the token answers on a pooled session (for readiness).
    pub fn check(&self) -> Result<(), CryptoError> {
        self.with_session("C_GetSessionInfo", |s| s.get_session_info().map(|_| ()))
    }

    /// Keyward's keys on the token (by label), oldest first. A key that could leave the
    /// token (extractable, or not sensitive) is refused: the point is that it cannot.
    pub fn master_keys(self: &Arc<Self>) -> Result<Vec<crate::MasterKey>, CryptoError> {
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Label(self.key_label.as_bytes().to_vec()),
        ];
        let found = self.with_session("C_FindObjects", |s| {
            let handles = s.find_objects(&template)?;
            let mut keys = Vec::with_capacity(handles.len());
            for handle in handles {
                let attributes = s.get_attributes(
                    handle,
                    &[
                        AttributeType::Id,
                        AttributeType::Extractable,
                        AttributeType::Sensitive,
                    ],
                )?;
                keys.push((handle, attributes));
            }
            Ok(keys)
        })?;
        let mut keys = Vec::with_capacity(found.len());
        for (handle, attributes) in found {
            let (mut id, mut extractable, mut sensitive) = (None, true, false);
            for attribute in attributes {
                match attribute {
                    Attribute::Id(value) => id = Some(value),
                    Attribute::Extractable(value) => extractable = value,
                    Attribute::Sensitive(value) => sensitive = value,
                    _ => {}
                }
            }
            let id = id.filter(|id| !id.is_empty()).ok_or_else(|| {
                hsm_error(format!(
                    "a key labelled '{}' on token '{}' has no CKA_ID; give it one or another label",
                    self.key_label, self.token_label
                ))
            })?;
            if extractable || !sensitive {
                return Err(hsm_error(format!(
                    "the key labelled '{}' with id {} on token '{}' can leave the token (extractable or not sensitive); Keyward uses only keys generated sensitive and non-extractable",
                    self.key_label,
                    hex::encode(&id),
                    self.token_label
                )));
            }
            keys.push((id, handle));
        }
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(keys
            .into_iter()
            .map(|(id, handle)| {
                crate::MasterKey::in_hsm(kek_id_of(&id), self.clone(), handle, generated_at(&id))
            })
            .collect())
    }

    /// Generates a new master key on the token: AES-256, sensitive, never extractable,
    /// encrypt/decrypt only.
    pub fn generate(
        self: &Arc<Self>,
        random: &dyn Randomness,
        now: Timestamp,
    ) -> Result<crate::MasterKey, CryptoError> {
        let mut id = [0u8; ID_LEN];
        let millis = u64::try_from(now.as_millisecond()).unwrap_or(0);
        id[..8].copy_from_slice(&millis.to_be_bytes());
        random.fill(&mut id[8..]);
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::ValueLen(32.into()),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Modifiable(false),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
            Attribute::Wrap(false),
            Attribute::Unwrap(false),
            Attribute::Sign(false),
            Attribute::Verify(false),
            Attribute::Derive(false),
            Attribute::Label(self.key_label.as_bytes().to_vec()),
            Attribute::Id(id.to_vec()),
        ];
        let session = self.context.open_rw_session(self.slot).map_err(|e| {
            hsm_error(format!(
                "cannot open a read-write session on token '{}': {e}",
                self.token_label
            ))
        })?;
        let handle = session
            .generate_key(&Mechanism::AesKeyGen, &template)
            .map_err(|e| {
                hsm_error(format!(
                    "token '{}' did not generate an AES-256 key: {e}",
                    self.token_label
                ))
            })?;
        Ok(crate::MasterKey::in_hsm(
            kek_id_of(&id),
            self.clone(),
            handle,
            generated_at(&id),
        ))
    }

    /// AES-256-GCM on the token; returns `ciphertext ‖ tag`.
    pub(crate) fn encrypt(
        &self,
        key: ObjectHandle,
        nonce: &[u8; 12],
        aad: &[u8],
        msg: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        self.calls.encrypt.fetch_add(1, Ordering::Relaxed);
        self.with_session("C_Encrypt", |s| {
            let mut iv = *nonce;
            let params = GcmParams::new(&mut iv, aad, TAG_BITS.into())?;
            s.encrypt(&Mechanism::AesGcm(params), key, msg)
        })
    }

    /// Opens `ciphertext ‖ tag` on the token. A failed tag is [`CryptoError::Integrity`]
    /// (SoftHSM2 reports it as a general error, others as invalid data).
    pub(crate) fn decrypt(
        &self,
        key: ObjectHandle,
        nonce: &[u8; 12],
        aad: &[u8],
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        self.calls.decrypt.fetch_add(1, Ordering::Relaxed);
        let opened = self.with_session_raw(|s| {
            let mut iv = *nonce;
            let params = GcmParams::new(&mut iv, aad, TAG_BITS.into())?;
            s.decrypt(&Mechanism::AesGcm(params), key, ciphertext)
                .map(Zeroizing::new)
        });
        match opened {
            Ok(plain) => Ok(plain),
            Err(Pkcs11Error::Pkcs11(
                RvError::EncryptedDataInvalid
                | RvError::EncryptedDataLenRange
                | RvError::GeneralError
                | RvError::DataInvalid
                | RvError::DataLenRange,
                _,
            )) => Err(CryptoError::Integrity),
            Err(e) => Err(hsm_error(format!(
                "token '{}' failed C_Decrypt: {e}",
                self.token_label
            ))),
        }
    }

    /// The data key `wrapped` opens to: from the cache, or `open` (on the token) and cached.
    pub(crate) fn cached_dek(
        &self,
        kek_id: &str,
        wrapped: &[u8],
        aad: &[u8],
        open: impl FnOnce() -> Result<Zeroizing<[u8; 32]>, CryptoError>,
    ) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
        let entry = DekCache::entry(kek_id, wrapped, aad);
        if let Some(dek) = self.cache.get(&entry, Instant::now()) {
            self.calls.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(dek);
        }
        let dek = open()?;
        self.cache.put(entry, &dek, Instant::now());
        Ok(dek)
    }

    fn with_session<T>(
        &self,
        function: &str,
        op: impl Fn(&Session) -> cryptoki::error::Result<T>,
    ) -> Result<T, CryptoError> {
        self.with_session_raw(op).map_err(|e| {
            hsm_error(format!(
                "token '{}' failed {function}: {e}",
                self.token_label
            ))
        })
    }

    /// Runs `op` on a pooled session. A session the token closed is replaced once; a
    /// session that lost its login logs in again once.
    fn with_session_raw<T>(
        &self,
        op: impl Fn(&Session) -> cryptoki::error::Result<T>,
    ) -> cryptoki::error::Result<T> {
        let pooled = self
            .sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let session = match pooled {
            Some(session) => session,
            None => self.context.open_ro_session(self.slot)?,
        };
        let outcome = match op(&session) {
            Err(Pkcs11Error::Pkcs11(RvError::UserNotLoggedIn, _)) => {
                self.login(&session)?;
                op(&session)
            }
            Err(Pkcs11Error::Pkcs11(
                RvError::SessionHandleInvalid | RvError::SessionClosed | RvError::DeviceRemoved,
                _,
            )) => {
                drop(session);
                let fresh = self.context.open_ro_session(self.slot)?;
                self.login(&fresh)?;
                let outcome = op(&fresh);
                self.give_back(fresh);
                return outcome;
            }
            other => other,
        };
        self.give_back(session);
        outcome
    }

    fn give_back(&self, session: Session) {
        self.sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(session);
    }

    /// A session, logged in (checks the PIN on the first call in this process).
    fn new_session(&self) -> Result<Session, CryptoError> {
        let session = self.context.open_ro_session(self.slot).map_err(|e| {
            hsm_error(format!(
                "cannot open a session on token '{}': {e}",
                self.token_label
            ))
        })?;
        self.login(&session).map_err(|e| match e {
            Pkcs11Error::Pkcs11(RvError::PinIncorrect, _) => CryptoError::Hsm(format!(
                "the PKCS#11 PIN for token '{}' is wrong",
                self.token_label
            )),
            Pkcs11Error::Pkcs11(RvError::PinLocked, _) => CryptoError::Hsm(format!(
                "the PKCS#11 PIN for token '{}' is locked (too many wrong PINs); unlock it with the security officer PIN",
                self.token_label
            )),
            other => hsm_error(format!(
                "cannot log in to token '{}': {other}",
                self.token_label
            )),
        })?;
        Ok(session)
    }

    fn login(&self, session: &Session) -> cryptoki::error::Result<()> {
        match session.login(UserType::User, Some(&self.pin)) {
            Err(Pkcs11Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
            other => other,
        }
    }
}

fn hsm_error(message: String) -> CryptoError {
    CryptoError::Hsm(message)
}

/// Refuses to log in where it cannot work or could lock the token: a start that is retried
/// in a loop (a service manager) must not spend a real HSM's last PIN attempt. SoftHSM2
/// keeps no counters, so only the token's own flags say this.
fn refuse_risky_login(token: &TokenInfo, label: &str) -> Result<(), CryptoError> {
    if token.user_pin_locked() {
        return Err(hsm_error(format!(
            "the PKCS#11 PIN for token '{label}' is locked (too many wrong PINs); unlock it with the security officer PIN"
        )));
    }
    if token.user_pin_final_try() {
        return Err(hsm_error(format!(
            "token '{label}' allows one more PIN attempt before it locks; Keyward will not spend it. Check pkcs11_pin, then log in once with the token's own tool (which resets the count)"
        )));
    }
    if !token.user_pin_initialized() {
        return Err(hsm_error(format!(
            "token '{label}' has no user PIN yet; set one with the token's tool (softhsm2-util --init-token … --pin …)"
        )));
    }
    Ok(())
}

/// The slot holding the token labelled `label`; the refusal names the tokens there are.
fn find_token(
    context: &Pkcs11,
    module: &Path,
    label: &str,
) -> Result<(Slot, TokenInfo), CryptoError> {
    let slots = context.get_slots_with_token().map_err(|e| {
        hsm_error(format!(
            "cannot list the tokens of PKCS#11 module {}: {e}",
            module.display()
        ))
    })?;
    let mut seen = Vec::new();
    for slot in slots {
        let Ok(info) = context.get_token_info(slot) else {
            continue;
        };
        let found = info.label().trim_end();
        if found == label {
            return Ok((slot, info));
        }
        if !found.is_empty() {
            seen.push(format!("'{found}'"));
        }
    }
    Err(hsm_error(format!(
        "no token labelled '{label}' in PKCS#11 module {} (tokens there: {})",
        module.display(),
        if seen.is_empty() {
            "none".to_owned()
        } else {
            seen.join(", ")
        }
    )))
}

/// When a key was generated, from the first 8 bytes of its `CKA_ID` (the epoch for an id
/// Keyward did not make).
fn generated_at(cka_id: &[u8]) -> Timestamp {
    cka_id
        .get(..8)
        .and_then(|bytes| <[u8; 8]>::try_from(bytes).ok())
        .and_then(|bytes| i64::try_from(u64::from_be_bytes(bytes)).ok())
        .and_then(|millis| Timestamp::from_millisecond(millis).ok())
        .unwrap_or(Timestamp::UNIX_EPOCH)
}

/// The KEK id of a token key: a fingerprint of its `CKA_ID`, shaped like a file key's id.
fn kek_id_of(cka_id: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"keyward hsm kek id v1\0");
    hasher.update(cka_id);
    format!("kek_{}", hex::encode(&hasher.finalize()[..8]))
}

/// Unwrapped data keys, kept for a short time so a busy key costs one token call per
/// `ttl` instead of one per request. An entry is found by a digest of the KEK id, the
/// wrapped bytes and their associated data, so an edited or moved wrapped key never hits
/// a cached one; entries are zeroized when dropped. Bounded: when full, expired entries go,
/// and if none has expired, everything does.
struct DekCache {
    ttl: Duration,
    entries: Mutex<HashMap<[u8; 32], CachedDek>>,
}

/// A data key and the moment it stops being served from memory. Boxed so that the map
/// growing moves a pointer, never leaving a copy of the key in freed memory.
type CachedDek = (Box<Zeroizing<[u8; 32]>>, Instant);

const DEK_CACHE_CAPACITY: usize = 10_000;

impl DekCache {
    fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn entry(kek_id: &str, wrapped: &[u8], aad: &[u8]) -> [u8; 32] {
        let mut hasher = Sha256::new();
        for part in [kek_id.as_bytes(), wrapped, aad] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
        hasher.finalize().into()
    }

    fn get(&self, entry: &[u8; 32], now: Instant) -> Option<Zeroizing<[u8; 32]>> {
        if self.ttl.is_zero() {
            return None;
        }
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let (dek, until) = entries.get(entry)?;
        (now < *until).then(|| (**dek).clone())
    }

    fn put(&self, entry: [u8; 32], dek: &Zeroizing<[u8; 32]>, now: Instant) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= DEK_CACHE_CAPACITY {
            entries.retain(|_, (_, until)| now < *until);
            if entries.len() >= DEK_CACHE_CAPACITY {
                entries.clear();
            }
        }
        entries.insert(entry, (Box::new(dek.clone()), now + self.ttl));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_data_keys_expire_and_are_found_only_by_the_exact_wrapped_bytes() {
        let cache = DekCache::new(Duration::from_secs(30));
        let start = Instant::now();
        let dek = Zeroizing::new([7u8; 32]);
        let entry = DekCache::entry("kek_a", b"wrapped", b"aad");
        assert!(cache.get(&entry, start).is_none());
        cache.put(entry, &dek, start);
        assert_eq!(
            cache
                .get(&entry, start + Duration::from_secs(29))
                .as_deref(),
            Some(&[7u8; 32])
        );
        assert!(cache.get(&entry, start + Duration::from_secs(30)).is_none());
        for other in [
            DekCache::entry("kek_b", b"wrapped", b"aad"),
            DekCache::entry("kek_a", b"wrapped!", b"aad"),
            DekCache::entry("kek_a", b"wrapped", b"aad!"),
            // Length prefixes keep the parts apart.
            DekCache::entry("kek_a", b"wrappeda", b"ad"),
        ] {
            assert!(cache.get(&other, start).is_none());
        }
    }

    #[test]
    fn a_zero_ttl_caches_nothing_and_a_full_cache_stays_bounded() {
        let off = DekCache::new(Duration::ZERO);
        let now = Instant::now();
        let entry = DekCache::entry("k", b"w", b"a");
        off.put(entry, &Zeroizing::new([1; 32]), now);
        assert!(off.get(&entry, now).is_none());

        let cache = DekCache::new(Duration::from_secs(1));
        for i in 0..DEK_CACHE_CAPACITY + 5 {
            cache.put(
                DekCache::entry("k", &i.to_be_bytes(), b"a"),
                &Zeroizing::new([1; 32]),
                now,
            );
        }
        let held = cache
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        assert!(held <= DEK_CACHE_CAPACITY, "{held}");
    }

    #[test]
    fn kek_ids_are_fingerprints_of_the_token_id() {
        assert_eq!(
            kek_id_of(b"0123456789abcdef"),
            kek_id_of(b"0123456789abcdef")
        );
        assert_ne!(
            kek_id_of(b"0123456789abcdef"),
            kek_id_of(b"0123456789abcdeg")
        );
        assert!(kek_id_of(b"x").starts_with("kek_"));
        assert_eq!(kek_id_of(b"x").len(), 4 + 16);
    }
}
