//! Anomaly detection on one usage series (a key's or an app token's requests, errors,
//! provider rejections or cost, at a regular step), the same code in the server and in
//! `keyward anomaly backtest`.
//!
//! The baseline learns the series' normal week by the market's calendar: for each kind of
//! day — each weekday that trades, or a closed day (weekend or exchange holiday) — and each
//! hour of the market's day (an early close's last hours count from its close,
//! [`MarketMoment::market_hour`]), it keeps the last weeks' *peak five-minute sum* and
//! *hourly total*. Comparing a five-minute window with the peaks seen in that hour, rather
//! than with an hourly average, is what makes the 09:30 open surge normal on a trading day
//! and abnormal on a holiday. Bands are median ± k × a robust scale (1.4826 × MAD, with a
//! Poisson floor √m + 1 for counts), so past anomalies do not widen them; an hour during
//! which an alert was open is not learned at all. Until a slot has three samples — its own
//! weekday's, or, while those are few, every trading weekday's pooled — the detector says
//! `learning` instead of guessing.
//!
//! Rules (each opens one *episode*; an episode stays open, without new alerts, until the
//! series has been normal for half an hour): a five-minute window far above the hour's
//! usual peaks (spike), an hour far above its usual total (sustained rise), an hour far
//! below it (drop: requests only), and use in an hour whose every learned peak is at most
//! one call (off-hours: requests only).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use jiff::Timestamp;
use jiff::civil::Weekday;
use serde::{Deserialize, Serialize};

use crate::market::{DayKind, MarketCalendar, MarketMoment};

/// What a detector watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SeriesKind {
    Requests,
    Errors,
    Rejections,
    /// Money, in USD.
    Cost,
}

string_enum!(SeriesKind { Requests = "requests", Errors = "errors", Rejections = "rejections", Cost = "cost" }, "invalid_series", "series");

/// Why an alert was raised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    RequestSpike,
    RequestDrop,
    OffHours,
    CostSpike,
    ErrorSpike,
    RejectionBurst,
    NewNetwork,
    NewEndpoint,
    NewModel,
    DormantKeyUse,
}

string_enum!(Signal {
    RequestSpike = "request_spike", RequestDrop = "request_drop", OffHours = "off_hours",
    CostSpike = "cost_spike", ErrorSpike = "error_spike", RejectionBurst = "rejection_burst",
    NewNetwork = "new_network", NewEndpoint = "new_endpoint", NewModel = "new_model",
    DormantKeyUse = "dormant_key_use"
}, "invalid_signal", "anomaly signal");

/// One alert: what, when, how far off (robust z-score) and why, in words and numbers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub signal: Signal,
    #[serde(rename = "timestamp")]
    pub at: Timestamp,
    pub score: f64,
    pub reason: String,
}

/// What one observation meant.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Not enough history for this hour of this kind of day yet.
    Learning,
    Normal,
    /// An episode opened.
    Alert(Finding),
    /// Still abnormal, inside an episode already announced.
    Ongoing,
}

/// Thresholds of one series kind.
#[derive(Debug, Clone, Copy)]
struct Rules {
    /// A spike needs at least this much in five minutes …
    fast_min: f64,
    /// … and an hour this much in total.
    slow_min: f64,
    /// … and this many times the usual peak (five minutes) …
    ratio: f64,
    /// … or total (an hour).
    slow_ratio: f64,
    /// Robust deviations above the median.
    k: f64,
    drop: bool,
    off_hours: bool,
    /// Counts get a Poisson floor on their scale; money a share of its median.
    counts: bool,
}

impl SeriesKind {
    fn rules(self) -> Rules {
        match self {
            Self::Requests => Rules {
                fast_min: 15.0,
                slow_min: 30.0,
                ratio: 2.5,
                slow_ratio: 2.2,
                k: 5.0,
                drop: true,
                off_hours: true,
                counts: true,
            },
            Self::Errors => Rules {
                fast_min: 10.0,
                slow_min: 6.0,
                ratio: 3.0,
                slow_ratio: 3.0,
                k: 5.0,
                drop: false,
                off_hours: false,
                counts: true,
            },
            Self::Rejections => Rules {
                fast_min: 5.0,
                slow_min: 4.0,
                ratio: 3.0,
                slow_ratio: 3.0,
                k: 4.0,
                drop: false,
                off_hours: false,
                counts: true,
            },
            // Cents, not fractions of them: a few cheap calls at night are not an alert.
            Self::Cost => Rules {
                fast_min: 0.02,
                slow_min: 0.10,
                ratio: 3.0,
                slow_ratio: 2.2,
                k: 5.0,
                drop: false,
                off_hours: false,
                counts: false,
            },
        }
    }

