//! The backup file: lines of JSON encrypted with age, ending in a manifest signed with the
//! vault's audit key.
//!
//! Inside the age stream: a header line `{"keyward_backup":1}`, one line per
//! [`TableChunk`] (`{"chunk":…}`), the manifest line (`{"manifest":…}`, carrying the
//! SHA-256 of every byte before it and the rows per table) and the signature line (Ed25519
//! over the manifest line's exact bytes). age authenticates every 64 KiB of the stream and
//! its end, so a truncated or edited file fails to decrypt; age does not say *who*
//! encrypted it, which is what the signature is for.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};

use keyward_core::backup::{FORMAT_VERSION, Manifest, TableChunk};
use keyward_core::{Error, ErrorKind};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::audit::AuditKeys;

/// Who can open a backup: age recipients (`age1…`), or one passphrase.
pub enum Protection {
    Recipients(Vec<age::x25519::Recipient>),
    Passphrase(SecretString),
}

impl std::fmt::Debug for Protection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Recipients(r) => write!(f, "Recipients({})", r.len()),
            Self::Passphrase(_) => f.write_str("Passphrase(..)"),
        }
    }
}

/// The shortest passphrase a backup is encrypted with (age stretches it with scrypt).
pub const MIN_PASSPHRASE_CHARS: usize = 12;

impl Protection {
    /// A passphrase of at least [`MIN_PASSPHRASE_CHARS`] characters.
    pub fn passphrase(passphrase: SecretString) -> Result<Self, Error> {
        if passphrase.expose_secret().chars().count() < MIN_PASSPHRASE_CHARS {
            return Err(invalid(
                "backup_passphrase_too_short",
                format!("a backup passphrase needs at least {MIN_PASSPHRASE_CHARS} characters"),
            ));
        }
        Ok(Self::Passphrase(passphrase))
    }

