//! Starting and running `keyward serve`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http;
use keyward_core::SystemClock;
use keyward_crypto::OsRandomness;
use tokio::net::TcpListener;

use crate::config::Settings;
use keyward_app::App;
use keyward_app::vault::{self, VaultError};

/// A server whose vault is open and whose socket is bound, not yet serving.
#[derive(Debug)]
pub struct Started {
    pub app: Arc<App>,
    /// This server's own Prometheus recorder (never the process-global one).
    pub metrics: Arc<crate::metrics::Metrics>,
    pub listener: TcpListener,
    pub addr: SocketAddr,
    /// The master key file this start created (first run), to warn about.
    pub created_key_file: Option<std::path::PathBuf>,
    pub audit_checkpoint_every: Duration,
    pub audit_webhook_url: Option<secrecy::SecretString>,
    /// Scheduled backups (run when `every` is set).
    pub backup: crate::config::BackupSettings,
    /// Audit, rollup and notification log retention (the hourly job).
    pub retention: crate::config::RetentionSettings,
    /// HTTPS on `listener` (with HSTS), when configured.
    pub tls: Option<Arc<crate::tls::ServerTls>>,
    /// The plain-HTTP socket that only redirects to HTTPS.
    pub redirect: Option<TcpListener>,
}

pub async fn start(settings: &Settings) -> Result<Started, VaultError> {
    start_with_clock(settings, Arc::new(SystemClock)).await
}

/// [`start`] with a clock of the caller's choosing (tests move time instead of waiting).
pub async fn start_with_clock(
    settings: &Settings,
    clock: Arc<dyn keyward_core::Clock>,
) -> Result<Started, VaultError> {
    let random = Arc::new(OsRandomness);
    // Certificates are checked before the vault opens: a bad file refuses the start at once.
    let tls = settings
        .tls
        .as_ref()
        .map(|source| {
            crate::tls::ServerTls::load(
                source,
                &settings.data_dir,
                std::time::SystemTime::UNIX_EPOCH
                    + Duration::from_millis(
                        u64::try_from(clock.now().as_millisecond()).unwrap_or_default(),
                    ),
            )
            .map(Arc::new)
            .map_err(VaultError)
        })
        .transpose()?;
    let vault = vault::open(settings.vault_location(), &*random, &*clock).await?;
    let created_key_file = vault.created_key_file.clone();
    let app = Arc::new(App::new(vault, clock, random, settings.app_options())?);
    app.refresh_proxy().await?;
    app.restore_meters().await?;
    // Listed among the instances before serving: a rotation waits for it from now on.
    app.report_instance().await?;
    // Learn at once whether Redis answers (an unreachable one is logged, not fatal).
    if let Some(shared) = app.proxy.shared_limits() {
        shared.heartbeat().await;
    }
    let listener = TcpListener::bind(settings.listen)
        .await
        .map_err(|e| VaultError(format!("cannot listen on {}: {e}", settings.listen)))?;
    let redirect = match settings.tls_redirect_listen {
        Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| {
            VaultError(format!(
                "cannot listen on {addr} (tls_redirect_listen): {e}"
            ))
        })?),
        None => None,
    };
    let addr = listener
        .local_addr()
        .map_err(|e| VaultError(format!("cannot read the bound address: {e}")))?;
    Ok(Started {
        app,
        metrics: Arc::default(),
        listener,
        addr,
        created_key_file,
        audit_checkpoint_every: settings.audit_checkpoint_every,
        audit_webhook_url: settings.audit_webhook_url.clone(),
        backup: settings.backup.clone(),
        retention: settings.retention.clone(),
        tls,
        redirect,
    })
}

impl Started {
    /// Serves until `shutdown` resolves, then closes the store cleanly (SQLite checkpoints
    /// its WAL into the database file).
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), VaultError> {
        let jobs = crate::jobs::Jobs::start(
            &self.app,
            &self.metrics,
            crate::jobs::JobSettings {
                audit_checkpoint_every: self.audit_checkpoint_every,
                audit_webhook_url: self.audit_webhook_url.clone(),
                backup: self.backup.clone(),
                retention: self.retention.clone(),
            },
        );
        let router = crate::routes::router(self.app.clone(), self.metrics.clone());
        // As many lanes as the proxy has connection pools (one per CPU).
        let lanes = self.app.proxy.lanes();
        let mut helpers = Vec::new();
        if let Some(tls) = &self.tls {
            let tls = tls.clone();
            helpers.push(tokio::spawn(async move {
                tls.watch(CERTIFICATE_CHECK_EVERY).await;
            }));
        }
        if let Some(redirect) = self.redirect {
            helpers.push(tokio::spawn(redirect_to_https(redirect, self.addr.port())));
        }
        let result = serve_on_lanes(
            &self.app,
            router,
            self.listener,
            lanes,
            self.tls.as_ref().map(|tls| tls.config.clone()),
            shutdown,
        )
        .await;
        for helper in helpers {
            helper.abort();
        }
        // Every connection has ended, so every call has sent its events: the jobs write
        // them all before the store closes.
        jobs.stop().await;
        if let Some(shared) = self.app.proxy.shared_limits() {
            shared.flush().await;
        }
        if let Err(e) = self.app.forget_instance().await {
            tracing::warn!(error = %e, "could not take this instance off the list");
        }
        if let Err(e) = self.app.sign_checkpoint().await {
            tracing::warn!(error = %e, "could not sign the audit trail's last checkpoint");
        }
        self.app.close().await;
        result
    }
}

