//! A labelled usage trace for the anomaly detector, and its evaluation.
//!
//! ```text
//! cargo run --release -p keyward-server --example anomaly_trace -- [--out DIR] [--seed N] [--weeks W]
//! ```
//!
//! Five keys, each with a series per minute of requests, errors, provider rejections and
//! cost, from Monday 2026-08-24 (ET) for 15 weeks: market-data traffic by the NYSE calendar
//! (pre-market, an open surge, a lunch lull, a close surge, after-hours, quiet nights,
//! weekends and holidays — Labor Day, Thanksgiving, the early close after it — and busier
//! month-ends), an end-of-day batch job, and an LLM chat app that follows the clock rather
//! than the market. Days vary (log-normal), minutes are Poisson. After three weeks of
//! normal traffic, anomalies of each kind are injected at seeded random times and labelled:
//! request spikes (10× for 20–40 min), a sustained 3× rise (3 h), a drop (to 2 % for
//! 2–3 h; only where an hour usually holds ≥ 60 calls, the drop rule's floor), use at night,
//! a trading day's traffic on a market holiday, an error burst, a burst of provider
//! rejections, and a cost spike (a dearer model). Each series file carries only its own
//! kind of anomaly (a spike's calls succeed and are priced as usual), so every file scores
//! one detector on one signal.
//!
//! Files: `DIR/{key}.{series}.csv` (`timestamp,value,label`), each a valid input for
//! `keyward anomaly backtest --series {series}`. Then the same detector is run over every
//! file and the scores printed: precision, recall, detection delay (and the worst delay of
//! the 10× spikes), false alerts per key per 30 days, and every miss and false alert.
#![allow(
    clippy::print_stdout,
    reason = "an evaluation program: its output is the report"
)]

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;

use jiff::Timestamp;
use jiff::civil::date;
use jiff::tz::TimeZone;
use keyward_core::anomaly::SeriesKind;
use keyward_core::backtest::{Series, backtest};
use keyward_core::market::{DayKind, MarketCalendar};

