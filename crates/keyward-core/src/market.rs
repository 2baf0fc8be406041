//! The US equity market calendar (NYSE, `catalog/xnys.toml`): which days trade, which close
//! early, and where a moment falls in the market's day. Market-data traffic follows it —
//! surges at the open and the close, a lunch lull, quiet weekends and holidays — so the
//! anomaly detector compares each hour with the same hour of the same kind of day, and an
//! early close's last hour with a normal day's last hour.

use std::collections::BTreeSet;

use jiff::Timestamp;
use jiff::civil::{Date, Weekday};
use jiff::tz::TimeZone;
use serde::Deserialize;

use crate::Error;

const XNYS: &str = include_str!("../catalog/xnys.toml");
/// Where the exchange's clocks are.
pub const MARKET_TIME_ZONE: &str = "America/New_York";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CalendarFile {
    years: Vec<i16>,
    holidays: Vec<Date>,
    early_closes: Vec<Date>,
}

/// What kind of day a date is for the market.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DayKind {
    /// A weekday with a regular session (09:30–16:00 ET).
    Trading,
    /// A weekday whose session ends at 13:00 ET.
    EarlyClose,
    /// A weekday the exchange is closed.
    Holiday,
    Weekend,
}

/// Where a moment falls: the kind of day, the day of the week and the hour of the market's
/// day. On an early close the hours from the last hour of the session on are counted from
/// the close (12:00 ET is the "15:00" of a normal day, 13:00 its "16:00", 17:00 — the end
/// of after-hours — its "20:00"), so a close surge at 13:00 is compared with close surges,
/// not with a lunch lull.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MarketMoment {
    pub date: Date,
    pub weekday: Weekday,
    pub kind: DayKind,
    /// The hour on the clock in New York (0–23).
    pub clock_hour: u8,
    /// The hour of a regular trading day this one behaves like (0–23).
    pub market_hour: u8,
    /// One of the month's last two trading days (busier: rebalancing, reporting).
    pub month_end: bool,
}

impl MarketMoment {
    pub fn trades(&self) -> bool {
        matches!(self.kind, DayKind::Trading | DayKind::EarlyClose)
    }
}

/// The NYSE calendar as shipped.
#[derive(Debug, Clone)]
pub struct MarketCalendar {
    years: BTreeSet<i16>,
    holidays: BTreeSet<Date>,
    early_closes: BTreeSet<Date>,
    zone: TimeZone,
}

impl MarketCalendar {
    pub fn nyse() -> Result<Self, Error> {
        let file: CalendarFile = toml::from_str(XNYS)
            .map_err(|e| Error::internal(format!("the market calendar does not parse: {e}")))?;
        let zone = TimeZone::get(MARKET_TIME_ZONE)
            .map_err(|e| Error::internal(format!("no time zone {MARKET_TIME_ZONE}: {e}")))?;
        Ok(Self {
            years: file.years.into_iter().collect(),
            holidays: file.holidays.into_iter().collect(),
            early_closes: file.early_closes.into_iter().collect(),
            zone,
        })
    }

    /// Whether the calendar knows the year's holidays (outside it, every weekday trades).
    pub fn covers(&self, date: Date) -> bool {
        self.years.contains(&date.year())
    }

    pub fn day_kind(&self, date: Date) -> DayKind {
        if matches!(date.weekday(), Weekday::Saturday | Weekday::Sunday) {
            DayKind::Weekend
        } else if self.holidays.contains(&date) {
            DayKind::Holiday
        } else if self.early_closes.contains(&date) {
            DayKind::EarlyClose
        } else {
            DayKind::Trading
        }
    }

    pub fn moment(&self, at: Timestamp) -> MarketMoment {
        let local = at.to_zoned_datetime(self.zone.clone());
        let date = local.date();
        let kind = self.day_kind(date);
        let clock_hour = u8::try_from(local.hour()).unwrap_or(0);
        // On an early close (13:00; after-hours end at 17:00) the day from the session's
        // last hour on runs three hours ahead of a regular day's: 12:00 is its "15:00",
        // 17:00 its "20:00"; the late evening folds into "23:00".
        let market_hour = if kind == DayKind::EarlyClose && clock_hour >= 12 {
            (clock_hour + 3).min(23)
        } else {
            clock_hour
        };
        MarketMoment {
            date,
            weekday: date.weekday(),
            kind,
            clock_hour,
            market_hour,
            month_end: self.is_month_end(date),
        }
    }

