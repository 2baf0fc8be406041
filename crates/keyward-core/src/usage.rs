//! Usage and cost: what one proxied call consumed, how it is priced, the calendar windows
//! quotas and budgets count in, and what the proxy learned about a key (flags).
//!
//! Money is integers: budgets in micro-dollars, recorded costs in nano-dollars (a cached
//! token can cost $0.005 per million, far below a micro-dollar), prices in pico-dollars per
//! token (`$x per 1M tokens` = `x × 10⁶` pico-dollars per token).

use std::collections::HashMap;

use jiff::civil::Time;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan, ZonedDateTime};
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::budget::{Budget, BudgetPeriod};
use crate::id::{AppTokenId, KeyId};
use crate::service::{Limit, LimitUnit, QuotaCalendar};

/// Token counts of one LLM call, split by how each kind is billed. `input` excludes cached
/// and cache-write tokens (OpenAI and Gemini include cached tokens in their prompt count;
/// the parsers subtract them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUsage {
    pub input: u64,
    pub cached_input: u64,
    pub cache_write: u64,
    pub output: u64,
}

impl TokenUsage {
    pub fn total(&self) -> u64 {
        self.input
            .saturating_add(self.cached_input)
            .saturating_add(self.cache_write)
            .saturating_add(self.output)
    }
}

/// How a proxied call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The upstream answered with success (or Keyward's cache did).
    Success,
    /// The upstream answered with an error status, passed through.
    UpstreamError,
    /// The upstream answered 200 with a body that means an error (e.g. Alpha Vantage `Note`).
    SoftError,
    /// Keyward refused before calling the upstream (token, scope, limits, budget, input).
    Refused,
    /// The upstream could not be reached or did not answer in time.
    Failed,
}

/// Whether the cache was involved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheOutcome {
    /// Not cacheable (or bypassed by the client).
    None,
    Hit,
    Miss,
}

string_enum!(Outcome { Success = "success", UpstreamError = "upstream_error", SoftError = "soft_error", Refused = "refused", Failed = "failed" }, "invalid_outcome", "call outcome");
string_enum!(CacheOutcome { None = "none", Hit = "hit", Miss = "miss" }, "invalid_cache_outcome", "cache outcome");
string_enum!(PoolStrategy { RoundRobin = "round_robin", LeastUsed = "least_used", QuotaAware = "quota_aware" }, "invalid_strategy", "pool strategy");
string_enum!(KeyFlagKind { Rejected = "rejected", QuotaLimited = "quota_limited" }, "invalid_flag", "key flag");
string_enum!(Granularity { Minute = "minute", Hour = "hour", Day = "day", Week = "week", Month = "month" }, "invalid_granularity", "granularity");

/// Everything one call through the proxy consumed. Written in batches off the request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRecord {
    pub at: Timestamp,
    /// `None` when the token was missing or invalid.
    pub token_id: Option<AppTokenId>,
    /// The key last tried; `None` when refused before a key was chosen (or a cache hit).
    pub key_id: Option<KeyId>,
    /// The service as requested (printable, at most 64 characters).
    pub service_id: String,
    pub environment: Option<String>,
    pub method: String,
    /// The upstream path without its query (at most 200 characters): never credentials.
    pub endpoint: String,
    /// The HTTP status the client got.
    pub status: u16,
    pub outcome: Outcome,
    /// Keyward's error code when Keyward answered with an error.
    pub error_code: Option<String>,
    pub latency_ms: u32,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub cache: CacheOutcome,
    /// Attempts beyond the first (retries and failovers).
    pub retries: u32,
    pub model: Option<String>,
    pub tokens: TokenUsage,
    /// Provider credits spent (requests count 1 unless the service weighs them).
    pub credits: u32,
    pub cost_nanos: u64,
    /// What the provider's answer meant (`None`: no answer — refused, cached or failed).
    pub answer: Option<crate::answer::AnswerClass>,
    /// The model or endpoint has no price: `cost_nanos` is a conservative estimate (the
    /// service's dearest model or the configured fallback price), never zero for free.
    pub unpriced: bool,
    /// Where the call came from (the client's address as the proxy saw it); rollups keep
    /// only its network.
    pub source: Option<std::net::IpAddr>,
    /// On a cache hit: the provider credits the original call spent, which this one did not.
    pub saved_credits: u32,
}

