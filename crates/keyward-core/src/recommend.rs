//! Usage optimisation: what a month of usage says could be cheaper or safer — keys nobody
//! uses, plans too small or too large for their use, cacheable calls the provider answered,
//! a cheaper model of the same provider at the same token counts, one value in several
//! environments, calls without a price. Each with an estimated monthly saving or a risk.
//! Pure: the use case gathers the month's sums and hands them in.

use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

use crate::id::KeyId;
use crate::key::Key;
use crate::service::LimitUnit;
use crate::usage::{PricingTable, TokenUsage, UsageTotals};

/// The period the recommendations look at (and a "month" of savings).
pub const LOOKBACK_DAYS: i64 = 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecommendationKind {
    UnusedKey,
    PlanTooSmall,
    PlanTooLarge,
    Uncached,
    CheaperModel,
    SharedValue,
    Unpriced,
}

string_enum!(RecommendationKind {
    UnusedKey = "unused_key", PlanTooSmall = "plan_too_small", PlanTooLarge = "plan_too_large",
    Uncached = "uncached", CheaperModel = "cheaper_model", SharedValue = "shared_value",
    Unpriced = "unpriced"
}, "invalid_recommendation", "recommendation kind");

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Risk {
    Low,
    Medium,
    High,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recommendation {
    pub kind: RecommendationKind,
    /// The key it is about, if one.
    #[serde(skip)]
    pub key: Option<KeyId>,
    /// The key's alias, or the model.
    pub about: String,
    pub detail: String,
    /// Dollars a month it would save (an estimate; "up to" where said).
    pub monthly_saving_usd: Option<f64>,
    pub risk: Option<Risk>,
}

/// A key and its last [`LOOKBACK_DAYS`] of use.
#[derive(Debug, Clone)]
pub struct KeyMonth<'a> {
    pub key: &'a Key,
    pub month: UsageTotals,
    /// Per UTC day, oldest first (requests, credits).
    pub days: Vec<(u64, u64)>,
    /// Other environments that hold the same value (`alias (environment)`).
    pub same_value_elsewhere: Vec<String>,
}

/// A model's last [`LOOKBACK_DAYS`] of use.
#[derive(Debug, Clone)]
pub struct ModelMonth {
    pub service: String,
    pub model: String,
    pub month: UsageTotals,
}

fn usd(nanos: f64) -> f64 {
    (nanos / 1e9 * 100.0).round() / 100.0
}

