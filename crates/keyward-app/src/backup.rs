//! Backups of the whole vault: create (through the pipeline: audited, approval-gated as an
//! export), verify, and restore into an empty store on either backend followed by a drill.
//!
//! A backup is the store's tables (`Store::export_tables`: one read snapshot; keys and
//! versions still sealed, tokens hashed) written by `keyward_crypto::backup` as an age file
//! whose manifest is signed with the vault's audit key. Whether a backup is *this vault's*
//! is proved by the operator's master key: it must open the audit key sealed inside the
//! backup, and that key must have signed the manifest. Nothing is restored before the whole
//! file has been read and checked once; the second read, which loads it, checks it again and
//! aborts the load's one transaction if anything differs.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::Arc;

use async_trait::async_trait;
use keyward_core::access::Permission;
use keyward_core::approval::ApprovalAction;
use keyward_core::audit::{AuditOutcome, VerifyReport as ChainReport};
use keyward_core::backup::{
    Cell, ChainHead, ChunkSink, ChunkSource, FORMAT_VERSION, Manifest, TableChunk,
};
use keyward_core::key::SealContext;
use keyward_core::ports::Store;
use keyward_core::{Clock, Error, ErrorKind, Randomness};
use keyward_crypto::Keyring;
use keyward_crypto::audit::AuditKeys;
use keyward_crypto::backup::{BackupReader, BackupWriter, SignedManifest};
pub use keyward_crypto::backup::{Protection, Unlock, generate_identity};
use tokio::sync::mpsc;

use crate::actor::Actor;
use crate::app::App;
use crate::pipeline::{Change, Subject};
use crate::vault::{self, MasterKeySource};

/// The newest schema this build restores.
pub const SCHEMA_VERSION: i64 = keyward_store::SCHEMA_VERSION;

/// Chunks in flight between the store and the file, in either direction.
const CHUNKS_IN_FLIGHT: usize = 4;

/// The vault settings a backup is opened with (both live in `vault_settings`).
const AUDIT_KEYS_SETTING: &str = "audit_keys";
const PASSPHRASE_SALT_SETTING: &str = "master_passphrase_salt";

impl App {
    /// Writes a backup of the whole vault to `output`. It needs `vault_backup` (owners) and
    /// a fresh MFA check, the approval policy may cover it as `export`, and the audit entry
    /// is written first — so the backup holds its own entry, under a checkpoint signed just
    /// before the snapshot.
    pub async fn create_backup<W: Write + Send + 'static>(
        &self,
        actor: &Actor,
        protection: Protection,
        raw_usage: bool,
        output: W,
    ) -> Result<(W, Manifest), Error> {
        // Who can open it is part of what an approval approves.
        let encrypted_to = match &protection {
            Protection::Recipients(r) => {
                serde_json::json!(r.iter().map(ToString::to_string).collect::<Vec<_>>())
            }
            Protection::Passphrase(_) => serde_json::json!("passphrase"),
        };
        let change = Change::new(
            "backup.create",
            Subject::vault("vault"),
            Permission::VaultBackup,
            serde_json::json!({ "raw_usage": raw_usage, "encrypted_to": encrypted_to }),
        )
        .approval(
            ApprovalAction::Export,
            serde_json::json!({ "backup": { "raw_usage": raw_usage, "encrypted_to": encrypted_to } }),
        )
        .needs_step_up();
        self.apply(
            actor,
            change,
            self.write_backup(protection, raw_usage, output),
        )
        .await
    }

    async fn write_backup<W: Write + Send + 'static>(
        &self,
        protection: Protection,
        raw_usage: bool,
        output: W,
    ) -> Result<(W, Manifest), Error> {
        self.audit.checkpoint().await?;
        // The encryption is set up before the snapshot is read: a passphrase costs about a
        // second of scrypt, which must not hold the read transaction open.
        let mut writer =
            tokio::task::spawn_blocking(move || BackupWriter::new(output, &protection))
                .await
                .map_err(|e| Error::internal(format!("the backup writer failed: {e}")))??;
        let (chunks, mut incoming) = mpsc::channel::<TableChunk>(CHUNKS_IN_FLIGHT);
        let writing = tokio::task::spawn_blocking(move || {
            while let Some(chunk) = incoming.blocking_recv() {
                writer.write_chunk(chunk)?;
            }
            Ok::<_, Error>(writer)
        });
        let mut sink = ChainWatch {
            chunks,
            head: None,
            checkpoint: None,
        };
        let exported = self.store.export_tables(raw_usage, &mut sink).await;
        let ChainWatch {
            chunks,
            head,
            checkpoint,
        } = sink;
        drop(chunks);
        // The writer's own failure (a full disk) explains an export that could not send.
        let writer = writing
            .await
            .map_err(|e| Error::internal(format!("the backup writer failed: {e}")))??;
        let schema_version = exported?;
        let manifest = Manifest {
            format: FORMAT_VERSION,
            keyward_version: env!("CARGO_PKG_VERSION").to_owned(),
            schema_version,
            created_at: self.now().as_millisecond(),
            source_backend: self.store.backend().to_owned(),
            raw_usage,
            tables: BTreeMap::new(),
            audit_head: head,
            audit_checkpoint: checkpoint,
            payload_sha256: String::new(),
            signer: String::new(),
        };
        writer.finish(manifest, self.audit.keys())
    }
}

