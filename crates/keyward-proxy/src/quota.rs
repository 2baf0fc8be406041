//! Per-key provider limits and money budgets, counted in memory on the request path.
//!
//! - Limits shorter than an hour are rates: a leaky bucket that holds `max` units and drains
//!   at `max / window` (the same shape as GCRA). Requests and credits are taken before the
//!   call; LLM tokens are only known afterwards, so a token limit admits a call while the
//!   bucket has room and is charged with the real count when the answer is read.
//! - Longer limits count in calendar windows (`limit_window`: e.g. the day from midnight
//!   US/Eastern) and budgets in their period. These survive a restart: at start-up the
//!   counters are seeded from the store's hourly rollups ([`Meters::seed`]).
//! - Budgets reserve a call's maximum cost before it is sent and settle the real cost after
//!   (or release the reservation if it failed). Check-and-reserve happens under one lock, so
//!   concurrent calls can never together commit more than the budget: a call is admitted
//!   only if spent + reserved + its own maximum fits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use keyward_core::Error;
use keyward_core::app_token::Budget;
use keyward_core::id::KeyId;
use keyward_core::service::{Limit, LimitUnit, QuotaCalendar};
use keyward_core::usage::{
    CALENDAR_LIMIT_MIN_SECONDS, HourlyUse, Subject, Window, budget_window, limit_window, until,
    utc_day,
};

/// What one call spends against a key's limits before it is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Spend {
    pub requests: u64,
    pub credits: u64,
}

#[derive(Debug)]
enum Counter {
    /// Units in the bucket at `at`; drains continuously.
    Rate { level: f64, at: Timestamp },
    /// Units used in `window`.
    Calendar { window: Window, used: u64 },
}

#[derive(Debug, Default)]
struct KeyCounters {
    limits: Vec<Limit>,
    counters: Vec<Counter>,
    /// Requests in the current UTC day: what `least_used` compares.
    today: Option<(Timestamp, u64)>,
}

#[derive(Debug)]
struct Account {
    window: Window,
    spent: u64,
    reserved: u64,
}

/// Consumption restored from the store, by subject: `(hour, requests, credits, tokens, cost)`.
type History = HashMap<Subject, Vec<HourlyUse>>;

#[derive(Debug, Default)]
struct State {
    keys: HashMap<KeyId, KeyCounters>,
    accounts: HashMap<Subject, Account>,
    history: History,
}

/// Limit and budget counters for every key and token this instance has served.
#[derive(Debug, Default)]
pub struct Meters {
    state: Mutex<State>,
}

fn units(limit: &Limit, spend: Spend) -> u64 {
    match limit.unit {
        LimitUnit::Requests | LimitUnit::Symbols => spend.requests,
        LimitUnit::Credits => spend.credits,
        LimitUnit::Tokens => 0,
    }
}

fn seconds(limit: &Limit) -> f64 {
    #[expect(clippy::cast_precision_loss, reason = "windows are at most 31 days")]
    let s = limit.window_seconds.max(1) as f64;
    s
}

#[expect(clippy::cast_precision_loss, reason = "limits are far below 2^52")]
fn as_f64(n: u64) -> f64 {
    n as f64
}

/// Sums restored history for `subject` inside `window`.
fn restored(
    history: &History,
    subject: &Subject,
    window: Window,
    pick: fn(&HourlyUse) -> u64,
) -> u64 {
    history.get(subject).map_or(0, |hours| {
        hours
            .iter()
            .filter(|h| h.hour >= window.start && h.hour < window.end)
            .map(pick)
            .sum()
    })
}

/// Adds consumption to the subject's history for `now`'s hour, so a limit or budget set
/// later still counts what was used earlier in its window.
fn remember(
    history: &mut History,
    subject: &Subject,
    now: Timestamp,
    add: impl FnOnce(&mut HourlyUse),
) {
    let hour = Timestamp::from_millisecond(now.as_millisecond().div_euclid(3_600_000) * 3_600_000)
        .unwrap_or(now);
    let hours = history.entry(subject.clone()).or_default();
    if hours.last().is_none_or(|h| h.hour != hour) {
        // Nothing counts in windows longer than 32 days: forget older hours.
        let horizon = hour.as_millisecond() - 32 * 24 * 3_600_000;
        hours.retain(|h| h.hour.as_millisecond() >= horizon);
        hours.push(HourlyUse {
            subject: subject.clone(),
            hour,
            requests: 0,
            credits: 0,
            tokens: 0,
            cost_nanos: 0,
        });
    }
    if let Some(last) = hours.last_mut() {
        add(last);
    }
}

