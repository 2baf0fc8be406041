//! Where master keys come from: a key file (the default), an environment variable, or a
//! passphrase stretched with Argon2id. The server's configuration picks one; this module
//! only turns the chosen source's material into [`MasterKey`]s.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use keyward_core::Randomness;
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use crate::{CryptoError, MasterKey};

const FILE_HEADER: &str = "\
# Keyward master keyring. KEEP THIS FILE SECRET AND BACKED UP, APART FROM THE DATABASE.
# Losing it makes every key stored in the vault unreadable; anyone holding it and a copy of
# the database can read every key. One base64 key per line; the last line is the newest.
";

impl MasterKey {
    /// The key as base64, for `keyward master-key generate` (printed once, for the
    /// environment-variable provider) and the key file. A token key has none: it never
    /// leaves the token.
    pub fn to_base64(&self) -> Result<SecretString, CryptoError> {
        let bytes = self.bytes().ok_or_else(|| {
            CryptoError::KeyFile(format!(
                "master key {} lives in a PKCS#11 token and cannot be written out",
                self.id()
            ))
        })?;
        Ok(SecretString::from(STANDARD.encode(bytes)))
    }
}

/// Parses a base64 (or 64-hex-digit) 256-bit master key, e.g. from `KEYWARD_MASTER_KEY`.
pub fn parse_master_key(encoded: &SecretString) -> Result<MasterKey, CryptoError> {
    let text = encoded.expose_secret().trim();
    let bytes = Zeroizing::new(
        if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(text).map_err(|_| bad_key())?
        } else {
            STANDARD.decode(text).map_err(|_| bad_key())?
        },
    );
    let array: [u8; 32] = bytes.as_slice().try_into().map_err(|_| bad_key())?;
    Ok(MasterKey::from_bytes(array))
}

fn bad_key() -> CryptoError {
    CryptoError::KeyFile(
        "a master key must be 32 bytes, base64-encoded (44 characters) or as 64 hex digits; `keyward master-key generate` prints one".into(),
    )
}

/// Argon2id parameters for passphrase-derived master keys: 64 MiB, 3 passes. Slow on
/// purpose (≈0.2–0.5 s, once per start) because a passphrase has far less entropy than a key.
const PASSPHRASE_PARAMS: (u32, u32, u32) = (64 * 1024, 3, 1);
pub const PASSPHRASE_MIN_CHARS: usize = 16;

pub fn derive_from_passphrase(
    passphrase: &SecretString,
    salt: &[u8],
) -> Result<MasterKey, CryptoError> {
    if passphrase.expose_secret().chars().count() < PASSPHRASE_MIN_CHARS {
        return Err(CryptoError::KeyFile(format!(
            "the master passphrase must have at least {PASSPHRASE_MIN_CHARS} characters"
        )));
    }
    let (m, t, p) = PASSPHRASE_PARAMS;
    let params =
        Params::new(m, t, p, Some(32)).map_err(|_| CryptoError::Malformed("argon2 parameters"))?;
    let mut out = [0u8; 32];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(passphrase.expose_secret().as_bytes(), salt, &mut out)
        .map_err(|_| CryptoError::Malformed("argon2 salt"))?;
    Ok(MasterKey::from_bytes(out))
}

/// The default provider: a keyring file (mode 0600) next to the database.
#[derive(Debug, Clone)]
pub struct KeyringFile {
    path: PathBuf,
}

