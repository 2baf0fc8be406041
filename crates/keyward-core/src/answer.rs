//! What a provider's answer means for the key that got it, read from the service's rules
//! (data in the catalog, `answers = […]`), never from code per provider.
//!
//! Providers say "bad key", "slow down" and "out of quota" in many ways: OpenAI tells a
//! throttle from an exhausted quota only by `error.code` inside two identical 429s, Gemini
//! rejects a key with HTTP 400, Alpha Vantage and Twelve Data throttle with HTTP 200, Tiingo
//! with a plain-text 200. A service's [`AnswerRule`]s match status, JSON fields and body text
//! and say what the answer means ([`AnswerClass`]) and when a quota lapses ([`Lapse`]); the
//! first rule that matches wins, then the service's legacy `soft_errors`, then plain HTTP
//! semantics ([`default_class`]). The proxy applies the result the same way to calls,
//! validations and probes.

use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Error;
use crate::clock::until;
use crate::pattern::PathPattern;

/// What an answer means for the key that got it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnswerClass {
    /// The call worked.
    Success,
    /// The provider does not accept the key (wrong, revoked, disabled): flag it, fail over.
    Rejected,
    /// The key's allowance is used up until the quota lapses: flag it until then, fail over.
    QuotaLimited,
    /// Too many requests right now: wait briefly and retry, or fail over.
    Throttled,
    /// The request failed for a reason that is not the key's (bad parameters, an endpoint
    /// the plan does not include, an unknown symbol).
    Failed,
    /// The provider is down or overloaded: retry with backoff; counts against the circuit.
    Outage,
    /// An error answer no rule explains: passed through, counted, never held against the key.
    Unclassified,
}

string_enum!(AnswerClass {
    Success = "success", Rejected = "rejected", QuotaLimited = "quota_limited",
    Throttled = "throttled", Failed = "failed", Outage = "outage", Unclassified = "unclassified"
}, "invalid_answer_class", "answer class");

/// What an answer means when no rule of the service matches: HTTP's own semantics.
pub fn default_class(status: u16) -> AnswerClass {
    match status {
        100..=399 => AnswerClass::Success,
        401 | 403 => AnswerClass::Rejected,
        429 => AnswerClass::Throttled,
        408 | 500..=599 => AnswerClass::Outage,
        _ => AnswerClass::Unclassified,
    }
}

/// A status code (`429`) or a class of them (`"5xx"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StatusPattern {
    Code(u16),
    Class(String),
}

impl StatusPattern {
    pub fn matches(&self, status: u16) -> bool {
        match self {
            Self::Code(code) => *code == status,
            Self::Class(class) => class
                .strip_suffix("xx")
                .and_then(|digit| digit.parse::<u16>().ok())
                .is_some_and(|hundred| status / 100 == hundred),
        }
    }

    fn valid(&self) -> bool {
        match self {
            Self::Code(code) => (100..=599).contains(code),
            Self::Class(class) => matches!(class.as_str(), "1xx" | "2xx" | "3xx" | "4xx" | "5xx"),
        }
    }
}

/// A condition on a JSON body: the value at `path` (dot-separated; `*` is every element of
/// an array or every value of an object) equals `equals`, contains one of `contains`
/// (case-insensitive), or — with neither — exists and is not null. With `*`, one matching
/// value is enough.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonCondition {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contains: Vec<String>,
}

impl JsonCondition {
    fn holds(&self, body: &Value) -> bool {
        let mut found = Vec::new();
        values_at(body, &self.path, &mut found);
        found.iter().any(|value| {
            if let Some(expected) = &self.equals {
                return same_json(value, expected);
            }
            if !self.contains.is_empty() {
                return value
                    .as_str()
                    .is_some_and(|text| contains_any(text, &self.contains));
            }
            !value.is_null()
        })
    }

    /// A few words naming the condition, for a flag's reason (catalog text, never the body).
    pub(crate) fn describe(&self) -> String {
        match (&self.equals, self.contains.first()) {
            (Some(Value::String(s)), _) => format!("{} {s}", self.path),
            (Some(other), _) => format!("{} {other}", self.path),
            (None, Some(word)) => format!("{} “{word}”", self.path),
            (None, None) => self.path.clone(),
        }
    }
}

/// Numbers compare by value (`429` equals `429.0`); everything else exactly.
fn same_json(value: &Value, expected: &Value) -> bool {
    match (value.as_f64(), expected.as_f64()) {
        (Some(a), Some(b)) => (a - b).abs() < f64::EPSILON,
        _ => value == expected,
    }
}