/// Hands chunks to the file writer and notes the audit chain's head and last checkpoint as
/// they pass (read in the same snapshot as everything else).
struct ChainWatch {
    chunks: mpsc::Sender<TableChunk>,
    head: Option<ChainHead>,
    checkpoint: Option<u64>,
}

#[async_trait]
impl ChunkSink for ChainWatch {
    async fn put(&mut self, chunk: TableChunk) -> Result<(), Error> {
        match chunk.table.as_str() {
            "audit_chain_head" => {
                for row in &chunk.rows {
                    if let (Some(Cell::Integer(seq)), Some(Cell::Text(hash))) =
                        (cell(&chunk, row, "seq"), cell(&chunk, row, "hash"))
                        && *seq > 0
                    {
                        self.head = Some(ChainHead {
                            seq: seq.unsigned_abs(),
                            hash: hash.clone(),
                        });
                    }
                }
            }
            "audit_checkpoints" => {
                for row in &chunk.rows {
                    if let Some(Cell::Integer(seq)) = cell(&chunk, row, "seq") {
                        self.checkpoint = self.checkpoint.max(Some(seq.unsigned_abs()));
                    }
                }
            }
            _ => {}
        }
        self.chunks
            .send(chunk)
            .await
            .map_err(|_| Error::unavailable("the backup file stopped accepting data"))
    }
}

fn cell<'a>(chunk: &TableChunk, row: &'a [Cell], column: &str) -> Option<&'a Cell> {
    let index = chunk.columns.iter().position(|c| c == column)?;
    row.get(index)
}

/// A backup that decrypted, matched its manifest and was signed by the vault whose audit
/// key the operator's master key opens.
#[derive(Debug)]
pub struct VerifiedBackup {
    pub manifest: Manifest,
    /// The audit key's id (who signed it).
    pub signer: String,
}

/// Reads the whole backup once and checks it: decryption (every byte authenticated),
/// the manifest against what was read, the schema, and the signature against the audit key
/// sealed inside — which only the vault's master key opens. Restores nothing.
pub async fn verify_backup(
    path: &std::path::Path,
    unlock: Arc<Unlock>,
    source: &MasterKeySource,
    schema_version: i64,
) -> Result<VerifiedBackup, Error> {
    let (settings, signed) = read_backup(path, unlock).await?;
    let keyring = vault::keyring_for_backup(
        source,
        settings.get(PASSPHRASE_SALT_SETTING).map(String::as_str),
    )
    .map_err(|e| Error::invalid("master_key_unavailable", e.0))?;
    let keys = open_audit_keys(&keyring, settings.get(AUDIT_KEYS_SETTING))?;
    signed.check_signature(&keys)?;
    signed.manifest.check_supported(schema_version)?;
    Ok(VerifiedBackup {
        signer: keys.key_id().to_owned(),
        manifest: signed.manifest,
    })
}

