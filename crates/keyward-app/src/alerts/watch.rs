//! The watcher: every key's and every app token's usage, minute by minute from the shared
//! minute rollups, through one anomaly detector per series (requests, errors, rejections,
//! cost). Every instance watches (they read the same rollups, so they find the same
//! anomalies) and the store keeps one unresolved alert per subject and signal, so an
//! anomaly is announced once. At start the last days of minute rollups are replayed to
//! learn (findings in them older than [`FRESH`] are not announced).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use keyward_core::Error;
use keyward_core::alert::AlertSubject;
use keyward_core::anomaly::{Finding, SeriesDetector, SeriesKind, Verdict};
use keyward_core::market::MarketCalendar;
use keyward_core::usage::{Granularity, USAGE_BUCKETS_MAX, UsageGrouping, UsageQuery, UsageTotals};

/// A minute is judged this long after it ends, once every instance's writer has added its
/// calls to the rollup (they write every quarter second).
pub const SETTLE: SignedDuration = SignedDuration::from_secs(3);
/// Findings older than this when judged (during the start-up replay) are learned from,
/// not announced.
pub const FRESH: SignedDuration = SignedDuration::from_mins(10);

/// The detectors and how far they have read.
#[derive(Debug)]
pub struct Watch {
    calendar: Arc<MarketCalendar>,
    detectors: HashMap<(AlertSubject, SeriesKind), SeriesDetector>,
    /// The first minute not judged yet.
    next: Option<Timestamp>,
}

const SERIES: [SeriesKind; 4] = [
    SeriesKind::Requests,
    SeriesKind::Errors,
    SeriesKind::Rejections,
    SeriesKind::Cost,
];

/// A series' value in one minute's sums.
fn value(kind: SeriesKind, t: &UsageTotals) -> f64 {
    match kind {
        SeriesKind::Requests => t.requests as f64,
        // Outages are the provider's (health tells of them), rejections their own signal.
        SeriesKind::Errors => t.errors.saturating_sub(t.rejected + t.outages) as f64,
        SeriesKind::Rejections => t.rejected as f64,
        SeriesKind::Cost => t.cost_nanos as f64 / 1e9,
    }
}

impl Watch {
    pub fn new() -> Result<Self, Error> {
        Ok(Self {
            calendar: Arc::new(MarketCalendar::nyse()?),
            detectors: HashMap::new(),
            next: None,
        })
    }

    /// Where to start: the minute rollups kept, the first time.
    pub fn start(&self, now: Timestamp) -> Timestamp {
        self.next.unwrap_or_else(|| {
            Granularity::Minute.bucket_start(
                now.saturating_sub(SignedDuration::from_hours(
                    24 * keyward_core::rollup::MINUTE_ROLLUPS_KEPT_DAYS,
                ))
                .unwrap_or(now),
            )
        })
    }

    /// The minutes `[from, to)` to judge now, at most a query's worth.
    pub fn due(&self, now: Timestamp) -> Option<(Timestamp, Timestamp)> {
        let from = self.start(now);
        let settled = now
            .saturating_sub(SignedDuration::from_mins(1) + SETTLE)
            .ok()?;
        let to = Granularity::Minute.bucket_start(settled);
        let to = if to > from { to } else { return None };
        let cap = from
            .checked_add(SignedDuration::from_mins(USAGE_BUCKETS_MAX))
            .unwrap_or(to);
        Some((from, to.min(cap)))
    }

    /// Feeds the minutes `[from, to)` — each subject's sums per minute, absent meaning
    /// quiet — and returns the fresh findings.
    pub fn feed(
        &mut self,
        from: Timestamp,
        to: Timestamp,
        minutes: &Minutes,
        now: Timestamp,
    ) -> Vec<(AlertSubject, Finding)> {
        // A subject seen for the first time gets its detectors.
        for subject in minutes.keys() {
            for kind in SERIES {
                self.detectors
                    .entry((subject.clone(), kind))
                    .or_insert_with(|| SeriesDetector::new(kind, self.calendar.clone()));
            }
        }
        let fresh_from = now.saturating_sub(FRESH).unwrap_or(now);
        let quiet = UsageTotals::default();
        let mut found = Vec::new();
        let mut minute = from;
        while minute < to {
            for ((subject, kind), detector) in &mut self.detectors {
                let totals = minutes
                    .get(subject)
                    .and_then(|m| m.get(&minute))
                    .unwrap_or(&quiet);
                if let Verdict::Alert(finding) = detector.observe(minute, value(*kind, totals))
                    && minute >= fresh_from
                {
                    found.push((subject.clone(), finding));
                }
            }
            minute = Granularity::Minute.next_bucket(minute);
        }
        self.next = Some(to);
        found.sort_by(|a, b| (a.1.at, &a.0).cmp(&(b.1.at, &b.0)));
        found
    }
}

/// The query for one dimension's minute sums.
pub fn minute_query(from: Timestamp, to: Timestamp) -> Result<UsageQuery, Error> {
    UsageQuery::new(from, to, Granularity::Minute, None, None, None)
}

/// Each subject's sums per minute.
pub type Minutes = HashMap<AlertSubject, BTreeMap<Timestamp, UsageTotals>>;

/// Turns grouped rollups into per-subject minutes.
pub fn by_subject(
    rows: Vec<(String, keyward_core::usage::UsageBucket)>,
    by: UsageGrouping,
    into: &mut Minutes,
) {
    for (id, bucket) in rows {
        let subject = match by {
            UsageGrouping::Key => id.parse().map(AlertSubject::Key),
            _ => id.parse().map(AlertSubject::Token),
        };
        if let Ok(subject) = subject {
            *into
                .entry(subject)
                .or_default()
                .entry(bucket.start)
                .or_default() += bucket.totals;
        }
    }
}
