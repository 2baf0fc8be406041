//! The background jobs, started and stopped in one place: every loop the server runs
//! beside answering requests. Each calls one use case per tick and logs (never stops on) a
//! failure; every instance runs all of them, and the store's compare-and-set decides which
//! instance takes a step that must happen once.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use keyward_app::App;
use keyward_proxy::ProxyEvent;
use secrecy::{ExposeSecret, SecretString};
use tokio::task::JoinHandle;

use crate::metrics::Metrics;

/// The running jobs.
#[derive(Debug)]
pub struct Jobs {
    loops: Vec<JoinHandle<()>>,
    stop_recording: Option<tokio::sync::oneshot::Sender<()>>,
    recorder: Option<JoinHandle<()>>,
}

/// What the jobs need beyond the use cases.
#[derive(Debug, Clone)]
pub struct JobSettings {
    pub audit_checkpoint_every: Duration,
    pub audit_webhook_url: Option<SecretString>,
    pub backup: crate::config::BackupSettings,
    pub retention: crate::config::RetentionSettings,
}

impl Jobs {
    /// Starts every loop: hourly purges and pruning, audit checkpoints, the snapshot's
    /// freshness check, guided rotations, notifications, health, the anomaly watcher, the
    /// audit webhook (when
    /// configured) and the writer of the proxy's events.
    pub fn start(app: &Arc<App>, metrics: &Arc<Metrics>, settings: JobSettings) -> Self {
        let mut loops = vec![
            tokio::spawn(purge_loop(app.clone(), settings.retention)),
            tokio::spawn(checkpoint_loop(
                app.clone(),
                settings.audit_checkpoint_every,
            )),
            tokio::spawn(snapshot_loop(app.clone())),
            tokio::spawn(rotation_loop(app.clone())),
            tokio::spawn(notification_loop(app.clone())),
            tokio::spawn(health_loop(app.clone())),
            tokio::spawn(watch_loop(app.clone())),
            tokio::spawn(master_key_loop(app.clone())),
            tokio::spawn(backup_loop(app.clone(), metrics.clone(), settings.backup)),
        ];
        if let Some(shared) = app.proxy.shared_limits() {
            loops.push(tokio::spawn(shared_limits_loop(
                app.clone(),
                shared.clone(),
            )));
        }
        if let Some(url) = settings.audit_webhook_url {
            loops.push(tokio::spawn(audit_webhook_loop(
                app.clone(),
                url,
                Duration::from_secs(1),
            )));
        }
        let (stop_recording, stop) = tokio::sync::oneshot::channel();
        let recorder = app
            .take_proxy_events()
            .map(|events| tokio::spawn(record_events(app.clone(), metrics.clone(), events, stop)));
        Self {
            loops,
            stop_recording: Some(stop_recording),
            recorder,
        }
    }

    /// Stops the loops, then writes every proxy event still queued (call it once every
    /// connection has ended, so every call has sent its events).
    pub async fn stop(mut self) {
        for job in &self.loops {
            job.abort();
        }
        if let Some(stop) = self.stop_recording.take() {
            let _ = stop.send(());
        }
        if let Some(recorder) = self.recorder.take()
            && let Err(e) = recorder.await
        {
            tracing::warn!(error = %e, "the usage writer did not finish");
        }
    }
}

/// Every 10 s (two settings reads): takes the scheduled backup when this instance wins its
/// slot (writes it to `backup_dir`, deletes the oldest beyond `backup_keep`, keeps the
/// outcome in the vault), and shows the vault's last outcome in `/metrics` (whichever
/// instance made it).
async fn backup_loop(
    app: Arc<App>,
    metrics: Arc<Metrics>,
    settings: crate::config::BackupSettings,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Some(every) = settings.every {
            match app.claim_scheduled_backup(every).await {
                Ok(true) => scheduled_backup(&app, &settings).await,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "cannot claim the scheduled backup"),
            }
        }
        match app.last_scheduled_backup().await {
            Ok(last) => metrics.backup_status(settings.every.is_some(), last.as_ref()),
            Err(e) => tracing::warn!(error = %e, "cannot read the last backup's outcome"),
        }
    }
}

