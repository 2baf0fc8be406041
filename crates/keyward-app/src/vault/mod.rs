//! Opening the vault: connect to the store, load the master keyring from its source, prove
//! it is the key this vault was sealed with, and only then migrate and write anything.
//!
//! The order is the point: a wrong master key must refuse to start and touch nothing, and
//! a missing key file next to an existing vault must never be "fixed" by generating a new
//! one. Master-key rotation and retirement live here too, because they are the same dance.

mod status;

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use keyward_core::key::SealContext;
use keyward_core::master_key::MasterKeyRecord;
use keyward_core::ports::Store;
use keyward_core::{Clock, Randomness};
use keyward_crypto::hsm::{Hsm, Pkcs11Config};
use keyward_crypto::{Keyring, KeyringFile, MasterKey, derive_from_passphrase, parse_master_key};
use secrecy::{ExposeSecret, SecretString};

/// Where the master key comes from.
#[derive(Debug)]
pub enum MasterKeySource {
    /// A keyring file Keyward creates (mode 0600) and rotates. With `hsm`, that token's
    /// keys are held too, as older keys: how a vault moves from the HSM back to a file.
    File {
        path: std::path::PathBuf,
        hsm: Option<Pkcs11Config>,
    },
    /// AES-256 keys generated on a PKCS#11 token, never leaving it; a rotation generates
    /// another. The key file's keys, when the file exists, are held as older keys: how a
    /// vault moves from a file to the HSM.
    Pkcs11 {
        hsm: Pkcs11Config,
        key_file: std::path::PathBuf,
    },
    /// `KEYWARD_MASTER_KEY` (current) and `KEYWARD_MASTER_KEY_PREVIOUS` (comma-separated,
    /// still needed until rotation has rewrapped everything).
    Env {
        current: SecretString,
        previous: Vec<SecretString>,
    },
    /// `KEYWARD_MASTER_PASSPHRASE`, stretched with Argon2id; `…_PREVIOUS` as above.
    Passphrase {
        current: SecretString,
        previous: Vec<SecretString>,
    },
}

/// Where the vault lives and how its master key is found: the part of the server's settings
/// opening it needs.
#[derive(Debug, Clone, Copy)]
pub struct Location<'a> {
    pub database_url: &'a SecretString,
    /// Created (mode 0700) when the database is the default one inside it.
    pub data_dir: &'a std::path::Path,
    pub database_is_default: bool,
    pub master_key: &'a MasterKeySource,
}

/// Why the vault could not be opened; printed as one line before exiting.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct VaultError(pub String);

impl From<keyward_core::Error> for VaultError {
    fn from(e: keyward_core::Error) -> Self {
        Self(e.message)
    }
}

impl From<keyward_crypto::CryptoError> for VaultError {
    fn from(e: keyward_crypto::CryptoError) -> Self {
        Self(e.to_string())
    }
}

/// An open, verified, migrated vault.
#[derive(Debug)]
pub struct Vault {
    pub store: Arc<dyn Store>,
    pub keyring: Keyring,
    /// Signs audit checkpoints and fingerprints secrets (stored sealed in the vault).
    pub audit_keys: keyward_crypto::audit::AuditKeys,
    /// Set when this start created the master key (first run): the caller prints the
    /// warning about keeping it safe.
    pub created_key_file: Option<std::path::PathBuf>,
    /// The key file the keyring came from (the file source), for a running server to
    /// re-read when it changes.
    pub key_file: Option<std::path::PathBuf>,
    /// The token keys came from, for a running server to find keys generated there by
    /// another process (a rotation).
    pub hsm: Option<Arc<Hsm>>,
}

const PASSPHRASE_SALT: &str = "master_passphrase_salt";

/// Opens the store at `location` and verifies the master key against it.
pub async fn open(
    location: Location<'_>,
    random: &dyn Randomness,
    clock: &dyn Clock,
) -> Result<Vault, VaultError> {
    let store = connect(location).await?;
    open_store(store, location.master_key, random, clock).await
}