    /// Parses `age1…` recipients; the error names the one that is not.
    pub fn recipients(texts: &[String]) -> Result<Self, Error> {
        if texts.is_empty() {
            return Err(invalid(
                "backup_no_recipient",
                "a backup needs at least one --recipient (age1…) or a passphrase",
            ));
        }
        texts
            .iter()
            .map(|text| {
                text.trim().parse::<age::x25519::Recipient>().map_err(|_| {
                    invalid(
                        "backup_bad_recipient",
                        format!(
                            "`{}` is not an age recipient (expected age1…)",
                            keyward_core::label::printable(text)
                        ),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Self::Recipients)
    }
}

/// What opens a backup: age identities (`AGE-SECRET-KEY-1…`), or its passphrase.
pub enum Unlock {
    Identities(Vec<age::x25519::Identity>),
    Passphrase(SecretString),
}

impl std::fmt::Debug for Unlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Identities(i) => write!(f, "Identities({})", i.len()),
            Self::Passphrase(_) => f.write_str("Passphrase(..)"),
        }
    }
}

impl Unlock {
    /// Reads an age identity file: one `AGE-SECRET-KEY-1…` per line, `#` comments.
    pub fn identity_file(text: &SecretString) -> Result<Self, Error> {
        let identities = text
            .expose_secret()
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(|line| {
                line.parse::<age::x25519::Identity>().map_err(|_| {
                    invalid(
                        "backup_bad_identity",
                        "the identity file holds a line that is not an age identity (AGE-SECRET-KEY-1…)",
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if identities.is_empty() {
            return Err(invalid(
                "backup_bad_identity",
                "the identity file holds no age identity (AGE-SECRET-KEY-1…)",
            ));
        }
        Ok(Self::Identities(identities))
    }
}

/// A new age identity for backups: the secret line to keep, and the recipient to encrypt to.
pub fn generate_identity() -> (SecretString, String) {
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    (
        SecretString::from(identity.to_string().expose_secret().to_owned()),
        recipient,
    )
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum Line {
    KeywardBackup(u32),
    Chunk(TableChunk),
    Manifest(Manifest),
    Signature(String),
}

/// Writes a backup: chunks in, a signed manifest at the end.
#[allow(
    missing_debug_implementations,
    reason = "holds an encrypting stream, nothing to show"
)]
pub struct BackupWriter<W: Write> {
    stream: age::stream::StreamWriter<W>,
    hasher: Sha256,
    tables: BTreeMap<String, u64>,
}

impl<W: Write> BackupWriter<W> {
    /// Starts the encrypted stream and writes the header line.
    pub fn new(output: W, protection: &Protection) -> Result<Self, Error> {
        let encryptor = match protection {
            Protection::Recipients(recipients) => {
                age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
                    .map_err(|e| internal(format!("cannot encrypt the backup: {e}")))?
            }
            Protection::Passphrase(passphrase) => {
                age::Encryptor::with_user_passphrase(passphrase.clone())
            }
        };
        let stream = encryptor
            .wrap_output(output)
            .map_err(|e| io_error("cannot write the backup", &e))?;
        let mut writer = Self {
            stream,
            hasher: Sha256::new(),
            tables: BTreeMap::new(),
        };
        writer.payload_line(&Line::KeywardBackup(FORMAT_VERSION))?;
        Ok(writer)
    }

    pub fn write_chunk(&mut self, chunk: TableChunk) -> Result<(), Error> {
        *self.tables.entry(chunk.table.clone()).or_default() += chunk.rows.len() as u64;
        self.payload_line(&Line::Chunk(chunk))
    }

    /// Completes `manifest` (rows per table, payload hash, signer), signs it, writes both
    /// lines and closes the stream. Returns the output and the manifest as written.
    pub fn finish(
        mut self,
        mut manifest: Manifest,
        keys: &AuditKeys,
    ) -> Result<(W, Manifest), Error> {
        for table in manifest.tables.keys() {
            self.tables.entry(table.clone()).or_default();
        }
        manifest.tables = std::mem::take(&mut self.tables);
        manifest.payload_sha256 = hex::encode(self.hasher.finalize_reset());
        manifest.signer = keys.key_id().to_owned();
        let manifest_line = line_text(&Line::Manifest(manifest.clone()))?;
        let signature = keys.sign(manifest_line.as_bytes());
        let signature_line = line_text(&Line::Signature(signature))?;
        for text in [manifest_line, signature_line] {
            self.stream
                .write_all(text.as_bytes())
                .and_then(|()| self.stream.write_all(b"\n"))
                .map_err(|e| io_error("cannot write the backup", &e))?;
        }
        let output = self
            .stream
            .finish()
            .map_err(|e| io_error("cannot finish the backup", &e))?;
        Ok((output, manifest))
    }

    fn payload_line(&mut self, line: &Line) -> Result<(), Error> {
        let mut text = line_text(line)?;
        text.push('\n');
        self.hasher.update(text.as_bytes());
        self.stream
            .write_all(text.as_bytes())
            .map_err(|e| io_error("cannot write the backup", &e))
    }
}

fn line_text(line: &Line) -> Result<String, Error> {
    serde_json::to_string(line).map_err(|e| internal(format!("cannot encode the backup: {e}")))
}

/// Reads a backup: chunks out as they decrypt, then the manifest, checked against what was
/// read. Nothing read before [`BackupReader::finish`] succeeds may be trusted or kept.
#[allow(
    missing_debug_implementations,
    reason = "holds a decrypting stream, nothing to show"
)]
pub struct BackupReader<R: Read> {
    lines: BufReader<age::stream::StreamReader<R>>,
    hasher: Sha256,
    tables: BTreeMap<String, u64>,
    /// The manifest line once reached (chunks are over).
    manifest_line: Option<String>,
}

/// A manifest whose payload matched it; its signature is checked against the vault's
/// audit key with [`SignedManifest::check_signature`].
#[derive(Debug)]
pub struct SignedManifest {
    pub manifest: Manifest,
    line: String,
    signature: String,
}

impl SignedManifest {
    /// Refuses a manifest not signed by `keys` (another vault's backup, or one re-signed).
    pub fn check_signature(&self, keys: &AuditKeys) -> Result<(), Error> {
        if self.manifest.signer != keys.key_id()
            || !keys.verify(self.line.as_bytes(), &self.signature)
        {
            return Err(invalid(
                "backup_signature_invalid",
                format!(
                    "the backup's manifest is not signed by this vault's audit key ({}): it was made or altered by another vault",
                    keys.key_id()
                ),
            ));
        }
        Ok(())
    }
}

impl<R: Read> BackupReader<R> {
    /// Opens the age stream and reads the header line.
    pub fn open(input: R, unlock: &Unlock) -> Result<Self, Error> {
        let decryptor = age::Decryptor::new(input).map_err(|e| decrypt_error(&e))?;
        let stream = match unlock {
            Unlock::Identities(identities) => {
                if decryptor.is_scrypt() {
                    return Err(invalid(
                        "backup_needs_passphrase",
                        "the backup is encrypted with a passphrase; set KEYWARD_BACKUP_PASSPHRASE (or _FILE)",
                    ));
                }
                decryptor.decrypt(identities.iter().map(|i| i as &dyn age::Identity))
            }
            Unlock::Passphrase(passphrase) => {
                if !decryptor.is_scrypt() {
                    return Err(invalid(
                        "backup_needs_identity",
                        "the backup is encrypted to age recipients, not a passphrase; pass --identity FILE",
                    ));
                }
                let identity = age::scrypt::Identity::new(passphrase.clone());
                decryptor.decrypt(std::iter::once(&identity as &dyn age::Identity))
            }
        }
        .map_err(|e| decrypt_error(&e))?;
        let mut reader = Self {
            lines: BufReader::new(stream),
            hasher: Sha256::new(),
            tables: BTreeMap::new(),
            manifest_line: None,
        };
        match reader.read_line()? {
            Some((Line::KeywardBackup(format), text)) if format <= FORMAT_VERSION => {
                reader.hasher.update(text.as_bytes());
                Ok(reader)
            }
            Some((Line::KeywardBackup(format), _)) => Err(invalid(
                "backup_format_newer",
                format!(
                    "the backup uses format {format}; this Keyward ({}) reads format {FORMAT_VERSION}",
                    env!("CARGO_PKG_VERSION")
                ),
            )),
            _ => Err(malformed("it does not start with Keyward's backup header")),
        }
    }

    /// The next chunk, or `None` once the manifest is reached.
    pub fn next_chunk(&mut self) -> Result<Option<TableChunk>, Error> {
        if self.manifest_line.is_some() {
            return Ok(None);
        }
        match self.read_line()? {
            Some((Line::Chunk(chunk), text)) => {
                self.hasher.update(text.as_bytes());
                *self.tables.entry(chunk.table.clone()).or_default() += chunk.rows.len() as u64;
                Ok(Some(chunk))
            }
            Some((Line::Manifest(_), text)) => {
                self.manifest_line = Some(text);
                Ok(None)
            }
            Some(_) => Err(malformed("a line is out of place")),
            None => Err(invalid(
                "backup_truncated",
                "the backup ends before its manifest: it is truncated",
            )),
        }
    }

    /// Reads the rest (the manifest and its signature, then the end of the stream) and
    /// checks the manifest against the payload read. The signature is checked by the caller,
    /// who holds the vault's audit key.
    pub fn finish(mut self) -> Result<SignedManifest, Error> {
        while self.next_chunk()?.is_some() {}
        let Some(line) = self.manifest_line.take() else {
            return Err(malformed("it has no manifest"));
        };
        let Some((Line::Signature(signature), _)) = self.read_line()? else {
            return Err(invalid(
                "backup_truncated",
                "the backup's manifest is not followed by its signature",
            ));
        };
        if self.read_line()?.is_some() {
            return Err(malformed("something follows the signature"));
        }
        let Ok(Line::Manifest(manifest)) = serde_json::from_str::<Line>(line.trim_end()) else {
            return Err(malformed("its manifest cannot be read"));
        };
        let payload = hex::encode(self.hasher.finalize());
        let mut expected = manifest.tables.clone();
        expected.retain(|_, rows| *rows > 0);
        let mut read = std::mem::take(&mut self.tables);
        read.retain(|_, rows| *rows > 0);
        if payload != manifest.payload_sha256 || read != expected {
            return Err(invalid(
                "backup_tampered",
                "the backup's contents do not match its manifest: it was edited",
            ));
        }
        Ok(SignedManifest {
            manifest,
            line: line.trim_end().to_owned(),
            signature,
        })
    }

    /// One line and its exact text (newline included), `None` at a clean end.
    fn read_line(&mut self) -> Result<Option<(Line, String)>, Error> {
        let mut text = String::new();
        let read = self.lines.read_line(&mut text).map_err(|e| {
            if e.kind() == std::io::ErrorKind::InvalidData && e.to_string().contains("UTF-8") {
                malformed("it holds text that is not UTF-8")
            } else {
                invalid(
                    "backup_damaged",
                    "the backup is damaged or truncated: its encryption does not authenticate",
                )
            }
        })?;
        if read == 0 {
            return Ok(None);
        }
        let line = serde_json::from_str::<Line>(text.trim_end())
            .map_err(|_| malformed("a line is not part of Keyward's backup format"))?;
        Ok(Some((line, text)))
    }
}

fn decrypt_error(e: &age::DecryptError) -> Error {
    match e {
        age::DecryptError::NoMatchingKeys => invalid(
            "backup_wrong_recipient",
            "none of the given identities opens this backup: it was encrypted to another recipient",
        ),
        age::DecryptError::DecryptionFailed | age::DecryptError::KeyDecryptionFailed => invalid(
            "backup_wrong_passphrase",
            "the passphrase does not open this backup",
        ),
        age::DecryptError::ExcessiveWork { .. } => invalid(
            "backup_excessive_work",
            "the backup's passphrase encryption asks for far more work than Keyward allows",
        ),
        age::DecryptError::InvalidHeader
        | age::DecryptError::InvalidMac
        | age::DecryptError::UnknownFormat => invalid(
            "backup_damaged",
            "this is not a Keyward backup, or its header was damaged (age cannot read it)",
        ),
        _ => invalid(
            "backup_damaged",
            "the backup cannot be read: it is damaged or truncated",
        ),
    }
}

fn invalid(code: &'static str, message: impl Into<String>) -> Error {
    Error::new(ErrorKind::Invalid, code, message)
}

fn malformed(why: &str) -> Error {
    invalid(
        "backup_malformed",
        format!("the backup decrypts but is not in Keyward's format: {why}"),
    )
}

fn internal(message: String) -> Error {
    Error::internal(message)
}

fn io_error(what: &str, e: &std::io::Error) -> Error {
    Error::unavailable(format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use keyward_core::backup::Cell;

    use super::*;
    use crate::OsRandomness;

    fn manifest() -> Manifest {
        Manifest {
            format: FORMAT_VERSION,
            keyward_version: "test".into(),
            schema_version: 25,
            created_at: 1,
            source_backend: "sqlite".into(),
            raw_usage: false,
            tables: BTreeMap::new(),
            audit_head: None,
            audit_checkpoint: None,
            payload_sha256: String::new(),
            signer: String::new(),
        }
    }

    fn chunk(table: &str, text: &str) -> TableChunk {
        TableChunk {
            table: table.into(),
            columns: vec!["id".into(), "value".into()],
            rows: vec![vec![Cell::Integer(1), Cell::Text(text.into())]],
        }
    }

    fn backup(protection: &Protection, keys: &AuditKeys) -> Vec<u8> {
        let mut writer = BackupWriter::new(Vec::new(), protection).unwrap();
        writer.write_chunk(chunk("keys", "sealed-bytes")).unwrap();
        writer.write_chunk(chunk("users", "someone")).unwrap();
        writer.finish(manifest(), keys).unwrap().0
    }

    fn read_all(bytes: &[u8], unlock: &Unlock) -> Result<(Vec<TableChunk>, SignedManifest), Error> {
        let mut reader = BackupReader::open(bytes, unlock)?;
        let mut chunks = Vec::new();
        while let Some(chunk) = reader.next_chunk()? {
            chunks.push(chunk);
        }
        Ok((chunks, reader.finish()?))
    }

    #[test]
    fn a_backup_round_trips_and_its_signature_names_the_vault() {
        let keys = AuditKeys::generate(&OsRandomness).unwrap();
        let (identity, recipient) = generate_identity();
        let bytes = backup(&Protection::recipients(&[recipient]).unwrap(), &keys);
        assert!(!String::from_utf8_lossy(&bytes).contains("sealed-bytes"));
        let unlock = Unlock::identity_file(&identity).unwrap();
        let (chunks, signed) = read_all(&bytes, &unlock).unwrap();
        assert_eq!(
            chunks,
            vec![chunk("keys", "sealed-bytes"), chunk("users", "someone")]
        );
        assert_eq!(signed.manifest.tables["keys"], 1);
        signed.check_signature(&keys).unwrap();
        let other = AuditKeys::generate(&OsRandomness).unwrap();
        assert_eq!(
            signed.check_signature(&other).unwrap_err().code,
            "backup_signature_invalid"
        );
    }

    #[test]
    fn every_damage_is_refused_with_its_reason() {
        let keys = AuditKeys::generate(&OsRandomness).unwrap();
        let (identity, recipient) = generate_identity();
        let bytes = backup(&Protection::recipients(&[recipient]).unwrap(), &keys);
        let unlock = Unlock::identity_file(&identity).unwrap();

        let truncated = &bytes[..bytes.len() - 20];
        assert_eq!(
            read_all(truncated, &unlock).unwrap_err().code,
            "backup_damaged"
        );
        let mut edited = bytes.clone();
        let middle = edited.len() - 40;
        edited[middle] ^= 1;
        assert_eq!(
            read_all(&edited, &unlock).unwrap_err().code,
            "backup_damaged"
        );
        let (stranger, _) = generate_identity();
        assert_eq!(
            read_all(&bytes, &Unlock::identity_file(&stranger).unwrap())
                .unwrap_err()
                .code,
            "backup_wrong_recipient"
        );
        assert_eq!(
            read_all(b"not an age file at all", &unlock)
                .unwrap_err()
                .code,
            "backup_damaged"
        );
    }

    #[test]
    fn a_passphrase_backup_needs_the_passphrase() {
        let keys = AuditKeys::generate(&OsRandomness).unwrap();
        let bytes = backup(&Protection::Passphrase("correct horse".into()), &keys);
        let (chunks, _) = read_all(&bytes, &Unlock::Passphrase("correct horse".into())).unwrap();
        assert_eq!(chunks.len(), 2);
        assert_eq!(
            read_all(&bytes, &Unlock::Passphrase("wrong horse".into()))
                .unwrap_err()
                .code,
            "backup_wrong_passphrase"
        );
        let (identity, _) = generate_identity();
        assert_eq!(
            read_all(&bytes, &Unlock::identity_file(&identity).unwrap())
                .unwrap_err()
                .code,
            "backup_needs_passphrase"
        );
    }

    #[test]
    fn a_payload_rewritten_under_the_same_recipient_is_refused() {
        // Anyone holding the recipient can encrypt a new file: the manifest's hash and
        // signature are what catch it.
        let keys = AuditKeys::generate(&OsRandomness).unwrap();
        let (identity, recipient) = generate_identity();
        let protection = Protection::recipients(&[recipient]).unwrap();
        let unlock = Unlock::identity_file(&identity).unwrap();
        let original = backup(&protection, &keys);
        let mut plain = Vec::new();
        {
            let decryptor = age::Decryptor::new(original.as_slice()).unwrap();
            let Unlock::Identities(ids) = &unlock else {
                unreachable!()
            };
            decryptor
                .decrypt(ids.iter().map(|i| i as &dyn age::Identity))
                .unwrap()
                .read_to_end(&mut plain)
                .unwrap();
        }
        let edited = String::from_utf8(plain)
            .unwrap()
            .replace("someone", "intruder");
        let Protection::Recipients(recipients) = &protection else {
            unreachable!()
        };
        let mut forged = Vec::new();
        let mut out =
            age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
                .unwrap()
                .wrap_output(&mut forged)
                .unwrap();
        out.write_all(edited.as_bytes()).unwrap();
        out.finish().unwrap();
        assert_eq!(
            read_all(&forged, &unlock).unwrap_err().code,
            "backup_tampered"
        );
    }
}
