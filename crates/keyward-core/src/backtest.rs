//! Backtesting the anomaly detector on a recorded or generated series: the CSV format
//! `timestamp,value[,label]`, the detector run over it, and, when labels are present, how
//! well it did (precision, recall, detection delay, false alerts per 30 days).
//!
//! Format: one row per step; `timestamp` is RFC 3339 or Unix seconds (or milliseconds, 13
//! digits); `value` a non-negative number; `label` empty, `0` or `normal` for normal
//! traffic, anything else names the anomaly the step belongs to (a run of steps with the
//! same label is one anomaly window). A first row that is not data is a header. The step
//! is the distance between the first two rows. **Gap rule:** a later distance that is a
//! whole number of steps means the steps in between had no calls (a metering series has
//! no row for a quiet minute) and they count as zero; any other distance, a repeated or
//! earlier time, a bad number or a missing column is an error naming the line.

use std::sync::Arc;

use jiff::Timestamp;
use serde::Serialize;

use crate::Error;
use crate::anomaly::{Finding, SeriesDetector, SeriesKind, Verdict};
use crate::market::MarketCalendar;

/// A regular series read from CSV.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub start: Timestamp,
    pub step_ms: i64,
    pub values: Vec<f64>,
    /// Per step: the anomaly it belongs to, if any.
    pub labels: Vec<Option<String>>,
    pub labelled: bool,
    /// Steps filled in as zero by the gap rule.
    pub filled: usize,
}

/// Rows at most (a year of minutes is about 526,000).
pub const SERIES_MAX_ROWS: usize = 5_000_000;

fn line_error(line: usize, message: impl std::fmt::Display) -> Error {
    Error::invalid("invalid_series", format!("line {line}: {message}"))
}

fn parse_time(text: &str) -> Option<Timestamp> {
    if let Ok(at) = text.parse::<Timestamp>() {
        return Some(at);
    }
    let n: i64 = text.parse().ok()?;
    if text.trim_start_matches('-').len() >= 13 {
        Timestamp::from_millisecond(n).ok()
    } else {
        Timestamp::from_second(n).ok()
    }
}

fn is_normal(label: &str) -> bool {
    matches!(label, "" | "0" | "normal")
}

impl Series {
    pub fn parse(text: &str) -> Result<Self, Error> {
        let mut rows: Vec<(usize, Timestamp, f64, Option<String>)> = Vec::new();
        let mut labelled = false;
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let raw = raw.trim();
            if raw.is_empty() || raw.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = raw.split(',').map(str::trim).collect();
            if fields.len() < 2 || fields.len() > 3 {
                return Err(line_error(
                    line,
                    format!(
                        "expected `timestamp,value[,label]`, found {} column{}",
                        fields.len(),
                        if fields.len() == 1 { "" } else { "s" }
                    ),
                ));
            }
            let Some(at) = parse_time(fields[0]) else {
                if rows.is_empty() && fields[0].chars().any(|c| c.is_ascii_alphabetic()) {
                    continue; // a header
                }
                return Err(line_error(
                    line,
                    "the timestamp is neither RFC 3339 (2026-11-30T14:30:00Z) nor Unix seconds",
                ));
            };
            let value: f64 = fields[1]
                .parse()
                .ok()
                .filter(|v: &f64| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| line_error(line, "the value must be a non-negative number"))?;
            let label = fields.get(2).copied().filter(|l| !is_normal(l));
            labelled |= fields.len() == 3;
            if label.is_some_and(|l| l.len() > 64) {
                return Err(line_error(line, "a label is at most 64 characters"));
            }
            rows.push((line, at, value, label.map(str::to_owned)));
            if rows.len() > SERIES_MAX_ROWS {
                return Err(line_error(
                    line,
                    format!("more than {SERIES_MAX_ROWS} rows"),
                ));
            }
        }
        let (Some(first), Some(second)) = (rows.first(), rows.get(1)) else {
            return Err(Error::invalid(
                "invalid_series",
                "a series needs at least two rows of `timestamp,value[,label]`",
            ));
        };
        let start = first.1;
        let step_ms = second.1.as_millisecond() - first.1.as_millisecond();
        if step_ms <= 0 {
            return Err(line_error(second.0, "time must increase from row to row"));
        }
        let mut series = Series {
            start,
            step_ms,
            values: Vec::with_capacity(rows.len()),
            labels: Vec::with_capacity(rows.len()),
            labelled,
            filled: 0,
        };
        let mut previous = start.as_millisecond() - step_ms;
        for (line, at, value, label) in rows {
            let gap = at.as_millisecond() - previous;
            if gap <= 0 {
                return Err(line_error(line, "time must increase from row to row"));
            }
            if gap % step_ms != 0 {
                return Err(line_error(
                    line,
                    format!(
                        "irregular step: {gap} ms after the previous row, which is not a multiple of the series' step ({step_ms} ms)"
                    ),
                ));
            }
            let missing = usize::try_from(gap / step_ms - 1).unwrap_or(usize::MAX);
            if series.values.len().saturating_add(missing) > SERIES_MAX_ROWS {
                return Err(line_error(
                    line,
                    format!("the gap makes more than {SERIES_MAX_ROWS} steps"),
                ));
            }
            series.filled += missing;
            for _ in 0..missing {
                series.values.push(0.0);
                series.labels.push(None);
            }
            series.values.push(value);
            series.labels.push(label);
            previous = at.as_millisecond();
        }
        Ok(series)
    }

    pub fn at(&self, step: usize) -> Timestamp {
        let offset = i64::try_from(step)
            .unwrap_or(i64::MAX)
            .saturating_mul(self.step_ms);
        Timestamp::from_millisecond(self.start.as_millisecond().saturating_add(offset))
            .unwrap_or(Timestamp::MAX)
    }
}