    fn rise_signal(self) -> Signal {
        match self {
            Self::Requests => Signal::RequestSpike,
            Self::Errors => Signal::ErrorSpike,
            Self::Rejections => Signal::RejectionBurst,
            Self::Cost => Signal::CostSpike,
        }
    }

    fn amount(self, value: f64) -> String {
        let n = value.round() as u64;
        match self {
            Self::Cost if value < 1.0 => format!("${value:.4}"),
            Self::Cost => format!("${value:.2}"),
            Self::Requests => format!("{} request{}", thousands(n), plural(n)),
            Self::Errors => format!("{} error{}", thousands(n), plural(n)),
            Self::Rejections => format!("{} rejection{}", thousands(n), plural(n)),
        }
    }

    fn range(self, low: f64, high: f64) -> String {
        match self {
            Self::Cost => format!("{}–{}", self.amount(low), self.amount(high)),
            _ => format!(
                "{}–{}",
                thousands(low.round() as u64),
                thousands(high.round() as u64)
            ),
        }
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// `12,345`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Weeks of history kept per weekday; closed days (about 2.3 a week) keep as many days.
const WEEKS_KEPT: usize = 6;
const CLOSED_DAYS_KEPT: usize = 12;
/// Samples a slot needs before it is trusted.
const MIN_SAMPLES: usize = 3;
/// Samples a weekday's own slot needs before it replaces the pooled trading days.
const OWN_WEEKDAY_SAMPLES: usize = 4;
/// An off-hours alert needs this many quiet days of that hour first.
const OFF_HOURS_SAMPLES: usize = 4;
/// Calls in five minutes that count as use in an hour never used.
const OFF_HOURS_MIN: f64 = 10.0;
/// The length of the fast window and how long a series must be normal to close an episode.
const WINDOW_MS: i64 = 5 * 60_000;
const QUIET_MS: i64 = 30 * 60_000;
/// A drop needs the hour to usually hold this many calls, and to fall below this share.
const DROP_MIN_USUAL: f64 = 60.0;
const DROP_SHARE: f64 = 0.3;
/// Robust deviations below the median a drop needs (besides the share).
const DROP_K: f64 = 3.0;
/// How much busier a month's last two trading days may be before anything is unusual.
const MONTH_END_ALLOWANCE: f64 = 1.3;

/// The kind of day a slot pools: each trading weekday on its own, closed days together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum DayClass {
    Trading(u8),
    Closed,
}

impl DayClass {
    fn of(moment: &MarketMoment) -> Self {
        if moment.trades() {
            Self::Trading(moment.weekday.to_monday_zero_offset() as u8)
        } else {
            Self::Closed
        }
    }

