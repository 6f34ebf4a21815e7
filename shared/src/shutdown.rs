//! Graceful shutdown: one token every task watches, one tracker every task joins, and the
//! signal wait the binaries share.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Cancel to stop accepting and wind connections down; wait on the tracker for them to end.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    pub token: CancellationToken,
    pub tracker: TaskTracker,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts the shutdown and waits for every tracked task, at most `grace`.
    /// Returns false when tasks were still running at the deadline.
    pub async fn finish(&self, grace: Duration) -> bool {
        self.token.cancel();
        self.tracker.close();
        tokio::time::timeout(grace, self.tracker.wait()).await.is_ok()
    }
}

/// Which signal asked the process to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM: an orchestrator's stop; nodes drain (rolling restart).
    Term,
    /// SIGINT (Ctrl-C): stop now.
    Int,
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C), saying which.
pub async fn signal() -> Signal {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cannot watch SIGTERM: {e}");
                let _ = tokio::signal::ctrl_c().await;
                return Signal::Int;
            }
        };
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); Signal::Term }
            _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT: shutting down"); Signal::Int }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        Signal::Int
    }
}

/// Installs the `tracing` subscriber every binary uses: `RUST_LOG`, default `info`.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_target(false).try_init();
}
