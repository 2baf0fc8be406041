//! Charts as SVG drawn on the server: no script, no inline style (colours come from the
//! stylesheet through classes), and every chart says in words what it shows.

use std::collections::HashMap;

use jiff::Timestamp;
use keyward_core::usage::{Granularity, UsageBucket, UsageHeadline, UsageTotals};
use maud::{Markup, html};

/// Width and height of a chart's drawing (scaled to the panel by the stylesheet).
const W: f64 = 640.0;
const H: f64 = 160.0;
/// Room under the plot for the bucket labels.
const AXIS: f64 = 18.0;

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

/// Requests on each of the last `days` UTC days (oldest first) from headline rows.
pub fn daily_requests(rows: &[UsageHeadline], now: Timestamp, days: usize) -> Vec<u64> {
    let today = now.as_millisecond().div_euclid(DAY_MS) * DAY_MS;
    (0..days)
        .rev()
        .map(|back| {
            let start = today - i64::try_from(back).unwrap_or(0) * DAY_MS;
            rows.iter()
                .filter(|r| r.start.as_millisecond().div_euclid(DAY_MS) * DAY_MS == start)
                .map(|r| r.requests)
                .sum()
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

/// Every bucket of `granularity` from the one holding `from` up to `to`, each with its
/// totals (zero where nothing happened), oldest first.
pub fn filled(
    buckets: &[UsageBucket],
    granularity: Granularity,
    from: Timestamp,
    to: Timestamp,
) -> Vec<(Timestamp, UsageTotals)> {
    let mut sums: HashMap<i64, UsageTotals> = HashMap::new();
    for b in buckets {
        *sums
            .entry(granularity.bucket_start(b.start).as_millisecond())
            .or_default() += b.totals;
    }
    let mut out = Vec::new();
    let mut at = granularity.bucket_start(from);
    while at < to && out.len() < 1_000 {
        let totals = sums.remove(&at.as_millisecond()).unwrap_or_default();
        out.push((at, totals));
        at = granularity.next_bucket(at);
    }
    out
}

/// A bucket's label under a chart: `14:00`, `Dec 2`, `Dec 2026` (UTC).
pub fn bucket_label(at: Timestamp, granularity: Granularity) -> String {
    match granularity {
        Granularity::Minute | Granularity::Hour => at.strftime("%H:%M").to_string(),
        Granularity::Day | Granularity::Week => short_day(at),
        Granularity::Month => at.strftime("%b %Y").to_string(),
    }
}

/// The x position and width of bucket `i` of `n`.
fn slot(i: usize, n: usize) -> (f64, f64) {
    let slot = W / n.max(1) as f64;
    let bar = (slot * 0.7).max(1.0);
    (i as f64 * slot + (slot - bar) / 2.0, bar)
}

/// Labels under every few buckets (about eight in all).
fn labels(starts: &[Timestamp], granularity: Granularity) -> Markup {
    let every = starts.len().div_ceil(8).max(1);
    html! {
        @for (i, at) in starts.iter().enumerate() {
            @if i % every == 0 {
                @let (x, bar) = slot(i, starts.len());
                text x=(format!("{:.1}", x + bar / 2.0)) y=(H - 4.0) text-anchor="middle" { (bucket_label(*at, granularity)) }
            }
        }
    }
}

/// Daily requests as bars, successes and failures stacked (see [`requests_bars`]).
pub fn daily_bars(days: &[(Timestamp, UsageTotals)], title: &str) -> Markup {
    requests_bars(days, Granularity::Day, title)
}

/// Requests per bucket as bars, successes and failures stacked, with the bucket labels
/// underneath and the totals in words.
pub fn requests_bars(
    series: &[(Timestamp, UsageTotals)],
    granularity: Granularity,
    title: &str,
) -> Markup {
    let max = series
        .iter()
        .map(|(_, t)| t.requests)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let plot = H - AXIS;
    let total: u64 = series.iter().map(|(_, t)| t.requests).sum();
    let errors: u64 = series.iter().map(|(_, t)| t.errors).sum();
    let words = format!(
        "{title}: {total} requests, {errors} failed, over {} {}s",
        series.len(),
        granularity.as_str()
    );
    let starts: Vec<Timestamp> = series.iter().map(|(at, _)| *at).collect();
    html! {
        figure class="chart" data-chart="requests" {
            svg viewBox={ "0 0 " (W) " " (H) } role="img" aria-label=(words) preserveAspectRatio="none" {
                title { (words) }
                line class="axis" x1="0" y1=(plot) x2=(W) y2=(plot) {}
                @for (i, (_, t)) in series.iter().enumerate() {
                    @let (x, bar) = slot(i, series.len());
                    @let ok = t.requests.saturating_sub(t.errors) as f64 / max * (plot - 4.0);
                    @let bad = t.errors.min(t.requests) as f64 / max * (plot - 4.0);
                    rect class="ok" x=(format!("{x:.1}")) y=(format!("{:.1}", plot - ok)) width=(format!("{bar:.1}")) height=(format!("{ok:.1}")) {}
                    rect class="bad" x=(format!("{x:.1}")) y=(format!("{:.1}", plot - ok - bad)) width=(format!("{bar:.1}")) height=(format!("{bad:.1}")) {}
                }
                (labels(&starts, granularity))
            }
            figcaption class="muted" {
                span class="swatch ok" {} " succeeded " span class="swatch bad" {} " failed"
            }
        }
    }
}

/// One value per bucket as bars of `class` (`cost`, `saved`), with an optional limit
/// drawn as a dashed line (a budget, a quota) and `words` saying what it shows.
pub fn value_bars(
    series: &[(Timestamp, f64)],
    granularity: Granularity,
    class: &str,
    limit: Option<f64>,
    words: &str,
) -> Markup {
    let top = series
        .iter()
        .map(|(_, v)| *v)
        .chain(limit)
        .fold(0.0_f64, f64::max)
        .max(f64::MIN_POSITIVE);
    let plot = H - AXIS;
    let height = |v: f64| (v / top * (plot - 4.0)).max(0.0);
    let starts: Vec<Timestamp> = series.iter().map(|(at, _)| *at).collect();
    html! {
        figure class="chart" data-chart=(class) {
            svg viewBox={ "0 0 " (W) " " (H) } role="img" aria-label=(words) preserveAspectRatio="none" {
                title { (words) }
                line class="axis" x1="0" y1=(plot) x2=(W) y2=(plot) {}
                @for (i, (_, v)) in series.iter().enumerate() {
                    @let (x, bar) = slot(i, series.len());
                    rect class=(class) x=(format!("{x:.1}")) y=(format!("{:.1}", plot - height(*v))) width=(format!("{bar:.1}")) height=(format!("{:.1}", height(*v))) {}
                }
                @if let Some(limit) = limit {
                    line class="limit" x1="0" y1=(format!("{:.1}", plot - height(limit))) x2=(W) y2=(format!("{:.1}", plot - height(limit))) {}
                }
                (labels(&starts, granularity))
            }
        }
    }
}

/// Median and 95th-percentile latency per bucket as two lines (gaps where nothing was
/// called).
pub fn latency_lines(series: &[(Timestamp, UsageTotals)], granularity: Granularity) -> Markup {
    let points: Vec<(Option<u32>, Option<u32>)> = series
        .iter()
        .map(|(_, t)| (t.latency.quantile(0.5), t.latency.quantile(0.95)))
        .collect();
    let top = points
        .iter()
        .flat_map(|(a, b)| [*a, *b])
        .flatten()
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let plot = H - AXIS;
    let line = |quantile: usize| -> String {
        points
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                let value = if quantile == 50 { p.0 } else { p.1 };
                value.map(|v| {
                    let (x, bar) = slot(i, points.len());
                    format!(
                        "{:.1},{:.1}",
                        x + bar / 2.0,
                        plot - f64::from(v) / top * (plot - 4.0)
                    )
                })
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut all = UsageTotals::default();
    for (_, t) in series {
        all += *t;
    }
    let ms = |v: Option<u32>| v.map_or("—".to_owned(), |v| format!("{v} ms"));
    let words = format!(
        "Latency: median {}, 95th percentile {} over the period; the slowest bucket's 95th percentile {} ms",
        ms(all.latency.quantile(0.5)),
        ms(all.latency.quantile(0.95)),
        top as u64
    );
    let starts: Vec<Timestamp> = series.iter().map(|(at, _)| *at).collect();
    html! {
        figure class="chart" data-chart="latency" {
            svg viewBox={ "0 0 " (W) " " (H) } role="img" aria-label=(words) preserveAspectRatio="none" {
                title { (words) }
                line class="axis" x1="0" y1=(plot) x2=(W) y2=(plot) {}
                polyline class="p95" points=(line(95)) {}
                polyline class="p50" points=(line(50)) {}
                (labels(&starts, granularity))
            }
            figcaption class="muted" {
                span class="swatch p50" {} " median " span class="swatch p95" {} " 95th percentile"
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