async fn scheduled_backup(app: &App, settings: &crate::config::BackupSettings) {
    let started = std::time::Instant::now();
    let path = crate::backups::default_path(&settings.dir, app.now());
    let file = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let written = match settings.protection() {
        Ok(protection) => {
            crate::backups::write_file(
                app,
                &keyward_app::Actor::system("backup-schedule"),
                protection,
                settings.raw_usage,
                &path,
            )
            .await
        }
        Err(e) => Err(e),
    };
    let record = match written {
        Ok((manifest, bytes)) => {
            tracing::info!(file = %path.display(), bytes, rows = manifest.rows(), "scheduled backup written");
            match crate::backups::prune(&settings.dir, settings.keep) {
                Ok(0) => {}
                Ok(deleted) => tracing::info!(deleted, keep = settings.keep, "old backups deleted"),
                Err(e) => tracing::warn!(error = %e, "cannot delete old backups"),
            }
            keyward_app::backup::BackupRecord {
                at: app.now().as_millisecond(),
                file,
                bytes,
                rows: manifest.rows(),
                seconds: started.elapsed().as_secs_f64(),
                error: None,
                last_success_at: None,
            }
        }
        Err(error) => {
            tracing::error!(error = %error, "scheduled backup failed");
            keyward_app::backup::BackupRecord {
                at: app.now().as_millisecond(),
                file: String::new(),
                bytes: 0,
                rows: 0,
                seconds: started.elapsed().as_secs_f64(),
                error: Some(error),
                last_success_at: None,
            }
        }
    };
    if let Err(e) = app.record_scheduled_backup(record).await {
        tracing::warn!(error = %e, "cannot record the backup's outcome");
    }
}

/// Delivers notifications every second and scans for reminders every five minutes.
async fn notification_loop(app: Arc<App>) {
    let client = match keyward_proxy::Outbound::new(Duration::from_secs(10)) {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "notifications cannot start");
            return;
        }
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_scan: Option<Timestamp> = None;
    loop {
        tick.tick().await;
        let now = app.now();
        if last_scan.is_none_or(|at| now.duration_since(at) >= jiff::SignedDuration::from_mins(5)) {
            last_scan = Some(now);
            if let Err(e) = app.scan_reminders().await {
                tracing::warn!(error = %e, "could not scan for reminders; will retry");
            }
        }
        if let Err(e) = app.deliver_notifications(&client).await {
            tracing::warn!(error = %e, "could not deliver notifications; will retry");
        }
    }
}

/// Every second: judge the minutes of usage that have settled (`App::watch_usage`) and
/// raise alerts (the first call replays the minute rollups kept, to learn); then move
/// open alerts along the response policy (`App::escalate_alerts`); once a minute, announce
/// quotas and budgets about to run out (`App::announce_forecasts`).
async fn watch_loop(app: Arc<App>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut forecast_tick = tokio::time::Instant::now();
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = app.watch_usage().await {
            tracing::warn!(error = %e, "could not watch usage for anomalies; will retry");
        }
        if let Err(e) = app.escalate_alerts().await {
            tracing::warn!(error = %e, "could not escalate open alerts; will retry");
        }
        // Forecasts move with the hour's sums: once a minute is enough.
        if forecast_tick.elapsed() >= Duration::from_secs(60) {
            forecast_tick = tokio::time::Instant::now();
            if let Err(e) = app.announce_forecasts().await {
                tracing::warn!(error = %e, "could not announce forecasts; will retry");
            }
        }
    }
}

/// Every 30 seconds: probe the keys whose probe is due, then announce health changes.
async fn health_loop(app: Arc<App>) {
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = app.run_probes().await {
            tracing::warn!(error = %e, "could not run health probes; will retry");
        }
        if let Err(e) = app.announce_health_changes().await {
            tracing::warn!(error = %e, "could not check health changes; will retry");
        }
    }
}