/// Decrypts and reads every chunk on a blocking thread, keeping only the vault settings.
async fn read_backup(
    path: &std::path::Path,
    unlock: Arc<Unlock>,
) -> Result<(HashMap<String, String>, SignedManifest), Error> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut reader = BackupReader::open(open_file(&path)?, &unlock)?;
        let mut settings = HashMap::new();
        while let Some(chunk) = reader.next_chunk()? {
            if chunk.table == "vault_settings" {
                for row in &chunk.rows {
                    if let (Some(Cell::Text(name)), Some(Cell::Text(value))) =
                        (cell(&chunk, row, "name"), cell(&chunk, row, "value"))
                    {
                        settings.insert(name.clone(), value.clone());
                    }
                }
            }
        }
        Ok((settings, reader.finish()?))
    })
    .await
    .map_err(|e| Error::internal(format!("the backup reader failed: {e}")))?
}

fn open_file(path: &std::path::Path) -> Result<std::io::BufReader<std::fs::File>, Error> {
    std::fs::File::open(path)
        .map(std::io::BufReader::new)
        .map_err(|e| {
            Error::invalid(
                "backup_unreadable",
                format!("cannot read the backup {}: {e}", path.display()),
            )
        })
}

fn open_audit_keys(keyring: &Keyring, sealed: Option<&String>) -> Result<AuditKeys, Error> {
    let Some(sealed) = sealed else {
        return Err(Error::invalid(
            "backup_signature_invalid",
            "the backup holds no audit key, so its signature cannot be checked",
        ));
    };
    AuditKeys::unseal(keyring, sealed).map_err(|e| match e {
        keyward_crypto::CryptoError::UnknownKek(kek) => Error::invalid(
            "master_key_unavailable",
            format!(
                "the backup's vault is sealed with master key {kek}, which is not configured: it is another vault's backup, or that vault's master key must be supplied"
            ),
        ),
        _ => Error::invalid(
            "backup_other_vault",
            "the configured master key does not open this backup's vault keys: it is another vault's backup, or the wrong master key",
        ),
    })
}

/// What a restore did and what its drill found.
#[derive(Debug)]
pub struct RestoreReport {
    pub manifest: Manifest,
    pub rows: u64,
    /// Key versions the master key opened in memory (all of them, or the restore fails).
    pub versions_opened: u64,
    pub chain: ChainReport,
}

/// Restores `path` into `store`, which must hold no vault unless `force`; then drills: the
/// master key is checked against the restored vault's verifiers, every key version is
/// unsealed in memory (and dropped), and the audit chain must verify. The restore is
/// recorded in the restored trail as `backup.restore` by the system.
pub async fn restore_backup(
    store: Arc<dyn Store>,
    path: &std::path::Path,
    unlock: Arc<Unlock>,
    source: &MasterKeySource,
    force: bool,
    random: &dyn Randomness,
    clock: Arc<dyn Clock>,
) -> Result<RestoreReport, Error> {
    if store.holds_a_vault().await? && !force {
        return Err(Error::conflict(
            "restore_target_not_empty",
            "the target database already holds a vault; restore into an empty one, or pass --force with the database URL to replace it",
        ));
    }
    let verified = verify_backup(path, unlock.clone(), source, SCHEMA_VERSION).await?;
    store
        .migrate_up_to(verified.manifest.schema_version)
        .await?;
    let (chunks, incoming) = mpsc::channel(CHUNKS_IN_FLIGHT);
    let expected = verified.manifest.clone();
    let path_owned = path.to_owned();
    let reading =
        tokio::task::spawn_blocking(move || feed_chunks(&path_owned, &unlock, &expected, &chunks));
    let mut feed = Feed { incoming };
    let imported = store.import_tables(&mut feed).await;
    drop(feed);
    reading
        .await
        .map_err(|e| Error::internal(format!("the backup reader failed: {e}")))??;
    let rows = imported?;
    store.migrate().await?;
    drill(store, source, random, clock, verified.manifest, rows).await
}

