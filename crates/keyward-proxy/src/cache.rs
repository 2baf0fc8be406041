//! The response cache: successful GET answers of endpoints a service marks cacheable,
//! shared by every app token of the same service and environment. The cache key is the
//! service, environment, path and query *without* any credential parameter, so neither an
//! app token nor a provider key is ever part of it; entries are bounded in total bytes and
//! expire by the injected clock.

use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use http::header::{self, HeaderMap};
use jiff::Timestamp;

/// A stored answer.
#[derive(Debug)]
pub struct CachedResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Provider credits the call that fetched this answer spent: what each hit saves.
    pub credits: u32,
    pub stored_at: Timestamp,
    pub expires_at: Timestamp,
}

impl CachedResponse {
    /// The entry as bytes for a cache other instances read: a JSON head line (status,
    /// headers that are text, credits, times in Unix ms), then the body as it is.
    pub fn encode(&self) -> Vec<u8> {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)))
            .collect();
        let head = serde_json::json!({
            "status": self.status.as_u16(),
            "headers": headers,
            "credits": self.credits,
            "stored_at": self.stored_at.as_millisecond(),
            "expires_at": self.expires_at.as_millisecond(),
        });
        let mut bytes = head.to_string().into_bytes();
        bytes.push(b'\n');
        bytes.extend_from_slice(&self.body);
        bytes
    }

    /// An entry from [`CachedResponse::encode`]'s bytes; `None` for anything else.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let split = bytes.iter().position(|b| *b == b'\n')?;
        let head: serde_json::Value = serde_json::from_slice(&bytes[..split]).ok()?;
        let mut headers = HeaderMap::new();
        for pair in head["headers"].as_array()? {
            let name = header::HeaderName::from_bytes(pair[0].as_str()?.as_bytes()).ok()?;
            let value = header::HeaderValue::from_str(pair[1].as_str()?).ok()?;
            headers.append(name, value);
        }
        Some(Self {
            status: StatusCode::from_u16(u16::try_from(head["status"].as_u64()?).ok()?).ok()?,
            headers,
            body: Bytes::copy_from_slice(&bytes[split + 1..]),
            credits: u32::try_from(head["credits"].as_u64()?).ok()?,
            stored_at: Timestamp::from_millisecond(head["stored_at"].as_i64()?).ok()?,
            expires_at: Timestamp::from_millisecond(head["expires_at"].as_i64()?).ok()?,
        })
    }
}

#[derive(Debug)]
pub struct ResponseCache {
    entries: moka::sync::Cache<String, Arc<CachedResponse>>,
    max_entry_bytes: usize,
}

fn weight(entry: &CachedResponse) -> u32 {
    let headers: usize = entry
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 32)
        .sum();
    u32::try_from(entry.body.len() + headers + 128).unwrap_or(u32::MAX)
}

impl ResponseCache {
    pub fn new(max_bytes: u64, max_entry_bytes: usize) -> Self {
        Self {
            entries: moka::sync::Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|_key: &String, value: &Arc<CachedResponse>| weight(value))
                // A backstop; freshness is decided by `expires_at` and the injected clock.
                .time_to_live(std::time::Duration::from_secs(u64::from(
                    keyward_core::service::CACHE_TTL_MAX_SECONDS,
                )))
                .build(),
            max_entry_bytes,
        }
    }

    /// Largest body worth keeping.
    pub fn max_entry_bytes(&self) -> usize {
        self.max_entry_bytes
    }

    /// The key for a request: credential parameters must already be removed from `query`.
    pub fn key(service: &str, environment: &str, path: &str, query: &[(String, String)]) -> String {
        let mut sorted: Vec<&(String, String)> = query.iter().collect();
        sorted.sort();
        let mut key = format!("{service}\u{0}{environment}\u{0}{path}");
        for (k, v) in sorted {
            key.push('\u{0}');
            key.push_str(k);
            key.push('=');
            key.push_str(v);
        }
        key
    }

    pub fn get(&self, key: &str, now: Timestamp) -> Option<Arc<CachedResponse>> {
        let entry = self.entries.get(key)?;
        if entry.expires_at <= now {
            self.entries.invalidate(key);
            return None;
        }
        Some(entry)
    }

    pub fn insert(&self, key: String, entry: Arc<CachedResponse>) {
        if entry.body.len() <= self.max_entry_bytes {
            self.entries.insert(key, entry);
        }
    }

    /// Responses held (approximate: moka counts lazily).
    pub fn entry_count(&self) -> u64 {
        self.entries.entry_count()
    }

    /// Total weight held (after pending maintenance).
    pub fn weighted_size(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.weighted_size()
    }
}