/// Everything worth saying, the riskiest and the biggest savings first.
pub fn recommend(
    keys: &[KeyMonth<'_>],
    models: &[ModelMonth],
    pricing: &PricingTable,
    now: Timestamp,
) -> Vec<Recommendation> {
    let mut out = Vec::new();
    let lookback = now
        .checked_sub(SignedDuration::from_hours(24 * LOOKBACK_DAYS))
        .unwrap_or(now);
    for k in keys {
        let key = k.key;
        let about = key.alias.clone();
        let mut say = |kind, detail: String, saving: Option<f64>, risk: Option<Risk>| {
            out.push(Recommendation {
                kind,
                key: Some(key.id.clone()),
                about: about.clone(),
                detail,
                monthly_saving_usd: saving,
                risk,
            });
        };
        let idle_since = key.last_used_at.unwrap_or(key.created_at);
        if key.enabled && idle_since < lookback {
            let days = now.duration_since(idle_since).as_hours() / 24;
            say(
                RecommendationKind::UnusedKey,
                format!(
                    "{} for {days} days: disable or delete it — an idle credential is exposure without use",
                    if key.last_used_at.is_some() {
                        "not used"
                    } else {
                        "never used, added"
                    }
                ),
                None,
                Some(Risk::Medium),
            );
        }
        for limit in &key.limits {
            let amount = |(requests, credits): &(u64, u64)| match limit.unit {
                LimitUnit::Credits => *credits,
                _ => *requests,
            };
            if !matches!(
                limit.unit,
                LimitUnit::Requests | LimitUnit::Credits | LimitUnit::Symbols
            ) || limit.max == 0
            {
                continue;
            }
            let unit = match limit.unit {
                LimitUnit::Credits => "credits",
                _ => "requests",
            };
            let max = limit.max as f64;
            if limit.window_seconds == 86_400 {
                let near = k
                    .days
                    .iter()
                    .filter(|d| amount(d) as f64 >= 0.9 * max)
                    .count();
                let peak = k.days.iter().map(amount).max().unwrap_or(0) as f64;
                if near >= 3 {
                    say(
                        RecommendationKind::PlanTooSmall,
                        format!(
                            "reached 90 % of its {} {unit} a day on {near} of the last {LOOKBACK_DAYS} days: a bigger plan (or a second key in the pool) keeps calls from being refused",
                            limit.max
                        ),
                        None,
                        Some(Risk::High),
                    );
                } else if peak > 0.0 && peak < 0.2 * max {
                    say(
                        RecommendationKind::PlanTooLarge,
                        format!(
                            "its busiest day used {:.0} % of its {} {unit} a day: a smaller plan would do",
                            100.0 * peak / max,
                            limit.max
                        ),
                        None,
                        None,
                    );
                }
            } else if limit.window_seconds >= 28 * 86_400 {
                let used: u64 = k.days.iter().map(amount).sum();
                let share = used as f64 / max;
                if share >= 0.9 {
                    say(
                        RecommendationKind::PlanTooSmall,
                        format!(
                            "{used} of its {} {unit} a month used in the last {LOOKBACK_DAYS} days: a bigger plan keeps calls from being refused",
                            limit.max
                        ),
                        None,
                        Some(Risk::High),
                    );
                } else if used > 0 && share < 0.2 {
                    say(
                        RecommendationKind::PlanTooLarge,
                        format!(
                            "{:.0} % of its {} {unit} a month used in the last {LOOKBACK_DAYS} days: a smaller plan would do",
                            100.0 * share,
                            limit.max
                        ),
                        None,
                        None,
                    );
                }
            }
        }
        let m = &k.month;
        if m.cache_misses >= 100 && m.requests > 0 {
            let per_call = m.cost_nanos as f64 / m.requests as f64;
            let credits = m.cache_misses * m.credits / m.requests.max(1);
            say(
                RecommendationKind::Uncached,
                format!(
                    "{} cacheable calls went to the provider ({} were answered from the cache): a longer freshness for these endpoints would spare up to {credits} credits a month",
                    m.cache_misses, m.cache_hits
                ),
                (per_call > 0.0).then(|| usd(per_call * m.cache_misses as f64)),
                None,
            );
        }
        if !k.same_value_elsewhere.is_empty() {
            say(
                RecommendationKind::SharedValue,
                format!(
                    "the same value is also used as {}: a leak in one environment is a leak in all; give each its own key",
                    k.same_value_elsewhere.join(", ")
                ),
                None,
                Some(Risk::High),
            );
        }
        if m.unpriced > 0 {
            say(
                RecommendationKind::Unpriced,
                format!(
                    "{} calls to a model or endpoint without a listed price were charged at the service's fallback: add its price so costs and budgets are exact",
                    m.unpriced
                ),
                None,
                Some(Risk::Low),
            );
        }
    }
    for m in models {
        if let Some(r) = cheaper_model(m, pricing) {
            out.push(r);
        }
    }
    out.sort_by(|a, b| {
        b.risk.cmp(&a.risk).then(
            b.monthly_saving_usd
                .unwrap_or(0.0)
                .total_cmp(&a.monthly_saving_usd.unwrap_or(0.0)),
        )
    });
    out
}

/// The next cheaper model of the same provider — the dearest of those cheaper at these
/// token counts, the closest step down — and what the month would have cost on it.
fn cheaper_model(m: &ModelMonth, pricing: &PricingTable) -> Option<Recommendation> {
    let current = pricing.listed(&m.service, &m.model)?;
    let usage = TokenUsage {
        input: m.month.input_tokens,
        cached_input: m.month.cached_tokens,
        cache_write: 0,
        output: m.month.output_tokens,
    };
    let now_cost = current.cost_nanos(&usage) as f64;
    let (_, prices) = pricing.services().find(|(s, _)| **s == m.service)?;
    let (alternative, cost) = prices
        .iter()
        .filter(|p| p.model != m.model && !p.model.contains('*'))
        .map(|p| (p, p.cost_nanos(&usage) as f64))
        .filter(|(_, cost)| *cost < now_cost)
        .max_by(|a, b| a.1.total_cmp(&b.1))?;
    let saving = usd(now_cost - cost);
    (saving >= 1.0).then(|| Recommendation {
        kind: RecommendationKind::CheaperModel,
        key: None,
        about: format!("{} {}", m.service, m.model),
        detail: format!(
            "{} calls with {} input and {} output tokens cost ${:.2}; {} would have cost ${:.2} — if it serves these calls well enough",
            m.month.requests,
            m.month.input_tokens + m.month.cached_tokens,
            m.month.output_tokens,
            now_cost / 1e9,
            alternative.model,
            cost / 1e9
        ),
        monthly_saving_usd: Some(saving),
        risk: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::Limit;

    fn ts(day: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + day * 86_400).expect("ts")
    }

    fn month(key: &Key, days: Vec<(u64, u64)>) -> KeyMonth<'_> {
        let requests = days.iter().map(|d| d.0).sum();
        KeyMonth {
            key,
            month: UsageTotals {
                requests,
                ..UsageTotals::default()
            },
            days,
            same_value_elsewhere: vec![],
        }
    }

    fn kinds(r: &[Recommendation]) -> Vec<RecommendationKind> {
        r.iter().map(|r| r.kind).collect()
    }

    #[test]
    fn idle_keys_and_plans_that_do_not_fit_are_named() {
        let now = ts(100);
        let idle = crate::key::Key {
            alias: "old".into(),
            last_used_at: Some(ts(40)),
            ..crate::key::sample(ts(0))
        };
        let daily = |max| Limit {
            max,
            unit: LimitUnit::Requests,
            window_seconds: 86_400,
        };
        let tight = crate::key::Key {
            alias: "tight".into(),
            last_used_at: Some(ts(99)),
            limits: vec![daily(100)],
            ..crate::key::sample(ts(0))
        };
        let roomy = crate::key::Key {
            alias: "roomy".into(),
            last_used_at: Some(ts(99)),
            limits: vec![daily(10_000)],
            ..crate::key::sample(ts(0))
        };
        let busy: Vec<(u64, u64)> = (0..30)
            .map(|d| (if d % 7 == 0 { 95 } else { 40 }, 0))
            .collect();
        let quiet: Vec<(u64, u64)> = (0..30).map(|_| (500, 0)).collect();
        let found = recommend(
            &[
                month(&idle, vec![(0, 0); 30]),
                month(&tight, busy),
                month(&roomy, quiet),
            ],
            &[],
            &PricingTable::builtin().expect("prices"),
            now,
        );
        assert_eq!(
            kinds(&found),
            [
                RecommendationKind::PlanTooSmall,
                RecommendationKind::UnusedKey,
                RecommendationKind::PlanTooLarge
            ],
            "{found:#?}"
        );
        assert!(
            found[0].detail.contains("on 5 of the last 30 days"),
            "{}",
            found[0].detail
        );
        assert!(
            found[1].detail.starts_with("not used for 60 days"),
            "{}",
            found[1].detail
        );
        assert!(found[2].detail.contains("5 %"), "{}", found[2].detail);
    }

    #[test]
    fn a_cheaper_model_is_priced_at_the_same_token_counts() {
        let pricing = PricingTable::builtin().expect("prices");
        let m = ModelMonth {
            service: "openai".into(),
            model: "gpt-5.5".into(),
            month: UsageTotals {
                requests: 10_000,
                input_tokens: 20_000_000,
                output_tokens: 2_000_000,
                ..UsageTotals::default()
            },
        };
        let found = recommend(&[], &[m], &pricing, ts(0));
        assert_eq!(kinds(&found), [RecommendationKind::CheaperModel]);
        // gpt-5.5: 20 M × $5 + 2 M × $30 = $160; gpt-5.4: 20 M × $2.50 + 2 M × $15 = $80.
        assert_eq!(found[0].monthly_saving_usd, Some(80.0));
        assert!(
            found[0].detail.contains("gpt-5.4 would have cost $80.00"),
            "{}",
            found[0].detail
        );
    }
}
