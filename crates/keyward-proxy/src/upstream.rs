//! The client that talks to providers: hyper's pooled HTTP/1.1 client over rustls, with a
//! connect timeout and an idle-read timeout (never a total deadline, which would kill long
//! LLM streams). No redirects are followed and nothing is ever resent on its own: retries
//! are the proxy's decision.
//!
//! Why not reqwest: measured on the 2-core machine, a bare proxy spends 67 µs of CPU per
//! request through reqwest and 42 µs through this client (URL re-parsing, its tower stack,
//! per-request boxing); on the hot path that difference is most of nginx's whole cost.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Body, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use keyward_core::Error;

/// Errors of request and response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// What is sent upstream (a buffered request or the client's stream) and what the proxy
/// answers with (the upstream's stream, metered and masked, or a cached body).
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// A pooled client; cheap to clone (clones share the pool).
#[derive(Clone)]
pub(crate) struct UpstreamClient {
    client: Client<Connector, ProxyBody>,
    read_timeout: Duration,
}

impl std::fmt::Debug for UpstreamClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamClient")
            .field("read_timeout", &self.read_timeout)
            .finish_non_exhaustive()
    }
}

/// Why a request got no answer.
#[derive(Debug)]
pub(crate) enum SendError {
    /// No response head within the read timeout, or no connection within the connect one.
    Timeout,
    Failed(BoxError),
}

impl UpstreamClient {
    pub(crate) fn new(
        connect_timeout: Duration,
        read_timeout: Duration,
        idle_timeout: Duration,
    ) -> Result<Self, Error> {
        use rustls_platform_verifier::BuilderVerifierExt;
        let cannot = |e: &dyn std::fmt::Display| {
            Error::internal(format!("cannot set up TLS for upstream calls: {e}"))
        };
        // An explicit provider: rustls refuses to guess when more than one is compiled in.
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| cannot(&e))?
            .with_platform_verifier()
            .map_err(|e| cannot(&e))?
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            // Without a timer the pool only notices an idle connection's age when it is
            // next checked out; with one, idle connections are closed on time.
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .pool_idle_timeout(idle_timeout)
            .build(connector);
        Ok(Self {
            client,
            read_timeout,
        })
    }

    /// Sends one request and waits for the response head (at most the read timeout).
    pub(crate) async fn send(
        &self,
        request: http::Request<ProxyBody>,
    ) -> Result<(http::response::Parts, IdleTimeoutBody), SendError> {
        let response = tokio::time::timeout(self.read_timeout, self.client.request(request))
            .await
            .map_err(|_| SendError::Timeout)?
            .map_err(|e| {
                if has_source(&e, |s| {
                    s.downcast_ref::<std::io::Error>()
                        .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
                }) {
                    SendError::Timeout
                } else {
                    SendError::Failed(Box::new(e))
                }
            })?;
        let (parts, body) = response.into_parts();
        Ok((parts, IdleTimeoutBody::new(body, self.read_timeout)))
    }
}

/// Keyward's own outgoing calls (the audit webhook, later notifications): the same client,
/// timeouts and refusal to follow redirects as calls to providers.
#[derive(Clone, Debug)]
pub struct Outbound(UpstreamClient);

/// The most of an answer's body [`Outbound::post`] reads (then drops the connection).
const OUTBOUND_ANSWER_MAX: usize = 64 * 1024;

impl Outbound {
    pub fn new(timeout: Duration) -> Result<Self, Error> {
        UpstreamClient::new(timeout, timeout, Duration::from_secs(30)).map(Self)
    }

    /// POSTs `body` to `url` and returns the answer's status (its body is read and
    /// discarded). The error is a sentence without the URL, which may carry a credential.
    pub async fn post(
        &self,
        url: &str,
        content_type: &'static str,
        headers: &[(&'static str, String)],
        body: Bytes,
    ) -> Result<u16, String> {
        use futures_util::StreamExt;
        let mut request = http::Request::post(url).header(http::header::CONTENT_TYPE, content_type);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let request = request
            .body(full_body(body))
            .map_err(|_| "the URL is not valid".to_owned())?;
        let (parts, mut answer) = self.0.send(request).await.map_err(|e| match e {
            SendError::Timeout => "no answer in time".to_owned(),
            SendError::Failed(e) => format!("the call failed: {e}"),
        })?;
        let mut read = 0;
        while let Some(Ok(chunk)) = answer.next().await {
            read += chunk.len();
            if read > OUTBOUND_ANSWER_MAX {
                break;
            }
        }
        Ok(parts.status.as_u16())
    }
}

/// Whether `error` or anything in its source chain satisfies `test`.
pub(crate) fn has_source(
    error: &(dyn std::error::Error + 'static),
    test: impl Fn(&(dyn std::error::Error + 'static)) -> bool,
) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if test(e) {
            return true;
        }
        current = e.source();
    }
    false
}

/// The upstream's response body as a stream of data chunks that fails when the upstream
/// stays silent longer than the read timeout. The timer is only armed once a read has to
/// wait (most answers arrive whole with their head), and re-armed after every chunk.
pub(crate) struct IdleTimeoutBody {
    body: Incoming,
    timeout: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// The upstream said nothing for longer than the read timeout.
#[derive(Debug)]
pub(crate) struct IdleTimeout;

impl std::fmt::Display for IdleTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the upstream stopped sending")
    }
}

impl std::error::Error for IdleTimeout {}

impl IdleTimeoutBody {
    fn new(body: Incoming, timeout: Duration) -> Self {
        Self {
            body,
            timeout,
            timer: None,
        }
    }
}

impl Stream for IdleTimeoutBody {
    type Item = Result<Bytes, BoxError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(timer) = this.timer.as_mut() {
                        timer
                            .as_mut()
                            .reset(tokio::time::Instant::now() + this.timeout);
                    }
                    // Trailers are not passed on; only data frames carry the answer.
                    if let Ok(data) = frame.into_data() {
                        return Poll::Ready(Some(Ok(data)));
                    }
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(Box::new(e)))),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => {
                    let timeout = this.timeout;
                    let timer = this
                        .timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                    ready!(timer.as_mut().poll(cx));
                    return Poll::Ready(Some(Err(Box::new(IdleTimeout))));
                }
            }
        }
    }
}

