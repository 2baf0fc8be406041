//! Entry points for `cargo fuzz` (`fuzz/`, feature `fuzzing`): each parser on the proxy's
//! path with the property it must keep whatever the input, asserted — a violation panics,
//! which the fuzzer reports as a crash. Unit tests below run them on a few inputs, so the
//! properties are checked on every build, not only when fuzzing.

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use http::{HeaderMap, HeaderName, HeaderValue};
use keyward_core::service::{KeyPlacement, QuotaCalendar, ServiceDefinition, UsageFormat};
use secrecy::SecretString;

use crate::forward::{check_path, client_query, upstream_headers, upstream_url};
use crate::links::{LinkRewriter, rewrite_stream};
use crate::meter::UsageReader;

const BASE: &str = "https://api.example.com:8443/base";
const SECRET: &str = "REAL-provider-key-0123456789";

fn service() -> ServiceDefinition {
    ServiceDefinition {
        id: "fuzzed".into(),
        name: "Fuzzed".into(),
        category: "other".into(),
        base_url: BASE.into(),
        auth: KeyPlacement::Query {
            name: "apikey".into(),
        },
        alternate_auth: vec![KeyPlacement::Header {
            name: "authorization".into(),
            prefix: "Bearer ".into(),
        }],
        key_format: None,
        key_format_description: None,
        public_prefix: None,
        validation: None,
        plans: Vec::new(),
        quota_calendar: QuotaCalendar::Rolling,
        docs_url: None,
        key_url: None,
        where_to_get: String::new(),
        builtin: false,
        usage: None,
        cache: Vec::new(),
        answers: Vec::new(),
        soft_errors: Vec::new(),
        retry_delay_field: None,
        rate_limit_headers: Vec::new(),
        link_origins: Vec::new(),
        credits: Vec::new(),
        key_management: None,
    }
}

/// Path, query and header rewriting, checked against the `url` crate: whatever the client
/// sends, the upstream URL keeps the base's scheme, host, port and path prefix, carries the
/// key only as the one injected parameter, and no client credential header survives.
pub fn rewrite(path: &str, query: &str, headers: &[(&[u8], &[u8])]) {
    let service = service();
    let secret = SecretString::from(SECRET);
    if check_path(path).is_err() {
        return;
    }
    let kept = client_query(&service, Some(query));
    assert!(
        kept.iter().all(|(k, _)| k != "apikey"),
        "a credential parameter was kept"
    );
    let Ok(url) = upstream_url(&service, path, &kept, &secret) else {
        return;
    };
    let reparsed = url::Url::parse(url.as_str()).expect("the upstream URL parses again");
    let base = url::Url::parse(BASE).expect("base");
    assert_eq!(reparsed.scheme(), base.scheme(), "{url}");
    assert_eq!(reparsed.host(), base.host(), "{url}");
    assert_eq!(
        reparsed.port_or_known_default(),
        base.port_or_known_default(),
        "{url}"
    );
    assert!(
        reparsed.path().starts_with("/base/") || reparsed.path() == "/base",
        "{url}"
    );
    let keys: Vec<String> = reparsed
        .query_pairs()
        .filter(|(k, _)| k == "apikey")
        .map(|(_, v)| v.into_owned())
        .collect();
    assert_eq!(keys, vec![SECRET.to_owned()], "{url}");

    let mut inbound = HeaderMap::new();
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            inbound.append(name, value);
        }
    }
    let Ok(out) = upstream_headers(&service, &inbound, &secret) else {
        return;
    };
    for name in [
        "authorization",
        "x-keyward-token",
        "x-api-key",
        "cookie",
        "host",
    ] {
        assert!(!out.contains_key(name), "the client's {name} was forwarded");
    }
}

fn read_all(reader: &mut UsageReader, body: &[u8], chunk: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    for piece in body.chunks(chunk.max(1)) {
        out.extend_from_slice(&reader.feed(Bytes::copy_from_slice(piece)));
    }
    out.extend_from_slice(&reader.flush());
    reader.finish();
    out
}

/// The SSE usage reader: for every format and any chunking, what the client gets is
/// exactly what the provider sent (nothing held back at the end, nothing altered), and
/// reading never panics.
pub fn sse_usage(body: &[u8], chunk: usize) {
    for format in [
        UsageFormat::Openai,
        UsageFormat::Mistral,
        UsageFormat::Groq,
        UsageFormat::Anthropic,
        UsageFormat::Gemini,
        UsageFormat::Cohere,
    ] {
        let mut reader = UsageReader::new(format, true, false);
        assert_eq!(read_all(&mut reader, body, chunk), body, "{format:?}");
    }
}

/// The JSON usage reader: the body passes through untouched and any body is read without
/// a panic; the same body in different chunks yields the same usage.
pub fn json_usage(body: &[u8], chunk: usize) {
    for format in [
        UsageFormat::Openai,
        UsageFormat::Anthropic,
        UsageFormat::Gemini,
        UsageFormat::Cohere,
    ] {
        let mut whole = UsageReader::new(format, false, false);
        assert_eq!(read_all(&mut whole, body, body.len().max(1)), body);
        let mut pieces = UsageReader::new(format, false, false);
        assert_eq!(read_all(&mut pieces, body, chunk), body);
        assert_eq!(whole.tokens, pieces.tokens, "{format:?}");
    }
}

/// Link rewriting: a body rewritten whole and the same body rewritten as a stream in any
/// chunks agree, and no link to the provider is left.
pub fn links(body: &[u8], chunk: usize) {
    let rewriter = LinkRewriter::new(
        ["https://api.polygon.io", "https://api.massive.com"],
        "http://kw.local:8080/proxy/polygon",
    )
    .expect("rewriter");
    let whole = rewriter.rewrite(body).unwrap_or_else(|| body.to_vec());
    let chunks: Vec<Result<Bytes, std::convert::Infallible>> = body
        .chunks(chunk.max(1))
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let streamed: Vec<u8> = rewrite_stream(futures_util::stream::iter(chunks), rewriter)
        .map(|c| c.map(|b| b.to_vec()).unwrap_or_default())
        .concat()
        .now_or_never()
        .expect("a ready stream finishes at once");
    assert_eq!(whole, streamed, "streamed and whole rewriting differ");
    for origin in [
        "https://api.polygon.io/",
        "https://api.massive.com/",
        "https:\\/\\/api.polygon.io\\/",
    ] {
        assert!(
            !whole.windows(origin.len()).any(|w| w == origin.as_bytes()),
            "a provider link survived"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_properties_hold_on_hostile_inputs() {
        for path in [
            "/v1/x",
            "/%2e%2e/x",
            "//evil.com/x",
            "/a/../b",
            "/@evil.com",
            "/x?y",
            "/%252e%252e/",
        ] {
            rewrite(
                path,
                "apikey=stolen&a=1&apikey=2",
                &[(b"authorization", b"Bearer t"), (b"host", b"evil")],
            );
        }
        let sse = b"data: {\"usage\":{\"prompt_tokens\":1}}\n\ndata: [DONE]\n\nevent: x\ndata: {";
        for chunk in [1, 2, 7, 1000] {
            sse_usage(sse, chunk);
            json_usage(
                br#"{"usage":{"prompt_tokens":3,"completion_tokens":4}}"#,
                chunk,
            );
            json_usage(b"[{\"usageMetadata\":{\"promptTokenCount\":5}}", chunk);
            links(br#"{"next_url":"https://api.polygon.io/v3?c=1","x":"https:\/\/api.polygon.io\/v2","y":"https://api.polygon.i"}"#, chunk);
        }
    }
}
