//! Backup and audit-archive files on disk, for `keyward backup create`, `keyward audit
//! prune` and the server's jobs: a file is written under a temporary name (mode 0600),
//! synced, then renamed, so a file with its final name is always whole; scheduled backups
//! are named by their UTC time and the oldest beyond `backup_keep` are deleted.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use keyward_app::backup::Protection;
use keyward_app::{Actor, App};
use keyward_core::backup::Manifest;

/// What a scheduled backup's name starts and ends with.
const PREFIX: &str = "keyward-";
const SUFFIX: &str = ".kwbackup";

/// `keyward-20261206T221500Z.kwbackup` in `dir`.
pub fn default_path(dir: &Path, now: jiff::Timestamp) -> PathBuf {
    dir.join(format!(
        "{PREFIX}{}{SUFFIX}",
        now.strftime("%Y%m%dT%H%M%SZ")
    ))
}

/// Writes a backup of the vault to `path` (never over an existing file) and returns its
/// manifest and size in bytes.
pub async fn write_file(
    app: &App,
    actor: &Actor,
    protection: Protection,
    raw_usage: bool,
    path: &Path,
) -> Result<(Manifest, u64), String> {
    if path.exists() {
        return Err(format!(
            "{} exists already; a backup never overwrites a file",
            path.display()
        ));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let partial = path.with_extension("partial");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .map_err(|e| format!("cannot create {}: {e}", partial.display()))?;
    let written = app
        .create_backup(actor, protection, raw_usage, std::io::BufWriter::new(file))
        .await;
    let finished = match written {
        Err(e) => Err(e.message),
        Ok((output, manifest)) => {
            let (partial, path) = (partial.clone(), path.to_owned());
            tokio::task::spawn_blocking(move || finish_file(output, manifest, &partial, &path))
                .await
                .unwrap_or_else(|e| Err(format!("the backup could not be finished: {e}")))
        }
    };
    if finished.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    finished
}

/// Flushes and syncs the written file, then gives it its name (and syncs the directory).
fn finish_file(
    output: std::io::BufWriter<std::fs::File>,
    manifest: Manifest,
    partial: &Path,
    path: &Path,
) -> Result<(Manifest, u64), String> {
    let file = output
        .into_inner()
        .map_err(|e| format!("cannot write {}: {}", partial.display(), e.error()))?;
    file.sync_all()
        .map_err(|e| format!("cannot sync {}: {e}", partial.display()))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    std::fs::rename(partial, path)
        .map_err(|e| format!("cannot rename the backup to {}: {e}", path.display()))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(dir) = std::fs::File::open(dir)
    {
        let _ = dir.sync_all();
    }
    Ok((manifest, size))
}

/// A backup answered as a download: written to an unnamed temporary file (gone when
/// closed; encrypted like any backup), then streamed with its length.
pub async fn download(
    app: &App,
    actor: &Actor,
    protection: Protection,
    raw_usage: bool,
) -> Result<axum::response::Response, keyward_core::Error> {
    use axum::http::{HeaderValue, header};
    use std::io::Seek;
    use tokio::io::AsyncReadExt;

    let unavailable = |e: std::io::Error| {
        keyward_core::Error::unavailable(format!("cannot stage the backup: {e}"))
    };
    let file = tempfile::tempfile().map_err(unavailable)?;
    let (output, manifest) = app
        .create_backup(actor, protection, raw_usage, std::io::BufWriter::new(file))
        .await?;
    let (file, length) = tokio::task::spawn_blocking(move || {
        let mut file = output.into_inner().map_err(|e| e.into_error())?;
        let length = file.stream_position()?;
        file.rewind()?;
        Ok::<_, std::io::Error>((file, length))
    })
    .await
    .map_err(|e| keyward_core::Error::internal(format!("the backup could not be staged: {e}")))?
    .map_err(unavailable)?;
    let chunks = futures_util::stream::unfold(tokio::fs::File::from_std(file), |mut file| async {
        let mut buffer = vec![0u8; 64 * 1024];
        match file.read(&mut buffer).await {
            Ok(0) => None,
            Ok(read) => {
                buffer.truncate(read);
                Some((Ok::<_, std::io::Error>(bytes::Bytes::from(buffer)), file))
            }
            Err(e) => Some((Err(e), file)),
        }
    });
    let name = default_path(
        Path::new(""),
        jiff::Timestamp::from_millisecond(manifest.created_at).unwrap_or_else(|_| app.now()),
    );
    let mut response = axum::response::Response::new(axum::body::Body::from_stream(chunks));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(value) =
        HeaderValue::from_str(&format!("attachment; filename=\"{}\"", name.display()))
    {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

/// Deletes the oldest scheduled backups in `dir` beyond the newest `keep`; returns how many
/// were deleted. Only files named like scheduled backups are touched.
pub fn prune(dir: &Path, keep: u32) -> Result<usize, String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with(PREFIX) && name.ends_with(SUFFIX))
        .collect();
    names.sort();
    let excess = names.len().saturating_sub(keep as usize);
    for name in &names[..excess] {
        std::fs::remove_file(dir.join(name))
            .map_err(|e| format!("cannot delete old backup {name}: {e}"))?;
    }
    Ok(excess)
}

/// Where pruned audit entries are exported: created (0600, never over an existing file) on
/// the first entry, and named only once synced.
#[derive(Debug)]
pub struct ArchiveFile {
    path: PathBuf,
    out: Option<std::io::BufWriter<std::fs::File>>,
}

impl ArchiveFile {
    pub fn new(path: PathBuf) -> Self {
        Self { path, out: None }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn partial(&self) -> PathBuf {
        self.path.with_extension("partial")
    }
}

impl keyward_app::retention::AuditArchive for ArchiveFile {
    fn write_line(&mut self, line: &str) -> std::io::Result<()> {
        if self.out.is_none() {
            if self.path.exists() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!("{} exists already", self.path.display()),
                ));
            }
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)?;
            }
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(self.partial())?;
            self.out = Some(std::io::BufWriter::new(file));
        }
        let out = self.out.as_mut().ok_or(std::io::ErrorKind::NotFound)?;
        out.write_all(line.as_bytes())?;
        out.write_all(b"\n")
    }

    fn commit(&mut self) -> std::io::Result<()> {
        let Some(out) = self.out.take() else {
            return Ok(());
        };
        let file = out
            .into_inner()
            .map_err(std::io::IntoInnerError::into_error)?;
        file.sync_all()?;
        std::fs::rename(self.partial(), &self.path)?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

/// Writes `text` to a new file readable only by its owner.
pub fn write_private(path: &Path, text: &str) -> Result<(), String> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pruning_keeps_the_newest_scheduled_backups_and_nothing_else_is_touched() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "keyward-20261201T000000Z.kwbackup",
            "keyward-20261202T000000Z.kwbackup",
            "keyward-20261203T000000Z.kwbackup",
            "keyward-20261204T000000Z.kwbackup",
            "mine.kwbackup",
            "keyward-20261205T000000Z.partial",
        ] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        assert_eq!(prune(dir.path(), 2).unwrap(), 2);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "keyward-20261203T000000Z.kwbackup",
                "keyward-20261204T000000Z.kwbackup",
                "keyward-20261205T000000Z.partial",
                "mine.kwbackup"
            ]
        );
    }

    #[test]
    fn scheduled_names_sort_by_time() {
        let at: jiff::Timestamp = "2026-12-06T22:15:00Z".parse().unwrap();
        assert_eq!(
            default_path(Path::new("/b"), at),
            Path::new("/b/keyward-20261206T221500Z.kwbackup")
        );
    }
}