/// Serves on `lanes` OS threads, each running its own single-threaded runtime that serves
/// the connections handed to it start to finish; connections are accepted here, on the main
/// runtime, and dealt to the lanes in turn (with a shared listening socket the kernel woke
/// one thread for most connections: measured 73 % / 18 % of the CPU; dealt, 46 % / 45 %).
/// A proxied call then stays on one thread from accept to answer, with that lane's own
/// upstream connections: no work stealing and no cross-thread wake-ups, each of which costs
/// a futex and an inter-processor interrupt. Management calls are handed to the main
/// runtime (see `http::dispatch`). Returns once `shutdown` fired, accepting stopped and every
/// lane's last connection closed.
async fn serve_on_lanes(
    app: &Arc<App>,
    router: axum::Router,
    listener: TcpListener,
    lanes: usize,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), VaultError> {
    let mut senders = Vec::with_capacity(lanes);
    let mut finished = Vec::with_capacity(lanes);
    for index in 0..lanes.max(1) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| VaultError(format!("cannot start a serving runtime: {e}")))?;
        let (connections, incoming) = tokio::sync::mpsc::unbounded_channel();
        let (done, finished_here) = tokio::sync::oneshot::channel::<()>();
        let (app, router) = (app.clone(), router.clone());
        let main = tokio::runtime::Handle::current();
        let tls = tls.clone().map(tokio_rustls::TlsAcceptor::from);
        std::thread::Builder::new()
            .name(format!("keyward-http-{index}"))
            .spawn(move || {
                runtime.block_on(serve_lane(index, app, router, main, tls, incoming));
                drop(done);
            })
            .map_err(|e| VaultError(format!("cannot start a serving thread: {e}")))?;
        senders.push(connections);
        finished.push(finished_here);
    }
    let mut shutdown = std::pin::pin!(shutdown);
    let mut next = 0usize;
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "cannot hand a connection to a serving thread");
                continue;
            }
        };
        // A lane that has stopped (it cannot, short of a panic) loses only this connection.
        let _ = senders[next % senders.len()].send((stream, peer));
        next = next.wrapping_add(1);
    }
    drop(listener);
    // Closing the channels tells each lane to finish its open requests and stop.
    drop(senders);
    for lane in finished {
        let _ = lane.await;
    }
    Ok(())
}

/// One serving thread: serves the connections it is dealt (after the TLS handshake, with
/// HTTPS) until the channel closes, then lets every open connection finish the request it
/// is serving (graceful shutdown).
async fn serve_lane(
    lane: usize,
    app: Arc<App>,
    router: axum::Router,
    main: tokio::runtime::Handle,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut incoming: tokio::sync::mpsc::UnboundedReceiver<(std::net::TcpStream, SocketAddr)>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};

    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let hsts = tls.is_some();
    while let Some((stream, peer)) = incoming.recv().await {
        let stream = match tokio::net::TcpStream::from_std(stream) {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "a serving thread cannot take a connection");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (app, router, main) = (app.clone(), router.clone(), main.clone());
        let service = hyper::service::service_fn(move |request| {
            let (app, router, main) = (app.clone(), router.clone(), main.clone());
            async move {
                let mut response =
                    crate::http::dispatch(app, router, main, peer, lane, request).await;
                if hsts {
                    response.headers_mut().insert(
                        http::header::STRICT_TRANSPORT_SECURITY,
                        http::HeaderValue::from_static(HSTS),
                    );
                }
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder.timer(TokioTimer::new());
        match &tls {
            None => {
                let connection =
                    graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            Some(acceptor) => {
                let (acceptor, watcher) = (acceptor.clone(), graceful.watcher());
                tokio::spawn(async move {
                    let stream = match tokio::time::timeout(
                        HANDSHAKE_TIMEOUT,
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!("TLS handshake timed out");
                            return;
                        }
                    };
                    let connection =
                        watcher.watch(builder.serve_connection(TokioIo::new(stream), service));
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
        }
    }
    graceful.shutdown().await;
}

/// Browsers remember for a year to come back over HTTPS only (not for subdomains: that is
/// the domain owner's call).
const HSTS: &str = "max-age=31536000";

/// A client that connects and never finishes the handshake is dropped after this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the certificate files are checked for a change.
const CERTIFICATE_CHECK_EVERY: Duration = Duration::from_secs(2);

/// The plain-HTTP port: every request is answered `308` to the same path on the HTTPS
/// listener (same host, the HTTPS port), and nothing else — no page, no API, no proxy.
async fn redirect_to_https(listener: TcpListener, https_port: u16) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let service = hyper::service::service_fn(
            move |request: http::Request<hyper::body::Incoming>| async move {
                Ok::<_, std::convert::Infallible>(https_redirect(&request, https_port))
            },
        );
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder.timer(TokioTimer::new());
        tokio::spawn(async move {
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// `308` to `https://<host>[:port]<path and query>`; a request without a usable `Host` gets
/// `400`.
fn https_redirect<B>(request: &http::Request<B>, https_port: u16) -> http::Response<String> {
    let host = request
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<http::uri::Authority>().ok());
    let Some(host) = host else {
        let mut answer =
            http::Response::new("a Host header is needed to redirect to HTTPS\n".to_owned());
        *answer.status_mut() = http::StatusCode::BAD_REQUEST;
        return answer;
    };
    let port = if https_port == 443 {
        String::new()
    } else {
        format!(":{https_port}")
    };
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    let location = format!("https://{}{port}{path}", host.host());
    let mut answer = http::Response::new(String::new());
    *answer.status_mut() = http::StatusCode::PERMANENT_REDIRECT;
    if let Ok(value) = http::HeaderValue::from_str(&location) {
        answer.headers_mut().insert(http::header::LOCATION, value);
    }
    answer
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    tracing::info!("shutting down");
}