/// Connects to the store at `location` (creating the default data directory) and reads or
/// writes nothing: what a restore starts from, which must never create a master key.
pub async fn connect(location: Location<'_>) -> Result<Arc<dyn Store>, VaultError> {
    if location.database_is_default {
        create_private_dir(location.data_dir)?;
    }
    keyward_store::open(location.database_url.expose_secret())
        .await
        .map_err(|e| VaultError(format!("cannot open the database: {}", e.message)))
}

/// The part of [`open`] after connecting; separate so tests can pass their own store.
pub async fn open_store(
    store: Arc<dyn Store>,
    source: &MasterKeySource,
    random: &dyn Randomness,
    clock: &dyn Clock,
) -> Result<Vault, VaultError> {
    let initialized = store.initialized().await?;
    let records = if initialized {
        store.master_keys().await?
    } else {
        Vec::new()
    };
    let sealed_by = records.iter().find(|r| r.current).map(|r| r.kek_id.clone());

    let Loaded {
        mut keyring,
        created_key_file,
        new_salt,
        hsm,
    } = load_keyring(
        &*store,
        source,
        sealed_by.as_deref(),
        initialized,
        random,
        clock,
    )
    .await?;

    if let Some(current) = records.iter().find(|r| r.current) {
        verify(&keyring, current, source)?;
        for older in records
            .iter()
            .filter(|r| !r.current && keyring.contains(&r.kek_id))
        {
            verify(&keyring, older, source)?;
        }
        keyring.set_current(&current.kek_id)?;
        if let Some(newer) = keyring.ids().last().filter(|id| *id != current.kek_id) {
            tracing::info!(configured = newer, current = %current.kek_id,
                "a newer master key is configured but not yet current; run `keyward master-key rotate` to rewrap data keys under it");
        }
    }

    // Verified (or brand new): from here on we may write.
    store.migrate().await?;
    if let Some(salt) = new_salt {
        let stored = store.setting_or_insert(PASSPHRASE_SALT, &salt).await?;
        if stored != salt {
            return Err(VaultError(
                "another instance initialised this vault at the same moment; start again".into(),
            ));
        }
    }
    if records.iter().all(|r| !r.current) {
        register(&*store, &keyring, keyring.current_id(), true, random, clock).await?;
    }
    let audit_keys = crate::audit::log::load_keys(&*store, &keyring, random).await?;
    Ok(Vault {
        store,
        keyring,
        audit_keys,
        created_key_file,
        key_file: match source {
            MasterKeySource::File { path, .. } => Some(path.clone()),
            _ => None,
        },
        hsm,
    })
}

fn verify(
    keyring: &Keyring,
    record: &MasterKeyRecord,
    source: &MasterKeySource,
) -> Result<(), VaultError> {
    let matches = keyring.contains(&record.kek_id)
        && keyring
            .check_verifier(&record.kek_id, &record.verifier)
            .is_ok();
    if matches {
        return Ok(());
    }
    let configured: Vec<&str> = keyring.ids().collect();
    Err(VaultError(format!(
        "the master key from {} ({}) is not the key this vault is sealed with ({}). \
         Keyward refuses to start and has changed nothing. Restore the original master key; \
         without it the stored keys cannot be read.",
        describe(source),
        configured.join(", "),
        record.kek_id
    )))
}

fn describe(source: &MasterKeySource) -> String {
    match source {
        MasterKeySource::File { path, hsm: None } => format!("key file {}", path.display()),
        MasterKeySource::File {
            path,
            hsm: Some(hsm),
        } => format!(
            "key file {} and PKCS#11 token '{}'",
            path.display(),
            hsm.token_label
        ),
        MasterKeySource::Pkcs11 { hsm, key_file } => format!(
            "PKCS#11 token '{}' (keys labelled '{}') and key file {}",
            hsm.token_label,
            hsm.key_label,
            key_file.display()
        ),
        MasterKeySource::Env { .. } => "KEYWARD_MASTER_KEY".into(),
        MasterKeySource::Passphrase { .. } => "KEYWARD_MASTER_PASSPHRASE".into(),
    }
}

/// What [`load_keyring`] found.
struct Loaded {
    keyring: Keyring,
    /// The key file this start created (first run only).
    created_key_file: Option<std::path::PathBuf>,
    /// A passphrase salt generated for a new vault (stored once the schema exists).
    new_salt: Option<String>,
    hsm: Option<Arc<Hsm>>,
}