fn pick_for(unit: LimitUnit) -> fn(&HourlyUse) -> u64 {
    match unit {
        LimitUnit::Requests | LimitUnit::Symbols => |h| h.requests,
        LimitUnit::Credits => |h| h.credits,
        LimitUnit::Tokens => |h| h.tokens,
    }
}

impl Counter {
    fn new(
        limit: &Limit,
        calendar: &QuotaCalendar,
        now: Timestamp,
        key: &KeyId,
        history: &History,
    ) -> Self {
        if limit.window_seconds >= CALENDAR_LIMIT_MIN_SECONDS {
            let window = limit_window(limit, calendar, now);
            let used = restored(
                history,
                &Subject::Key(key.clone()),
                window,
                pick_for(limit.unit),
            );
            Self::Calendar { window, used }
        } else {
            Self::Rate {
                level: 0.0,
                at: now,
            }
        }
    }

    /// Brings the counter to `now`: drains a bucket, starts a new calendar window.
    fn advance(&mut self, limit: &Limit, calendar: &QuotaCalendar, now: Timestamp) {
        match self {
            Self::Rate { level, at } => {
                let elapsed = until(*at, now).as_secs_f64();
                let drained = elapsed * as_f64(limit.max) / seconds(limit);
                *level = (*level - drained).max(0.0);
                *at = now.max(*at);
            }
            Self::Calendar { window, used } => {
                if now >= window.end {
                    *window = limit_window(limit, calendar, now);
                    *used = 0;
                }
            }
        }
    }

    /// How long until `amount` more units fit (zero: they fit now). Tokens only need room.
    fn wait_for(&self, limit: &Limit, amount: u64, now: Timestamp) -> Option<Duration> {
        let max = as_f64(limit.max);
        match self {
            Self::Rate { level, .. } => {
                let need = if limit.unit == LimitUnit::Tokens {
                    *level - max + 1.0
                } else {
                    *level + as_f64(amount) - max
                };
                if need <= 1e-9 {
                    None
                } else {
                    Some(Duration::from_secs_f64(need * seconds(limit) / max))
                }
            }
            Self::Calendar { window, used } => {
                let over = if limit.unit == LimitUnit::Tokens {
                    *used >= limit.max
                } else {
                    used + amount > limit.max
                };
                over.then(|| until(now, window.end))
            }
        }
    }

    fn add(&mut self, amount: u64) {
        match self {
            Self::Rate { level, .. } => *level += as_f64(amount),
            Self::Calendar { used, .. } => *used = used.saturating_add(amount),
        }
    }

    /// Share of the limit still free, 0.0–1.0.
    fn headroom(&self, limit: &Limit) -> f64 {
        let max = as_f64(limit.max.max(1));
        let used = match self {
            Self::Rate { level, .. } => *level,
            Self::Calendar { used, .. } => as_f64(*used),
        };
        ((max - used) / max).clamp(0.0, 1.0)
    }
}

fn quota_exhausted(wait: Duration, what: &str) -> Error {
    Error::limited(
        "quota_exhausted",
        format!("{what} has used its provider quota; try again later"),
        wait.max(Duration::from_secs(1)),
    )
}

impl KeyCounters {
    /// Counts one admitted call: against every limit, in the key's history (seeds), and in
    /// today's requests (`least_used`).
    fn count(&mut self, key: &KeyId, history: &mut History, spend: Spend, now: Timestamp) {
        for (counter, limit) in self.counters.iter_mut().zip(&self.limits) {
            counter.add(units(limit, spend));
        }
        remember(history, &Subject::Key(key.clone()), now, |h| {
            h.requests += spend.requests;
            h.credits += spend.credits;
        });
        let day = utc_day(now).start;
        self.today = Some(match self.today {
            Some((start, n)) if start == day => (start, n + 1),
            _ => (day, 1),
        });
    }