fn contains_any(text: &str, needles: &[String]) -> bool {
    let text = text.to_lowercase();
    needles.iter().any(|n| text.contains(&n.to_lowercase()))
}

/// Every value at a dot path; `*` fans out over arrays and objects.
pub(crate) fn values_at<'v>(value: &'v Value, path: &str, out: &mut Vec<&'v Value>) {
    let (head, rest) = match path.split_once('.') {
        Some((head, rest)) => (head, Some(rest)),
        None => (path, None),
    };
    let next: Vec<&Value> = match (head, value) {
        ("*", Value::Array(items)) => items.iter().collect(),
        ("*", Value::Object(map)) => map.values().collect(),
        (key, Value::Object(map)) => map.get(key).into_iter().collect(),
        _ => Vec::new(),
    };
    for value in next {
        match rest {
            Some(rest) => values_at(value, rest, out),
            None => out.push(value),
        }
    }
}

/// When a quota or throttle a rule recognised lapses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lapse {
    /// When the answer says (`Retry-After`, `retry-after-ms`, a delay in the body, the
    /// rate-limit reset headers).
    RetryAfter,
    NextMinute,
    NextHour,
    /// The service's daily reset (its quota calendar), or 24 hours for rolling quotas.
    NextDay,
    /// The service's monthly reset (its calendar or billing cycle).
    NextMonth,
    /// A fixed time, e.g. Nasdaq Data Link's ten-minute windows.
    Seconds(u64),
}

/// One rule: an answer whose status is one of `status` and whose body meets every `json`
/// condition and contains one of `body_contains` (case-insensitive; the raw text, JSON or
/// not) means `means`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnswerRule {
    pub status: Vec<StatusPattern>,
    /// Only answers to requests for this path (e.g. a key-check endpoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathPattern>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub json: Vec<JsonCondition>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub body_contains: Vec<String>,
    pub means: AnswerClass,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lapses: Option<Lapse>,
    /// Where the shape comes from and how sure it is (`UNCONFIRMED: …`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl AnswerRule {
    pub(crate) fn reads_body(&self) -> bool {
        !self.json.is_empty() || !self.body_contains.is_empty()
    }

    pub(crate) fn applies(&self, status: u16, path: &str) -> bool {
        self.status.iter().any(|s| s.matches(status))
            && self.path.as_ref().is_none_or(|p| p.matches(path))
    }

    pub(crate) fn matches(&self, status: u16, path: &str, body: &Body<'_>) -> bool {
        self.applies(status, path)
            && (self.json.is_empty()
                || body
                    .json()
                    .is_some_and(|json| self.json.iter().all(|c| c.holds(json))))
            && (self.body_contains.is_empty()
                || body
                    .text()
                    .is_some_and(|text| contains_any(text, &self.body_contains)))
    }

    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |why: &str| Error::invalid("invalid_answer_rule", why.to_owned());
        if self.status.is_empty() || !self.status.iter().all(StatusPattern::valid) {
            return Err(invalid(
                "an answer rule needs statuses: codes 100–599 or 1xx–5xx",
            ));
        }
        if self.json.len() > 8
            || self
                .json
                .iter()
                .any(|c| c.path.is_empty() || c.path.len() > 128 || c.contains.len() > 16)
            || self.body_contains.len() > 16
        {
            return Err(invalid(
                "an answer rule has at most 8 JSON conditions (paths of 1–128 characters) and 16 texts",
            ));
        }
        if self
            .json
            .iter()
            .flat_map(|c| &c.contains)
            .chain(&self.body_contains)
            .any(|t| t.is_empty() || t.len() > 256)
        {
            return Err(invalid("an answer rule's texts must be 1–256 characters"));
        }
        if let Some(path) = &self.path {
            path.validate("answer rule")?;
        }
        if matches!(self.means, AnswerClass::Success) && self.lapses.is_some() {
            return Err(invalid("a successful answer has nothing to lapse"));
        }
        Ok(())
    }
}

/// An answer's body as far as it was read, parsed at most once.
pub(crate) struct Body<'b> {
    raw: Option<&'b [u8]>,
    json: std::cell::OnceCell<Option<Value>>,
}

impl<'b> Body<'b> {
    pub(crate) fn new(raw: Option<&'b [u8]>) -> Self {
        Self {
            raw,
            json: std::cell::OnceCell::new(),
        }
    }