/// A body of bytes already in memory.
pub(crate) fn full_body(bytes: Bytes) -> ProxyBody {
    http_body_util::Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A body streamed from chunks.
pub(crate) fn stream_body<S>(stream: S) -> ProxyBody
where
    S: Stream<Item = Result<Bytes, BoxError>> + Send + 'static,
{
    use futures_util::TryStreamExt;
    http_body_util::StreamBody::new(stream.map_ok(hyper::body::Frame::data)).boxed_unsync()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

    use super::*;
    use futures_util::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const SHORT: Duration = Duration::from_millis(300);

    /// A fake provider that reads the request head, then behaves as `answer` says.
    async fn provider<F, Fut>(answer: F) -> String
    where
        F: FnOnce(tokio::net::TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = stream.read(&mut buf).await.unwrap();
                if n == 0 {
                    return;
                }
                head.extend_from_slice(&buf[..n]);
            }
            answer(stream).await;
        });
        format!("http://{addr}/v1/models")
    }

    fn client() -> UpstreamClient {
        UpstreamClient::new(SHORT, SHORT, Duration::from_secs(5)).unwrap()
    }

    fn get(url: &str) -> http::Request<ProxyBody> {
        let mut request = http::Request::new(full_body(Bytes::new()));
        *request.uri_mut() = url.parse().unwrap();
        request
    }

    #[tokio::test]
    async fn an_upstream_that_never_answers_times_out() {
        let url = provider(|stream| async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(stream);
        })
        .await;
        assert!(matches!(
            client().send(get(&url)).await,
            Err(SendError::Timeout)
        ));
    }

    #[tokio::test]
    async fn garbage_or_a_reset_is_a_failure_not_an_answer() {
        let garbage = provider(|mut stream| async move {
            stream.write_all(b"this is not HTTP\r\n\r\n").await.unwrap();
        })
        .await;
        assert!(matches!(
            client().send(get(&garbage)).await,
            Err(SendError::Failed(_))
        ));
        let reset = provider(|stream| async move { drop(stream) }).await;
        assert!(matches!(
            client().send(get(&reset)).await,
            Err(SendError::Failed(_))
        ));
    }

    #[tokio::test]
    async fn a_stream_fails_once_the_upstream_falls_silent_but_not_while_it_talks() {
        let url = provider(|mut stream| async move {
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                .await
                .unwrap();
            // Three chunks, each after a pause shorter than the idle timeout (the whole
            // stream takes longer than it: there is no total deadline), then silence.
            for _ in 0..3 {
                tokio::time::sleep(SHORT / 2).await;
                stream.write_all(b"2\r\nok\r\n").await.unwrap();
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        })
        .await;
        let (parts, mut body) = client().send(get(&url)).await.unwrap();
        assert_eq!(parts.status, http::StatusCode::OK);
        for _ in 0..3 {
            assert_eq!(
                body.next().await.unwrap().unwrap(),
                Bytes::from_static(b"ok")
            );
        }
        let error = body.next().await.unwrap().unwrap_err();
        assert!(error.is::<IdleTimeout>(), "{error}");
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_failure() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", closed.local_addr().unwrap());
        drop(closed);
        assert!(matches!(
            client().send(get(&url)).await,
            Err(SendError::Failed(_))
        ));
    }

    #[derive(Debug)]
    struct Wrapped(IdleTimeout);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("wrapped")
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn an_error_is_found_anywhere_in_its_source_chain() {
        assert!(has_source(&Wrapped(IdleTimeout), |e| e.is::<IdleTimeout>()));
        assert!(!has_source(&IdleTimeout, |e| e.is::<Wrapped>()));
    }
}
