//! The master key file a running server watches: re-read only when it changed (its
//! modification time or size), so following it costs a `stat` every few seconds.

use std::path::PathBuf;
use std::time::SystemTime;

/// The key file, and its modification time and size when last read.
#[derive(Debug)]
pub struct WatchedKeyFile {
    pub(crate) path: PathBuf,
    seen: std::sync::Mutex<Option<(Option<SystemTime>, u64)>>,
}

impl WatchedKeyFile {
    pub fn new(path: PathBuf) -> Self {
        let seen = std::sync::Mutex::new(Some(Self::stamp_of(&path)));
        Self { path, seen }
    }

    fn stamp_of(path: &std::path::Path) -> (Option<SystemTime>, u64) {
        std::fs::metadata(path).map_or((None, 0), |m| (m.modified().ok(), m.len()))
    }

    /// Whether the file changed since it was last read (and remembers it as read).
    pub(crate) fn changed(&self) -> bool {
        let now = Self::stamp_of(&self.path);
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.as_ref() == Some(&now) {
            return false;
        }
        *seen = Some(now);
        true
    }
}