impl Loaded {
    fn held(keyring: Keyring) -> Self {
        Self {
            keyring,
            created_key_file: None,
            new_salt: None,
            hsm: None,
        }
    }
}

async fn load_keyring(
    store: &dyn Store,
    source: &MasterKeySource,
    sealed_by: Option<&str>,
    initialized: bool,
    random: &dyn Randomness,
    clock: &dyn Clock,
) -> Result<Loaded, VaultError> {
    match source {
        MasterKeySource::File { path, hsm } => {
            let (hsm, mut keys) = token_keys(hsm.as_ref())?;
            let file = KeyringFile::new(path);
            if file.exists() {
                if file.permissions_too_open() {
                    tracing::warn!(path = %path.display(), "the master key file is readable by other users; run `chmod 600` on it");
                }
                keys.extend(file.load()?);
                return Ok(Loaded {
                    hsm,
                    ..Loaded::held(Keyring::new(keys)?)
                });
            }
            if let Some(kek) = sealed_by.filter(|kek| !keys.iter().any(|k| k.id() == *kek)) {
                return Err(VaultError(format!(
                    "the master key file {} is missing, but this vault is sealed with master key {kek}. \
                     Keyward refuses to start and will not create a new key (that would make every stored key unreadable). \
                     Restore the file from your backup.",
                    path.display()
                )));
            }
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                create_private_dir(dir)?;
            }
            // New, or moving from the token to a file: the new file key is current only
            // after `keyward master-key rotate`.
            keys.push(file.create(random)?);
            Ok(Loaded {
                keyring: Keyring::new(keys)?,
                created_key_file: Some(path.clone()),
                new_salt: None,
                hsm,
            })
        }
        MasterKeySource::Pkcs11 { hsm, key_file } => {
            let mut keys = KeyringFile::new(key_file).load_if_present()?;
            let (hsm, token_keys) = token_keys(Some(hsm))?;
            let hsm = hsm.ok_or_else(|| VaultError("the PKCS#11 token did not open".into()))?;
            if token_keys.is_empty() {
                match sealed_by {
                    None => {
                        let key = hsm.generate(random, clock.now())?;
                        tracing::info!(
                            kek = key.id(),
                            token = hsm.token_label(),
                            label = hsm.key_label(),
                            "generated the vault's master key on the PKCS#11 token"
                        );
                        keys.push(key);
                    }
                    Some(kek) if !keys.iter().any(|k| k.id() == kek) => {
                        return Err(VaultError(format!(
                            "PKCS#11 token '{}' holds no key labelled '{}', but this vault is sealed with master key {kek}. \
                             Keyward refuses to start and will not generate a new key (that would make every stored key unreadable). \
                             Check pkcs11_token_label and pkcs11_key_label, or restore the token.",
                            hsm.token_label(),
                            hsm.key_label()
                        )));
                    }
                    // Moving from the key file: the token's first key is generated by
                    // `keyward master-key rotate`.
                    Some(_) => {}
                }
            }
            keys.extend(token_keys);
            Ok(Loaded {
                hsm: Some(hsm),
                ..Loaded::held(Keyring::new(keys)?)
            })
        }
        MasterKeySource::Env { current, previous } => {
            Ok(Loaded::held(env_keyring(current, previous)?))
        }
        MasterKeySource::Passphrase { current, previous } => {
            let stored = if initialized {
                store.setting(PASSPHRASE_SALT).await?
            } else {
                None
            };
            let (salt, new_salt) = match stored {
                Some(encoded) => (
                    STANDARD.decode(encoded).map_err(|_| {
                        VaultError("the stored passphrase salt is corrupted".into())
                    })?,
                    None,
                ),
                None if sealed_by.is_some() => {
                    return Err(VaultError(
                        "this vault is not sealed with a passphrase (no salt is stored)".into(),
                    ));
                }
                None => {
                    let mut salt = vec![0u8; 16];
                    random.fill(&mut salt);
                    let encoded = STANDARD.encode(&salt);
                    (salt, Some(encoded))
                }
            };
            Ok(Loaded {
                new_salt,
                ..Loaded::held(passphrase_keyring(current, previous, &salt)?)
            })
        }
    }
}

