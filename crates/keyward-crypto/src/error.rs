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
    /// The PKCS#11 token could not be used (module, token, PIN, or a failed operation).
    #[error("{0}")]
    Hsm(String),
}

impl From<CryptoError> for keyward_core::Error {
    fn from(e: CryptoError) -> Self {
        match e {
            CryptoError::UnknownKek(_) => keyward_core::Error::new(
                keyward_core::ErrorKind::Unavailable,
                "master_key_unavailable",
                e.to_string(),
            ),
            CryptoError::Hsm(_) => keyward_core::Error::new(
                keyward_core::ErrorKind::Unavailable,
                "hsm_unavailable",
                e.to_string(),
            ),
            // Internal (the details go to the log), but with a code that says what broke.
            CryptoError::Integrity => keyward_core::Error::new(
                keyward_core::ErrorKind::Internal,
                "sealed_value_unreadable",
                e.to_string(),
            ),
            _ => keyward_core::Error::internal(e.to_string()),
        }
    }
}