/// What a key is known to suffer from, learned from provider answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFlag {
    pub key_id: KeyId,
    pub kind: KeyFlagKind,
    /// What the provider said, in a few words (status code and error type; never a body).
    pub reason: String,
    pub since: Timestamp,
    /// When the flag lapses by itself (quota resets); `None` holds until cleared.
    pub until: Option<Timestamp>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyFlagKind {
    /// The provider refused the key (401/403): revoked, wrong or lacking permission.
    Rejected,
    /// The provider (or Keyward's own quota count) says the key's allowance is used up.
    QuotaLimited,
}

impl KeyFlag {
    pub fn in_force(&self, now: Timestamp) -> bool {
        self.until.is_none_or(|until| until > now)
    }
}

/// How the keys of one service and environment share the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolStrategy {
    /// Each key in turn.
    #[default]
    RoundRobin,
    /// The key with the fewest requests in the current day.
    LeastUsed,
    /// The key with the most quota left (as a share of its tightest limit).
    QuotaAware,
}

/// The strategy chosen for one pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSetting {
    pub service_id: String,
    pub environment: String,
    pub strategy: PoolStrategy,
}

/// What usage sums can be split by: the dimensions of a rollup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UsageGrouping {
    Key,
    Service,
    Token,
    Model,
    Environment,
    Network,
}

string_enum!(UsageGrouping { Key = "key", Service = "service", Token = "token", Model = "model", Environment = "environment", Network = "network" }, "invalid_group_by", "usage grouping");

/// Time buckets of usage rollups and queries, in UTC: weeks start on Monday, months on the
/// first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    Minute = 0,
    Hour = 1,
    Day = 2,
    Week = 3,
    Month = 4,
}

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;
const WEEK_MS: i64 = 7 * DAY_MS;
/// 1970-01-05, the first Monday after the Unix epoch.
const FIRST_MONDAY_MS: i64 = 4 * DAY_MS;

impl Granularity {
    /// Length of a bucket; months are not fixed (`None`).
    fn fixed_millis(self) -> Option<i64> {
        match self {
            Self::Minute => Some(MINUTE_MS),
            Self::Hour => Some(HOUR_MS),
            Self::Day => Some(DAY_MS),
            Self::Week => Some(WEEK_MS),
            Self::Month => None,
        }
    }

    /// The start of the bucket holding `at`.
    pub fn bucket_start(self, at: Timestamp) -> Timestamp {
        let ms = at.as_millisecond();
        let start = match self.fixed_millis() {
            Some(step) if self == Self::Week => {
                (ms - FIRST_MONDAY_MS).div_euclid(step) * step + FIRST_MONDAY_MS
            }
            Some(step) => ms.div_euclid(step) * step,
            None => {
                let date = at.to_zoned_datetime(TimeZone::UTC).date().first_of_month();
                return date
                    .to_zoned_datetime(TimeZone::UTC)
                    .map_or(at, |z| z.timestamp());
            }
        };
        Timestamp::from_millisecond(start).unwrap_or(at)
    }

    /// The start of the bucket after the one starting at `start`.
    pub fn next_bucket(self, start: Timestamp) -> Timestamp {
        match self.fixed_millis() {
            Some(step) => Timestamp::from_millisecond(start.as_millisecond().saturating_add(step))
                .unwrap_or(Timestamp::MAX),
            None => start
                .to_zoned_datetime(TimeZone::UTC)
                .checked_add(1.month())
                .map_or(Timestamp::MAX, |z| z.timestamp()),
        }
    }
}

/// Most buckets one usage query may return.
pub const USAGE_BUCKETS_MAX: i64 = 2_000;

/// A validated usage query: a time range `[from, to)` in buckets, optionally narrowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageQuery {
    pub from: Timestamp,
    pub to: Timestamp,
    pub granularity: Granularity,
    pub key_id: Option<KeyId>,
    pub token_id: Option<AppTokenId>,
    pub service_id: Option<String>,
    /// Narrowing by the other rollup dimensions (model, environment, source network).
    pub model: Option<String>,
    pub environment: Option<String>,
    pub network: Option<String>,
}