    fn sync(
        &mut self,
        key: &KeyId,
        limits: &[Limit],
        calendar: &QuotaCalendar,
        now: Timestamp,
        history: &History,
    ) {
        if self.limits != limits {
            self.limits = limits.to_vec();
            self.counters = limits
                .iter()
                .map(|l| Counter::new(l, calendar, now, key, history))
                .collect();
        }
        for (counter, limit) in self.counters.iter_mut().zip(&self.limits) {
            counter.advance(limit, calendar, now);
        }
    }
}

/// An admitted call's budget reservations; settle with the real cost, or drop to release.
#[derive(Debug)]
pub struct Reservation {
    meters: Arc<Meters>,
    holds: Vec<(Subject, Timestamp, u64)>,
}

impl Reservation {
    /// Replaces the reservations by the real cost.
    pub fn settle(mut self, cost_nanos: u64) {
        let holds = std::mem::take(&mut self.holds);
        self.meters.release(&holds, Some(cost_nanos));
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let holds = std::mem::take(&mut self.holds);
        self.meters.release(&holds, None);
    }
}

impl Meters {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Restores long-window counters and budgets from the store's hourly rollups. Counters that
    /// already exist are not touched (they have seen everything since start-up).
    pub fn seed(&self, uses: Vec<HourlyUse>) {
        let mut state = self.lock();
        state.history.clear();
        for used in uses {
            state
                .history
                .entry(used.subject.clone())
                .or_default()
                .push(used);
        }
    }

    /// Checks the key's limits and, if all have room, counts the call against them.
    pub fn take(
        &self,
        key: &KeyId,
        limits: &[Limit],
        calendar: &QuotaCalendar,
        spend: Spend,
        now: Timestamp,
    ) -> Result<(), Error> {
        let mut state = self.lock();
        let State { keys, history, .. } = &mut *state;
        let counters = keys.entry(key.clone()).or_default();
        counters.sync(key, limits, calendar, now, history);
        let wait = counters
            .counters
            .iter()
            .zip(&counters.limits)
            .filter_map(|(c, l)| c.wait_for(l, units(l, spend), now))
            .max();
        if let Some(wait) = wait {
            return Err(quota_exhausted(wait, &format!("key {key}")));
        }
        counters.count(key, history, spend, now);
        Ok(())
    }

    /// Counts a call another party admitted (Redis, for every instance) on this instance's
    /// counters too, without checking: they order the pool (`least_used`, `quota_aware`),
    /// seed Redis's counters, and decide alone if Redis becomes unreachable.
    pub fn record(
        &self,
        key: &KeyId,
        limits: &[Limit],
        calendar: &QuotaCalendar,
        spend: Spend,
        now: Timestamp,
    ) {
        let mut state = self.lock();
        let State { keys, history, .. } = &mut *state;
        let counters = keys.entry(key.clone()).or_default();
        counters.sync(key, limits, calendar, now, history);
        counters.count(key, history, spend, now);
    }

    /// What the store's sums (restored at start) and this instance's own use since say
    /// `subject` used of `unit` in `window`: the seed of a shared counter.
    pub fn restored_use(&self, subject: &Subject, window: Window, unit: LimitUnit) -> u64 {
        restored(&self.lock().history, subject, window, pick_for(unit))
    }

    /// What the store's sums say `subject` spent in `window` (nano-dollars): the seed of a
    /// shared budget.
    pub fn restored_cost(&self, subject: &Subject, window: Window) -> u64 {
        restored(&self.lock().history, subject, window, |h| h.cost_nanos)
    }

    /// Charges LLM tokens read from an answer to the key's token limits.
    pub fn charge_tokens(&self, key: &KeyId, tokens: u64) {
        let mut state = self.lock();
        if let Some(counters) = state.keys.get_mut(key) {
            for (counter, limit) in counters.counters.iter_mut().zip(&counters.limits) {
                if limit.unit == LimitUnit::Tokens {
                    counter.add(tokens);
                }
            }
        }
    }