    fn capacity(self) -> usize {
        match self {
            Self::Trading(_) => WEEKS_KEPT,
            Self::Closed => CLOSED_DAYS_KEPT,
        }
    }
}

/// One slot's history: a sample per day.
#[derive(Debug, Clone, Default)]
struct Slot {
    peaks: VecDeque<f64>,
    totals: VecDeque<f64>,
}

/// The hour being accumulated.
#[derive(Debug, Clone)]
struct Hour {
    /// Hours since the Unix epoch: New York's offsets are whole hours, so this is its
    /// hour too — and, unlike date and clock hour, it tells apart the two 01:00s of the
    /// night daylight saving ends.
    epoch_hour: i64,
    clock_hour: u8,
    moment: MarketMoment,
    peak: f64,
    total: f64,
    /// An episode was open during the hour: it is not learned.
    tainted: bool,
}

/// What the band of one slot says.
#[derive(Debug, Clone)]
struct Band {
    median: f64,
    scale: f64,
    low: f64,
    high: f64,
    max: f64,
    samples: usize,
    pooled: bool,
    /// For counts: the least count a Poisson process at the usual rate reaches with
    /// probability below 10⁻⁷ — what keeps small counts (3 rejections where 0 or 1 is
    /// usual) from alerting by chance.
    poisson_floor: f64,
}

/// The smallest `x` with P(X ≥ x) < 10⁻⁷ for X ~ Poisson(λ) (a normal approximation with
/// z = 5.2 above λ = 50).
pub fn poisson_floor(lambda: f64) -> f64 {
    const TAIL: f64 = 1e-7;
    if lambda > 50.0 {
        return (lambda + 5.2 * lambda.sqrt()).ceil();
    }
    let mut pmf = (-lambda).exp();
    let mut cdf = pmf;
    let mut x = 0.0;
    while 1.0 - cdf >= TAIL && x < 400.0 {
        x += 1.0;
        pmf *= lambda / x;
        cdf += pmf;
    }
    x + 1.0
}

impl Band {
    fn of(values: &[f64], counts: bool, pooled: bool) -> Option<Self> {
        if values.len() < MIN_SAMPLES {
            return None;
        }
        let median = median(values);
        let deviations: Vec<f64> = values.iter().map(|v| (v - median).abs()).collect();
        let mad = 1.4826 * self::median(&deviations);
        // Counts vary at least like a Poisson process and, day to day, by a share of their
        // level; money by a larger share. A floor keeps a lucky run of similar days from
        // making the band razor-thin.
        let floor = if counts {
            (median.sqrt() + 1.0).max(0.15 * median)
        } else {
            0.25 * median
        };
        Some(Self {
            median,
            scale: mad.max(floor).max(f64::EPSILON),
            low: values.iter().copied().fold(f64::INFINITY, f64::min),
            high: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            max: values.iter().copied().fold(0.0, f64::max),
            samples: values.len(),
            pooled,
            poisson_floor: if counts {
                let mean = values.iter().sum::<f64>() / values.len() as f64;
                poisson_floor(median.max(mean))
            } else {
                0.0
            },
        })
    }

    /// Whether `value` is far above: over the minimum, the ratio and k deviations.
    fn exceeded_by(&self, value: f64, min: f64, ratio: f64, k: f64) -> bool {
        value >= min
            && value >= self.poisson_floor
            && value >= ratio * self.median
            && value > self.median + k * self.scale
            && value > 0.0
    }

    /// "3.2× the usual; usual …" or, where the usual is nothing, just the range.
    fn times_usual(&self, value: f64) -> String {
        if self.median > 0.0 {
            format!(", {:.1}× the usual", value / self.median)
        } else {
            String::new()
        }
    }

    fn score(&self, value: f64) -> f64 {
        ((value - self.median) / self.scale * 10.0).round() / 10.0
    }
}

/// The median of a small sample.
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Episode {
    Rise,
    Fall,
}

/// The detector of one series.
#[derive(Debug, Clone)]
pub struct SeriesDetector {
    kind: SeriesKind,
    rules: Rules,
    calendar: Arc<MarketCalendar>,
    /// Values of the last five minutes (or the last value, for a longer step).
    window: VecDeque<(i64, f64)>,
    window_sum: f64,
    hour: Option<Hour>,
    slots: HashMap<(DayClass, u8), Slot>,
    /// Open episodes and when the series was last abnormal in each.
    open: HashMap<Episode, i64>,
}

impl SeriesDetector {
    pub fn new(kind: SeriesKind, calendar: Arc<MarketCalendar>) -> Self {
        Self {
            kind,
            rules: kind.rules(),
            calendar,
            window: VecDeque::new(),
            window_sum: 0.0,
            hour: None,
            slots: HashMap::new(),
            open: HashMap::new(),
        }
    }

    pub fn kind(&self) -> SeriesKind {
        self.kind
    }

