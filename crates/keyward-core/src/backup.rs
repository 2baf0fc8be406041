//! What a backup holds and promises, apart from how it is stored or encrypted.
//!
//! A backup is the store's tables in a portable form — rows of [`Cell`]s, so a SQLite
//! vault restores into PostgreSQL and back — followed by a [`Manifest`] that names what it
//! holds and is signed with the vault's own audit key. Keys and versions stay sealed,
//! tokens stay hashed: a backup holds nothing the database does not.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The backup format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// One value of a row, as both backends can store it. Booleans travel as integers 0/1;
/// the importer binds them as the target column wants.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Bytes(Vec<u8>),
}

/// The wire form of a [`Cell`] in a backup line: JSON null, integer, float (always written
/// with a fraction or exponent by serde_json), string, or `{"b": base64}` for bytes.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum WireCell {
    Null(()),
    Integer(i64),
    Real(f64),
    Text(String),
    Bytes { b: String },
}

impl Serialize for Cell {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use base64::Engine;
        match self {
            Cell::Null => s.serialize_unit(),
            Cell::Integer(v) => s.serialize_i64(*v),
            Cell::Real(v) => s.serialize_f64(*v),
            Cell::Text(v) => s.serialize_str(v),
            Cell::Bytes(v) => WireCell::Bytes {
                b: base64::engine::general_purpose::STANDARD.encode(v),
            }
            .serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Cell {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use base64::Engine;
        Ok(match WireCell::deserialize(d)? {
            WireCell::Null(()) => Cell::Null,
            WireCell::Integer(v) => Cell::Integer(v),
            WireCell::Real(v) => Cell::Real(v),
            WireCell::Text(v) => Cell::Text(v),
            WireCell::Bytes { b } => Cell::Bytes(
                base64::engine::general_purpose::STANDARD
                    .decode(b)
                    .map_err(serde::de::Error::custom)?,
            ),
        })
    }
}

/// Up to a few hundred rows of one table, with its column names in row order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableChunk {
    pub table: String,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Cell>>,
}

/// The audit chain's head when the backup was taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainHead {
    pub seq: u64,
    pub hash: String,
}

/// What a backup says about itself; signed, so nothing in it can be changed unseen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub keyward_version: String,
    /// The newest migration of the store it was taken from.
    pub schema_version: i64,
    /// Unix milliseconds.
    pub created_at: i64,
    /// `sqlite` or `postgres`.
    pub source_backend: String,
    /// Whether raw usage records are included (rollups always are).
    pub raw_usage: bool,
    /// Rows per table.
    pub tables: BTreeMap<String, u64>,
    pub audit_head: Option<ChainHead>,
    /// The sequence number the last signed checkpoint covers.
    pub audit_checkpoint: Option<u64>,
    /// SHA-256 (hex) of every payload byte before the manifest line.
    pub payload_sha256: String,
    /// The audit signing key that signed this manifest (its id).
    pub signer: String,
}

impl Manifest {
    /// Refuses what this build cannot restore faithfully: a newer format or schema.
    pub fn check_supported(&self, schema_version: i64) -> Result<()> {
        if self.format > FORMAT_VERSION {
            return Err(Error::invalid(
                "backup_format_newer",
                format!(
                    "the backup uses format {} but this Keyward ({}) reads format {FORMAT_VERSION}; restore it with Keyward {} or newer",
                    self.format,
                    env!("CARGO_PKG_VERSION"),
                    self.keyward_version
                ),
            ));
        }
        if self.schema_version > schema_version {
            return Err(Error::invalid(
                "backup_schema_newer",
                format!(
                    "the backup was taken from schema version {} (Keyward {}), newer than this Keyward's {schema_version}; restore it with Keyward {} or newer",
                    self.schema_version, self.keyward_version, self.keyward_version
                ),
            ));
        }
        Ok(())
    }

    /// Every row counted.
    pub fn rows(&self) -> u64 {
        self.tables.values().sum()
    }
}

/// How scheduled backups are configured, as pages show it (nothing secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupSchedule {
    pub every: std::time::Duration,
    /// Backups kept in `dir`.
    pub keep: u32,
    pub dir: String,
    /// "2 age recipient(s)" or "a passphrase".
    pub encrypted_to: String,
    pub raw_usage: bool,
}

/// Where an export sends its chunks (a backup file being written).
#[async_trait]
pub trait ChunkSink: Send {
    async fn put(&mut self, chunk: TableChunk) -> Result<()>;
}

/// Where an import takes its chunks from (a backup file being read); `None` at the end.
#[async_trait]
pub trait ChunkSource: Send {
    async fn next_chunk(&mut self) -> Result<Option<TableChunk>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_survive_their_wire_form() {
        let row = vec![
            Cell::Null,
            Cell::Integer(-7),
            Cell::Real(2.0),
            Cell::Real(0.25),
            Cell::Text("{\"b\":\"not bytes\"}".into()),
            Cell::Text(String::new()),
            Cell::Bytes(vec![0, 255, 10]),
            Cell::Integer(i64::MAX),
        ];
        let text = serde_json::to_string(&row).unwrap();
        let back: Vec<Cell> = serde_json::from_str(&text).unwrap();
        assert_eq!(back, row);
    }

    #[test]
    fn a_newer_schema_or_format_is_refused_with_the_version_to_use() {
        let manifest = Manifest {
            format: FORMAT_VERSION,
            keyward_version: "9.9.9".into(),
            schema_version: 26,
            created_at: 0,
            source_backend: "sqlite".into(),
            raw_usage: false,
            tables: BTreeMap::new(),
            audit_head: None,
            audit_checkpoint: None,
            payload_sha256: String::new(),
            signer: String::new(),
        };
        assert!(manifest.check_supported(26).is_ok());
        let e = manifest.check_supported(25).unwrap_err();
        assert_eq!(e.code, "backup_schema_newer");
        assert!(e.message.contains("9.9.9"), "{}", e.message);
        let newer = Manifest {
            format: FORMAT_VERSION + 1,
            ..manifest
        };
        assert_eq!(
            newer.check_supported(26).unwrap_err().code,
            "backup_format_newer"
        );
    }
}
