//! Links that lead back through Keyward. Providers put absolute links in answers —
//! Polygon's `next_url`, `Link` and `Location` headers — that point at the provider
//! itself; followed as-is, the client's next request would skip Keyward (and its app
//! token would not work there). Every link to the service's base URL (or another origin
//! the catalog names, `link_origins`) becomes the same path under Keyward's proxy URL for
//! the service: `https://api.polygon.io/v3/x?cursor=c` → `{public}/proxy/polygon/v3/x?cursor=c`.
//! JSON's escaped form (`https:\/\/api.polygon.io\/v3`) is rewritten too. The injected key
//! is masked before this runs, so a link never carries it either.
//!
//! Works on whole bodies (whose length then changes, and `Content-Length` with it) and on
//! streams, holding back only a chunk's tail that could begin a link.

use bytes::{Bytes, BytesMut};
use futures_util::Stream;

/// One replacement: bytes that begin a provider link, and what they become.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pair {
    from: Vec<u8>,
    to: Vec<u8>,
}

/// The replacements for one service and one public proxy URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkRewriter {
    pairs: Vec<Pair>,
    longest: usize,
}

fn escaped(text: &str) -> String {
    text.replace('/', "\\/")
}

impl LinkRewriter {
    /// Rewrites links to any of `origins` (base URLs, without a trailing `/`) into
    /// `proxy_base` (`https://keyward.example/proxy/polygon`). `None` when there is nothing
    /// to rewrite.
    pub fn new<'a>(origins: impl IntoIterator<Item = &'a str>, proxy_base: &str) -> Option<Self> {
        let proxy_base = proxy_base.trim_end_matches('/');
        let mut pairs = Vec::new();
        for origin in origins {
            let origin = origin.trim_end_matches('/');
            if origin.is_empty() || origin == proxy_base {
                continue;
            }
            for end in ["/", "?"] {
                pairs.push(Pair {
                    from: format!("{origin}{end}").into_bytes(),
                    to: format!("{proxy_base}{end}").into_bytes(),
                });
            }
            pairs.push(Pair {
                from: format!("{}\\/", escaped(origin)).into_bytes(),
                to: format!("{}\\/", escaped(proxy_base)).into_bytes(),
            });
        }
        // The longest origin first, so `https://a.example/api` wins over `https://a.example`.
        pairs.sort_by_key(|p| std::cmp::Reverse(p.from.len()));
        pairs.dedup();
        let longest = pairs.iter().map(|p| p.from.len()).max()?;
        Some(Self { pairs, longest })
    }

    fn pair_at(&self, buf: &[u8], at: usize) -> Option<&Pair> {
        self.pairs.iter().find(|p| buf[at..].starts_with(&p.from))
    }

    /// `buf` with every link rewritten, or `None` when it holds none.
    pub fn rewrite(&self, buf: &[u8]) -> Option<Vec<u8>> {
        let (out, changed) = self.rewrite_upto(buf, buf.len());
        changed.then_some(out)
    }

    /// Rewrites links that start before `end` (they may run past it); the rest is copied.
    fn rewrite_upto(&self, buf: &[u8], end: usize) -> (Vec<u8>, bool) {
        let mut out = Vec::with_capacity(buf.len());
        let mut changed = false;
        let mut copied = 0;
        let mut at = 0;
        // Every link starts with `h` (http, https): jump from one to the next.
        while let Some(offset) = memchr::memchr(b'h', &buf[at..end.min(buf.len())]) {
            let start = at + offset;
            if let Some(pair) = self.pair_at(buf, start) {
                out.extend_from_slice(&buf[copied..start]);
                out.extend_from_slice(&pair.to);
                copied = start + pair.from.len();
                at = copied;
                changed = true;
            } else {
                at = start + 1;
            }
            if at >= end {
                break;
            }
        }
        out.extend_from_slice(&buf[copied..]);
        (out, changed)
    }

    /// A header value (`Link`, `Location`) with its links rewritten.
    pub fn header(&self, value: &str) -> Option<String> {
        self.rewrite(value.as_bytes())
            .and_then(|v| String::from_utf8(v).ok())
    }

    /// How many trailing bytes of `buf` could begin a link not yet complete.
    fn partial_tail(&self, buf: &[u8]) -> usize {
        let window = (self.longest - 1).min(buf.len());
        (1..=window)
            .rev()
            .find(|&k| {
                let tail = &buf[buf.len() - k..];
                self.pairs.iter().any(|p| p.from.starts_with(tail))
            })
            .unwrap_or(0)
    }
}

/// The upstream path a client meant when it joined a rewritten link's path onto its base
/// URL: the Polygon SDK keeps only `next_url`'s path and query, so
/// `{public}/proxy/polygon/v3/x` arrives as `/proxy/polygon/proxy/polygon/v3/x`. Only a
/// repeated `{public path}/proxy/{service}/` prefix is undone; the result is checked like
/// any other path.
pub fn undo_joined_link(path: &str, public_url: &str, service: &str) -> Option<String> {
    let public_path = public_url
        .split_once("://")
        .and_then(|(_, rest)| rest.find('/').map(|at| &rest[at..]))
        .unwrap_or("")
        .trim_end_matches('/');
    // No allocation unless the path really repeats the prefix (every call passes here).
    let rest = path
        .strip_prefix(public_path)?
        .strip_prefix("/proxy/")?
        .strip_prefix(service)?
        .strip_prefix('/')?;
    Some(format!("/{rest}"))
}

