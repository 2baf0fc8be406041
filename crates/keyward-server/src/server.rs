//! Starting and running `keyward serve`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use keyward_core::SystemClock;
use keyward_crypto::OsRandomness;
use tokio::net::TcpListener;

use crate::app::App;
use crate::config::Settings;
use crate::vault::{self, VaultError};

/// A server whose vault is open and whose socket is bound, not yet serving.
#[derive(Debug)]
pub struct Started {
    pub app: Arc<App>,
    pub listener: TcpListener,
    pub addr: SocketAddr,
    /// The master key file this start created (first run), to warn about.
    pub created_key_file: Option<std::path::PathBuf>,
}

pub async fn start(settings: &Settings) -> Result<Started, VaultError> {
    let clock = Arc::new(SystemClock);
    let random = Arc::new(OsRandomness);
    let vault = vault::open(settings, &*random, &*clock).await?;
    let app = Arc::new(App::new(
        vault.store,
        vault.keyring,
        clock,
        random,
        settings.recovery_window,
        settings.usage_retention_days,
        settings.pricing.clone(),
    )?);
    app.refresh_proxy().await?;
    app.restore_meters().await?;
    let listener = TcpListener::bind(settings.listen)
        .await
        .map_err(|e| VaultError(format!("cannot listen on {}: {e}", settings.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| VaultError(format!("cannot read the bound address: {e}")))?;
    Ok(Started {
        app,
        listener,
        addr,
        created_key_file: vault.created_key_file,
    })
}

impl Started {
    /// Serves until `shutdown` resolves, then closes the store cleanly (SQLite checkpoints
    /// its WAL into the database file).
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), VaultError> {
        let purger = tokio::spawn(purge_loop(self.app.clone()));
        let watcher = tokio::spawn(snapshot_loop(self.app.clone()));
        let (stop_recording, stop) = tokio::sync::oneshot::channel();
        let recorder = self
            .app
            .take_proxy_events()
            .map(|events| tokio::spawn(record_events(self.app.clone(), events, stop)));
        let router = crate::http::router(self.app.clone())
            .into_make_service_with_connect_info::<SocketAddr>();
        let result = axum::serve(self.listener, router)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|e| VaultError(format!("server error: {e}")));
        purger.abort();
        watcher.abort();
        // Every connection has ended, so every call has sent its events: write them all
        // before closing the store.
        let _ = stop_recording.send(());
        if let Some(recorder) = recorder
            && let Err(e) = recorder.await
        {
            tracing::warn!(error = %e, "the usage writer did not finish");
        }
        self.app.store.close().await;
        result
    }
}

/// Hourly housekeeping, first run at start: purge keys whose recovery window has passed,
/// prune usage records past their retention, then refresh planner statistics.
async fn purge_loop(app: Arc<App>) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tick.tick().await;
        if let Err(e) = app.purge_expired().await {
            tracing::warn!(error = %e, "scheduled purge failed; will retry");
        }
        if let Err(e) = app.prune_usage().await {
            tracing::warn!(error = %e, "pruning old usage records failed; will retry");
        }
        if let Err(e) = app.store.maintain().await {
            tracing::warn!(error = %e, "store maintenance failed; will retry");
        }
    }
}

/// Keeps the proxy snapshot current with changes made by other instances: polls the
/// store's change marker twice a second and rebuilds only when it moved, so a revocation
/// anywhere takes effect everywhere within a second. (Changes made through
/// this instance are applied before their API call returns.)
async fn snapshot_loop(app: Arc<App>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = None;
    loop {
        tick.tick().await;
        if let Err(e) = app.refresh_proxy_if_changed(&mut last).await {
            tracing::warn!(error = %e, "could not check for changes; the proxy keeps its current snapshot");
        }
    }
}

/// Writes the proxy's events (usage records, last use, key flags) in batches: the first
/// event opens a quarter-second window, and everything queued when it closes goes in one
/// transaction per table. The channel is not polled during the window, so senders never
/// wake this task per event (that cost one cross-thread wake-up per proxied call). When
/// `stop` fires it writes whatever is still queued and returns.
async fn record_events(
    app: Arc<App>,
    mut events: tokio::sync::mpsc::Receiver<keyward_proxy::ProxyEvent>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let mut stopping = false;
    while !stopping {
        let first = tokio::select! {
            first = events.recv() => first,
            _ = &mut stop => None,
        };
        let Some(first) = first else { break };
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = &mut stop => stopping = true,
        }
        let mut batch = vec![first];
        while let Ok(event) = events.try_recv() {
            batch.push(event);
        }
        write_events(&app, batch).await;
    }
    let mut rest = Vec::new();
    while let Ok(event) = events.try_recv() {
        rest.push(event);
    }
    if !rest.is_empty() {
        write_events(&app, rest).await;
    }
}

async fn write_events(app: &App, batch: Vec<keyward_proxy::ProxyEvent>) {
    let count = batch.len();
    if let Err(e) = app.record_events(batch).await {
        tracing::warn!(error = %e, events = count, "could not record proxy events");
    }
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