impl UsageQuery {
    /// Aligns `from` down and `to` up to whole buckets (UTC) and caps the bucket count.
    pub fn new(
        from: Timestamp,
        to: Timestamp,
        granularity: Granularity,
        key_id: Option<KeyId>,
        token_id: Option<AppTokenId>,
        service_id: Option<String>,
    ) -> Result<Self, Error> {
        if to <= from {
            return Err(Error::invalid("invalid_range", "`to` must be after `from`"));
        }
        let start = granularity.bucket_start(from);
        let mut end = granularity.bucket_start(to);
        if end < to {
            end = granularity.next_bucket(end);
        }
        let buckets = match granularity.fixed_millis() {
            Some(step) => (end.as_millisecond() - start.as_millisecond()) / step,
            None => {
                let (a, b) = (
                    start.to_zoned_datetime(TimeZone::UTC),
                    end.to_zoned_datetime(TimeZone::UTC),
                );
                (i64::from(b.year()) - i64::from(a.year())) * 12 + i64::from(b.month())
                    - i64::from(a.month())
            }
        };
        if buckets > USAGE_BUCKETS_MAX {
            return Err(Error::invalid(
                "range_too_large",
                format!(
                    "at most {USAGE_BUCKETS_MAX} {} buckets per query; narrow the range or use a coarser granularity",
                    granularity.as_str()
                ),
            ));
        }
        Ok(Self {
            from: start,
            to: end,
            granularity,
            key_id,
            token_id,
            service_id,
            model: None,
            environment: None,
            network: None,
        })
    }
}

/// Upper bounds (inclusive, milliseconds) of the latency histogram's buckets; one more
/// bucket holds everything slower.
pub const LATENCY_BOUNDS_MS: [u32; 11] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000,
];

/// Calls per latency bucket: mergeable by addition across instances and time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LatencyHistogram(pub [u64; LATENCY_BOUNDS_MS.len() + 1]);

impl LatencyHistogram {
    pub fn add(&mut self, latency_ms: u32) {
        let slot = LATENCY_BOUNDS_MS
            .iter()
            .position(|&bound| latency_ms <= bound)
            .unwrap_or(LATENCY_BOUNDS_MS.len());
        self.0[slot] += 1;
    }

    pub fn merge(&mut self, other: &Self) {
        for (mine, theirs) in self.0.iter_mut().zip(other.0) {
            *mine += theirs;
        }
    }

    pub fn count(&self) -> u64 {
        self.0.iter().sum()
    }

    /// The `q`-quantile (0–1) in milliseconds, interpolated linearly inside its bucket; the
    /// open last bucket answers its lower bound. `None` with no calls.
    pub fn quantile(&self, q: f64) -> Option<u32> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * total as f64).max(1.0);
        let mut seen = 0u64;
        for (slot, &count) in self.0.iter().enumerate() {
            if count == 0 {
                continue;
            }
            if (seen + count) as f64 >= rank {
                let low = if slot == 0 {
                    0
                } else {
                    LATENCY_BOUNDS_MS[slot - 1]
                };
                let Some(&high) = LATENCY_BOUNDS_MS.get(slot) else {
                    return Some(low);
                };
                let within = (rank - seen as f64) / count as f64;
                return Some(low + ((f64::from(high - low)) * within).round() as u32);
            }
            seen += count;
        }
        LATENCY_BOUNDS_MS.last().copied()
    }
}

impl UsageTotals {
    /// How much of a limit's unit these calls spent (symbols are counted per request, as
    /// the proxy meters them).
    pub fn spent(&self, unit: LimitUnit) -> u64 {
        match unit {
            LimitUnit::Requests | LimitUnit::Symbols => self.requests,
            LimitUnit::Credits => self.credits,
            LimitUnit::Tokens => self.input_tokens + self.cached_tokens + self.output_tokens,
        }
    }
}

/// The few figures a list or a sparkline shows: requests, failures, cost and unpriced
/// calls. Summing these four instead of every measure of `UsageTotals` (tokens, credits,
/// the latency histogram…) is what keeps a vault-wide week by key cheap — SQLite adds
/// roughly one value per 160 ns, and a dashboard of 1,000 keys sums 7,000 rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageHeadline {
    pub start: Timestamp,
    pub requests: u64,
    pub errors: u64,
    pub cost_nanos: u64,
    pub unpriced: u64,
}