    /// Takes the series' value for the step that starts at `at` (steps in order; a missing
    /// step is a zero). Returns what it meant.
    pub fn observe(&mut self, at: Timestamp, value: f64) -> Verdict {
        let value = if value.is_finite() {
            value.max(0.0)
        } else {
            0.0
        };
        let ms = at.as_millisecond();
        let moment = self.calendar.moment(at);
        let mut verdicts = Vec::new();
        // An hour ends: learn it (unless an alert was open) and judge its total.
        let epoch_hour = ms.div_euclid(3_600_000);
        let same_hour = self
            .hour
            .as_ref()
            .is_some_and(|h| h.epoch_hour == epoch_hour);
        if !same_hour {
            if let Some(done) = self.hour.take() {
                verdicts.push(self.close_hour(done, ms));
            }
            self.hour = Some(Hour {
                epoch_hour,
                clock_hour: moment.clock_hour,
                moment,
                peak: 0.0,
                total: 0.0,
                tainted: false,
            });
        }
        self.window.push_back((ms, value));
        self.window_sum += value;
        while let Some(&(start, old)) = self.window.front() {
            if start > ms - WINDOW_MS {
                break;
            }
            self.window_sum -= old;
            self.window.pop_front();
        }
        let sum = self.window_sum.max(0.0);
        if let Some(hour) = self.hour.as_mut() {
            hour.peak = hour.peak.max(sum);
            hour.total += value;
        }
        verdicts.push(self.judge_window(&moment, sum, at));
        self.close_quiet_episodes(ms);
        if !self.open.is_empty()
            && let Some(hour) = self.hour.as_mut()
        {
            hour.tainted = true;
        }
        // The most telling verdict of this step.
        verdicts
            .into_iter()
            .max_by_key(|v| match v {
                Verdict::Alert(_) => 3,
                Verdict::Ongoing => 2,
                Verdict::Normal => 1,
                Verdict::Learning => 0,
            })
            .unwrap_or(Verdict::Normal)
    }

    /// The bands a moment is judged against: its hour of the market's day — and on an early
    /// close also its hour on the clock, because a series that follows the clock (a chat
    /// app) is not shifted by the market's close: there an alert needs both to agree.
    /// `None` while either is still learning.
    fn bands(&self, moment: &MarketMoment, totals: bool) -> Option<Vec<Band>> {
        let mut bands = vec![self.slot_band(moment, moment.market_hour, totals)?];
        if moment.clock_hour != moment.market_hour {
            bands.push(self.slot_band(moment, moment.clock_hour, totals)?);
        }
        if moment.month_end {
            for band in &mut bands {
                band.median *= MONTH_END_ALLOWANCE;
                band.scale *= MONTH_END_ALLOWANCE;
            }
        }
        Some(bands)
    }

    fn slot_band(&self, moment: &MarketMoment, hour: u8, totals: bool) -> Option<Band> {
        let class = DayClass::of(moment);
        let pick = |slot: &Slot| -> Vec<f64> {
            if totals {
                slot.totals.iter().copied().collect()
            } else {
                slot.peaks.iter().copied().collect()
            }
        };
        let own = self.slots.get(&(class, hour)).map(pick).unwrap_or_default();
        let enough = match class {
            DayClass::Trading(_) => OWN_WEEKDAY_SAMPLES,
            DayClass::Closed => MIN_SAMPLES,
        };
        if own.len() >= enough {
            return Band::of(&own, self.rules.counts, false);
        }
        if let DayClass::Trading(_) = class {
            let pooled: Vec<f64> = (0..5)
                .filter_map(|d| self.slots.get(&(DayClass::Trading(d), hour)))
                .flat_map(pick)
                .collect();
            return Band::of(&pooled, self.rules.counts, true);
        }
        None
    }

    fn judge_window(&mut self, moment: &MarketMoment, sum: f64, at: Timestamp) -> Verdict {
        let Some(bands) = self.bands(moment, false) else {
            return Verdict::Learning;
        };
        let band = &bands[0];
        let ms = at.as_millisecond();
        let rules = self.rules;
        if rules.off_hours
            && sum >= OFF_HOURS_MIN
            && bands
                .iter()
                .all(|b| b.samples >= OFF_HOURS_SAMPLES && b.max <= 1.0)
        {
            let reason = format!(
                "{} in 5 min at {}, an hour this series has not been used in ({} days seen, at most {} per 5 min)",
                self.kind.amount(sum),
                when(moment, band.pooled),
                band.samples,
                band.max.round()
            );
            let score = band.score(sum);
            return self.raise(Episode::Rise, Signal::OffHours, at, score, reason, ms);
        }
        if bands
            .iter()
            .all(|b| b.exceeded_by(sum, rules.fast_min, rules.ratio, rules.k))
        {
            let reason = format!(
                "{} in 5 min; usual for {} is {}",
                self.kind.amount(sum),
                when(moment, band.pooled),
                self.kind.range(band.low, band.high)
            );
            let (signal, score) = (self.kind.rise_signal(), band.score(sum));
            return self.raise(Episode::Rise, signal, at, score, reason, ms);
        }
        if self.open.contains_key(&Episode::Rise) && bands.iter().all(|b| sum > b.high) {
            // Still above everything seen: the episode stays open.
            self.open.insert(Episode::Rise, ms);
            return Verdict::Ongoing;
        }
        Verdict::Normal
    }