/// One alert of a backtest, with the anomaly window it fell in (if labelled).
#[derive(Debug, Clone, Serialize)]
pub struct BacktestAlert {
    #[serde(flatten)]
    pub finding: Finding,
    /// The label of the window the alert fell in; `None` for a false alert.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// How well the detector found the labelled windows.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Scores {
    pub windows: usize,
    pub detected: usize,
    pub alerts: usize,
    pub false_alerts: usize,
    pub precision: f64,
    pub recall: f64,
    /// Seconds from a window's start to its first alert, over detected windows.
    pub mean_delay_seconds: f64,
    pub worst_delay_seconds: f64,
    /// False alerts per 30 days of the series.
    pub false_alerts_per_30_days: f64,
    /// Per label: (windows, detected).
    pub by_label: std::collections::BTreeMap<String, (usize, usize)>,
}

/// One labelled anomaly and when it was first alerted.
#[derive(Debug, Clone, Serialize)]
pub struct LabelledWindow {
    pub label: String,
    pub start: Timestamp,
    /// The start of the window's last step.
    pub end: Timestamp,
    pub first_alert: Option<Timestamp>,
}

/// How long after a window's end an alert still counts for it: the hourly rules judge an
/// hour when it ends, so an anomaly inside one hour is told at the next hour's start.
pub const GRACE_MS: i64 = 60 * 60_000;

#[derive(Debug, Clone, Serialize)]
pub struct Backtest {
    pub alerts: Vec<BacktestAlert>,
    pub windows: Vec<LabelledWindow>,
    /// Steps the detector spent learning (no baseline for that hour yet).
    pub learning_steps: usize,
    pub steps: usize,
    pub scores: Option<Scores>,
}

/// A window of consecutive steps with one label.
struct Window {
    label: String,
    start: usize,
    end: usize,
}

fn windows(labels: &[Option<String>]) -> Vec<Window> {
    let mut out: Vec<Window> = Vec::new();
    for (step, label) in labels.iter().enumerate() {
        let Some(label) = label else { continue };
        match out.last_mut() {
            Some(w) if w.end + 1 == step && &w.label == label => w.end = step,
            _ => out.push(Window {
                label: label.clone(),
                start: step,
                end: step,
            }),
        }
    }
    out
}