/// Streams the trail to `url` as JSON Lines, oldest first, from where the last delivery
/// stopped (the whole history on first use). Delivery is at least once: a batch is resent
/// until a 2xx answer, with backoff up to a minute, and instances sharing a database may
/// both send one — receivers deduplicate by `seq`. Each call carries
/// `X-Keyward-Audit-Last-Seq`.
async fn audit_webhook_loop(app: Arc<App>, url: SecretString, poll: Duration) {
    let client = match keyward_proxy::Outbound::new(Duration::from_secs(10)) {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "the audit webhook cannot start");
            return;
        }
    };
    let mut backoff = poll;
    loop {
        let delivered =
            keyward_app::audit::deliver_webhook_batch(&app, &client, url.expose_secret()).await;
        let wait = match delivered {
            Ok(true) => {
                backoff = poll;
                Duration::ZERO
            }
            Ok(false) => {
                backoff = poll;
                poll
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_s = backoff.as_secs_f64(), "audit webhook delivery failed; will retry");
                let wait = backoff;
                backoff = (backoff * 2).min(Duration::from_secs(60));
                wait
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// Hourly housekeeping, first run at start: purge keys whose recovery window has passed,
/// prune usage records past their retention, then refresh planner statistics.
/// Signs the audit chain's head every `every` when it moved, so a trail rewritten later
/// (even with every hash recomputed) no longer matches a signature.
async fn checkpoint_loop(app: Arc<App>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = app.sign_checkpoint().await {
            tracing::warn!(error = %e, "could not sign an audit checkpoint; will retry");
        }
    }
}

async fn purge_loop(app: Arc<App>, retention: crate::config::RetentionSettings) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tick.tick().await;
        if let Err(e) = app.purge_expired().await {
            tracing::warn!(error = %e, "scheduled purge failed; will retry");
        }
        if let Some(days) = retention.audit_days {
            prune_audit(&app, days, &retention.audit_archive_dir).await;
        }
        if let Err(e) = app.prune_notification_logs().await {
            tracing::warn!(error = %e, "pruning old notification deliveries failed; will retry");
        }
        if let Err(e) = app.prune_sessions().await {
            tracing::warn!(error = %e, "pruning ended sessions failed; will retry");
        }
        if let Err(e) = app.prune_usage().await {
            tracing::warn!(error = %e, "pruning old usage records failed; will retry");
        }
        if let Err(e) = app.maintain_store().await {
            tracing::warn!(error = %e, "store maintenance failed; will retry");
        }
    }
}

/// Exports audit entries older than `days` to a new file in `dir`, then prunes them.
async fn prune_audit(app: &App, days: u32, dir: &std::path::Path) {
    let now = app.now();
    let before = now
        .saturating_sub(jiff::SignedDuration::from_hours(24 * i64::from(days)))
        .unwrap_or(Timestamp::MIN);
    let mut archive = crate::backups::ArchiveFile::new(
        dir.join(format!("audit-{}.jsonl", now.strftime("%Y%m%dT%H%M%SZ"))),
    );
    match app
        .prune_audit(
            &keyward_app::Actor::system("retention"),
            before,
            &mut archive,
        )
        .await
    {
        Ok(Some(pruned)) => tracing::info!(
            from = pruned.from,
            through = pruned.through,
            archive = %archive.path().display(),
            "audit entries exported and pruned"
        ),
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "pruning the audit trail failed; will retry"),
    }
}

/// Moves guided rotations on by themselves (`App::run_rotations`): retires old values whose
/// dual-key window has ended and resumes managed rotations a crash interrupted. Every
/// instance runs it; the store's compare-and-set lets only one of them take each step.
async fn rotation_loop(app: Arc<App>) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = app.run_rotations().await {
            tracing::warn!(error = %e, "could not check rotations; will retry");
        }
    }
}

/// Follows the master keys (a changed key file, a rotation made elsewhere) and reports what
/// this instance holds, every 2 s.
async fn master_key_loop(app: Arc<App>) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = app.follow_master_keys().await {
            tracing::warn!(error = %e, "could not check the master keys");
        }
        if let Err(e) = app.report_instance().await {
            tracing::warn!(error = %e, "could not report this instance's master keys");
        }
    }
}

/// Keeps the Redis-backed limits going: announces this instance and shares open circuits
/// every second (which also ends an outage as soon as Redis answers) and sends queued
/// settlements every 100 ms.
async fn shared_limits_loop(app: Arc<App>, shared: Arc<keyward_proxy::shared::SharedLimits>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks = 0u64;
    loop {
        tick.tick().await;
        if ticks.is_multiple_of(10) {
            shared.heartbeat().await;
            app.proxy.share_circuits().await;
        }
        ticks = ticks.wrapping_add(1);
        shared.flush().await;
    }
}