    /// Requests a key served today (UTC): the `least_used` measure.
    pub fn used_today(&self, key: &KeyId, now: Timestamp) -> u64 {
        let day = utc_day(now).start;
        self.lock()
            .keys
            .get(key)
            .and_then(|c| c.today)
            .filter(|(start, _)| *start == day)
            .map_or(0, |(_, n)| n)
    }

    /// Share of the key's tightest limit still free (1.0 without limits): the `quota_aware`
    /// measure.
    pub fn headroom(
        &self,
        key: &KeyId,
        limits: &[Limit],
        calendar: &QuotaCalendar,
        now: Timestamp,
    ) -> f64 {
        if limits.is_empty() {
            return 1.0;
        }
        let mut state = self.lock();
        let State { keys, history, .. } = &mut *state;
        let counters = keys.entry(key.clone()).or_default();
        counters.sync(key, limits, calendar, now, history);
        counters
            .counters
            .iter()
            .zip(&counters.limits)
            .map(|(c, l)| c.headroom(l))
            .fold(1.0, f64::min)
    }

    /// Reserves `max_cost` (nano-dollars) against every budget given, all or nothing.
    pub fn reserve(
        self: &Arc<Self>,
        budgets: &[(Subject, Budget)],
        max_cost: u64,
        now: Timestamp,
    ) -> Result<Reservation, Error> {
        let mut state = self.lock();
        let State {
            accounts, history, ..
        } = &mut *state;
        for (subject, budget) in budgets {
            let window = budget_window(budget, now);
            let account = accounts.entry(subject.clone()).or_insert_with(|| Account {
                window,
                spent: restored(history, subject, window, |h| h.cost_nanos),
                reserved: 0,
            });
            if account.window != window {
                *account = Account {
                    window,
                    spent: 0,
                    reserved: 0,
                };
            }
            let limit = budget.limit_micros.saturating_mul(1000);
            if account
                .spent
                .saturating_add(account.reserved)
                .saturating_add(max_cost)
                > limit
            {
                let whose = match subject {
                    Subject::Key(id) => format!("key {id}"),
                    Subject::Token(id) => format!("app token {id}"),
                };
                return Err(Error::limited(
                    "budget_exceeded",
                    format!("{whose} has reached its budget for this period"),
                    until(now, window.end).max(Duration::from_secs(1)),
                ));
            }
        }
        let mut holds = Vec::with_capacity(budgets.len());
        for (subject, budget) in budgets {
            if let Some(account) = accounts.get_mut(subject) {
                account.reserved = account.reserved.saturating_add(max_cost);
                holds.push((subject.clone(), budget_window(budget, now).start, max_cost));
            }
        }
        Ok(Reservation {
            meters: self.clone(),
            holds,
        })
    }

    fn release(&self, holds: &[(Subject, Timestamp, u64)], cost: Option<u64>) {
        let mut state = self.lock();
        for (subject, window_start, reserved) in holds {
            if let Some(account) = state.accounts.get_mut(subject) {
                if account.window.start == *window_start {
                    account.reserved = account.reserved.saturating_sub(*reserved);
                }
                if let Some(cost) = cost {
                    account.spent = account.spent.saturating_add(cost);
                }
            }
        }
    }

    /// Spent and reserved nano-dollars of a subject's current period, if it has an account.
    pub fn spending(&self, subject: &Subject) -> Option<(u64, u64)> {
        self.lock()
            .accounts
            .get(subject)
            .map(|a| (a.spent, a.reserved))
    }
}

