//! Forecasts: for every key with a calendar quota (an hour or longer) or a budget, and
//! every app token with a budget, what is used of it in its current window — from the
//! shared hourly rollups, so every instance says the same — and when it runs out at the
//! current pace (`keyward_core::forecast`).

use std::collections::HashMap;
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use keyward_core::Error;
use keyward_core::access::Permission;
use keyward_core::alert::AlertSubject;
use keyward_core::forecast::{Pace, project};
use keyward_core::market::MarketCalendar;
use keyward_core::service::LimitUnit;
use keyward_core::usage::{
    CALENDAR_LIMIT_MIN_SECONDS, Granularity, UsageQuery, UsageTotals, budget_window, limit_window,
};

use crate::actor::Actor;
pub use crate::allowance::{Allowance, AllowanceForecast};
use crate::app::App;
use crate::notifications::about::About;
use keyward_core::notification::NotificationKind;

/// How long a computed set of forecasts is shown before it is computed again.
pub const FORECASTS_FRESH: SignedDuration = SignedDuration::from_secs(30);

/// An allowance to forecast, before its subject's sums are read.
struct Wanted {
    subject: AlertSubject,
    name: String,
    allowance: Allowance,
    unit: Option<LimitUnit>,
    limit: f64,
    window: keyward_core::usage::Window,
}

fn amount(unit: Option<LimitUnit>, t: &UsageTotals) -> f64 {
    match unit {
        Some(unit) => t.spent(unit) as f64,
        // Budgets: dollars.
        None => t.cost_nanos as f64 / 1e9,
    }
}

impl App {
    /// Forecasts for the keys (and, with app-token reading, the tokens) the actor may read,
    /// soonest to run out first.
    pub async fn forecasts(&self, actor: &Actor) -> Result<Vec<AllowanceForecast>, Error> {
        let all = self.all_forecasts().await?;
        let tokens =
            actor.access.reach(Permission::AppTokensRead) != keyward_core::access::Reach::Nowhere;
        let keys: Option<std::collections::HashSet<keyward_core::id::KeyId>> =
            if actor.access.reach(Permission::KeysRead).is_everywhere() {
                None
            } else {
                Some(self.readable_key_ids(actor).await?)
            };
        Ok(all
            .iter()
            .filter(|f| match &f.subject {
                AlertSubject::Key(id) => keys.as_ref().is_none_or(|k| k.contains(id)),
                AlertSubject::Token(_) => tokens,
            })
            .cloned()
            .collect())
    }

    /// Forecasts for one key's quotas and budget.
    pub async fn key_forecasts(
        &self,
        actor: &Actor,
        key: &keyward_core::id::KeyId,
    ) -> Result<Vec<AllowanceForecast>, Error> {
        self.key(actor, key).await?;
        let all = self.all_forecasts().await?;
        Ok(all
            .iter()
            .filter(|f| f.subject == AlertSubject::Key(key.clone()))
            .cloned()
            .collect())
    }

    /// Every allowance's forecast, computed at most every [`FORECASTS_FRESH`] per instance:
    /// a forecast moves with the hour's sums, and pages that show them (the dashboard
    /// refreshes itself) would otherwise read every subject's month of hourly rollups on
    /// each view.
    async fn all_forecasts(&self) -> Result<Arc<Vec<AllowanceForecast>>, Error> {
        let now = self.now();
        let mut cached = self.forecasts.lock().await;
        if let Some((at, all)) = cached.as_ref()
            && now >= *at
            && now.duration_since(*at) < FORECASTS_FRESH
        {
            return Ok(all.clone());
        }
        let all = Arc::new(self.compute_forecasts().await?);
        *cached = Some((now, all.clone()));
        Ok(all)
    }

    async fn readable_key_ids(
        &self,
        actor: &Actor,
    ) -> Result<std::collections::HashSet<keyward_core::id::KeyId>, Error> {
        Ok(self
            .all_keys(actor)
            .await?
            .into_iter()
            .map(|k| k.id)
            .collect())
    }

