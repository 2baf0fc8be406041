//! When a quota or budget runs out at the current pace. The pace is the subject's usual
//! consumption per hour of the market's day — learned from the last weeks' hourly rollups,
//! separately for trading and closed days — scaled by how the last hours compare with
//! their usual (a key running hot today runs out sooner). Consumption is projected hour by
//! hour to the end of the quota's window (its calendar: midnight US/Eastern, the first of
//! the month, …); if it crosses the limit first, that hour is when it runs out.

use std::collections::HashMap;

use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

use crate::market::MarketCalendar;

/// Consumption per hour of the market's day, for trading and for closed days.
#[derive(Debug, Clone, Default)]
pub struct Pace {
    /// (trading day, market hour) → (sum, days seen).
    usual: HashMap<(bool, u8), (f64, u32)>,
}

/// How far back the pace is learned.
pub const PACE_DAYS: i64 = 14;
/// How many recent hours set today's pace against the usual.
const RECENT_HOURS: i64 = 3;

impl Pace {
    /// Learns from hourly amounts of the last [`PACE_DAYS`] (hours without use may be left
    /// out: every day of the window counts, used or not).
    pub fn learn(calendar: &MarketCalendar, hours: &[(Timestamp, f64)], now: Timestamp) -> Self {
        let since = now
            .checked_sub(SignedDuration::from_hours(24 * PACE_DAYS))
            .unwrap_or(now);
        let mut sums: HashMap<(bool, u8), f64> = HashMap::new();
        for &(at, amount) in hours.iter().filter(|(at, _)| *at >= since && *at < now) {
            let m = calendar.moment(at);
            *sums.entry((m.trades(), m.market_hour)).or_default() += amount;
        }
        // Every day of a kind in the window counts, used or not.
        let mut counted: HashMap<bool, u32> = HashMap::new();
        let mut day = calendar.moment(since).date;
        let last = calendar.moment(now).date;
        while day < last {
            let trades = matches!(
                calendar.day_kind(day),
                crate::market::DayKind::Trading | crate::market::DayKind::EarlyClose
            );
            *counted.entry(trades).or_default() += 1;
            match day.tomorrow() {
                Ok(next) => day = next,
                Err(_) => break,
            }
        }
        let usual = sums
            .into_iter()
            .map(|((trades, hour), sum)| {
                let n = counted.get(&trades).copied().unwrap_or(1).max(1);
                ((trades, hour), (sum, n))
            })
            .collect();
        Self { usual }
    }

    /// The usual amount in the hour starting at `at`.
    pub fn usual(&self, calendar: &MarketCalendar, at: Timestamp) -> f64 {
        let m = calendar.moment(at);
        self.usual
            .get(&(m.trades(), m.market_hour))
            .map_or(0.0, |(sum, n)| sum / f64::from(*n))
    }

    /// Today's pace: the last hours' actual over their usual (0.25–10; 1 without a usual).
    pub fn factor(
        &self,
        calendar: &MarketCalendar,
        recent: &[(Timestamp, f64)],
        now: Timestamp,
    ) -> f64 {
        let since = now
            .checked_sub(SignedDuration::from_hours(RECENT_HOURS))
            .unwrap_or(now);
        let actual: f64 = recent
            .iter()
            .filter(|(at, _)| *at >= since && *at < now)
            .map(|(_, a)| a)
            .sum();
        let mut usual = 0.0;
        let mut hour = since;
        while hour < now {
            usual += self.usual(calendar, hour);
            hour = hour
                .checked_add(SignedDuration::from_hours(1))
                .unwrap_or(now);
        }
        if usual < 1e-9 {
            return 1.0;
        }
        (actual / usual).clamp(0.25, 10.0)
    }
}

/// What the projection says.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Forecast {
    pub used: f64,
    pub limit: f64,
    /// When the limit is reached, if before the window ends.
    pub runs_out_at: Option<Timestamp>,
    pub window_end: Timestamp,
    /// What will have been used by the window's end at this pace (can exceed the limit).
    pub projected: f64,
    /// Today's pace against the usual (1 = usual).
    pub pace: f64,
}