    /// Whether `date` trades and at most one trading day follows it in its month.
    pub fn is_month_end(&self, date: Date) -> bool {
        let trades = |d: Date| matches!(self.day_kind(d), DayKind::Trading | DayKind::EarlyClose);
        if !trades(date) {
            return false;
        }
        let mut later = 0;
        let mut day = date;
        while let Some(next) = day.tomorrow().ok().filter(|d| d.month() == date.month()) {
            later += usize::from(trades(next));
            day = next;
        }
        later < 2
    }

    /// The regular session's open and close on `date`, or `None` when it does not trade.
    pub fn session(&self, date: Date) -> Option<(Timestamp, Timestamp)> {
        let close_hour = match self.day_kind(date) {
            DayKind::Trading => 16,
            DayKind::EarlyClose => 13,
            DayKind::Holiday | DayKind::Weekend => return None,
        };
        let at = |hour: i8, minute: i8| {
            date.at(hour, minute, 0, 0)
                .to_zoned_datetime(self.zone.clone())
                .ok()
                .map(|z| z.timestamp())
        };
        Some((at(9, 30)?, at(close_hour, 0)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;

    #[test]
    fn knows_weekends_holidays_and_early_closes() {
        let calendar = MarketCalendar::nyse().unwrap();
        assert_eq!(calendar.day_kind(date(2026, 11, 26)), DayKind::Holiday);
        assert_eq!(calendar.day_kind(date(2026, 11, 27)), DayKind::EarlyClose);
        assert_eq!(calendar.day_kind(date(2026, 11, 28)), DayKind::Weekend);
        assert_eq!(calendar.day_kind(date(2026, 11, 30)), DayKind::Trading);
        assert_eq!(calendar.day_kind(date(2027, 12, 24)), DayKind::Holiday);
        assert!(calendar.covers(date(2028, 1, 3)));
        assert!(!calendar.covers(date(2031, 1, 3)));
    }

    #[test]
    fn the_session_follows_new_york_time_across_daylight_saving() {
        let calendar = MarketCalendar::nyse().unwrap();
        // Summer (EDT, UTC−4) and winter (EST, UTC−5).
        let (open, close) = calendar.session(date(2026, 7, 1)).unwrap();
        assert_eq!(open.to_string(), "2026-07-01T13:30:00Z");
        assert_eq!(close.to_string(), "2026-07-01T20:00:00Z");
        let (open, close) = calendar.session(date(2026, 11, 27)).unwrap();
        assert_eq!(open.to_string(), "2026-11-27T14:30:00Z");
        assert_eq!(
            close.to_string(),
            "2026-11-27T18:00:00Z",
            "early close at 13:00 ET"
        );
        assert!(calendar.session(date(2026, 11, 26)).is_none());
    }

    #[test]
    fn an_early_close_is_counted_from_its_close() {
        let calendar = MarketCalendar::nyse().unwrap();
        let at = |s: &str| calendar.moment(s.parse().unwrap());
        let black_friday_noon = at("2026-11-27T17:10:00Z"); // 12:10 ET
        assert_eq!(black_friday_noon.clock_hour, 12);
        assert_eq!(black_friday_noon.market_hour, 15, "the session's last hour");
        assert_eq!(
            at("2026-11-27T18:30:00Z").market_hour,
            16,
            "the hour after the close"
        );
        assert_eq!(
            at("2026-11-30T17:10:00Z").market_hour,
            12,
            "a regular Monday"
        );
        let weekday = at("2026-12-01T14:45:00Z");
        assert_eq!(
            (weekday.weekday, weekday.kind),
            (Weekday::Tuesday, DayKind::Trading)
        );
    }
}
