//! The security boundary of the data plane: what Keyward sends upstream is built here, from
//! the service definition and the client's request, and nothing else reaches the provider.
//!
//! - **Where the token is**: where the service's SDK puts its key (header or query
//!   parameter), or `X-Keyward-Token` ([`find_token`]).
//! - **The path**: dot segments (also percent-encoded once or twice), backslashes, control
//!   characters and scheme-relative paths are refused ([`check_path`]); the upstream URL is
//!   the service's base URL plus that path, and keeps the base's scheme, host and port
//!   whatever the input ([`upstream_url`]).
//! - **The query**: every credential parameter of the service is dropped ([`client_query`])
//!   and the real key added where the service takes it in the query.
//! - **The headers**: hop-by-hop headers, Keyward's own and every client credential are
//!   dropped; the real key is injected where the service expects it, marked sensitive so it
//!   is never logged ([`upstream_headers`]).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use keyward_core::service::{KeyPlacement, ServiceDefinition};
use keyward_core::{Error, ErrorKind};
use secrecy::{ExposeSecret, SecretString};

/// Where clients may always put their app token, whatever the service.
pub const TOKEN_HEADER: &str = "x-keyward-token";
/// Chooses the environment (must be in the token's scope); default: the token's first.
pub const ENVIRONMENT_HEADER: &str = "x-keyward-environment";

/// A request Keyward cannot forward as it is (400, with the error body).
pub(super) fn bad_request(code: &'static str, message: impl Into<String>) -> Error {
    Error::new(ErrorKind::Malformed, code, message)
}

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1), plus `host`.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Headers that carry credentials for one provider or another; a client's are never passed on.
const CREDENTIAL_HEADERS: [&str; 7] = [
    "authorization",
    "x-api-key",
    "x-goog-api-key",
    "api-key",
    "x-api-token",
    "x-finnhub-token",
    "cookie",
];

/// The client's query minus every credential parameter: what cache keys, credit weights and
/// cache rules look at.
pub(crate) fn client_query(
    service: &ServiceDefinition,
    query: Option<&str>,
) -> Vec<(String, String)> {
    let credential: Vec<&str> = std::iter::once(&service.auth)
        .chain(&service.alternate_auth)
        .filter_map(|p| match p {
            KeyPlacement::Query { name } => Some(name.as_str()),
            KeyPlacement::Header { .. } => None,
        })
        .collect();
    query
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .filter(|(k, _)| !credential.contains(&k.as_ref()))
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// The app token, from wherever this service's SDK puts its key, or `X-Keyward-Token`.
pub(super) fn find_token(
    service: &ServiceDefinition,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Option<String> {
    if let Some(value) = headers.get(TOKEN_HEADER).and_then(|v| v.to_str().ok()) {
        return Some(value.trim().to_owned());
    }
    for placement in std::iter::once(&service.auth).chain(&service.alternate_auth) {
        let found = match placement {
            KeyPlacement::Header { name, prefix } => headers
                .get(name.as_str())
                .and_then(|v| v.to_str().ok())
                .map(|v| {
                    strip_prefix_ignore_case(v.trim(), prefix.trim())
                        .trim()
                        .to_owned()
                }),
            KeyPlacement::Query { name } => query.and_then(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .find(|(k, _)| k == name.as_str())
                    .map(|(_, v)| v.into_owned())
            }),
        };
        if let Some(value) = found.filter(|v| v.starts_with("kwp_")) {
            return Some(value);
        }
    }
    None
}

fn strip_prefix_ignore_case<'a>(value: &'a str, prefix: &str) -> &'a str {
    if !prefix.is_empty()
        && value.len() >= prefix.len()
        && value[..prefix.len()].eq_ignore_ascii_case(prefix)
    {
        &value[prefix.len()..]
    } else {
        value
    }
}

/// Rejects paths that could escape the service's base URL: dot segments (also
/// percent-encoded, once or twice), backslashes, control characters, `?` and `#` (which
/// would end the path once joined: `/..#`), and anything that is not a plain absolute path.
pub(crate) fn check_path(path: &str) -> Result<(), Error> {
    let refuse = || {
        bad_request(
            "invalid_path",
            "the path must be a plain absolute path without `..` segments",
        )
    };
    // `?` and `#` end a path in a URL: `/..#` would be the dot segment `..` once joined.
    if !path.starts_with('/') || path.starts_with("//") || path.contains(['?', '#']) {
        return Err(refuse());
    }
    let mut decoded = path.to_owned();
    for _ in 0..3 {
        if decoded.chars().any(|c| c == '\\' || c.is_control())
            || decoded
                .split('/')
                .any(|segment| segment == ".." || segment == ".")
        {
            return Err(refuse());
        }
        let next = percent_decode(&decoded);
        if next == decoded {
            break;
        }
        decoded = next;
    }
    Ok(())
}