impl KeyringFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn exists(&self) -> bool {
        self.path.exists()
    }

    /// Whether group or others can read the file (they should not).
    pub fn permissions_too_open(&self) -> bool {
        fs::metadata(&self.path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0)
    }

    /// All keys in the file, oldest first.
    pub fn load(&self) -> Result<Vec<MasterKey>, CryptoError> {
        let text = Zeroizing::new(fs::read_to_string(&self.path).map_err(|e| {
            CryptoError::KeyFile(format!(
                "cannot read master key file {}: {e}",
                self.path.display()
            ))
        })?);
        let keys = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|line| {
                parse_master_key(&SecretString::from(line.to_owned())).map_err(|_| {
                    CryptoError::KeyFile(format!(
                        "master key file {} is corrupted",
                        self.path.display()
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Err(CryptoError::KeyFile(format!(
                "master key file {} holds no key",
                self.path.display()
            )));
        }
        Ok(keys)
    }

    /// All keys in the file, oldest first, or none when there is no file (older keys that
    /// another source holds while a vault moves off the file).
    pub fn load_if_present(&self) -> Result<Vec<MasterKey>, CryptoError> {
        if self.exists() {
            self.load()
        } else {
            Ok(Vec::new())
        }
    }

    /// Creates the file with one new key. Refuses to overwrite an existing file.
    pub fn create(&self, random: &dyn Randomness) -> Result<MasterKey, CryptoError> {
        if self.exists() {
            return Err(CryptoError::KeyFile(format!(
                "refusing to overwrite existing master key file {}",
                self.path.display()
            )));
        }
        let key = MasterKey::generate(random);
        self.write(std::slice::from_ref(&key))?;
        Ok(key)
    }

    /// Appends a new key (which becomes the newest) and returns its id.
    pub fn append_new(&self, random: &dyn Randomness) -> Result<String, CryptoError> {
        let mut keys = self.load()?;
        let key = MasterKey::generate(random);
        let id = key.id().to_owned();
        keys.push(key);
        self.write(&keys)?;
        Ok(id)
    }

    /// Removes a key from the file (after the vault stopped referencing it).
    pub fn remove(&self, kek_id: &str) -> Result<(), CryptoError> {
        let keys: Vec<MasterKey> = self
            .load()?
            .into_iter()
            .filter(|k| k.id() != kek_id)
            .collect();
        if keys.is_empty() {
            return Err(CryptoError::KeyFile(
                "refusing to remove the last master key".into(),
            ));
        }
        self.write(&keys)
    }

    /// Writes atomically: a 0600 temporary file, fsync, rename, fsync of the directory.
    fn write(&self, keys: &[MasterKey]) -> Result<(), CryptoError> {
        let io = |what: &str, e: std::io::Error| {
            CryptoError::KeyFile(format!(
                "cannot {what} master key file {}: {e}",
                self.path.display()
            ))
        };
        let dir = self
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(|e| io("create the directory of the", e))?;
        let tmp = self.path.with_extension("tmp");
        let _ = fs::remove_file(&tmp);
        let mut content = Zeroizing::new(String::from(FILE_HEADER));
        for key in keys {
            content.push_str(key.to_base64()?.expose_secret());
            content.push('\n');
        }
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io("create the", e))?;
        file.write_all(content.as_bytes())
            .map_err(|e| io("write the", e))?;
        file.sync_all().map_err(|e| io("sync the", e))?;
        fs::rename(&tmp, &self.path).map_err(|e| io("replace the", e))?;
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("sync the directory of the", e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Keyring, OsRandomness};

    #[test]
    fn key_file_is_private_and_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = KeyringFile::new(dir.path().join("data/master.key"));
        let key = file.create(&OsRandomness).expect("create");
        let mode = fs::metadata(file.path())
            .expect("meta")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!file.permissions_too_open());
        let loaded = file.load().expect("load");
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].id(), key.id());
        assert!(
            file.create(&OsRandomness).is_err(),
            "must never overwrite a key file"
        );

        let new_id = file.append_new(&OsRandomness).expect("append");
        let ring = Keyring::new(file.load().expect("load")).expect("ring");
        assert_eq!(ring.current_id(), new_id);
        file.remove(key.id()).expect("remove");
        assert_eq!(file.load().expect("load").len(), 1);
        assert!(file.remove(&new_id).is_err(), "the last key stays");
    }

    #[test]
    fn corrupted_key_file_is_reported_without_its_content() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("master.key");
        fs::write(&path, "not-base64-SECRETISH\n").expect("write");
        let err = KeyringFile::new(&path).load().expect_err("corrupted");
        assert!(!err.to_string().contains("SECRETISH"));
    }

    #[test]
    fn env_style_keys_parse_as_base64_or_hex() {
        let key = MasterKey::generate(&OsRandomness);
        let parsed = parse_master_key(&key.to_base64().expect("memory key")).expect("base64");
        assert_eq!(parsed.id(), key.id());
        let hex_form = SecretString::from(hex::encode(key.bytes().expect("memory key")));
        assert_eq!(parse_master_key(&hex_form).expect("hex").id(), key.id());
        assert!(parse_master_key(&SecretString::from("short".to_owned())).is_err());
    }

    #[test]
    fn passphrases_derive_stable_keys_per_salt() {
        let pass = SecretString::from("correct horse battery staple".to_owned());
        let a = derive_from_passphrase(&pass, b"0123456789abcdef").expect("derive");
        let b = derive_from_passphrase(&pass, b"0123456789abcdef").expect("derive");
        let c = derive_from_passphrase(&pass, b"fedcba9876543210").expect("derive");
        assert_eq!(a.id(), b.id());
        assert_ne!(a.id(), c.id());
        assert!(
            derive_from_passphrase(&SecretString::from("short".to_owned()), b"0123456789abcdef")
                .is_err()
        );
    }
}
