//! Categorical signals, judged as the proxy's calls are written: a settled app token
//! seen calling from a new network, for a new model or at a new endpoint shape
//! (`keyward_core::sighting`), and any call for a key that is disabled — a key that should
//! be idle, still wanted by someone (`dormant_key_use`). The store inserts each sighting
//! once, so of several instances only one raises the alert.

use keyward_core::Error;
use keyward_core::alert::AlertSubject;
use keyward_core::anomaly::{Finding, Signal};
use keyward_core::sighting::{SIGHTING_LEARN, finding, sightings};
use keyward_core::usage::UsageRecord;

use crate::app::App;

/// Sightings this instance knows are stored (so most batches ask the store nothing);
/// forgotten wholesale past this many.
const KNOWN_MAX: usize = 100_000;

impl App {
    /// Judges a batch of calls for new networks, models and endpoints per token and for
    /// use of disabled keys; returns how many alerts it opened.
    pub async fn watch_sightings(&self, records: &[UsageRecord]) -> Result<usize, Error> {
        let fresh: Vec<_> = {
            let mut known = self
                .known_sightings
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if known.len() > KNOWN_MAX {
                known.clear();
            }
            sightings(records)
                .into_iter()
                .filter(|s| known.insert((s.token.clone(), s.kind, s.value.clone())))
                .collect()
        };
        let mut found: Vec<(AlertSubject, Finding)> = Vec::new();
        if !fresh.is_empty() {
            for new in self.store.record_sightings(&fresh).await? {
                let history = self.store.token_sightings(&new.token, new.kind).await?;
                // Still learning: its first sighting of this kind is this one, or recent.
                let first = history.iter().map(|(_, at)| *at).min();
                if first.is_none_or(|f| new.at.duration_since(f) < SIGHTING_LEARN) {
                    continue;
                }
                let usual: Vec<String> = history
                    .into_iter()
                    .map(|(value, _)| value)
                    .filter(|v| *v != new.value)
                    .collect();
                found.push((
                    AlertSubject::Token(new.token.clone()),
                    finding(&new, &usual),
                ));
            }
        }
        for r in records {
            let state = match r.error_code.as_deref() {
                Some("key_disabled") => "disabled",
                Some("no_key_available") => "deleted (in its recovery window)",
                _ => continue,
            };
            if let Some(key) = &r.key_id {
                let by = r
                    .token_id
                    .as_ref()
                    .map_or("a caller".to_owned(), |t| format!("app token {t}"));
                found.push((
                    AlertSubject::Key(key.clone()),
                    Finding {
                        signal: Signal::DormantKeyUse,
                        at: r.at,
                        score: 1.0,
                        reason: format!(
                            "{by} asked for this key while it is {state} ({} {}; refused)",
                            r.method, r.endpoint
                        ),
                    },
                ));
            }
        }
        if found.is_empty() {
            return Ok(0);
        }
        let now = self.now();
        let mutes = self.store.mutes(now).await?;
        let mut opened = 0;
        for (subject, finding) in found {
            if mutes
                .iter()
                .any(|m| m.silences(&subject, finding.signal, now))
            {
                continue;
            }
            opened += usize::from(self.raise_alert(subject, &finding).await?);
        }
        Ok(opened)
    }
}
