use thiserror::Error;

/// Why a cryptographic operation failed. Deliberately coarse: an attacker learns nothing
/// from which check failed, and no variant carries secret material.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CryptoError {
    /// The value was sealed under a master key this keyring does not hold.
    #[error("master key {0} is not loaded")]
    UnknownKek(String),
    /// Authentication failed: wrong key, edited bytes, or a ciphertext moved to another row.
    #[error(
        "integrity check failed: the sealed value was altered, moved, or the master key is wrong"
    )]
    Integrity,
    /// The stored record is not something this version of Keyward wrote.
    #[error("unsupported or malformed sealed value: {0}")]
    Malformed(&'static str),
    /// Reading or writing the master key file failed.
    #[error("{0}")]
    KeyFile(String),
}

impl From<CryptoError> for keyward_core::Error {
    fn from(e: CryptoError) -> Self {
        match e {
            CryptoError::UnknownKek(_) => keyward_core::Error::new(
                keyward_core::ErrorKind::Unavailable,
                "master_key_unavailable",
                e.to_string(),
            ),
            _ => keyward_core::Error::internal(e.to_string()),
        }
    }
}