/// Sums over a set of usage records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct UsageTotals {
    pub requests: u64,
    pub errors: u64,
    pub cache_hits: u64,
    pub input_tokens: u64,
    pub cached_tokens: u64,
    pub output_tokens: u64,
    pub credits: u64,
    pub cost_nanos: u64,
    /// Calls to a model or endpoint without a price (charged at a conservative estimate).
    pub unpriced: u64,
    /// Answers the provider meant as "this key is refused".
    pub rejected: u64,
    /// Answers that said a quota or rate limit was reached.
    pub throttled: u64,
    /// Provider outages and calls that reached no one.
    pub outages: u64,
    /// Provider credits cache hits did not spend.
    pub saved_credits: u64,
    /// Cacheable calls the provider answered (the cache had nothing fresh): what more
    /// caching could save.
    pub cache_misses: u64,
    /// Sum of latencies of the calls in `latency` (for the mean).
    pub latency_ms_sum: u64,
    pub latency: LatencyHistogram,
}

impl std::ops::AddAssign for UsageTotals {
    fn add_assign(&mut self, other: Self) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.cache_hits += other.cache_hits;
        self.input_tokens += other.input_tokens;
        self.cached_tokens += other.cached_tokens;
        self.output_tokens += other.output_tokens;
        self.credits += other.credits;
        self.cost_nanos = self.cost_nanos.saturating_add(other.cost_nanos);
        self.unpriced += other.unpriced;
        self.rejected += other.rejected;
        self.throttled += other.throttled;
        self.outages += other.outages;
        self.saved_credits += other.saved_credits;
        self.cache_misses += other.cache_misses;
        self.latency_ms_sum += other.latency_ms_sum;
        self.latency.merge(&other.latency);
    }
}

/// One time bucket of a usage query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageBucket {
    pub start: Timestamp,
    pub totals: UsageTotals,
}

/// Whose consumption a running count belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    Key(KeyId),
    Token(AppTokenId),
}

/// Consumption of one subject in one hour: what quota and budget counters are restored from
/// after a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HourlyUse {
    pub subject: Subject,
    pub hour: Timestamp,
    pub requests: u64,
    pub credits: u64,
    pub tokens: u64,
    pub cost_nanos: u64,
}

/// A fixed counting window `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: Timestamp,
    pub end: Timestamp,
}

/// Limits shorter than this are enforced as rates (GCRA-style buckets, in memory); longer
/// ones as counts in calendar windows that survive restarts.
pub const CALENDAR_LIMIT_MIN_SECONDS: u64 = 3_600;

const DAY_SECONDS: u64 = 86_400;

fn zone(name: &str) -> TimeZone {
    TimeZone::get(name).unwrap_or(TimeZone::UTC)
}

/// The window of a long limit that contains `now`: a day-long limit follows a daily
/// calendar (e.g. midnight US/Eastern), a month-long one a monthly calendar; anything else
/// counts in fixed windows of its length from the Unix epoch (UTC).
pub fn limit_window(limit: &Limit, calendar: &QuotaCalendar, now: Timestamp) -> Window {
    match calendar {
        QuotaCalendar::Daily { time, time_zone } if limit.window_seconds == DAY_SECONDS => {
            daily_window(now, time, &zone(time_zone))
        }
        QuotaCalendar::Monthly { time_zone } if is_month(limit.window_seconds) => {
            monthly_window(now, &zone(time_zone))
        }
        QuotaCalendar::BillingCycle if is_month(limit.window_seconds) => {
            monthly_window(now, &TimeZone::UTC)
        }
        _ => epoch_window(now, limit.window_seconds),
    }
}

/// The UTC day containing `now`.
pub fn utc_day(now: Timestamp) -> Window {
    daily_window(now, "00:00", &TimeZone::UTC)
}

/// The budget period containing `now`, in UTC.
pub fn budget_window(budget: &Budget, now: Timestamp) -> Window {
    match budget.period {
        BudgetPeriod::Day => utc_day(now),
        BudgetPeriod::Month => monthly_window(now, &TimeZone::UTC),
    }
}

fn is_month(seconds: u64) -> bool {
    (28 * DAY_SECONDS..=31 * DAY_SECONDS).contains(&seconds)
}

fn epoch_window(now: Timestamp, seconds: u64) -> Window {
    let step = i64::try_from(seconds.max(1))
        .unwrap_or(i64::MAX)
        .saturating_mul(1000);
    let start = now.as_millisecond().div_euclid(step) * step;
    let at = |ms: i64| Timestamp::from_millisecond(ms).unwrap_or(now);
    Window {
        start: at(start),
        end: at(start.saturating_add(step)),
    }
}