fn percent_decode(text: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        char::from(b)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(hi * 16 + lo);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The upstream URL: the service's base URL, the client's path, the client's query without
/// credential parameters (`kept`, from [`client_query`]), plus the real key if this service
/// takes it in the query.
/// Whatever the input, the result's scheme, host and port are the base URL's, and its path
/// stays under the base URL's path (found by fuzzing: `/..#` once climbed out of it).
pub(crate) fn upstream_url(
    service: &ServiceDefinition,
    path: &str,
    kept: &[(String, String)],
    secret: &SecretString,
) -> Result<url::Url, Error> {
    check_path(path)?;
    let base = url::Url::parse(&service.base_url)
        .map_err(|e| Error::internal(format!("bad base URL for {}: {e}", service.id)))?;
    let joined = format!("{}{}", service.base_url.trim_end_matches('/'), path);
    let mut url = url::Url::parse(&joined)
        .map_err(|_| bad_request("invalid_path", "the path is not valid in a URL"))?;
    let prefix = base.path().trim_end_matches('/');
    if url.scheme() != base.scheme()
        || url.host() != base.host()
        || url.port_or_known_default() != base.port_or_known_default()
        || !(url.path() == prefix || url.path().starts_with(&format!("{prefix}/")))
    {
        return Err(bad_request(
            "invalid_path",
            "the path would leave the service's host",
        ));
    }
    url.set_query(None);
    let injected = match &service.auth {
        KeyPlacement::Query { name } => Some(name.as_str()),
        KeyPlacement::Header { .. } => None,
    };
    if !kept.is_empty() || injected.is_some() {
        let mut pairs = url.query_pairs_mut();
        for (k, v) in kept {
            pairs.append_pair(k, v);
        }
        if let Some(name) = injected {
            pairs.append_pair(name, secret.expose_secret());
        }
    }
    Ok(url)
}

/// The client's headers minus hop-by-hop, Keyward's own and every credential, plus the
/// real key where the service expects it (marked sensitive so it is never logged).
pub(crate) fn upstream_headers(
    service: &ServiceDefinition,
    inbound: &HeaderMap,
    secret: &SecretString,
) -> Result<HeaderMap, Error> {
    let mut headers = inbound.clone();
    strip_hop_by_hop(&mut headers);
    headers.remove(header::HOST);
    for name in [TOKEN_HEADER, ENVIRONMENT_HEADER]
        .into_iter()
        .chain(CREDENTIAL_HEADERS)
    {
        headers.remove(name);
    }
    for placement in std::iter::once(&service.auth).chain(&service.alternate_auth) {
        if let KeyPlacement::Header { name, .. } = placement {
            headers.remove(name.as_str());
        }
    }
    if let KeyPlacement::Header { name, prefix } = &service.auth {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| Error::internal(format!("bad auth header name for {}", service.id)))?;
        let mut value = HeaderValue::from_str(&format!("{prefix}{}", secret.expose_secret()))
            .map_err(|_| Error::internal("the stored key cannot be sent as a header"))?;
        value.set_sensitive(true);
        headers.insert(name, value);
    }
    Ok(headers)
}

pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()))
        .collect();
    for name in HOP_BY_HOP
        .iter()
        .copied()
        .chain(named.iter().map(String::as_str))
    {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use keyward_core::catalog::builtin_services;

    use super::*;

    fn service(id: &str) -> ServiceDefinition {
        builtin_services()
            .expect("catalog")
            .into_iter()
            .find(|s| s.id == id)
            .expect("service")
    }

    fn secret() -> SecretString {
        SecretString::from("REAL-KEY".to_owned())
    }

    #[test]
    fn upstream_urls_never_leave_the_service_host() {
        let openai = service("openai");
        let ok = upstream_url(
            &openai,
            "/v1/chat/completions",
            &client_query(&openai, Some("a=1")),
            &secret(),
        )
        .expect("url");
        assert_eq!(
            ok.as_str(),
            "https://api.openai.com/v1/chat/completions?a=1"
        );
        for evil in [
            "/../admin",
            "/v1/../../etc",
            "/%2e%2e/x",
            "/%2E%2E/x",
            "/%252e%252e/x",
            "/v1/%2e%2e%2fsecret",
            "//evil.example/x",
            "/\\evil",
            "/v1/.%2e/x",
            "/a/./b",
            "/x%00y",
            // Found by cargo fuzz: the fragment ended the path, leaving a dot segment.
            "/..#",
            "/..?x",
        ] {
            assert!(
                upstream_url(&openai, evil, &[], &secret()).is_err(),
                "{evil} must be refused"
            );
        }
        for tricky in [
            "/@evil.example/x",
            "/v1/models@evil.example",
            "/:80@evil.example/",
        ] {
            let url = upstream_url(&openai, tricky, &[], &secret()).expect("stays on the host");
            assert_eq!(url.host_str(), Some("api.openai.com"), "{tricky}");
        }
    }

    #[test]
    fn query_credentials_are_replaced_by_the_real_key() {
        let av = service("alpha-vantage");
        let url = upstream_url(
            &av,
            "/query",
            &client_query(&av, Some("function=GLOBAL_QUOTE&apikey=kwp_x_y&symbol=IBM")),
            &secret(),
        )
        .expect("url");
        assert_eq!(
            url.query(),
            Some("function=GLOBAL_QUOTE&symbol=IBM&apikey=REAL-KEY")
        );
        let polygon = service("polygon");
        let url = upstream_url(
            &polygon,
            "/v3/x",
            &client_query(&polygon, Some("apiKey=client-own&limit=1")),
            &secret(),
        )
        .expect("url");
        assert_eq!(
            url.query(),
            Some("limit=1"),
            "header services drop query credentials and add none"
        );
    }

    #[test]
    fn headers_lose_hop_by_hop_and_credentials_and_gain_the_key() {
        let anthropic = service("anthropic");
        let mut inbound = HeaderMap::new();
        for (k, v) in [
            ("x-api-key", "kwp_token"),
            ("authorization", "Bearer other"),
            ("connection", "keep-alive, x-custom"),
            ("x-custom", "hop"),
            ("keep-alive", "timeout=5"),
            ("host", "keyward.local"),
            ("cookie", "a=b"),
            ("x-keyward-token", "kwp_t"),
            ("anthropic-version", "2023-06-01"),
            ("content-type", "application/json"),
        ] {
            inbound.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let out = upstream_headers(&anthropic, &inbound, &secret()).expect("headers");
        assert_eq!(out.get("x-api-key").map(|v| v.is_sensitive()), Some(true));
        assert_eq!(
            out.get("x-api-key").and_then(|v| v.to_str().ok()),
            Some("REAL-KEY")
        );
        for gone in [
            "authorization",
            "connection",
            "x-custom",
            "keep-alive",
            "host",
            "cookie",
            "x-keyward-token",
        ] {
            assert!(out.get(gone).is_none(), "{gone} must not be forwarded");
        }
        assert_eq!(
            out.get("anthropic-version").and_then(|v| v.to_str().ok()),
            Some("2023-06-01")
        );
        let bearer =
            upstream_headers(&service("openai"), &HeaderMap::new(), &secret()).expect("headers");
        assert_eq!(
            bearer.get("authorization").and_then(|v| v.to_str().ok()),
            Some("Bearer REAL-KEY")
        );
    }

    #[test]
    fn tokens_are_found_where_each_sdk_puts_its_key() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "authorization",
            HeaderValue::from_static("Bearer kwp_abc_def"),
        );
        assert_eq!(
            find_token(&service("openai"), &headers, None).as_deref(),
            Some("kwp_abc_def")
        );
        let mut headers = HeaderMap::new();
        headers.insert("x-goog-api-key", HeaderValue::from_static("kwp_g_1"));
        assert_eq!(
            find_token(&service("gemini"), &headers, None).as_deref(),
            Some("kwp_g_1")
        );
        assert_eq!(
            find_token(&service("gemini"), &HeaderMap::new(), Some("key=kwp_q_1")).as_deref(),
            Some("kwp_q_1")
        );
        assert_eq!(
            find_token(
                &service("alpha-vantage"),
                &HeaderMap::new(),
                Some("function=X&apikey=kwp_a_b")
            )
            .as_deref(),
            Some("kwp_a_b")
        );
        assert_eq!(
            find_token(
                &service("alpha-vantage"),
                &HeaderMap::new(),
                Some("apikey=REALKEY")
            ),
            None
        );
        let mut headers = HeaderMap::new();
        headers.insert(TOKEN_HEADER, HeaderValue::from_static("kwp_h_1"));
        assert_eq!(
            find_token(&service("finnhub"), &headers, None).as_deref(),
            Some("kwp_h_1")
        );
    }
}
