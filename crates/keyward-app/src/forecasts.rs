//! Forecasts: for every key with a calendar quota (an hour or longer) or a budget, and
//! every app token with a budget, what is used of it in its current window — from the
//! shared hourly rollups, so every instance says the same — and when it runs out at the
//! current pace (`keyward_core::forecast`).

use std::collections::HashMap;

use jiff::{SignedDuration, Timestamp};
use keyward_core::Error;
use keyward_core::access::Permission;
use keyward_core::alert::AlertSubject;
use keyward_core::forecast::{Forecast, Pace, project};
use keyward_core::key::{KeyFilter, PageRequest};
use keyward_core::market::MarketCalendar;
use keyward_core::service::LimitUnit;
use keyward_core::usage::{
    CALENDAR_LIMIT_MIN_SECONDS, Granularity, UsageGrouping, UsageQuery, UsageTotals, budget_window,
    limit_window,
};
use serde::Serialize;

use crate::actor::Actor;
use crate::app::App;

/// What runs out: a quota in a unit, or a budget in dollars.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Allowance {
    Quota {
        unit: LimitUnit,
        window_seconds: u64,
    },
    Budget {
        period: keyward_core::budget::BudgetPeriod,
    },
}

/// One allowance of one key or token, and its forecast.
#[derive(Debug, Clone, PartialEq)]
pub struct AllowanceForecast {
    pub subject: AlertSubject,
    /// The key's alias or the token's name.
    pub name: String,
    pub allowance: Allowance,
    pub window_start: Timestamp,
    pub forecast: Forecast,
}

impl AllowanceForecast {
    /// Share of the allowance used (0–1+).
    pub fn used_share(&self) -> f64 {
        if self.forecast.limit > 0.0 {
            self.forecast.used / self.forecast.limit
        } else {
            0.0
        }
    }
}

fn amount(unit: Option<LimitUnit>, t: &UsageTotals) -> f64 {
    match unit {
        Some(LimitUnit::Requests | LimitUnit::Symbols) => t.requests as f64,
        Some(LimitUnit::Credits) => t.credits as f64,
        Some(LimitUnit::Tokens) => (t.input_tokens + t.cached_tokens + t.output_tokens) as f64,
        // Budgets: dollars.
        None => t.cost_nanos as f64 / 1e9,
    }
}

impl App {
    /// Forecasts for the keys (and, with app-token reading, the tokens) the actor may read,
    /// soonest to run out first.
    pub async fn forecasts(&self, actor: &Actor) -> Result<Vec<AllowanceForecast>, Error> {
        let now = self.now();
        let calendar = MarketCalendar::nyse()?;
        let catalog = self.catalog().await?;
        // Hourly sums per key and per token, back to the longest window's start (a month)
        // and the pace's fortnight.
        let since = now
            .checked_sub(SignedDuration::from_hours(24 * 32))
            .unwrap_or(now);
        let query = UsageQuery::new(since, now, Granularity::Hour, None, None, None)?;
        let mut hours: HashMap<AlertSubject, Vec<(Timestamp, UsageTotals)>> = HashMap::new();
        for by in [UsageGrouping::Key, UsageGrouping::Token] {
            for (id, bucket) in self.store.usage_grouped(&query, by).await? {
                let subject = match by {
                    UsageGrouping::Key => id.parse().map(AlertSubject::Key),
                    _ => id.parse().map(AlertSubject::Token),
                };
                if let Ok(subject) = subject {
                    hours
                        .entry(subject)
                        .or_default()
                        .push((bucket.start, bucket.totals));
                }
            }
        }
        let forecast = |subject: &AlertSubject,
                        name: &str,
                        allowance: Allowance,
                        unit: Option<LimitUnit>,
                        limit: f64,
                        window: keyward_core::usage::Window| {
            let series: Vec<(Timestamp, f64)> = hours
                .get(subject)
                .map(|h| h.iter().map(|(at, t)| (*at, amount(unit, t))).collect())
                .unwrap_or_default();
            let used: f64 = series
                .iter()
                .filter(|(at, _)| *at >= window.start && *at < window.end)
                .map(|(_, a)| a)
                .sum();
            let pace = Pace::learn(&calendar, &series, now);
            let factor = pace.factor(&calendar, &series, now);
            AllowanceForecast {
                subject: subject.clone(),
                name: name.to_owned(),
                allowance,
                window_start: window.start,
                forecast: project(&calendar, &pace, factor, used, limit, now, window.end),
            }
        };
        let mut out = Vec::new();
        let keys = self
            .list_keys(
                actor,
                KeyFilter::default(),
                None,
                PageRequest::new(None, Some(PageRequest::MAX_LIMIT))?,
            )
            .await?;
        let mut page = keys;
        loop {
            for key in &page.items {
                let subject = AlertSubject::Key(key.id.clone());
                let Some(service) = catalog.get(&key.service_id) else {
                    continue;
                };
                for limit in key
                    .limits
                    .iter()
                    .filter(|l| l.window_seconds >= CALENDAR_LIMIT_MIN_SECONDS)
                {
                    let window = limit_window(limit, &service.quota_calendar, now);
                    out.push(forecast(
                        &subject,
                        &key.alias,
                        Allowance::Quota {
                            unit: limit.unit,
                            window_seconds: limit.window_seconds,
                        },
                        Some(limit.unit),
                        limit.max as f64,
                        window,
                    ));
                }
                if let Some(budget) = &key.budget {
                    out.push(forecast(
                        &subject,
                        &key.alias,
                        Allowance::Budget {
                            period: budget.period,
                        },
                        None,
                        budget.limit_micros as f64 / 1e6,
                        budget_window(budget, now),
                    ));
                }
            }
            let Some(next) = page.next.clone() else { break };
            page = self
                .list_keys(
                    actor,
                    KeyFilter::default(),
                    None,
                    PageRequest::new(Some(next), Some(PageRequest::MAX_LIMIT))?,
                )
                .await?;
        }
        // Tokens the actor may read (none without app-token reading).
        if actor.access.reach(Permission::AppTokensRead) != keyward_core::access::Reach::Nowhere {
            let tokens = self.app_tokens(actor).await?;
            for token in tokens.iter().filter(|t| t.revoked_at.is_none()) {
                if let Some(budget) = &token.budget {
                    out.push(forecast(
                        &AlertSubject::Token(token.id.clone()),
                        &token.name,
                        Allowance::Budget {
                            period: budget.period,
                        },
                        None,
                        budget.limit_micros as f64 / 1e6,
                        budget_window(budget, now),
                    ));
                }
            }
        }
        out.sort_by_key(|f| f.forecast.runs_out_at.unwrap_or(Timestamp::MAX));
        Ok(out)
    }
}