/// Whether an answer may be stored: no `no-store`/`private`, no cookies, no `Vary: *`.
pub fn storable(headers: &HeaderMap) -> bool {
    let cache_control = headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|d| d.trim().to_ascii_lowercase())
        .any(|d| d == "no-store" || d == "private");
    let vary_all = headers
        .get_all(header::VARY)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.trim() == "*"));
    !cache_control && !vary_all && !headers.contains_key(header::SET_COOKIE)
}

/// Whether the client forbids answering from (`no-cache`) or storing into (`no-store`) the
/// cache: `(may_read, may_store)`.
pub fn client_allows(headers: &HeaderMap) -> (bool, bool) {
    let directives: Vec<String> = headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|d| d.trim().to_ascii_lowercase())
        .collect();
    let no_store = directives.iter().any(|d| d == "no-store");
    let no_cache = no_store
        || directives
            .iter()
            .any(|d| d == "no-cache" || d == "max-age=0");
    (!no_cache, !no_store)
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).expect("ts")
    }

    fn entry(body: &'static [u8], expires: i64) -> CachedResponse {
        CachedResponse {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::from_static(body),
            credits: 1,
            stored_at: ts(0),
            expires_at: ts(expires),
        }
    }

    #[test]
    fn an_entry_survives_its_shared_form_and_garbage_is_refused() {
        let mut original = entry(b"{\"c\": 1.5}\n\nbinary \x00\xff", 15);
        original.headers.insert(
            header::CONTENT_TYPE,
            "application/json".parse().expect("value"),
        );
        original
            .headers
            .append("x-ratelimit-remaining", "59".parse().expect("value"));
        let decoded = CachedResponse::decode(&original.encode()).expect("decodes");
        assert_eq!(decoded.status, original.status);
        assert_eq!(decoded.headers, original.headers);
        assert_eq!(decoded.body, original.body);
        assert_eq!(
            (decoded.credits, decoded.stored_at, decoded.expires_at),
            (1, ts(0), ts(15))
        );
        for garbage in [&b""[..], b"no newline", b"{}\nbody", b"[1]\n"] {
            assert!(CachedResponse::decode(garbage).is_none());
        }
    }

    #[test]
    fn entries_expire_by_the_clock_and_respect_the_byte_bounds() {
        let cache = ResponseCache::new(10_000, 1_000);
        let q = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<Vec<_>>()
        };
        let key = ResponseCache::key(
            "av",
            "production",
            "/query",
            &q(&[("symbol", "IBM"), ("function", "GLOBAL_QUOTE")]),
        );
        assert_eq!(
            key,
            ResponseCache::key(
                "av",
                "production",
                "/query",
                &q(&[("function", "GLOBAL_QUOTE"), ("symbol", "IBM")])
            ),
            "order does not matter"
        );
        assert_ne!(
            key,
            ResponseCache::key(
                "av",
                "staging",
                "/query",
                &q(&[("function", "GLOBAL_QUOTE"), ("symbol", "IBM")])
            )
        );
        cache.insert(key.clone(), Arc::new(entry(b"{}", 15)));
        assert!(cache.get(&key, ts(14)).is_some());
        assert!(cache.get(&key, ts(15)).is_none(), "expired");
        cache.insert("big".into(), Arc::new(entry(&[0; 2_000], 15)));
        assert!(
            cache.get("big", ts(1)).is_none(),
            "larger than an entry may be"
        );
        for i in 0..100 {
            cache.insert(format!("k{i}"), Arc::new(entry(&[1; 900], 99)));
        }
        assert!(cache.weighted_size() <= 10_000, "bounded by bytes");
    }

    #[test]
    fn cache_control_is_honoured_both_ways() {
        let mut headers = HeaderMap::new();
        assert!(storable(&headers));
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, no-store"),
        );
        assert!(!storable(&headers));
        assert_eq!(client_allows(&headers), (false, false));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        assert_eq!(client_allows(&headers), (false, true));
        assert_eq!(client_allows(&HeaderMap::new()), (true, true));
    }
}