    fn close_hour(&mut self, done: Hour, now_ms: i64) -> Verdict {
        let at = Timestamp::from_millisecond(now_ms).unwrap_or(Timestamp::UNIX_EPOCH);
        let mut verdict = Verdict::Learning;
        let rules = self.rules;
        if let Some(bands) = self.bands(&done.moment, true) {
            verdict = Verdict::Normal;
            let band = &bands[0];
            let total = done.total;
            let hour_name = format!("the hour from {:02}:00 ET", done.clock_hour);
            // An hour during which an alert was open was announced already.
            let rose = !done.tainted
                && bands
                    .iter()
                    .all(|b| b.exceeded_by(total, rules.slow_min, rules.slow_ratio, rules.k));
            let fell = rules.drop
                && bands.iter().all(|b| {
                    b.median >= DROP_MIN_USUAL
                        && total <= DROP_SHARE * b.median
                        && total < b.median - DROP_K * b.scale
                });
            if rose {
                let reason = format!(
                    "{} in {hour_name}{}; usual for {} is {}",
                    self.kind.amount(total),
                    band.times_usual(total),
                    when(&done.moment, band.pooled),
                    self.kind.range(band.low, band.high)
                );
                let (signal, score) = (self.kind.rise_signal(), band.score(total));
                verdict = self.raise(Episode::Rise, signal, at, score, reason, now_ms);
            } else if fell {
                let reason = format!(
                    "{} in {hour_name}; usual for {} is {}",
                    self.kind.amount(total),
                    when(&done.moment, band.pooled),
                    self.kind.range(band.low, band.high)
                );
                let score = band.score(total);
                verdict = self.raise(
                    Episode::Fall,
                    Signal::RequestDrop,
                    at,
                    score,
                    reason,
                    now_ms,
                );
            }
        }
        // Early closes are too rare to learn and would skew whichever hours they joined;
        // month-ends are judged with an allowance instead of being learned.
        let abnormal = matches!(verdict, Verdict::Alert(_) | Verdict::Ongoing);
        let learnable = done.moment.kind != DayKind::EarlyClose && !done.moment.month_end;
        if !done.tainted && !abnormal && learnable {
            let class = DayClass::of(&done.moment);
            let slot = self
                .slots
                .entry((class, done.moment.market_hour))
                .or_default();
            slot.peaks.push_back(done.peak);
            slot.totals.push_back(done.total);
            while slot.peaks.len() > class.capacity() {
                slot.peaks.pop_front();
                slot.totals.pop_front();
            }
        }
        verdict
    }

    fn raise(
        &mut self,
        episode: Episode,
        signal: Signal,
        at: Timestamp,
        score: f64,
        reason: String,
        ms: i64,
    ) -> Verdict {
        let already = self.open.insert(episode, ms).is_some();
        if let Some(hour) = self.hour.as_mut() {
            hour.tainted = true;
        }
        if already {
            Verdict::Ongoing
        } else {
            Verdict::Alert(Finding {
                signal,
                at,
                score,
                reason,
            })
        }
    }