fn daily_window(now: Timestamp, time: &str, tz: &TimeZone) -> Window {
    let reset: Time = time.parse().unwrap_or(Time::midnight());
    let local = now.to_zoned_datetime(tz.clone());
    let today = local
        .date()
        .to_zoned_datetime(tz.clone())
        .ok()
        .and_then(|midnight| {
            midnight
                .date()
                .at(reset.hour(), reset.minute(), 0, 0)
                .to_zoned_datetime(tz.clone())
                .ok()
        });
    let Some(today) = today else {
        return epoch_window(now, DAY_SECONDS);
    };
    let (start, end) = if today.timestamp() <= now {
        let next = today.checked_add(1.day()).ok();
        (Some(today), next)
    } else {
        let previous = today.checked_sub(1.day()).ok();
        (previous, Some(today))
    };
    match (start, end) {
        (Some(start), Some(end)) => Window {
            start: start.timestamp(),
            end: end.timestamp(),
        },
        _ => epoch_window(now, DAY_SECONDS),
    }
}

fn monthly_window(now: Timestamp, tz: &TimeZone) -> Window {
    let local: ZonedDateTime = now.to_zoned_datetime(tz.clone());
    let first = local.date().first_of_month();
    let start = first.to_zoned_datetime(tz.clone()).ok();
    let end = first
        .checked_add(1.month())
        .ok()
        .and_then(|d| d.to_zoned_datetime(tz.clone()).ok());
    match (start, end) {
        (Some(start), Some(end)) => Window {
            start: start.timestamp(),
            end: end.timestamp(),
        },
        _ => epoch_window(now, 30 * DAY_SECONDS),
    }
}

/// A model's prices, in pico-dollars per token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelPrice {
    pub model: String,
    pub input: u64,
    pub cached_input: u64,
    pub cache_write: u64,
    pub output: u64,
    /// The most output tokens the model produces when the request names no maximum: used
    /// to reserve a budget before the call.
    pub max_output_tokens: u64,
}

impl ModelPrice {
    /// The cost of `usage` in nano-dollars, rounded up.
    pub fn cost_nanos(&self, usage: &TokenUsage) -> u64 {
        let picos = u128::from(usage.input) * u128::from(self.input)
            + u128::from(usage.cached_input) * u128::from(self.cached_input)
            + u128::from(usage.cache_write) * u128::from(self.cache_write)
            + u128::from(usage.output) * u128::from(self.output);
        u64::try_from(picos.div_ceil(1000)).unwrap_or(u64::MAX)
    }

    /// The most a call can cost: every input byte a token at the full input (or
    /// cache-write, if dearer) price, and the full output allowance.
    pub fn max_cost_nanos(&self, input_bytes: u64, max_output: Option<u64>) -> u64 {
        let input_price = self.input.max(self.cache_write);
        let usage = TokenUsage {
            input: input_bytes,
            output: max_output.unwrap_or(self.max_output_tokens),
            ..TokenUsage::default()
        };
        ModelPrice {
            input: input_price,
            ..self.clone()
        }
        .cost_nanos(&usage)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceEntry {
    service: String,
    model: String,
    /// USD per million input tokens.
    input: f64,
    #[serde(default)]
    cached_input: Option<f64>,
    #[serde(default)]
    cache_write: Option<f64>,
    output: f64,
    #[serde(default)]
    max_output_tokens: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PricingFile {
    #[serde(default)]
    price: Vec<PriceEntry>,
}

const BUILTIN_PRICING: &str = include_str!("../catalog/pricing.toml");
const DEFAULT_MAX_OUTPUT_TOKENS: u64 = 32_768;

/// LLM prices by service and model; the built-in table (`catalog/pricing.toml`) with a
/// user's file laid over it entry by entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PricingTable {
    services: HashMap<String, Vec<ModelPrice>>,
}

fn picos_per_token(what: &str, usd_per_million: f64) -> Result<u64, Error> {
    let picos = (usd_per_million * 1_000_000.0).round();
    if !picos.is_finite() || !(0.0..=1e15).contains(&picos) {
        return Err(Error::invalid(
            "invalid_pricing",
            format!("{what}: prices must be 0–1,000,000,000 USD per million tokens"),
        ));
    }
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "range checked above"
    )]
    Ok(picos as u64)
}