/// The second read, for the load: each chunk, then `Err` instead of the end if the file no
/// longer matches the manifest the first read checked (the load's transaction then aborts).
fn feed_chunks(
    path: &std::path::Path,
    unlock: &Unlock,
    expected: &Manifest,
    chunks: &mpsc::Sender<Result<TableChunk, Error>>,
) -> Result<(), Error> {
    let send = |item| {
        chunks
            .blocking_send(item)
            .map_err(|_| Error::unavailable("the restore stopped reading the backup"))
    };
    let outcome = (|| {
        let mut reader = BackupReader::open(open_file(path)?, unlock)?;
        while let Some(chunk) = reader.next_chunk()? {
            send(Ok(chunk))?;
        }
        let again = reader.finish()?;
        if again.manifest != *expected {
            return Err(Error::invalid(
                "backup_changed",
                "the backup file changed while it was being restored",
            ));
        }
        Ok(())
    })();
    if let Err(e) = &outcome {
        // The load must see the failure, not a clean end.
        let _ = send(Err(e.clone()));
    }
    outcome
}

struct Feed {
    incoming: mpsc::Receiver<Result<TableChunk, Error>>,
}

#[async_trait]
impl ChunkSource for Feed {
    async fn next_chunk(&mut self) -> Result<Option<TableChunk>, Error> {
        self.incoming.recv().await.transpose()
    }
}

async fn drill(
    store: Arc<dyn Store>,
    source: &MasterKeySource,
    random: &dyn Randomness,
    clock: Arc<dyn Clock>,
    manifest: Manifest,
    rows: u64,
) -> Result<RestoreReport, Error> {
    let opened = vault::open_store(store, source, random, &*clock)
        .await
        .map_err(|e| Error::new(ErrorKind::Invalid, "restore_drill_failed", e.0))?;
    let mut versions_opened = 0u64;
    let mut unreadable = Vec::new();
    for usage in opened.store.kek_usage().await? {
        for version in opened
            .store
            .versions_wrapped_by(&usage.kek_id, u32::MAX)
            .await?
        {
            let context = SealContext::key_secret(&version.key_id, version.version);
            match opened.keyring.unseal(&version.sealed, &context) {
                Ok(_plaintext) => versions_opened += 1,
                Err(e) => unreadable.push(format!("{} v{}: {e}", version.key_id, version.version)),
            }
        }
    }
    let log = crate::audit::log::AuditLog::new(
        opened.store.clone(),
        crate::audit::log::load_keys(&*opened.store, &opened.keyring, random).await?,
        clock.clone(),
    );
    let chain = log.verify().await?;
    if !unreadable.is_empty() {
        return Err(Error::new(
            ErrorKind::Invalid,
            "restore_drill_failed",
            format!(
                "restored, but {} key version(s) do not open with the configured master keys: {}",
                unreadable.len(),
                unreadable.join("; ")
            ),
        ));
    }
    if !chain.ok {
        return Err(Error::new(
            ErrorKind::Invalid,
            "restore_drill_failed",
            format!(
                "restored, but the audit chain does not verify: {:?}",
                chain.first_broken
            ),
        ));
    }
    log.record(&keyward_core::audit::AuditDraft {
        at: jiff::Timestamp::from_millisecond(clock.now().as_millisecond())
            .unwrap_or_else(|_| clock.now()),
        actor_kind: keyward_core::audit::ActorKind::System,
        actor_id: String::new(),
        actor_name: "restore".into(),
        source: None,
        action: "backup.restore".into(),
        target: Some("vault".into()),
        outcome: AuditOutcome::Success,
        details: keyward_core::audit::AuditDraft::details_from(&serde_json::json!({
            "backup_created_at": manifest.created_at,
            "from_backend": manifest.source_backend,
            "schema_version": manifest.schema_version,
            "rows": rows,
            "versions_opened": versions_opened,
        }))?,
    })
    .await?;
    opened.store.close().await;
    Ok(RestoreReport {
        manifest,
        rows,
        versions_opened,
        chain,
    })
}