/// The token (opened: its PIN checked) and Keyward's keys on it, oldest first.
fn token_keys(
    config: Option<&Pkcs11Config>,
) -> Result<(Option<Arc<Hsm>>, Vec<MasterKey>), VaultError> {
    let Some(config) = config else {
        return Ok((None, Vec::new()));
    };
    let hsm = Hsm::open(config)?;
    let keys = hsm.master_keys()?;
    Ok((Some(hsm), keys))
}

/// The keyring an operator supplies to open a backup of this vault: the configured master
/// keys, never created (a restore with a missing key file is refused, not "fixed"), a
/// passphrase stretched with the salt the backup carries.
pub fn keyring_for_backup(
    source: &MasterKeySource,
    passphrase_salt: Option<&str>,
) -> Result<Keyring, VaultError> {
    match source {
        MasterKeySource::File { path, hsm } => {
            let (_, mut keys) = token_keys(hsm.as_ref())?;
            let file = KeyringFile::new(path);
            if file.exists() {
                keys.extend(file.load()?);
            } else if keys.is_empty() {
                return Err(VaultError(format!(
                    "the master key file {} is missing; a backup opens only with the master key of the vault it came from: put that file there first",
                    path.display()
                )));
            }
            Ok(Keyring::new(keys)?)
        }
        MasterKeySource::Pkcs11 { hsm, key_file } => {
            let mut keys = KeyringFile::new(key_file).load_if_present()?;
            keys.extend(token_keys(Some(hsm))?.1);
            if keys.is_empty() {
                return Err(VaultError(format!(
                    "PKCS#11 token '{}' holds no key labelled '{}' and there is no key file {}; a backup opens only with the master key of the vault it came from",
                    hsm.token_label,
                    hsm.key_label,
                    key_file.display()
                )));
            }
            Ok(Keyring::new(keys)?)
        }
        MasterKeySource::Env { current, previous } => env_keyring(current, previous),
        MasterKeySource::Passphrase { current, previous } => {
            let Some(encoded) = passphrase_salt else {
                return Err(VaultError(
                    "the backup's vault is not sealed with a passphrase (it holds no salt)".into(),
                ));
            };
            let salt = STANDARD
                .decode(encoded)
                .map_err(|_| VaultError("the backup's passphrase salt is corrupted".into()))?;
            passphrase_keyring(current, previous, &salt)
        }
    }
}

/// `KEYWARD_MASTER_KEY` after `…_PREVIOUS`: the last is current.
fn env_keyring(current: &SecretString, previous: &[SecretString]) -> Result<Keyring, VaultError> {
    let mut keys = previous
        .iter()
        .map(parse_master_key)
        .collect::<Result<Vec<_>, _>>()?;
    keys.push(parse_master_key(current)?);
    Ok(Keyring::new(keys)?)
}

/// Passphrases stretched with the vault's salt, the current one last.
fn passphrase_keyring(
    current: &SecretString,
    previous: &[SecretString],
    salt: &[u8],
) -> Result<Keyring, VaultError> {
    let derive = |p: &SecretString| derive_from_passphrase(p, salt);
    let mut keys: Vec<MasterKey> = previous.iter().map(derive).collect::<Result<_, _>>()?;
    keys.push(derive(current)?);
    Ok(Keyring::new(keys)?)
}

async fn register(
    store: &dyn Store,
    keyring: &Keyring,
    kek_id: &str,
    current: bool,
    random: &dyn Randomness,
    clock: &dyn Clock,
) -> Result<(), VaultError> {
    store
        .register_master_key(&MasterKeyRecord {
            kek_id: kek_id.to_owned(),
            current,
            verifier: keyring.verifier(random, kek_id)?,
            created_at: clock.now(),
        })
        .await?;
    Ok(())
}

fn create_private_dir(dir: &std::path::Path) -> Result<(), VaultError> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.exists() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| {
            VaultError(format!(
                "cannot create data directory {}: {e}",
                dir.display()
            ))
        })
}

/// Progress of a rotation, reported as it goes.
pub trait RotationProgress {
    fn started(&mut self, new_kek: &str, to_rewrap: u64);
    fn rewrapped(&mut self, done: u64, total: u64);
}

