//! Charts as SVG drawn on the server: no script, no inline style (colours come from the
//! stylesheet through classes), and every chart says in words what it shows.

use jiff::Timestamp;
use keyward_core::usage::{UsageBucket, UsageTotals};
use maud::{Markup, html};

const DAY_MS: i64 = 86_400_000;

/// The last `days` whole UTC days up to and including today, each with its totals (zero
/// where nothing happened), oldest first.
pub fn daily(
    buckets: &[UsageBucket],
    now: Timestamp,
    days: usize,
) -> Vec<(Timestamp, UsageTotals)> {
    let today = now.as_millisecond().div_euclid(DAY_MS) * DAY_MS;
    (0..days)
        .rev()
        .map(|back| {
            let start = today - i64::try_from(back).unwrap_or(0) * DAY_MS;
            let totals = buckets
                .iter()
                .filter(|b| b.start.as_millisecond().div_euclid(DAY_MS) * DAY_MS == start)
                .fold(UsageTotals::default(), |mut sum, b| {
                    sum += b.totals;
                    sum
                });
            (Timestamp::from_millisecond(start).unwrap_or(now), totals)
        })
        .collect()
}

/// A small line of daily requests for a table cell.
pub fn sparkline(values: &[u64], label: &str) -> Markup {
    const W: f64 = 84.0;
    const H: f64 = 22.0;
    let max = values.iter().copied().max().unwrap_or(0).max(1) as f64;
    let step = if values.len() > 1 {
        W / (values.len() - 1) as f64
    } else {
        0.0
    };
    let points: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let x = i as f64 * step;
            let y = H - 2.0 - (*v as f64 / max) * (H - 4.0);
            format!("{x:.1},{y:.1}")
        })
        .collect();
    let total: u64 = values.iter().sum();
    let words = format!("{label}: {total} requests in {} days", values.len());
    html! {
        svg class="spark" viewBox={ "0 0 " (W) " " (H) } width="84" height="22" role="img"
            aria-label=(words) data-total=(total) {
            title { (words) }
            polyline points=(points.join(" ")) {}
        }
    }
}

/// Daily requests as bars, successes and failures stacked, with the day labels underneath
/// and the numbers in a table beside it for reading (and for screen readers).
pub fn daily_bars(days: &[(Timestamp, UsageTotals)], title: &str) -> Markup {
    const W: f64 = 640.0;
    const H: f64 = 160.0;
    const AXIS: f64 = 18.0;
    let max = days
        .iter()
        .map(|(_, t)| t.requests)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let slot = W / days.len().max(1) as f64;
    let bar = (slot * 0.7).max(1.0);
    let plot = H - AXIS;
    let total: u64 = days.iter().map(|(_, t)| t.requests).sum();
    let errors: u64 = days.iter().map(|(_, t)| t.errors).sum();
    let words = format!(
        "{title}: {total} requests, {errors} failed, over {} days",
        days.len()
    );
    let label_every = (days.len() / 7).max(1);
    html! {
        figure class="chart" {
            svg viewBox={ "0 0 " (W) " " (H) } role="img" aria-label=(words) preserveAspectRatio="none" {
                title { (words) }
                line class="axis" x1="0" y1=(plot) x2=(W) y2=(plot) {}
                @for (i, (day, t)) in days.iter().enumerate() {
                    @let x = i as f64 * slot + (slot - bar) / 2.0;
                    @let ok = t.requests.saturating_sub(t.errors) as f64 / max * (plot - 4.0);
                    @let bad = t.errors.min(t.requests) as f64 / max * (plot - 4.0);
                    rect class="ok" x=(format!("{x:.1}")) y=(format!("{:.1}", plot - ok)) width=(format!("{bar:.1}")) height=(format!("{ok:.1}")) {}
                    rect class="bad" x=(format!("{x:.1}")) y=(format!("{:.1}", plot - ok - bad)) width=(format!("{bar:.1}")) height=(format!("{bad:.1}")) {}
                    @if i % label_every == 0 {
                        text x=(format!("{:.1}", x + bar / 2.0)) y=(H - 4.0) text-anchor="middle" { (short_day(*day)) }
                    }
                }
            }
            figcaption class="muted" {
                span class="swatch ok" {} " succeeded " span class="swatch bad" {} " failed"
            }
        }
    }
}

/// `Dec 2`.
pub fn short_day(day: Timestamp) -> String {
    day.strftime("%b %-d").to_string()
}

/// Nano-dollars as `$1.2345`.
pub fn usd(nanos: u64) -> String {
    let dollars = nanos as f64 / 1e9;
    if dollars >= 100.0 {
        format!("${dollars:.2}")
    } else {
        format!("${dollars:.4}")
    }
}

/// A quota bar: a native `<meter>` (accessible, styled by the stylesheet).
pub fn quota_meter(share: Option<f64>) -> Markup {
    match share {
        None => html! { span class="muted" { "no limit" } },
        Some(share) => {
            let percent = (share * 100.0).round();
            html! {
                meter min="0" max="1" low="0.7" high="0.9" optimum="0" value=(format!("{share:.3}"))
                    title={ (percent) "% of the tightest quota used" } { (percent) "%" }
                " " span class="num muted" { (percent) "%" }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daily_fills_missing_days_and_sums_hours() {
        let now: Timestamp = "2026-12-02T15:00:00Z".parse().unwrap();
        let bucket = |at: &str, requests| UsageBucket {
            start: at.parse().unwrap(),
            totals: UsageTotals {
                requests,
                ..UsageTotals::default()
            },
        };
        let days = daily(
            &[
                bucket("2026-11-30T03:00:00Z", 2),
                bucket("2026-11-30T09:00:00Z", 3),
                bucket("2026-12-02T00:00:00Z", 7),
            ],
            now,
            3,
        );
        let counts: Vec<u64> = days.iter().map(|(_, t)| t.requests).collect();
        assert_eq!(counts, [5, 0, 7]);
        assert_eq!(short_day(days[0].0), "Nov 30");
    }

    #[test]
    fn a_sparkline_says_what_it_shows() {
        let svg = sparkline(&[0, 1, 4], "main").into_string();
        assert!(svg.contains("main: 5 requests in 3 days"), "{svg}");
        assert!(!svg.contains("style"), "{svg}");
    }
}
