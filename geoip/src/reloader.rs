//! The background task that keeps a `GeoDb` current: reload on SIGHUP (operators' habit after
//! `geoipupdate`) and when the file's modification time changes, until cancelled.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::GeoDb;

/// How often the file is checked for a new version: GeoIP databases change weekly at most,
/// and a stat every few seconds costs nothing.
pub const DEFAULT_POLL: Duration = Duration::from_secs(5);

/// Spawns the reloader with [`DEFAULT_POLL`]; it stops when `token` is cancelled.
///
/// Must be called inside a Tokio runtime. The SIGHUP handler is installed before this returns,
/// so a SIGHUP sent afterwards reloads instead of killing the process.
pub fn spawn_reloader(db: Arc<GeoDb>, token: CancellationToken) -> JoinHandle<()> {
    spawn_reloader_every(db, token, DEFAULT_POLL)
}

/// Like [`spawn_reloader`] with a chosen poll interval (tests use milliseconds).
///
/// Reload failures are logged (once per distinct error) and the previous database stays in use.
pub fn spawn_reloader_every(
    db: Arc<GeoDb>,
    token: CancellationToken,
    poll: Duration,
) -> JoinHandle<()> {
    let hangup = Hangup::install();
    tokio::spawn(run(db, token, poll, hangup))
}

async fn run(db: Arc<GeoDb>, token: CancellationToken, poll: Duration, mut hangup: Hangup) {
    // The first check is one interval after start: the file was just opened.
    let poll = poll.max(Duration::from_millis(1));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + poll, poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_error: Option<String> = None;
    loop {
        let forced = tokio::select! {
            () = token.cancelled() => return,
            _ = ticker.tick() => false,
            () = hangup.recv() => true,
        };
        let task_db = Arc::clone(&db);
        let outcome = tokio::task::spawn_blocking(move || {
            if forced { task_db.reload().map(|()| true) } else { task_db.reload_if_changed() }
        })
        .await;
        match outcome {
            Ok(Ok(true)) => {
                last_error = None;
                tracing::info!(
                    path = %db.path().display(),
                    generation = db.generation(),
                    trigger = if forced { "sighup" } else { "mtime" },
                    "geoip database reloaded"
                );
            }
            Ok(Ok(false)) => {}
            Ok(Err(err)) => {
                let message = err.to_string();
                if forced || last_error.as_deref() != Some(message.as_str()) {
                    tracing::warn!(error = %message, "geoip reload failed; keeping the loaded database");
                }
                last_error = Some(message);
            }
            Err(join) => tracing::warn!(error = %join, "geoip reload task failed"),
        }
    }
}

/// SIGHUP as a stream that never fires where signals do not exist or cannot be installed.
struct Hangup {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangup {
    fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let signal = signal(SignalKind::hangup())
                .inspect_err(|err| {
                    tracing::warn!(error = %err, "geoip: no SIGHUP reload; polling only");
                })
                .ok();
            Self { signal }
        }
        #[cfg(not(unix))]
        {
            Self {}
        }
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(signal) = &mut self.signal {
            if signal.recv().await.is_some() {
                return;
            }
            // The signal driver is gone (runtime shutting down): stop listening.
            self.signal = None;
        }
        std::future::pending::<()>().await
    }
}