impl PricingTable {
    pub fn builtin() -> Result<Self, Error> {
        Self::default().with_overrides(BUILTIN_PRICING)
    }

    /// Adds or replaces the entries of a pricing file (TOML, `[[price]]` tables).
    pub fn with_overrides(mut self, toml_text: &str) -> Result<Self, Error> {
        let file: PricingFile = toml::from_str(toml_text).map_err(|e| {
            Error::invalid(
                "invalid_pricing",
                format!("the pricing file is not valid: {e}"),
            )
        })?;
        for entry in file.price {
            let what = format!("{}/{}", entry.service, entry.model);
            let input = picos_per_token(&what, entry.input)?;
            let price = ModelPrice {
                model: entry.model.clone(),
                input,
                cached_input: picos_per_token(&what, entry.cached_input.unwrap_or(entry.input))?,
                cache_write: picos_per_token(&what, entry.cache_write.unwrap_or(entry.input))?,
                output: picos_per_token(&what, entry.output)?,
                max_output_tokens: entry.max_output_tokens.unwrap_or(DEFAULT_MAX_OUTPUT_TOKENS),
            };
            let models = self.services.entry(entry.service).or_default();
            models.retain(|m| m.model != price.model);
            models.push(price);
        }
        Ok(self)
    }

    /// The listed price of `model`: an exact entry, else the longest entry that is a prefix
    /// followed by `-` (dated snapshots such as `gpt-5.4-mini-2026-03-17`).
    pub fn listed(&self, service: &str, model: &str) -> Option<&ModelPrice> {
        let models = self.services.get(service)?;
        models
            .iter()
            .find(|m| m.model == model && m.model != "*")
            .or_else(|| {
                models
                    .iter()
                    .filter(|m| {
                        model.len() > m.model.len()
                            && model.starts_with(m.model.as_str())
                            && model.as_bytes().get(m.model.len()) == Some(&b'-')
                    })
                    .max_by_key(|m| m.model.len())
            })
    }

    /// What a call is charged at, and whether that is an estimate (`unpriced`): the listed
    /// price; else — so that an unknown model never makes spending free — the service's
    /// `*` fallback, its dearest model, or the table's global `*`/`*` fallback.
    pub fn charge(&self, service: &str, model: Option<&str>) -> (Option<&ModelPrice>, bool) {
        if let Some(listed) = model.and_then(|m| self.listed(service, m)) {
            return (Some(listed), false);
        }
        let models = self.services.get(service);
        let fallback = models
            .and_then(|models| models.iter().find(|m| m.model == "*"))
            .or_else(|| self.dearest(service))
            .or_else(|| {
                self.services
                    .get("*")
                    .and_then(|models| models.iter().find(|m| m.model == "*"))
            });
        (fallback, true)
    }

    /// The dearest model of a service.
    pub fn dearest(&self, service: &str) -> Option<&ModelPrice> {
        self.services
            .get(service)?
            .iter()
            .max_by_key(|m| m.output.max(m.input))
    }

    pub fn services(&self) -> impl Iterator<Item = (&String, &Vec<ModelPrice>)> {
        self.services.iter()
    }
}

/// Nano-dollars as a decimal number of dollars, for display.
pub fn nanos_to_usd(nanos: u64) -> f64 {
    #[expect(clippy::cast_precision_loss, reason = "display only")]
    let usd = nanos as f64 / 1e9;
    usd
}

pub use crate::clock::until;