/// The vault setting that says which schedule slot was last claimed (instances compare and
/// set it, so each slot is backed up once however many instances run the schedule).
const SLOT_SETTING: &str = "backup_schedule_slot";
/// The vault setting holding the last scheduled backup's outcome ([`BackupRecord`]).
const LAST_SETTING: &str = "backup_last";

pub use keyward_core::backup::BackupSchedule;

/// The outcome of the last scheduled backup, kept in the vault so every instance (its
/// `/metrics`, the settings page) shows the same.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BackupRecord {
    /// When it finished, Unix milliseconds.
    pub at: i64,
    /// The file's name in the backup directory (empty when it failed before naming one).
    pub file: String,
    pub bytes: u64,
    pub rows: u64,
    pub seconds: f64,
    /// Why it failed; `None` for a success.
    pub error: Option<String>,
    /// When the last successful one finished (this one, or an earlier one).
    pub last_success_at: Option<i64>,
}

impl App {
    /// Whether this instance takes the scheduled backup due now: slots are `every` long
    /// from the Unix epoch, and the first instance to move the vault's slot setting to the
    /// current one wins it (a fresh schedule's first slot is taken at once).
    pub async fn claim_scheduled_backup(&self, every: std::time::Duration) -> Result<bool, Error> {
        let every_ms = i64::try_from(every.as_millis()).unwrap_or(i64::MAX).max(1);
        let slot = (self.now().as_millisecond() / every_ms).to_string();
        match self.store.setting(SLOT_SETTING).await? {
            None => Ok(self.store.setting_or_insert(SLOT_SETTING, &slot).await? == slot),
            Some(taken) if taken.parse::<i64>().ok() >= slot.parse::<i64>().ok() => Ok(false),
            Some(taken) => {
                self.store
                    .replace_setting(SLOT_SETTING, &taken, &slot)
                    .await
            }
        }
    }

    /// Keeps the outcome of a scheduled backup (carrying over the last success's time when
    /// it failed).
    pub async fn record_scheduled_backup(&self, mut record: BackupRecord) -> Result<(), Error> {
        let stored = self.store.setting(LAST_SETTING).await?;
        if record.error.is_none() {
            record.last_success_at = Some(record.at);
        } else {
            record.last_success_at = stored
                .as_deref()
                .and_then(|text| serde_json::from_str::<BackupRecord>(text).ok())
                .and_then(|last| last.last_success_at);
        }
        let text = serde_json::to_string(&record)
            .map_err(|e| Error::internal(format!("cannot encode the backup record: {e}")))?;
        match stored {
            None => {
                self.store.setting_or_insert(LAST_SETTING, &text).await?;
            }
            Some(old) => {
                // Another instance recording at the same moment wins; either outcome is
                // a true one.
                self.store
                    .replace_setting(LAST_SETTING, &old, &text)
                    .await?;
            }
        }
        Ok(())
    }

    /// The last scheduled backup's outcome, if one ran.
    pub async fn last_scheduled_backup(&self) -> Result<Option<BackupRecord>, Error> {
        Ok(self
            .store
            .setting(LAST_SETTING)
            .await?
            .and_then(|text| serde_json::from_str(&text).ok()))
    }
}