    fn close_quiet_episodes(&mut self, ms: i64) {
        // A drop is judged once an hour: it stays open across the next hour's judgement.
        self.open.retain(|episode, last| {
            let quiet = match episode {
                Episode::Rise => QUIET_MS,
                Episode::Fall => 2 * 60 * 60_000,
            };
            ms - *last < quiet
        });
    }
}

/// "Tuesday 03:00 ET", "a trading day at 10:00 ET", "Thursday 10:00 ET (market holiday)".
fn when(moment: &MarketMoment, pooled: bool) -> String {
    let day = match moment.kind {
        DayKind::Holiday => format!("{} (market holiday)", weekday_name(moment.weekday)),
        DayKind::EarlyClose => format!("{} (early close)", weekday_name(moment.weekday)),
        _ if pooled => "a trading day".to_owned(),
        _ => weekday_name(moment.weekday).to_owned(),
    };
    if pooled && moment.trades() {
        format!("{day} at {:02}:00 ET", moment.clock_hour)
    } else {
        format!("{day} {:02}:00 ET", moment.clock_hour)
    }
}

fn weekday_name(day: Weekday) -> &'static str {
    match day {
        Weekday::Monday => "Monday",
        Weekday::Tuesday => "Tuesday",
        Weekday::Wednesday => "Wednesday",
        Weekday::Thursday => "Thursday",
        Weekday::Friday => "Friday",
        Weekday::Saturday => "Saturday",
        Weekday::Sunday => "Sunday",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn calendar() -> Arc<MarketCalendar> {
        Arc::new(MarketCalendar::nyse().unwrap())
    }

    /// Requests per minute of a market-data app: an open surge, a lunch lull, a close
    /// surge; nothing when the market is closed. A small wobble keeps days unequal.
    fn usual(calendar: &MarketCalendar, at: Timestamp, minute: usize) -> f64 {
        let m = calendar.moment(at);
        if !m.trades() {
            return 0.0;
        }
        let local = at.to_zoned_datetime(jiff::tz::TimeZone::get("America/New_York").unwrap());
        let minutes = i32::from(local.hour()) * 60 + i32::from(local.minute());
        let close = if m.kind == DayKind::EarlyClose {
            13 * 60
        } else {
            16 * 60
        };
        let base = match minutes {
            m if m < 4 * 60 => 0.0,
            m if m < 9 * 60 + 30 => 2.0,
            m if m < 9 * 60 + 45 => 60.0,
            m if m >= close - 10 && m < close => 50.0,
            m if m >= close && m < close + 4 * 60 => 3.0,
            m if m >= close => 0.0,
            m if (12 * 60..13 * 60 + 30).contains(&m) => 12.0,
            _ => 20.0,
        };
        base + (minute % 3) as f64
    }

    /// Feeds minutes from `from` for `days`, with `tweak` changing some minutes; returns
    /// the alerts and how many steps were learning.
    fn run(
        detector: &mut SeriesDetector,
        from: &str,
        days: i64,
        tweak: impl Fn(Timestamp, f64) -> f64,
    ) -> (Vec<Finding>, usize) {
        let calendar = calendar();
        let start: Timestamp = from.parse().unwrap();
        let mut alerts = Vec::new();
        let mut learning = 0;
        for minute in 0..(days * 1440) as usize {
            let at = Timestamp::from_second(start.as_second() + minute as i64 * 60).unwrap();
            let value = tweak(at, usual(&calendar, at, minute));
            match detector.observe(at, value) {
                Verdict::Alert(f) => alerts.push(f),
                Verdict::Learning => learning += 1,
                _ => {}
            }
        }
        (alerts, learning)
    }

    fn trained() -> SeriesDetector {
        let mut detector = SeriesDetector::new(SeriesKind::Requests, calendar());
        // Four weeks from Monday 2026-10-19 (ET midnight is 04:00Z) to Monday 2026-11-16.
        let (alerts, learning) = run(&mut detector, "2026-10-19T04:00:00Z", 28, |_, v| v);
        assert!(alerts.is_empty(), "normal weeks raise nothing: {alerts:?}");
        assert!(learning > 0, "the first days are spent learning");
        detector
    }

    #[test]
    fn poisson_floors_grow_with_the_rate() {
        assert_eq!(
            poisson_floor(0.0),
            1.0,
            "where nothing is usual, one call is news"
        );
        assert!(
            (7.0..=9.0).contains(&poisson_floor(0.5)),
            "{}",
            poisson_floor(0.5)
        );
        assert!(
            (25.0..=32.0).contains(&poisson_floor(10.0)),
            "{}",
            poisson_floor(10.0)
        );
        assert!(poisson_floor(10_000.0) < 10_600.0);
    }

    #[test]
    fn a_new_series_is_learning_not_guessing() {
        let mut detector = SeriesDetector::new(SeriesKind::Requests, calendar());
        let (alerts, learning) = run(&mut detector, "2026-10-19T04:00:00Z", 1, |_, v| v * 50.0);
        assert!(alerts.is_empty());
        assert_eq!(learning, 1440);
    }

    #[test]
    fn a_tenfold_spike_is_alerted_within_five_minutes_and_once() {
        let mut detector = trained();
        // Tuesday 2026-11-17, 11:00–11:30 ET (16:00Z): ten times the usual.
        let spike = |at: Timestamp, v: f64| {
            let s = at.as_second();
            if (1_794_931_200..1_794_933_000).contains(&s) {
                v * 10.0
            } else {
                v
            }
        };
        let (alerts, _) = run(&mut detector, "2026-11-17T05:00:00Z", 1, spike);
        assert_eq!(alerts.len(), 1, "one episode, one alert: {alerts:?}");
        let alert = &alerts[0];
        assert_eq!(alert.signal, Signal::RequestSpike);
        let delay = alert.at.as_second() - 1_794_931_200;
        assert!((0..=300).contains(&delay), "alerted after {delay} s");
        assert!(
            alert
                .reason
                .contains("in 5 min; usual for Tuesday 11:00 ET is"),
            "{}",
            alert.reason
        );
        assert!(alert.score > 5.0);
    }

    #[test]
    fn the_open_surge_is_normal_on_a_trading_day_and_not_on_a_holiday() {
        let mut detector = trained();
        // A trading Monday and Tuesday, then Thanksgiving (a holiday) with the same traffic
        // as a trading day, then Black Friday (early close at 13:00 ET, surge at 12:50).
        let (alerts, _) = run(&mut detector, "2026-11-16T05:00:00Z", 3, |_, v| v);
        assert!(alerts.is_empty(), "{alerts:?}");
        let calendar = calendar();
        let trading_day = |at: Timestamp, v: f64| {
            // What a bot that ignores the calendar sends on the holiday: Wednesday's traffic.
            let wednesday = Timestamp::from_second(at.as_second() - 86_400).unwrap();
            v.max(usual(&calendar, wednesday, 0))
        };
        let (alerts, _) = run(&mut detector, "2026-11-26T05:00:00Z", 1, trading_day);
        assert!(
            !alerts.is_empty(),
            "a surge on a market holiday is not normal"
        );
        assert!(
            alerts[0].reason.contains("market holiday"),
            "{}",
            alerts[0].reason
        );
        let (alerts, _) = run(&mut detector, "2026-11-27T05:00:00Z", 1, |_, v| v);
        assert!(
            alerts.is_empty(),
            "an early close's surge at 13:00 is a close surge: {alerts:?}"
        );
    }

    #[test]
    fn traffic_that_stops_during_the_session_is_a_drop() {
        let mut detector = trained();
        // Wednesday 2026-11-18 from 10:00 ET (15:00Z): nothing for three hours.
        let outage = |at: Timestamp, v: f64| {
            let s = at.as_second();
            if (1_795_014_000..1_795_024_800).contains(&s) {
                0.0
            } else {
                v
            }
        };
        let (alerts, _) = run(&mut detector, "2026-11-18T05:00:00Z", 1, outage);
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        assert_eq!(alerts[0].signal, Signal::RequestDrop);
        assert!(
            alerts[0]
                .reason
                .starts_with("0 requests in the hour from 10:00 ET"),
            "{}",
            alerts[0].reason
        );
    }

    #[test]
    fn use_at_an_hour_never_used_is_off_hours() {
        let mut detector = trained();
        // Saturday 2026-11-21, 03:00 ET: 15 calls a minute for ten minutes.
        let night = |at: Timestamp, v: f64| {
            let s = at.as_second();
            if (1_795_248_000..1_795_248_600).contains(&s) {
                15.0
            } else {
                v
            }
        };
        let (alerts, _) = run(&mut detector, "2026-11-21T05:00:00Z", 1, night);
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        assert_eq!(alerts[0].signal, Signal::OffHours);
        assert!(
            alerts[0].reason.contains("Saturday 03:00 ET"),
            "{}",
            alerts[0].reason
        );
    }
}