/// What a finished rotation did.
#[derive(Debug, PartialEq, Eq)]
pub struct RotationReport {
    pub new_kek: String,
    pub rewrapped: u64,
    /// KEKs that no longer wrap anything and may be retired.
    pub retirable: Vec<String>,
}

/// Makes a new master key current and rewraps every data key under it.
///
/// With the key-file source a new key is generated and appended to the file (or, if an
/// earlier rotation was interrupted, the unregistered newest key is reused). With the env
/// and passphrase sources the operator configures the new key as current and the old one as
/// `…_PREVIOUS` first. Idempotent: running it again finishes an interrupted rewrap.
pub async fn rotate(
    location: Location<'_>,
    random: &dyn Randomness,
    clock: &dyn Clock,
    progress: &mut dyn RotationProgress,
    wait: std::time::Duration,
) -> Result<RotationReport, VaultError> {
    let vault = open(location, random, clock).await?;
    let store = vault.store.clone();
    let registered = store.master_keys().await?;
    let db_current = registered
        .iter()
        .find(|r| r.current)
        .map(|r| r.kek_id.clone())
        .ok_or_else(|| VaultError("the vault has no current master key".into()))?;

    // The newest key configured is the one to make current; the file and token sources
    // make it first, unless an interrupted rotation left one unregistered.
    let is_registered = |id: &str| registered.iter().any(|r| r.kek_id == id);
    let (mut keyring, new_kek) = match &location.master_key {
        MasterKeySource::File { path, .. } => {
            let file = KeyringFile::new(path);
            if vault.keyring.ids().last().is_some_and(is_registered) {
                file.append_new(random)?;
            }
            let mut keys = vault.keyring.token_keys();
            keys.extend(file.load()?);
            let keyring = Keyring::new(keys)?;
            let newest = keyring.current_id().to_owned();
            (keyring, newest)
        }
        MasterKeySource::Pkcs11 { .. } => {
            // A retired token key stays on the token: one is reused only if it was
            // generated after every key the vault registered (an interrupted rotation).
            let last_registration = registered.iter().map(|r| r.created_at).max();
            let left_over = vault
                .keyring
                .token_keys()
                .into_iter()
                .rev()
                .find(|k| !is_registered(k.id()) && k.generated_at() > last_registration)
                .map(|k| k.id().to_owned());
            match left_over {
                Some(kek) => (vault.keyring, kek),
                None => {
                    let hsm = vault
                        .hsm
                        .as_ref()
                        .ok_or_else(|| VaultError("the PKCS#11 token is not open".into()))?;
                    let key = hsm.generate(random, clock.now())?;
                    let kek = key.id().to_owned();
                    (vault.keyring.with(vec![key])?, kek)
                }
            }
        }
        _ => {
            let newest = vault
                .keyring
                .ids()
                .last()
                .map(str::to_owned)
                .ok_or_else(|| VaultError("no master key configured".into()))?;
            (vault.keyring, newest)
        }
    };
    if new_kek == db_current
        && matches!(
            location.master_key,
            MasterKeySource::Env { .. } | MasterKeySource::Passphrase { .. }
        )
    {
        let var = match location.master_key {
            MasterKeySource::Passphrase { .. } => "KEYWARD_MASTER_PASSPHRASE",
            _ => "KEYWARD_MASTER_KEY",
        };
        return Err(VaultError(format!(
            "the configured master key is already current. Set the new key as {var} and the current one in {var}_PREVIOUS, then run rotate again"
        )));
    }
    wait_until_held(&*store, &new_kek, location.master_key, clock, wait).await?;
    if registered.iter().any(|r| r.kek_id == new_kek) {
        store.make_master_key_current(&new_kek).await?;
    } else {
        register(&*store, &keyring, &new_kek, true, random, clock).await?;
    }
    keyring.set_current(&new_kek)?;

    let usage = store.kek_usage().await?;
    let total: u64 = usage
        .iter()
        .filter(|u| u.kek_id != new_kek)
        .map(|u| u.versions)
        .sum();
    progress.started(&new_kek, total);
    let mut done = 0;
    for old in usage.iter().filter(|u| u.kek_id != new_kek) {
        if !keyring.contains(&old.kek_id) {
            if old.versions > 0 {
                return Err(VaultError(format!(
                    "{} key versions are wrapped by master key {}, which is not configured; add it to the previous keys and run rotate again",
                    old.versions, old.kek_id
                )));
            }
            continue;
        }
        loop {
            let batch = store.versions_wrapped_by(&old.kek_id, 500).await?;
            if batch.is_empty() {
                break;
            }
            for version in batch {
                let context = SealContext::key_secret(&version.key_id, version.version);
                let rewrapped = keyring.rewrap(random, &version.sealed, &context)?;
                if store
                    .rewrap_version(&version.key_id, version.version, &old.kek_id, &rewrapped)
                    .await?
                {
                    done += 1;
                    progress.rewrapped(done, total);
                }
            }
        }
    }
    crate::audit::log::rewrap_keys(&*store, &keyring, random).await?;
    rewrap_mfa_secrets(&*store, &keyring, random, &new_kek).await?;
    let mut retirable = Vec::new();
    for usage in store.kek_usage().await? {
        if usage.versions == 0
            && usage.kek_id != new_kek
            && store.mfa_wrapped_by(&usage.kek_id).await?.is_empty()
        {
            retirable.push(usage.kek_id);
        }
    }
    store.close().await;
    Ok(RotationReport {
        new_kek,
        rewrapped: done,
        retirable,
    })
}