/// SplitMix64: a small seeded generator, so a trace repeats from its seed.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn range(&mut self, low: i64, high: i64) -> i64 {
        low + (self.uniform() * (high - low) as f64) as i64
    }
    fn normal(&mut self) -> f64 {
        let u = self.uniform().max(1e-12);
        let v = self.uniform();
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
    fn poisson(&mut self, lambda: f64) -> f64 {
        if lambda <= 0.0 {
            return 0.0;
        }
        if lambda > 30.0 {
            return (lambda + lambda.sqrt() * self.normal()).round().max(0.0);
        }
        let limit = (-lambda).exp();
        let mut product = self.uniform();
        let mut n = 0.0;
        while product > limit {
            product *= self.uniform();
            n += 1.0;
        }
        n
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Shape {
    /// Follows the market's day.
    MarketData,
    /// Runs from 15 to 45 minutes after the close on trading days.
    EndOfDayBatch,
    /// Follows the clock: busy 08:00–23:00 ET, half as busy on closed days.
    Chat,
}

struct Key {
    name: &'static str,
    shape: Shape,
    /// Calls per minute at the shape's 1.0.
    base: f64,
    /// USD per call.
    price: f64,
}

const KEYS: [Key; 5] = [
    Key {
        name: "md-busy",
        shape: Shape::MarketData,
        base: 40.0,
        price: 0.0005,
    },
    Key {
        name: "md-medium",
        shape: Shape::MarketData,
        base: 6.0,
        price: 0.0005,
    },
    Key {
        name: "md-sparse",
        shape: Shape::MarketData,
        base: 0.6,
        price: 0.0005,
    },
    Key {
        name: "eod-batch",
        shape: Shape::EndOfDayBatch,
        base: 30.0,
        price: 0.0002,
    },
    Key {
        name: "llm-chat",
        shape: Shape::Chat,
        base: 3.0,
        price: 0.004,
    },
];

/// The share of `base` at a minute of the day (ET) on a day of this kind.
fn shape(shape: Shape, kind: DayKind, minute: i64) -> f64 {
    let trades = matches!(kind, DayKind::Trading | DayKind::EarlyClose);
    let close = if kind == DayKind::EarlyClose {
        13 * 60
    } else {
        16 * 60
    };
    match shape {
        Shape::MarketData if !trades => 0.003,
        Shape::MarketData => match minute {
            m if m < 4 * 60 => 0.005,
            m if m < 8 * 60 => 0.1,
            m if m < 9 * 60 + 30 => 0.25,
            m if m < 9 * 60 + 45 => 3.5,
            m if m < 10 * 60 => 2.0,
            m if m >= close - 10 && m < close => 2.5,
            m if m >= close && m < close + 15 => 0.4,
            m if m >= close && m < close + 4 * 60 => 0.08,
            m if m >= close => 0.005,
            m if (12 * 60..13 * 60 + 30).contains(&m) => 0.6,
            _ => 1.0,
        },
        Shape::EndOfDayBatch if trades && (close + 15..close + 45).contains(&minute) => 1.0,
        Shape::EndOfDayBatch => 0.0,
        Shape::Chat => {
            let busy = (8 * 60..23 * 60).contains(&minute);
            let level = if busy { 1.0 } else { 0.15 };
            if trades { level } else { level * 0.5 }
        }
    }
}

/// An injected anomaly: which series, which minutes, what it does.
struct Injection {
    label: &'static str,
    series: SeriesKind,
    start: usize,
    end: usize,
    effect: Effect,
}

#[derive(Clone, Copy)]
enum Effect {
    /// Requests times this.
    Scale(f64),
    /// Requests per minute regardless of the usual.
    Fixed(f64),
    /// A trading day's traffic on a closed day.
    TradingDay,
    /// Errors: this share of the calls fail.
    ErrorShare(f64),
    /// Rejections: every call is rejected.
    AllRejected,
    /// Cost per call times this.
    Price(f64),
}

const START: &str = "2026-08-24T04:00:00Z"; // Monday 00:00 ET
const LEARNING_DAYS: usize = 21;

struct Day {
    kind: DayKind,
    /// Minute index of the day's ET midnight from the start.
    first_minute: usize,
    minutes: usize,
    month_end: bool,
    factor: f64,
}

fn days(calendar: &MarketCalendar, weeks: usize, rng: &mut Rng) -> Vec<Day> {
    let zone = TimeZone::get("America/New_York").expect("zone");
    let start: Timestamp = START.parse().expect("start");
    let first = start.to_zoned_datetime(zone.clone()).date();
    let mut out: Vec<Day> = Vec::new();
    let mut minute = 0usize;
    for n in 0..weeks * 7 {
        let day = first
            .checked_add(jiff::Span::new().days(n as i64))
            .expect("date");
        let next = day.checked_add(jiff::Span::new().days(1)).expect("date");
        let at = |d: jiff::civil::Date| {
            d.to_zoned_datetime(zone.clone())
                .expect("midnight")
                .timestamp()
                .as_second()
        };
        let minutes = ((at(next) - at(day)) / 60) as usize; // 1380 or 1500 across DST
        // The last two trading days of a month are busier.
        let mut later_trading = 0;
        let mut d = next;
        while d.month() == day.month() {
            if matches!(calendar.day_kind(d), DayKind::Trading | DayKind::EarlyClose) {
                later_trading += 1;
            }
            d = d.checked_add(jiff::Span::new().days(1)).expect("date");
        }
        let kind = calendar.day_kind(day);
        let trades = matches!(kind, DayKind::Trading | DayKind::EarlyClose);
        out.push(Day {
            kind,
            first_minute: minute,
            minutes,
            month_end: trades && later_trading < 2,
            factor: (0.12 * rng.normal()).exp(),
        });
        minute += minutes;
    }
    out
}

/// Picks a minute range on a random eligible day at a local time between `from` and `to`
/// (minutes of the day), free of earlier injections.
#[allow(clippy::too_many_arguments)]
fn pick(
    rng: &mut Rng,
    days: &[Day],
    taken: &mut Vec<(usize, usize)>,
    eligible: impl Fn(&Day) -> bool,
    from: i64,
    to: i64,
    length: (i64, i64),
) -> Option<(usize, usize)> {
    for _ in 0..1000 {
        let day = &days[rng.range(LEARNING_DAYS as i64, days.len() as i64) as usize];
        if !eligible(day) {
            continue;
        }
        let start = day.first_minute + rng.range(from, to) as usize;
        let end = start + rng.range(length.0, length.1) as usize;
        // Keep a day between injections so each is judged against a clean baseline.
        if taken
            .iter()
            .any(|&(s, e)| start < e + 1440 && end + 1440 > s)
        {
            continue;
        }
        taken.push((start, end));
        return Some((start, end));
    }
    None
}

fn injections(rng: &mut Rng, days: &[Day], key: &Key) -> Vec<Injection> {
    let trading = |d: &Day| d.kind == DayKind::Trading && !d.month_end;
    let closed = |d: &Day| matches!(d.kind, DayKind::Weekend);
    let (active_from, active_to) = match key.shape {
        Shape::MarketData => (9 * 60 + 50, 15 * 60 + 20),
        Shape::EndOfDayBatch => (16 * 60 + 16, 16 * 60 + 20),
        Shape::Chat => (9 * 60, 21 * 60),
    };
    let mut taken = Vec::new();
    let mut out = Vec::new();
    let add = |out: &mut Vec<Injection>, label, series, range: Option<(usize, usize)>, effect| {
        if let Some((start, end)) = range {
            out.push(Injection {
                label,
                series,
                start,
                end,
                effect,
            });
        }
    };
    let short = match key.shape {
        Shape::EndOfDayBatch => (15, 25),
        _ => (20, 40),
    };
    for _ in 0..2 {
        let r = pick(
            rng,
            days,
            &mut taken,
            trading,
            active_from,
            active_to,
            short,
        );
        add(
            &mut out,
            "spike",
            SeriesKind::Requests,
            r,
            Effect::Scale(10.0),
        );
    }
    if key.shape != Shape::EndOfDayBatch {
        let r = pick(rng, days, &mut taken, trading, 10 * 60, 12 * 60, (180, 181));
        add(
            &mut out,
            "level_shift",
            SeriesKind::Requests,
            r,
            Effect::Scale(3.0),
        );
    }
    // A drop only where an hour usually holds at least 60 calls (the drop rule's floor).
    if key.base >= 1.0 {
        let length = if key.shape == Shape::EndOfDayBatch {
            (25, 26)
        } else {
            (120, 180)
        };
        let r = pick(
            rng,
            days,
            &mut taken,
            trading,
            active_from,
            active_to,
            length,
        );
        add(
            &mut out,
            "drop",
            SeriesKind::Requests,
            r,
            Effect::Scale(0.02),
        );
    }
    let r = pick(rng, days, &mut taken, closed, 60, 3 * 60 + 30, (10, 30));
    let night = 15.0 + rng.uniform() * 25.0;
    add(
        &mut out,
        "off_hours",
        SeriesKind::Requests,
        r,
        Effect::Fixed(night),
    );
    if key.shape != Shape::Chat {
        // A trading day's traffic on a market holiday: Thanksgiving, or Labor Day for the
        // batch job.
        let holiday = if key.shape == Shape::EndOfDayBatch {
            date(2026, 9, 7)
        } else {
            date(2026, 11, 26)
        };
        let zone = TimeZone::get("America/New_York").expect("zone");
        let start: Timestamp = START.parse().expect("start");
        let first = start.to_zoned_datetime(zone.clone()).date();
        let index = first.until(holiday).expect("span").get_days() as usize;
        // Labelled from where a trading day's traffic begins: pre-market at 04:00, or
        // the batch's start at 16:15.
        let (from, to) = if key.shape == Shape::EndOfDayBatch {
            (16 * 60 + 15, 16 * 60 + 45)
        } else {
            (4 * 60, 20 * 60)
        };
        if let Some(day) = days.get(index) {
            out.push(Injection {
                label: "holiday_surge",
                series: SeriesKind::Requests,
                start: day.first_minute + from,
                end: day.first_minute + to,
                effect: Effect::TradingDay,
            });
        }
    }
    let r = pick(
        rng,
        days,
        &mut taken,
        trading,
        active_from,
        active_to,
        (60, 61),
    );
    add(
        &mut out,
        "error_burst",
        SeriesKind::Errors,
        r,
        Effect::ErrorShare(0.5),
    );
    let r = pick(
        rng,
        days,
        &mut taken,
        trading,
        active_from,
        active_to,
        (20, 21),
    );
    add(
        &mut out,
        "rejection_burst",
        SeriesKind::Rejections,
        r,
        Effect::AllRejected,
    );
    let length = if key.shape == Shape::EndOfDayBatch {
        (25, 26)
    } else {
        (120, 121)
    };
    let r = pick(
        rng,
        days,
        &mut taken,
        trading,
        active_from,
        active_to,
        length,
    );
    add(
        &mut out,
        "cost_spike",
        SeriesKind::Cost,
        r,
        Effect::Price(12.0),
    );
    out
}

const SERIES: [SeriesKind; 4] = [
    SeriesKind::Requests,
    SeriesKind::Errors,
    SeriesKind::Rejections,
    SeriesKind::Cost,
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut out_dir = std::path::PathBuf::from("target/anomaly-trace");
    let mut seed = 20_261_206u64;
    let mut weeks = 15usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--out" => out_dir = args.next().ok_or("--out DIR")?.into(),
            "--seed" => seed = args.next().ok_or("--seed N")?.parse()?,
            "--weeks" => weeks = args.next().ok_or("--weeks W")?.parse()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    if weeks < 5 {
        return Err("--weeks must be at least 5 (three are spent learning)".into());
    }
    std::fs::create_dir_all(&out_dir)?;
    let calendar = Arc::new(MarketCalendar::nyse()?);
    let mut rng = Rng(seed);
    let days = days(&calendar, weeks, &mut rng);
    let start: Timestamp = START.parse()?;
    let zone = TimeZone::get("America/New_York")?;
    let total_minutes: usize = days.iter().map(|d| d.minutes).sum();

    let mut rows = Vec::new();
    for key in &KEYS {
        let injected = injections(&mut rng, &days, key);
        let mut columns: BTreeMap<&str, Vec<(f64, &str)>> = BTreeMap::new();
        for series in SERIES {
            columns.insert(series.as_str(), Vec::with_capacity(total_minutes));
        }
        for day in &days {
            for m in 0..day.minutes {
                let index = day.first_minute + m;
                let at = Timestamp::from_second(start.as_second() + index as i64 * 60)?;
                let local_minute = {
                    let z = at.to_zoned_datetime(zone.clone());
                    i64::from(z.hour()) * 60 + i64::from(z.minute())
                };
                let month_end = if day.month_end { 1.3 } else { 1.0 };
                let usual =
                    key.base * day.factor * month_end * shape(key.shape, day.kind, local_minute);
                let active = |series: SeriesKind| {
                    injected
                        .iter()
                        .find(|i| i.series == series && (i.start..i.end).contains(&index))
                };
                let mut rate = usual;
                let mut request_label = "";
                if let Some(i) = active(SeriesKind::Requests) {
                    request_label = i.label;
                    rate = match i.effect {
                        Effect::Scale(x) => usual * x,
                        Effect::Fixed(n) => n,
                        Effect::TradingDay => {
                            key.base * day.factor * shape(key.shape, DayKind::Trading, local_minute)
                        }
                        _ => usual,
                    };
                }
                let requests = rng.poisson(rate);
                // Errors, rejections and cost follow the usual calls: each file carries
                // only its own anomalies.
                let calls = rng.poisson(usual);
                let (mut errors, mut error_label) = (rng.poisson(calls * 0.01), "");
                if let Some(i) = active(SeriesKind::Errors)
                    && let Effect::ErrorShare(share) = i.effect
                {
                    errors = rng.poisson(calls * share);
                    error_label = i.label;
                }
                let (mut rejections, mut rejection_label) = (rng.poisson(calls * 0.0005), "");
                if let Some(i) = active(SeriesKind::Rejections) {
                    rejections = calls;
                    rejection_label = i.label;
                }
                let mut price = key.price;
                let mut cost_label = "";
                if let Some(i) = active(SeriesKind::Cost)
                    && let Effect::Price(x) = i.effect
                {
                    price *= x;
                    cost_label = i.label;
                }
                let cost =
                    calls * price * (1.0 + 0.3 * rng.normal() / calls.max(1.0).sqrt()).max(0.0);
                for (series, value, label) in [
                    ("requests", requests, request_label),
                    ("errors", errors, error_label),
                    ("rejections", rejections, rejection_label),
                    ("cost", (cost * 1e6).round() / 1e6, cost_label),
                ] {
                    if let Some(column) = columns.get_mut(series) {
                        column.push((value, label));
                    }
                }
            }
        }
        for series in SERIES {
            let path = out_dir.join(format!("{}.{}.csv", key.name, series.as_str()));
            let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
            writeln!(file, "timestamp,value,label")?;
            let values = columns.get(series.as_str()).ok_or("column")?;
            for (index, (value, label)) in values.iter().enumerate() {
                let at = Timestamp::from_second(start.as_second() + index as i64 * 60)?;
                writeln!(file, "{at},{value},{label}")?;
            }
            file.flush()?;
            let text = std::fs::read_to_string(&path)?;
            let parsed = Series::parse(&text)?;
            let result = backtest(&parsed, series, calendar.clone());
            rows.push((key.name, series, result));
        }
    }

    // Scores over every file.
    let (mut windows, mut detected, mut alerts, mut false_alerts) = (0, 0, 0, 0);
    let mut delays = Vec::new();
    let mut spike_delays: Vec<f64> = Vec::new();
    let mut by_label: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut false_by_key: BTreeMap<&str, usize> = BTreeMap::new();
    println!(
        "{:<11} {:<10} {:>7} {:>8} {:>6} {:>7}",
        "key", "series", "windows", "detected", "alerts", "false"
    );
    for (key, series, result) in &rows {
        let Some(s) = &result.scores else { continue };
        println!(
            "{key:<11} {:<10} {:>7} {:>8} {:>6} {:>7}",
            series.as_str(),
            s.windows,
            s.detected,
            s.alerts,
            s.false_alerts
        );
        windows += s.windows;
        detected += s.detected;
        alerts += s.alerts;
        false_alerts += s.false_alerts;
        *false_by_key.entry(key).or_default() += s.false_alerts;
        for (label, (w, d)) in &s.by_label {
            let entry = by_label.entry(label.clone()).or_default();
            entry.0 += w;
            entry.1 += d;
        }
        // Delays per window, and the misses and false alerts in words.
        for window in &result.windows {
            match window.first_alert {
                Some(at) => {
                    let delay = (at.as_second() - window.start.as_second()) as f64;
                    delays.push(delay);
                    if window.label == "spike" {
                        spike_delays.push(delay);
                        if delay > 300.0 {
                            println!(
                                "  slow: spike in {key}.{} at {} alerted after {delay:.0} s",
                                series.as_str(),
                                window.start
                            );
                        }
                    }
                }
                None => println!(
                    "  missed {} in {key}.{} at {}",
                    window.label,
                    series.as_str(),
                    window.start
                ),
            }
        }
        for alert in result.alerts.iter().filter(|a| a.label.is_none()) {
            println!(
                "  false alert in {key}.{}: {} {} — {}",
                series.as_str(),
                alert.finding.at,
                alert.finding.signal,
                alert.finding.reason
            );
        }
    }
    let trace_days = total_minutes as f64 / 1440.0;
    let mean = |v: &[f64]| {
        if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    let worst = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    println!();
    println!(
        "trace: {} keys × {} series, {trace_days:.0} days of minutes from {START} (seed {seed}), files in {}",
        KEYS.len(),
        SERIES.len(),
        out_dir.display()
    );
    println!(
        "precision {:.3}  recall {:.3}  ({detected} of {windows} anomalies found; {} of {alerts} alerts true)",
        if alerts == 0 {
            1.0
        } else {
            (alerts - false_alerts) as f64 / alerts as f64
        },
        if windows == 0 {
            1.0
        } else {
            detected as f64 / windows as f64
        },
        alerts - false_alerts
    );
    println!(
        "delay: mean {:.0} s, worst {:.0} s; 10× spikes: {} of {} within 5 min, mean {:.0} s, worst {:.0} s",
        mean(&delays),
        worst(&delays),
        spike_delays.iter().filter(|&&d| d <= 300.0).count(),
        spike_delays.len(),
        mean(&spike_delays),
        worst(&spike_delays)
    );
    let worst_key = false_by_key.values().copied().max().unwrap_or(0);
    println!(
        "false alerts per key per 30 days: worst key {:.2} ({worst_key} in {trace_days:.0} days), all keys {:.2}",
        worst_key as f64 * 30.0 / trace_days,
        false_alerts as f64 * 30.0 / trace_days / KEYS.len() as f64
    );
    for (label, (w, d)) in &by_label {
        println!("  {label:<16} {d}/{w}");
    }
    Ok(())
}