    pub(crate) fn json(&self) -> Option<&Value> {
        self.json
            .get_or_init(|| self.raw.and_then(|raw| serde_json::from_slice(raw).ok()))
            .as_ref()
    }

    fn text(&self) -> Option<&str> {
        self.raw.and_then(|raw| std::str::from_utf8(raw).ok())
    }
}

/// What an answer was found to mean.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    pub class: AnswerClass,
    /// When a quota-limited or throttled key may be used again, if the rule says.
    pub lapses: Option<Lapse>,
    /// A few words for the key's flag: the status and the rule's condition (catalog text,
    /// never the provider's body, which may echo the key).
    pub reason: String,
}

/// How a rate-limit reset header writes its time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResetFormat {
    /// Go durations: `12ms`, `6m0s`, `1h2m3.5s` (OpenAI, Groq).
    Duration,
    /// An RFC 3339 time (Anthropic).
    Rfc3339,
    /// Seconds from now.
    Seconds,
    /// Unix seconds.
    EpochSeconds,
}

/// A provider's rate-limit headers for one limit: when `remaining` says `0`, the limit is
/// spent until `reset`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitHeaders {
    pub remaining: String,
    pub reset: String,
    pub format: ResetFormat,
}

pub(crate) fn seconds(n: f64) -> Option<Duration> {
    (0.0..1e9).contains(&n).then(|| Duration::from_secs_f64(n))
}

pub(crate) fn reset_wait(value: &str, format: ResetFormat, now: Timestamp) -> Option<Duration> {
    let value = value.trim();
    match format {
        ResetFormat::Duration => parse_go_duration(value),
        ResetFormat::Seconds => seconds(value.parse().ok()?),
        ResetFormat::Rfc3339 => {
            let at: Timestamp = value.parse().ok()?;
            Some(until(now, at))
        }
        ResetFormat::EpochSeconds => {
            let at = Timestamp::from_second(value.parse().ok()?).ok()?;
            Some(until(now, at))
        }
    }
}

/// A Go or protobuf duration: `12ms`, `6m0s`, `1h2m3.5s`, `26s`, `1.5s`, or bare seconds.
pub fn parse_go_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text.is_empty() || text.len() > 64 {
        return None;
    }
    if let Ok(n) = text.parse::<f64>() {
        return seconds(n);
    }
    let mut total = 0.0_f64;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3_600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * scale;
    }
    seconds(total)
}

/// `retry-after-ms` (OpenAI), then `retry-after` in seconds or as an HTTP date.
pub fn retry_after<'h>(
    header: &dyn Fn(&str) -> Option<&'h str>,
    now: Timestamp,
) -> Option<Duration> {
    let number = |name: &str| header(name)?.trim().parse::<f64>().ok().and_then(seconds);
    if let Some(ms) = number("retry-after-ms") {
        return Some(ms / 1000);
    }
    if let Some(s) = number("retry-after") {
        return Some(s);
    }
    let date = header("retry-after")?;
    let at = jiff::fmt::rfc2822::parse(date.trim()).ok()?.timestamp();
    Some(until(now, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_retry_after_in_every_documented_form() {
        assert_eq!(parse_go_duration("12ms"), Some(Duration::from_millis(12)));
        assert_eq!(parse_go_duration("6m0s"), Some(Duration::from_secs(360)));
        assert_eq!(
            parse_go_duration("1h2m3.5s"),
            Some(Duration::from_secs_f64(3723.5))
        );
        assert_eq!(parse_go_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_go_duration("7"), Some(Duration::from_secs(7)));
        for bad in ["", "s", "5x", "-3s", "1e400", "NaN"] {
            assert_eq!(parse_go_duration(bad), None, "{bad}");
        }
        let now: Timestamp = "2026-12-06T08:49:30Z".parse().expect("ts");
        let headers = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
        };
        assert_eq!(
            retry_after(&headers(&[("retry-after", "7")]), now),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            retry_after(
                &headers(&[("retry-after", "7"), ("retry-after-ms", "250")]),
                now
            ),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            retry_after(
                &headers(&[("retry-after", "Sun, 06 Dec 2026 08:49:37 GMT")]),
                now
            ),
            Some(Duration::from_secs(7))
        );
        assert_eq!(retry_after(&headers(&[("retry-after", "soon")]), now), None);
    }
}