/// Runs a fresh detector over the series. With labels, an alert inside a window — or
/// within [`GRACE_MS`] after it — counts for that window; any other alert is false.
pub fn backtest(series: &Series, kind: SeriesKind, calendar: Arc<MarketCalendar>) -> Backtest {
    let mut detector = SeriesDetector::new(kind, calendar);
    let mut alerts: Vec<BacktestAlert> = Vec::new();
    let mut alert_steps = Vec::new();
    let mut learning_steps = 0;
    for (step, &value) in series.values.iter().enumerate() {
        match detector.observe(series.at(step), value) {
            Verdict::Alert(finding) => {
                alerts.push(BacktestAlert {
                    finding,
                    label: None,
                });
                alert_steps.push(step);
            }
            Verdict::Learning => learning_steps += 1,
            Verdict::Normal | Verdict::Ongoing => {}
        }
    }
    let grace = usize::try_from(GRACE_MS / series.step_ms.max(1)).unwrap_or(0);
    let found = windows(&series.labels);
    let mut labelled = Vec::with_capacity(found.len());
    let mut delays = Vec::new();
    let mut by_label: std::collections::BTreeMap<String, (usize, usize)> = Default::default();
    for w in &found {
        let entry = by_label.entry(w.label.clone()).or_default();
        entry.0 += 1;
        let mut first = None;
        for (alert, &step) in alerts.iter_mut().zip(&alert_steps) {
            if step >= w.start && step <= w.end.saturating_add(grace) {
                alert.label.get_or_insert_with(|| w.label.clone());
                first.get_or_insert(step);
            }
        }
        if let Some(step) = first {
            entry.1 += 1;
            delays.push((step - w.start) as f64 * series.step_ms as f64 / 1000.0);
        }
        labelled.push(LabelledWindow {
            label: w.label.clone(),
            start: series.at(w.start),
            end: series.at(w.end),
            first_alert: first.map(|step| series.at(step)),
        });
    }
    let scores = series.labelled.then(|| {
        let detected = delays.len();
        let false_alerts = alerts.iter().filter(|a| a.label.is_none()).count();
        let days = series.values.len() as f64 * series.step_ms as f64 / 86_400_000.0;
        Scores {
            windows: found.len(),
            detected,
            alerts: alerts.len(),
            false_alerts,
            precision: if alerts.is_empty() {
                1.0
            } else {
                (alerts.len() - false_alerts) as f64 / alerts.len() as f64
            },
            recall: if found.is_empty() {
                1.0
            } else {
                detected as f64 / found.len() as f64
            },
            mean_delay_seconds: if delays.is_empty() {
                0.0
            } else {
                delays.iter().sum::<f64>() / delays.len() as f64
            },
            worst_delay_seconds: delays.iter().copied().fold(0.0, f64::max),
            false_alerts_per_30_days: if days > 0.0 {
                false_alerts as f64 * 30.0 / days
            } else {
                0.0
            },
            by_label,
        }
    });
    Backtest {
        alerts,
        windows: labelled,
        learning_steps,
        steps: series.values.len(),
        scores,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_rows_name_their_line() {
        let err = |text: &str| Series::parse(text).unwrap_err().message;
        assert!(
            err("timestamp,value\n2026-11-30T14:30:00Z,1\nyesterday,2\n").starts_with("line 3:")
        );
        assert!(err("2026-11-30T14:30:00Z,1\n2026-11-30T14:31:00Z,-4\n").starts_with("line 2:"));
        assert!(err("2026-11-30T14:30:00Z,1\n2026-11-30T14:31:00Z,NaN\n").starts_with("line 2:"));
        assert!(err("2026-11-30T14:30:00Z,1\n2026-11-30T14:31:00Z\n").contains("found 1 column"));
        assert!(
            err("2026-11-30T14:30:00Z,1\n2026-11-30T14:31:00Z,1\n2026-11-30T14:31:30Z,1\n")
                .contains("line 3: irregular step")
        );
        assert!(
            err("2026-11-30T14:30:00Z,1\n2026-11-30T14:31:00Z,1\n2026-11-30T14:31:00Z,1\n")
                .contains("line 3: time must increase")
        );
        assert!(err("2026-11-30T14:30:00Z,1\n").contains("at least two rows"));
    }

    #[test]
    fn whole_missing_steps_are_quiet_steps() {
        let series = Series::parse(
            "timestamp,value,label\n1796655600,3,\n1796655660,4,normal\n1796655840,9,spike\n",
        )
        .unwrap();
        assert_eq!(series.step_ms, 60_000);
        assert_eq!(series.values, vec![3.0, 4.0, 0.0, 0.0, 9.0]);
        assert_eq!(series.filled, 2);
        assert_eq!(series.labels[4].as_deref(), Some("spike"));
        assert!(series.labelled);
        assert_eq!(series.at(4).as_second(), 1_796_655_840);
    }
}