    async fn compute_forecasts(&self) -> Result<Vec<AllowanceForecast>, Error> {
        let actor = &Actor::system("forecaster");
        let now = self.now();
        let catalog = self.catalog().await?;
        // First what there is to forecast: only those subjects' sums are read.
        let mut wanted: Vec<Wanted> = Vec::new();
        for key in &self.all_keys(actor).await? {
            let subject = AlertSubject::Key(key.id.clone());
            let Some(service) = catalog.get(&key.service_id) else {
                continue;
            };
            for limit in key
                .limits
                .iter()
                .filter(|l| l.window_seconds >= CALENDAR_LIMIT_MIN_SECONDS)
            {
                wanted.push(Wanted {
                    subject: subject.clone(),
                    name: key.alias.clone(),
                    allowance: Allowance::Quota {
                        unit: limit.unit,
                        window_seconds: limit.window_seconds,
                    },
                    unit: Some(limit.unit),
                    limit: limit.max as f64,
                    window: limit_window(limit, &service.quota_calendar, now),
                });
            }
            if let Some(budget) = &key.budget {
                wanted.push(Wanted {
                    subject: subject.clone(),
                    name: key.alias.clone(),
                    allowance: Allowance::Budget {
                        period: budget.period,
                    },
                    unit: None,
                    limit: budget.limit_micros as f64 / 1e6,
                    window: budget_window(budget, now),
                });
            }
        }
        // Every token's budget (computed for the whole vault; readers are filtered after).
        let tokens = self.app_tokens(actor).await?;
        for token in tokens.iter().filter(|t| t.revoked_at.is_none()) {
            if let Some(budget) = &token.budget {
                wanted.push(Wanted {
                    subject: AlertSubject::Token(token.id.clone()),
                    name: token.name.clone(),
                    allowance: Allowance::Budget {
                        period: budget.period,
                    },
                    unit: None,
                    limit: budget.limit_micros as f64 / 1e6,
                    window: budget_window(budget, now),
                });
            }
        }
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let calendar = MarketCalendar::nyse()?;
        // Each subject's hourly sums back to its earliest window's start and the pace's
        // fortnight, read once per subject.
        let fortnight = now
            .checked_sub(SignedDuration::from_hours(24 * 15))
            .unwrap_or(now);
        let mut since_of: HashMap<AlertSubject, Timestamp> = HashMap::new();
        for w in &wanted {
            let since = since_of.entry(w.subject.clone()).or_insert(fortnight);
            *since = (*since).min(w.window.start);
        }
        let mut hours: HashMap<AlertSubject, Vec<(Timestamp, UsageTotals)>> = HashMap::new();
        for w in &wanted {
            if hours.contains_key(&w.subject) {
                continue;
            }
            let (key, token) = match &w.subject {
                AlertSubject::Key(id) => (Some(id.clone()), None),
                AlertSubject::Token(id) => (None, Some(id.clone())),
            };
            let since = since_of.get(&w.subject).copied().unwrap_or(fortnight);
            let query = UsageQuery::new(since, now, Granularity::Hour, key, token, None)?;
            let series = self
                .store
                .usage(&query)
                .await?
                .into_iter()
                .map(|b| (b.start, b.totals))
                .collect();
            hours.insert(w.subject.clone(), series);
        }
        let mut out: Vec<AllowanceForecast> = wanted
            .into_iter()
            .map(|w| {
                let series: Vec<(Timestamp, f64)> = hours
                    .get(&w.subject)
                    .map(|h| h.iter().map(|(at, t)| (*at, amount(w.unit, t))).collect())
                    .unwrap_or_default();
                let used: f64 = series
                    .iter()
                    .filter(|(at, _)| *at >= w.window.start && *at < w.window.end)
                    .map(|(_, a)| a)
                    .sum();
                let pace = Pace::learn(&calendar, &series, now);
                let factor = pace.factor(&calendar, &series, now);
                AllowanceForecast {
                    forecast: project(&calendar, &pace, factor, used, w.limit, now, w.window.end),
                    subject: w.subject,
                    name: w.name,
                    allowance: w.allowance,
                    window_start: w.window.start,
                }
            })
            .collect();
        out.sort_by_key(|f| f.forecast.runs_out_at.unwrap_or(Timestamp::MAX));
        Ok(out)
    }
}

impl App {
    /// Announces every quota and budget that runs out within the lead time at the current
    /// pace — once per allowance and window (the notification's dedupe key), on whichever
    /// instance gets there first. Returns how many were due.
    pub async fn announce_forecasts(&self) -> Result<usize, Error> {
        if self.forecast_lead.is_zero() {
            return Ok(0);
        }
        let now = self.now();
        let lead = SignedDuration::try_from(self.forecast_lead).unwrap_or(SignedDuration::MAX);
        let horizon = now.checked_add(lead).unwrap_or(Timestamp::MAX);
        let catalog = self.catalog().await?;
        let mut due = 0;
        for f in self
            .forecasts(&Actor::system("forecaster"))
            .await?
            .into_iter()
            .filter(|f| f.forecast.runs_out_at.is_some_and(|at| at <= horizon))
        {
            due += 1;
            let (kind, what) = match &f.allowance {
                Allowance::Quota {
                    unit,
                    window_seconds,
                } => (
                    NotificationKind::QuotaForecast,
                    serde_json::json!({"unit": unit, "window_seconds": window_seconds}),
                ),
                Allowance::Budget { period } => (
                    NotificationKind::BudgetForecast,
                    serde_json::json!({"period": period}),
                ),
            };
            let key = match &f.subject {
                AlertSubject::Key(id) => self.store.key(id).await?,
                AlertSubject::Token(_) => None,
            };
            let category = key
                .as_ref()
                .and_then(|k| catalog.get(&k.service_id))
                .map(|s| s.category.clone());
            let about = match &key {
                Some(k) => About::key(category.as_deref(), &k.environment),
                None => About::default(),
            };
            let data = serde_json::json!({
                "subject": {"kind": f.subject.kind(), "id": f.subject.id(), "name": f.name},
                "allowance": what,
                "used": f.forecast.used,
                "limit": f.forecast.limit,
                "runs_out_at": f.forecast.runs_out_at,
                "window_start": f.window_start,
                "window_end": f.forecast.window_end,
                "pace": f.forecast.pace,
            });
            self.notify(
                kind,
                about,
                format!(
                    "{}:{}:{}:{}",
                    kind.as_str(),
                    f.subject.target(),
                    what,
                    f.window_start
                ),
                data,
            )
            .await;
        }
        Ok(due)
    }
}