/// How often the change number is read to confirm the snapshot is current while a listener
/// hears nothing (and how soon a lost listener is made again). Well inside the default
/// `max_snapshot_staleness` (10 s), so a healthy instance never comes near it.
const CONFIRM_EVERY: Duration = Duration::from_secs(1);

/// How often the change number is read where the store cannot notify (SQLite): one row.
const POLL_EVERY: Duration = Duration::from_millis(250);

/// How the snapshot loop hears of changes.
enum Feed {
    /// Told at once of every commit (PostgreSQL `LISTEN`), confirmed every second.
    Listening(Box<dyn keyward_core::ports::ChangeListener>),
    /// The store cannot notify: the change number is read four times a second.
    Polling,
    /// The listener could not be made yet: poll every second and try again.
    Unconnected,
}

/// Keeps the proxy snapshot current with changes made by other instances: rebuilds when the
/// store's change number moved — at once when the store notifies, else within a quarter of
/// a second — and confirms it current at least every second, so a revocation anywhere
/// takes effect everywhere within a second. After a lost listener connection it resyncs in
/// full (notifications sent meanwhile are gone). While the store cannot be reached nothing
/// confirms the snapshot, and past `max_snapshot_staleness` the proxy refuses calls until
/// it can. (Changes made through this instance are applied before their API call returns.)
async fn snapshot_loop(app: Arc<App>) {
    let mut feed = Feed::Unconnected;
    let mut last = None;
    let mut failing = false;
    loop {
        match &mut feed {
            Feed::Listening(listener) => {
                match tokio::time::timeout(CONFIRM_EVERY, listener.next()).await {
                    // Quiet for a second (the number is read to confirm), or told of a change.
                    Err(_) | Ok(Ok(keyward_core::ports::ChangeSignal::Changed)) => {}
                    Ok(Ok(keyward_core::ports::ChangeSignal::Lost)) => {
                        tracing::info!(
                            "the change listener lost its connection; resyncing in full"
                        );
                        last = None;
                    }
                    Ok(Err(e)) => {
                        if !failing {
                            tracing::warn!(error = %e, "the change listener cannot reconnect yet");
                        }
                        last = None;
                        tokio::time::sleep(CONFIRM_EVERY).await;
                    }
                }
            }
            Feed::Polling => tokio::time::sleep(POLL_EVERY).await,
            Feed::Unconnected => match app.change_listener().await {
                Ok(Some(listener)) => {
                    feed = Feed::Listening(listener);
                    last = None;
                }
                Ok(None) => feed = Feed::Polling,
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "cannot listen for changes yet; polling");
                    }
                    tokio::time::sleep(CONFIRM_EVERY).await;
                }
            },
        }
        match app.refresh_proxy_if_changed(&mut last).await {
            Ok(_) if failing => {
                tracing::info!("the store answers again; the proxy's snapshot is current");
                failing = false;
            }
            Ok(_) => {}
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot confirm the proxy's snapshot is current; it keeps serving until max_snapshot_staleness, then refuses calls");
                }
                failing = true;
            }
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
    metrics: Arc<Metrics>,
    mut events: tokio::sync::mpsc::Receiver<ProxyEvent>,
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
        write_events(&app, &metrics, batch).await;
    }
    let mut rest = Vec::new();
    while let Ok(event) = events.try_recv() {
        rest.push(event);
    }
    if !rest.is_empty() {
        write_events(&app, &metrics, rest).await;
    }
}

async fn write_events(app: &App, metrics: &Metrics, batch: Vec<ProxyEvent>) {
    let count = batch.len();
    metrics.observe(
        batch.iter().filter_map(|event| match event {
            ProxyEvent::Usage(record) => Some(&**record),
            _ => None,
        }),
        |service| app.proxy.knows_service(service),
    );
    if let Err(e) = app.record_events(batch).await {
        metrics.usage_write_failed();
        tracing::warn!(error = %e, events = count, "could not record proxy events");
    }
}