impl crate::answer::Lapse {
    /// When the lapse comes, if it can be known: `told` is what the answer itself said.
    pub fn until(
        self,
        calendar: &QuotaCalendar,
        now: Timestamp,
        told: Option<std::time::Duration>,
    ) -> Option<Timestamp> {
        use crate::answer::Lapse;
        let window_end = |seconds: u64| {
            let limit = Limit {
                max: 1,
                unit: crate::service::LimitUnit::Requests,
                window_seconds: seconds,
            };
            limit_window(&limit, calendar, now).end
        };
        match self {
            Lapse::RetryAfter => told.and_then(|wait| now.checked_add(wait).ok()),
            Lapse::NextMinute => Some(window_end(60)),
            Lapse::NextHour => Some(window_end(3_600)),
            Lapse::NextDay => Some(match calendar {
                QuotaCalendar::Rolling => now
                    .checked_add(std::time::Duration::from_secs(86_400))
                    .ok()?,
                _ => window_end(86_400),
            }),
            Lapse::NextMonth => Some(window_end(30 * 86_400)),
            Lapse::Seconds(seconds) => now
                .checked_add(std::time::Duration::from_secs(seconds))
                .ok(),
        }
        .filter(|until| *until > now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_align_to_utc_weeks_from_monday_and_calendar_months() {
        let at: Timestamp = "2026-03-01T23:59:59Z".parse().unwrap(); // a Sunday
        let start = |g: Granularity| g.bucket_start(at).to_string();
        assert_eq!(start(Granularity::Minute), "2026-03-01T23:59:00Z");
        assert_eq!(start(Granularity::Day), "2026-03-01T00:00:00Z");
        assert_eq!(start(Granularity::Week), "2026-02-23T00:00:00Z");
        assert_eq!(start(Granularity::Month), "2026-03-01T00:00:00Z");
        let feb: Timestamp = "2026-02-01T00:00:00Z".parse().unwrap();
        assert_eq!(
            Granularity::Month.next_bucket(feb).to_string(),
            "2026-03-01T00:00:00Z"
        );
        // A query's range is widened to whole buckets and months are counted as months.
        let q = UsageQuery::new(
            "2025-01-15T00:00:00Z".parse().unwrap(),
            "2026-12-06T10:00:00Z".parse().unwrap(),
            Granularity::Month,
            None,
            None,
            None,
        )
        .unwrap();
        assert_eq!(q.from.to_string(), "2025-01-01T00:00:00Z");
        assert_eq!(q.to.to_string(), "2027-01-01T00:00:00Z");
        let too_many = UsageQuery::new(
            "2020-01-01T00:00:00Z".parse().unwrap(),
            "2026-01-01T00:00:00Z".parse().unwrap(),
            Granularity::Minute,
            None,
            None,
            None,
        );
        assert_eq!(too_many.unwrap_err().code, "range_too_large");
        let inverted = UsageQuery::new(feb, feb, Granularity::Day, None, None, None);
        assert_eq!(inverted.unwrap_err().code, "invalid_range");
    }

    #[test]
    fn histogram_quantiles_interpolate_within_buckets() {
        let mut h = LatencyHistogram::default();
        assert_eq!(h.quantile(0.5), None);
        for ms in [5, 5, 60, 80, 90, 95, 99, 100, 200, 40_000] {
            h.add(ms);
        }
        assert_eq!(h.count(), 10);
        // The 5th of 10 falls in the (50, 100] bucket, which holds calls 3–8.
        let p50 = h.quantile(0.5).unwrap();
        assert!((50..=100).contains(&p50), "{p50}");
        // The slowest call is past every bound: its lower bound answers.
        assert_eq!(h.quantile(1.0), Some(30_000));
        assert!(h.quantile(0.0).unwrap() <= 10);
    }

    #[test]
    fn lapses_follow_the_quota_calendar() {
        let daily = QuotaCalendar::Daily {
            time: "00:00".into(),
            time_zone: "America/New_York".into(),
        };
        let now: Timestamp = "2026-12-06T15:30:20Z".parse().expect("ts");
        assert_eq!(
            crate::answer::Lapse::NextDay.until(&daily, now, None),
            Some("2026-12-07T05:00:00Z".parse().expect("ts"))
        );
        assert_eq!(
            crate::answer::Lapse::NextMinute.until(&daily, now, None),
            Some("2026-12-06T15:31:00Z".parse().expect("ts"))
        );
        assert_eq!(
            crate::answer::Lapse::RetryAfter.until(
                &daily,
                now,
                Some(std::time::Duration::from_secs(40))
            ),
            Some("2026-12-06T15:31:00Z".parse().expect("ts"))
        );
        assert_eq!(
            crate::answer::Lapse::RetryAfter.until(&daily, now, None),
            None
        );
        assert_eq!(
            crate::answer::Lapse::Seconds(600).until(&QuotaCalendar::Rolling, now, None),
            Some("2026-12-06T15:40:20Z".parse().expect("ts"))
        );
    }

    fn at(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    #[test]
    fn daily_windows_follow_the_providers_zone_across_dst() {
        let day = Limit {
            max: 25,
            unit: LimitUnit::Requests,
            window_seconds: 86_400,
        };
        let eastern = QuotaCalendar::Daily {
            time: "00:00".into(),
            time_zone: "America/New_York".into(),
        };
        // 03:00 UTC on 25 Nov is 22:00 on 24 Nov in New York (EST, UTC-5).
        let w = limit_window(&day, &eastern, at("2026-11-25T03:00:00Z"));
        assert_eq!(w.start, at("2026-11-24T05:00:00Z"));
        assert_eq!(w.end, at("2026-11-25T05:00:00Z"));
        // The day DST ends is 25 hours long.
        let w = limit_window(&day, &eastern, at("2026-11-01T12:00:00Z"));
        assert_eq!(w.start, at("2026-11-01T04:00:00Z"));
        assert_eq!(w.end, at("2026-11-02T05:00:00Z"));
        let monthly = Limit {
            window_seconds: 2_592_000,
            ..day.clone()
        };
        let w = limit_window(
            &monthly,
            &QuotaCalendar::Monthly {
                time_zone: "UTC".into(),
            },
            at("2026-02-10T00:00:00Z"),
        );
        assert_eq!(
            (w.start, w.end),
            (at("2026-02-01T00:00:00Z"), at("2026-03-01T00:00:00Z"))
        );
        let rolling = limit_window(&day, &QuotaCalendar::Rolling, at("2026-11-25T03:00:00Z"));
        assert_eq!(rolling.start, at("2026-11-25T00:00:00Z"));
    }

    #[test]
    fn prices_match_dated_models_and_round_up() {
        let table = PricingTable::builtin().expect("pricing");
        let mini = table
            .listed("openai", "gpt-5.4-mini-2026-03-17")
            .expect("price");
        assert_eq!(mini.model, "gpt-5.4-mini");
        // 256 uncached + 1,280 cached input, 58 output (fixture 8.1 of PROVIDERS.md):
        // 256 × 0.75 + 1280 × 0.075 + 58 × 4.50 = 192 + 96 + 261 = 549 micro-dollars.
        let usage = TokenUsage {
            input: 256,
            cached_input: 1280,
            cache_write: 0,
            output: 58,
        };
        assert_eq!(mini.cost_nanos(&usage), 549_000);
        assert!(
            table
                .listed("openai", "gpt-5.4")
                .is_some_and(|p| p.model == "gpt-5.4")
        );
        assert!(
            table.listed("openai", "gpt-5.45").is_none(),
            "a prefix must end at a dash"
        );
        let (fallback, unpriced) = table.charge("openai", Some("gpt-9-turbo"));
        assert!(unpriced);
        assert_eq!(
            fallback.map(|p| p.model.as_str()),
            Some("gpt-5.5"),
            "an unknown model is charged at the service's dearest"
        );
        assert!(
            !table.charge("openai", Some("gpt-5.4")).1,
            "a listed model is priced"
        );
        let (mistral, unpriced) = table.charge("mistral", Some("mistral-large-latest"));
        assert!(unpriced && mistral.is_some_and(|p| p.model == "*"));
        let (custom, unpriced) = table.charge("my-llm", None);
        assert!(
            unpriced && custom.is_some_and(|p| p.output > 0),
            "a service without prices is charged at the global fallback"
        );
        let overridden = table
            .clone()
            .with_overrides("[[price]]\nservice = \"openai\"\nmodel = \"gpt-5.4-mini\"\ninput = 1\noutput = 2\n")
            .expect("override");
        let mini = overridden.listed("openai", "gpt-5.4-mini").expect("price");
        assert_eq!(
            (mini.input, mini.cached_input, mini.output),
            (1_000_000, 1_000_000, 2_000_000)
        );
        assert!(
            PricingTable::default()
                .with_overrides("[[price]]\nservice = 1")
                .is_err()
        );
    }

    #[test]
    fn usage_queries_align_and_cap_buckets() {
        let q = UsageQuery::new(
            at("2026-11-25T10:17:00Z"),
            at("2026-11-25T12:01:00Z"),
            Granularity::Hour,
            None,
            None,
            None,
        )
        .expect("query");
        assert_eq!(
            (q.from, q.to),
            (at("2026-11-25T10:00:00Z"), at("2026-11-25T13:00:00Z"))
        );
        assert!(
            UsageQuery::new(
                at("2026-01-01T00:00:00Z"),
                at("2026-12-01T00:00:00Z"),
                Granularity::Minute,
                None,
                None,
                None
            )
            .is_err()
        );
    }
}
