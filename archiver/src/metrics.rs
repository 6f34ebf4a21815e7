//! The archiver's `/metrics` (Prometheus text) and `/healthz`, on a small listener of its
//! own: lag in entries and seconds, batches, rows, failures, dead letters, claims.

use std::convert::Infallible;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use shared::http::Body;
use shared::metrics::{Counter, Exposition, Gauge, Histogram};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Default)]
pub struct Metrics {
    /// Transactions committed, and how long each took.
    pub batches: Counter,
    pub batch_seconds: Histogram,
    /// Rows offered in committed batches, and the ones that were new (the rest were
    /// archived before: a retry, a claimed entry, a spanning room's other holders).
    pub rows: Counter,
    pub inserted: Counter,
    /// Writes that failed (each retry counts).
    pub failures: Counter,
    /// Entries given up on (malformed, or refused `max_failures` times), with the reason
    /// in the dead-letter stream or the log.
    pub dead: Counter,
    /// Entries taken over from a silent archiver.
    pub claimed: Counter,
    /// Queue entries not archived yet (pending included), over every shard.
    pub lag_entries: Gauge,
    /// Age of the oldest entry not archived yet, in milliseconds.
    pub lag_ms: Gauge,
    /// 0 while writes fail for the database's own reasons (down, restarting).
    pub db_up: Gauge,
    /// Queue (Redis) errors that made the archiver reconnect.
    pub queue_errors: Counter,
    /// Messages retention deleted (`archive_days`).
    pub expired: Counter,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let m = Self::default();
        m.db_up.set(1);
        Arc::new(m)
    }

    pub fn render(&self) -> String {
        let mut e = Exposition::new();
        e.counter(
            "archiver_batches_total",
            "Batches committed (one transaction each).",
            &self.batches,
        );
        e.histogram(
            "archiver_batch_seconds",
            "Time to write one committed batch.",
            &self.batch_seconds,
        );
        e.counter("archiver_rows_total", "Messages in committed batches.", &self.rows);
        e.counter(
            "archiver_inserted_total",
            "Messages new to the archive (the rest were already there).",
            &self.inserted,
        );
        e.counter(
            "archiver_failures_total",
            "Writes that failed (each retry counts).",
            &self.failures,
        );
        e.counter("archiver_dead_total", "Entries dead-lettered with a reason.", &self.dead);
        e.counter(
            "archiver_claimed_total",
            "Entries claimed from a silent archiver.",
            &self.claimed,
        );
        e.counter("archiver_queue_errors_total", "Queue errors (reconnects).", &self.queue_errors);
        e.counter(
            "archiver_expired_total",
            "Messages retention deleted (archive_days).",
            &self.expired,
        );
        e.gauge(
            "archiver_lag_entries",
            "Queue entries not archived yet, over every shard.",
            self.lag_entries.get(),
        );
        e.gauge_f64(
            "archiver_lag_seconds",
            "Age of the oldest queue entry not archived yet.",
            self.lag_ms.get() as f64 / 1000.0,
        );
        e.gauge(
            "archiver_db_up",
            "0 while the database refuses writes for its own reasons.",
            self.db_up.get(),
        );
        e.finish()
    }
}

/// Serves `GET /metrics` and `GET /healthz` on `listener` until `token` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    token: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            _ = token.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::debug!("metrics accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let m = metrics.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let m = m.clone();
                async move { Ok::<_, Infallible>(route(&m, &req)) }
            });
            if let Err(e) = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await
            {
                tracing::debug!("metrics http: {e}");
            }
        });
    }
}

fn route(m: &Metrics, req: &Request<Incoming>) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => shared::http::metrics_text(m.render()),
        (&Method::GET, "/healthz") => shared::http::text(StatusCode::OK, "ok"),
        _ => shared::http::json_error(
            StatusCode::NOT_FOUND,
            "unknown path: GET /metrics or /healthz",
        ),
    }
}