/// Projects `used` of `limit` from `now` to `window_end` at `pace × factor`.
pub fn project(
    calendar: &MarketCalendar,
    pace: &Pace,
    factor: f64,
    used: f64,
    limit: f64,
    now: Timestamp,
    window_end: Timestamp,
) -> Forecast {
    let mut total = used;
    let mut runs_out_at = (used >= limit).then_some(now);
    let mut at = now;
    while at < window_end {
        let hour_start =
            jiff::Timestamp::from_second(at.as_second().div_euclid(3600) * 3600).unwrap_or(at);
        let hour_end = hour_start
            .checked_add(SignedDuration::from_hours(1))
            .unwrap_or(window_end)
            .min(window_end);
        let share = (hour_end.as_second() - at.as_second()) as f64 / 3600.0;
        let expected = pace.usual(calendar, hour_start) * factor * share;
        if runs_out_at.is_none() && expected > 0.0 && total + expected >= limit {
            let fraction = (limit - total) / expected;
            let seconds = (fraction * (hour_end.as_second() - at.as_second()) as f64).ceil() as i64;
            runs_out_at = at.checked_add(SignedDuration::from_secs(seconds)).ok();
        }
        total += expected;
        at = hour_end;
    }
    Forecast {
        used,
        limit,
        runs_out_at,
        window_end,
        projected: total,
        pace: factor,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    /// 100 an hour in the regular session (09:30–16:00 ET: hours 9–15), nothing otherwise,
    /// for two weeks before Wednesday 2026-12-02.
    fn history(calendar: &MarketCalendar) -> Vec<(Timestamp, f64)> {
        let mut out = Vec::new();
        let mut at = ts("2026-11-18T05:00:00Z");
        while at < ts("2026-12-02T05:00:00Z") {
            let m = calendar.moment(at);
            if m.trades() && (9..16).contains(&m.market_hour) {
                out.push((at, 100.0));
            }
            at = at.checked_add(SignedDuration::from_hours(1)).unwrap();
        }
        out
    }

    #[test]
    fn a_daily_quota_runs_out_in_the_session_not_overnight() {
        let calendar = MarketCalendar::nyse().unwrap();
        let now = ts("2026-12-02T14:00:00Z"); // Wednesday 09:00 ET
        let pace = Pace::learn(&calendar, &history(&calendar), now);
        // About 100 an hour usual for 09:00–16:00 on trading days (Thanksgiving and the
        // early close pull the average a little).
        let usual = pace.usual(&calendar, ts("2026-12-02T16:00:00Z"));
        assert!((85.0..=100.0).contains(&usual), "{usual}");
        assert_eq!(pace.usual(&calendar, ts("2026-12-02T06:00:00Z")), 0.0);
        // 500 a day, 100 used: 400 more is four session hours: by about 13:00 ET.
        let end = ts("2026-12-03T05:00:00Z");
        let f = project(&calendar, &pace, 1.0, 100.0, 500.0, now, end);
        let out = f.runs_out_at.expect("runs out today");
        assert!(
            (ts("2026-12-02T17:00:00Z")..=ts("2026-12-02T19:00:00Z")).contains(&out),
            "{out}"
        );
        // 1,000 a day is never reached.
        let f = project(&calendar, &pace, 1.0, 100.0, 1_000.0, now, end);
        assert_eq!(f.runs_out_at, None);
        assert!((700.0..=800.0).contains(&f.projected), "{}", f.projected);
    }

    #[test]
    fn a_hot_day_runs_out_sooner_and_the_weekend_adds_nothing() {
        let calendar = MarketCalendar::nyse().unwrap();
        let now = ts("2026-12-02T17:00:00Z"); // Wednesday 12:00 ET
        let pace = Pace::learn(&calendar, &history(&calendar), now);
        // Three times the usual in the last three hours.
        let recent: Vec<_> = (1..=3)
            .map(|h| {
                (
                    now.checked_sub(SignedDuration::from_hours(h)).unwrap(),
                    300.0,
                )
            })
            .collect();
        let factor = pace.factor(&calendar, &recent, now);
        assert!((2.5..=3.5).contains(&factor), "{factor}");
        // A monthly budget from Friday evening: nothing is spent over the weekend.
        let friday_evening = ts("2026-12-04T23:00:00Z");
        let monday_open = ts("2026-12-07T14:00:00Z");
        let f = project(
            &calendar,
            &pace,
            1.0,
            0.0,
            50.0,
            friday_evening,
            ts("2027-01-01T05:00:00Z"),
        );
        let out = f.runs_out_at.unwrap();
        assert!(out > monday_open, "{out}");
    }
}
