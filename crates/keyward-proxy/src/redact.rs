//! Masks the injected key wherever an upstream response echoes it (some providers quote the
//! key in error messages). The mask has the same length — every byte becomes `*` — so
//! `Content-Length` stays true and nothing else about the response changes. Works on a
//! stream: only a chunk's tail that could be the start of the key is held back until the
//! next chunk shows whether it is — so Server-Sent Events, which end in a blank line, pass
//! through without delay.

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

/// The byte patterns to mask: the key as sent, and as it would appear percent-encoded.
fn patterns(secret: &SecretString) -> Vec<Zeroizing<Vec<u8>>> {
    let raw = secret.expose_secret().as_bytes().to_vec();
    let encoded: String = url::form_urlencoded::byte_serialize(&raw).collect();
    let mut out = vec![Zeroizing::new(raw)];
    if encoded.as_bytes() != out[0].as_slice() {
        out.push(Zeroizing::new(encoded.into_bytes()));
    }
    // Very short values would mask ordinary text; keys are far longer than this.
    out.retain(|p| p.len() >= 8);
    out
}

/// Masks every occurrence of every pattern in `buf`.
fn mask(buf: &mut [u8], patterns: &[Zeroizing<Vec<u8>>]) {
    for pattern in patterns {
        let n = pattern.len();
        let mut i = 0;
        while i + n <= buf.len() {
            if buf[i..i + n] == pattern[..] {
                buf[i..i + n].fill(b'*');
                i += n;
            } else {
                i += 1;
            }
        }
    }
}

/// How many trailing bytes of `buf` could begin an occurrence of some pattern.
fn partial_match_len(buf: &[u8], patterns: &[Zeroizing<Vec<u8>>]) -> usize {
    let longest = patterns
        .iter()
        .map(|p| p.len() - 1)
        .max()
        .unwrap_or(0)
        .min(buf.len());
    (1..=longest)
        .rev()
        .find(|&k| {
            patterns
                .iter()
                .any(|p| k < p.len() && buf[buf.len() - k..] == p[..k])
        })
        .unwrap_or(0)
}

/// A whole body with the key masked (for answers kept in the cache).
pub fn redact_bytes(body: &[u8], secret: &SecretString) -> Bytes {
    let mut out = body.to_vec();
    mask(&mut out, &patterns(secret));
    Bytes::from(out)
}

/// Wraps a response body stream so the key never passes through it.
pub fn redact_stream<S, E>(
    body: S,
    secret: &SecretString,
) -> impl Stream<Item = Result<Bytes, E>> + Send + 'static
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: Send + 'static,
{
    let patterns = patterns(secret);
    futures_util::stream::unfold(
        (Box::pin(body), BytesMut::new(), patterns, false),
        move |(mut body, mut pending, patterns, done)| async move {
            use futures_util::StreamExt;
            if done {
                return None;
            }
            loop {
                match body.next().await {
                    Some(Ok(chunk)) => {
                        pending.extend_from_slice(&chunk);
                        mask(&mut pending, &patterns);
                        let hold = partial_match_len(&pending, &patterns);
                        if pending.len() > hold {
                            let ready = pending.split_to(pending.len() - hold).freeze();
                            return Some((Ok(ready), (body, pending, patterns, false)));
                        }
                    }
                    Some(Err(e)) => return Some((Err(e), (body, pending, patterns, true))),
                    None => {
                        if pending.is_empty() {
                            return None;
                        }
                        let rest = pending.split().freeze();
                        return Some((Ok(rest), (body, pending, patterns, true)));
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

    async fn run(chunks: &[&str], secret: &str) -> String {
        let items: Vec<Result<Bytes, std::io::Error>> = chunks
            .iter()
            .map(|c| Ok(Bytes::from(c.to_string())))
            .collect();
        let out: Vec<_> = redact_stream(
            futures_util::stream::iter(items),
            &SecretString::from(secret.to_owned()),
        )
        .map(|r| r.expect("chunk"))
        .collect()
        .await;
        String::from_utf8(out.concat()).expect("utf8")
    }

    #[test]
    fn only_a_possible_key_prefix_is_held_back() {
        let patterns = patterns(&SecretString::from("sk-proj-SECRET123456".to_owned()));
        assert_eq!(
            partial_match_len(b"data: {}\n\n", &patterns),
            0,
            "SSE events pass at once"
        );
        assert_eq!(partial_match_len(b"key: sk-pr", &patterns), 5);
        assert_eq!(partial_match_len(b"s", &patterns), 1);
    }

    #[test]
    fn echoed_keys_are_masked_even_across_chunk_boundaries() {
        futures_executor_free::block_on(async {
            let key = "sk-proj-SECRET123456";
            let masked = "*".repeat(key.len());
            assert_eq!(
                run(&["Incorrect API key provided: sk-proj-SECRET123456."], key).await,
                format!("Incorrect API key provided: {masked}.")
            );
            assert_eq!(
                run(
                    &["a sk-proj-SEC", "RET123456 b sk-p", "roj-SECRET123456"],
                    key
                )
                .await,
                format!("a {masked} b {masked}")
            );
            assert_eq!(
                run(&["no secret here", " at all"], key).await,
                "no secret here at all"
            );
            assert_eq!(run(&[], key).await, "");
            let encoded = "sk%2Bproj%2FKEY0123456";
            assert_eq!(
                run(&["url=", encoded], "sk+proj/KEY0123456").await,
                format!("url={}", "*".repeat(encoded.len()))
            );
        });
    }

    /// A minimal executor so this unit test needs no async runtime dependency.
    mod futures_executor_free {
        pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
            use std::task::{Context, Poll, Waker};
            let mut future = std::pin::pin!(future);
            let mut cx = Context::from_waker(Waker::noop());
            loop {
                if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
                    return out;
                }
            }
        }
    }
}