#[cfg(test)]
mod tests {
    use keyward_core::app_token::BudgetPeriod;
    use keyward_core::id::AppTokenId;

    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().expect("ts")
    }

    fn key() -> KeyId {
        "key_01JD0000000000000000000000".parse().expect("id")
    }

    const ONE: Spend = Spend {
        requests: 1,
        credits: 1,
    };

    #[test]
    fn a_daily_quota_resets_at_the_providers_midnight_and_survives_a_restart() {
        let meters = Meters::default();
        let daily = vec![Limit {
            max: 3,
            unit: LimitUnit::Requests,
            window_seconds: 86_400,
        }];
        let eastern = QuotaCalendar::Daily {
            time: "00:00".into(),
            time_zone: "America/New_York".into(),
        };
        let now = at("2026-11-25T15:00:00Z");
        for _ in 0..3 {
            meters
                .take(&key(), &daily, &eastern, ONE, now)
                .expect("within quota");
        }
        let refused = meters
            .take(&key(), &daily, &eastern, ONE, now)
            .expect_err("exhausted");
        assert_eq!(refused.code, "quota_exhausted");
        assert_eq!(
            refused.retry_after,
            Some(Duration::from_secs(14 * 3600)),
            "until 05:00 UTC"
        );
        meters
            .take(&key(), &daily, &eastern, ONE, at("2026-11-26T05:00:00Z"))
            .expect("a new day");

        let restarted = Meters::default();
        restarted.seed(vec![HourlyUse {
            subject: Subject::Key(key()),
            hour: at("2026-11-25T14:00:00Z"),
            requests: 3,
            credits: 3,
            tokens: 0,
            cost_nanos: 0,
        }]);
        assert!(
            restarted.take(&key(), &daily, &eastern, ONE, now).is_err(),
            "state survives a restart"
        );
    }

    #[test]
    fn rates_refill_and_credits_weigh() {
        let meters = Meters::default();
        let per_minute = vec![Limit {
            max: 8,
            unit: LimitUnit::Credits,
            window_seconds: 60,
        }];
        let now = at("2026-11-25T15:00:00Z");
        meters
            .take(
                &key(),
                &per_minute,
                &QuotaCalendar::Rolling,
                Spend {
                    requests: 1,
                    credits: 5,
                },
                now,
            )
            .expect("5 of 8");
        let refused = meters
            .take(
                &key(),
                &per_minute,
                &QuotaCalendar::Rolling,
                Spend {
                    requests: 1,
                    credits: 5,
                },
                now,
            )
            .expect_err("10 > 8");
        assert_eq!(
            refused.retry_after,
            Some(Duration::from_secs(15)),
            "2 credits drain in 15 s"
        );
        let later = at("2026-11-25T15:00:15Z");
        meters
            .take(
                &key(),
                &per_minute,
                &QuotaCalendar::Rolling,
                Spend {
                    requests: 1,
                    credits: 5,
                },
                later,
            )
            .expect("refilled");
    }

    #[test]
    fn token_limits_admit_while_there_is_room_and_charge_afterwards() {
        let meters = Meters::default();
        let tpm = vec![Limit {
            max: 1000,
            unit: LimitUnit::Tokens,
            window_seconds: 60,
        }];
        let now = at("2026-11-25T15:00:00Z");
        meters
            .take(&key(), &tpm, &QuotaCalendar::Rolling, ONE, now)
            .expect("room");
        meters.charge_tokens(&key(), 1500);
        let refused = meters
            .take(&key(), &tpm, &QuotaCalendar::Rolling, ONE, now)
            .expect_err("over");
        assert!(
            refused
                .retry_after
                .is_some_and(|d| d >= Duration::from_secs(30))
        );
    }

    #[test]
    fn budgets_reserve_settle_and_release() {
        let meters = Arc::new(Meters::default());
        let token = Subject::Token(AppTokenId::generate(
            at("2026-11-25T00:00:00Z"),
            &keyward_crypto::OsRandomness,
        ));
        let budget = Budget {
            limit_micros: 10,
            period: BudgetPeriod::Day,
        };
        let now = at("2026-11-25T15:00:00Z");
        let budgets = [(token.clone(), budget)];
        let first = meters.reserve(&budgets, 6_000, now).expect("6 of 10 µ$");
        let refused = meters
            .reserve(&budgets, 6_000, now)
            .expect_err("12 > 10 while reserved");
        assert_eq!(refused.code, "budget_exceeded");
        first.settle(2_000);
        assert_eq!(meters.spending(&token), Some((2_000, 0)));
        drop(meters.reserve(&budgets, 8_000, now).expect("2 + 8 fits"));
        assert_eq!(
            meters.spending(&token),
            Some((2_000, 0)),
            "a failed call releases its hold"
        );
        assert!(meters.reserve(&budgets, 8_001, now).is_err());
        meters
            .reserve(&budgets, 8_001, at("2026-11-26T00:00:00Z"))
            .expect("a new day");
    }
}