/// `http://` and the request's `Host`, when it is a plain host name or address (anything
/// else could smuggle text into the links Keyward writes); empty otherwise, which leaves
/// links relative to Keyward's own origin.
pub fn origin_of_host(host: Option<&http::HeaderValue>) -> String {
    host.and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']')
                })
        })
        .map(|h| format!("http://{h}"))
        .unwrap_or_default()
}

/// Wraps a body stream so every link in it is rewritten, across chunk boundaries.
pub fn rewrite_stream<S, E>(
    body: S,
    rewriter: LinkRewriter,
) -> impl Stream<Item = Result<Bytes, E>> + Send + 'static
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: Send + 'static,
{
    futures_util::stream::unfold(
        (Box::pin(body), BytesMut::new(), rewriter, false),
        move |(mut body, mut pending, rewriter, done)| async move {
            use futures_util::StreamExt;
            if done {
                return None;
            }
            loop {
                match body.next().await {
                    Some(Ok(chunk)) => {
                        pending.extend_from_slice(&chunk);
                        let hold = rewriter.partial_tail(&pending);
                        let ready_len = pending.len() - hold;
                        if ready_len == 0 {
                            continue;
                        }
                        let ready = pending.split_to(ready_len);
                        let (out, _) = rewriter.rewrite_upto(&ready, ready.len());
                        return Some((Ok(Bytes::from(out)), (body, pending, rewriter, false)));
                    }
                    Some(Err(e)) => return Some((Err(e), (body, pending, rewriter, true))),
                    None => {
                        if pending.is_empty() {
                            return None;
                        }
                        let rest = pending.split();
                        let (out, _) = rewriter.rewrite_upto(&rest, rest.len());
                        return Some((Ok(Bytes::from(out)), (body, pending, rewriter, true)));
                    }
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;

    fn polygon() -> LinkRewriter {
        LinkRewriter::new(
            ["https://api.polygon.io", "https://api.massive.com/"],
            "http://kw.local:8080/proxy/polygon",
        )
        .expect("rewriter")
    }

    const BODY: &str = r#"{"results":[],"status":"OK","next_url":"https://api.polygon.io/v3/reference/tickers?cursor=YWN0aXZl","other":"https:\/\/api.massive.com\/v2\/x","plain":"https://api.polygon.io.evil.example/x","text":"see https://api.polygon.io?x=1"}"#;
    const EXPECTED: &str = r#"{"results":[],"status":"OK","next_url":"http://kw.local:8080/proxy/polygon/v3/reference/tickers?cursor=YWN0aXZl","other":"http:\/\/kw.local:8080\/proxy\/polygon\/v2\/x","plain":"https://api.polygon.io.evil.example/x","text":"see http://kw.local:8080/proxy/polygon?x=1"}"#;

    #[test]
    fn links_to_the_provider_come_back_through_keyward() {
        let out = polygon().rewrite(BODY.as_bytes()).expect("changed");
        assert_eq!(String::from_utf8(out).expect("utf8"), EXPECTED);
        assert_eq!(polygon().rewrite(b"{\"no\":\"links\"}"), None);
        assert_eq!(
            polygon()
                .header(r#"<https://api.polygon.io/v3/x?page=2>; rel="next""#)
                .as_deref(),
            Some(r#"<http://kw.local:8080/proxy/polygon/v3/x?page=2>; rel="next""#)
        );
        assert!(
            LinkRewriter::new(["http://kw/proxy/p"], "http://kw/proxy/p").is_none(),
            "nothing to do when the origin is Keyward itself"
        );
    }

    #[test]
    fn a_link_joined_onto_the_base_url_finds_its_way() {
        assert_eq!(
            undo_joined_link("/proxy/polygon/v3/x", "http://kw:8080", "polygon").as_deref(),
            Some("/v3/x")
        );
        assert_eq!(
            undo_joined_link(
                "/gw/proxy/polygon/v3/x",
                "https://example.com/gw/",
                "polygon"
            )
            .as_deref(),
            Some("/v3/x")
        );
        assert_eq!(undo_joined_link("/v3/x", "http://kw:8080", "polygon"), None);
        assert_eq!(
            undo_joined_link("/proxy/finnhub/v3/x", "http://kw", "polygon"),
            None
        );
    }

    #[tokio::test]
    async fn streams_are_rewritten_across_every_chunk_boundary() {
        for size in 1..=BODY.len() {
            let chunks: Vec<Result<Bytes, std::io::Error>> = BODY
                .as_bytes()
                .chunks(size)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            let out: Vec<u8> = rewrite_stream(futures_util::stream::iter(chunks), polygon())
                .map(|c| c.expect("chunk").to_vec())
                .concat()
                .await;
            assert_eq!(
                String::from_utf8(out).expect("utf8"),
                EXPECTED,
                "chunks of {size}"
            );
        }
    }
}