/// Running instances seen within [`INSTANCE_LIVE_WITHIN`].
async fn live_instances(
    store: &dyn Store,
    clock: &dyn Clock,
) -> Result<Vec<keyward_core::master_key::InstanceReport>, VaultError> {
    let since = clock
        .now()
        .checked_sub(keyward_core::master_key::INSTANCE_LIVE_WITHIN)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    Ok(store.instances_seen_since(since).await?)
}

/// Waits (up to `wait`: a key file is re-read within seconds) until every running instance
/// holds `kek`; a rotation must not rewrap data keys under a key an instance cannot open.
/// Refuses, changing nothing, when one still does not.
async fn wait_until_held(
    store: &dyn Store,
    kek: &str,
    source: &MasterKeySource,
    clock: &dyn Clock,
    wait: std::time::Duration,
) -> Result<(), VaultError> {
    let deadline = std::time::Instant::now() + wait;
    loop {
        let missing: Vec<String> = live_instances(store, clock)
            .await?
            .into_iter()
            .filter(|i| !i.keks.iter().any(|k| k == kek))
            .map(|i| format!("{} (started {})", i.id, i.started_at))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            let how = match source {
                MasterKeySource::File { .. } => {
                    "copy the updated key file to their machines (they re-read it within seconds); an instance still on the pkcs11 source must be restarted with master_key_source = \"file\" and the token as well"
                }
                MasterKeySource::Pkcs11 { .. } => {
                    "an instance on the pkcs11 source with the same token finds the new key within seconds; restart the others with master_key_source = \"pkcs11\""
                }
                MasterKeySource::Env { .. } => {
                    "restart them with the new key in KEYWARD_MASTER_KEY and the current one in KEYWARD_MASTER_KEY_PREVIOUS (they keep wrapping with the current one until the rotation)"
                }
                MasterKeySource::Passphrase { .. } => {
                    "restart them with the new passphrase in KEYWARD_MASTER_PASSPHRASE and the current one in KEYWARD_MASTER_PASSPHRASE_PREVIOUS"
                }
            };
            return Err(VaultError(format!(
                "{} running instance(s) do not hold the new master key {kek}: {}. Give it to them first — {how} — then run rotate again. Nothing was made current or rewrapped.",
                missing.len(),
                missing.join(", ")
            )));
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// Rewraps every TOTP secret not yet under `new_kek` (compare-and-set per user, so a
/// concurrent re-enrolment is never overwritten).
async fn rewrap_mfa_secrets(
    store: &dyn keyward_core::ports::Store,
    keyring: &Keyring,
    random: &dyn Randomness,
    new_kek: &str,
) -> Result<(), VaultError> {
    for old in keyring.ids().filter(|id| *id != new_kek) {
        for enrolment in store.mfa_wrapped_by(old).await? {
            let moved = keyward_crypto::totp::TotpSecret::rewrap(
                keyring,
                random,
                &enrolment.sealed_secret,
                enrolment.user_id.as_str(),
            )?;
            store
                .rewrap_mfa(
                    &enrolment.user_id,
                    &enrolment.sealed_secret,
                    &moved,
                    new_kek,
                )
                .await?;
        }
    }
    Ok(())
}

/// Forgets a master key that no longer wraps anything (and, for the key-file source,
/// removes it from the file). Refused while any key version still references it.
pub async fn retire(
    location: Location<'_>,
    kek_id: &str,
    random: &dyn Randomness,
    clock: &dyn Clock,
) -> Result<RetireReport, VaultError> {
    let vault = open(location, random, clock).await?;
    if crate::audit::log::keys_sealed_by(&*vault.store)
        .await?
        .as_deref()
        == Some(kek_id)
    {
        return Err(VaultError(format!(
            "master key {kek_id} still wraps the audit keys; run `keyward master-key rotate` first"
        )));
    }
    let users: Vec<String> = live_instances(&*vault.store, clock)
        .await?
        .into_iter()
        .filter(|i| i.current_kek == kek_id)
        .map(|i| i.id)
        .collect();
    if !users.is_empty() {
        return Err(VaultError(format!(
            "master key {kek_id} is still the key {} running instance(s) wrap new data keys with ({}); they follow a rotation within seconds — if one does not, it lacks the new key. Nothing was changed.",
            users.len(),
            users.join(", ")
        )));
    }
    let second_factors = vault.store.mfa_wrapped_by(kek_id).await?.len();
    if second_factors > 0 {
        return Err(VaultError(format!(
            "master key {kek_id} still wraps {second_factors} users' TOTP secrets; run `keyward master-key rotate` first"
        )));
    }
    vault.store.remove_master_key(kek_id).await?;
    let mut note = None;
    let key_file = match &location.master_key {
        MasterKeySource::File { path, .. } => Some(path),
        MasterKeySource::Pkcs11 { key_file, .. } => Some(key_file),
        _ => None,
    };
    if let Some(token) = vault.keyring.token_of(kek_id) {
        note = Some(format!(
            "master key {kek_id} stays on PKCS#11 token '{token}': destroy it with the token's own tools once no backup needs it (a backup opens only with the master key it was sealed under)"
        ));
    } else if let Some(path) = key_file {
        let file = KeyringFile::new(path);
        if file.exists() {
            let held = file.load()?;
            if held.iter().any(|k| k.id() == kek_id) {
                if held.len() > 1 {
                    file.remove(kek_id)?;
                } else {
                    note = Some(format!(
                        "{} now holds only the retired key {kek_id}: keep it with the backups sealed under it, or destroy it",
                        path.display()
                    ));
                }
            }
        }
    }
    vault.store.close().await;
    Ok(RetireReport { note })
}

/// What a retirement left for the operator to do.
#[derive(Debug, PartialEq, Eq)]
pub struct RetireReport {
    pub note: Option<String>,
}

/// What `keyward master-key verify` found.
#[derive(Debug, PartialEq, Eq)]
pub struct VerifyReport {
    pub readable: u64,
    /// `key id vN: reason` for every version that could not be opened.
    pub unreadable: Vec<String>,
}

/// Opens every stored key version in memory (and drops the plaintext at once) to prove the
/// configured master keys can read the whole vault — e.g. before retiring an old key or
/// after restoring a backup.
pub async fn verify_readable(
    location: Location<'_>,
    random: &dyn Randomness,
    clock: &dyn Clock,
) -> Result<VerifyReport, VaultError> {
    let vault = open(location, random, clock).await?;
    let mut report = VerifyReport {
        readable: 0,
        unreadable: Vec::new(),
    };
    for usage in vault.store.kek_usage().await? {
        for version in vault
            .store
            .versions_wrapped_by(&usage.kek_id, u32::MAX)
            .await?
        {
            let context = SealContext::key_secret(&version.key_id, version.version);
            match vault.keyring.unseal(&version.sealed, &context) {
                Ok(_plaintext) => report.readable += 1,
                Err(e) => report
                    .unreadable
                    .push(format!("{} v{}: {e}", version.key_id, version.version)),
            }
        }
    }
    vault.store.close().await;
    Ok(report)
}
