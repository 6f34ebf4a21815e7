//! The node's counters and gauges, rendered as Prometheus text on `/metrics`.

use shared::metrics::{Counter, Exposition, Gauge, Histogram};
use shared::protocol::ErrorCode;

/// Every metric the node exports; fields are updated lock-free on the hot paths.
#[derive(Debug, Default)]
pub struct Metrics {
    pub connections: Gauge,
    pub rooms: Gauge,
    pub spanning_rooms: Gauge,
    pub upgrades: Counter,
    pub refused_full: Counter,
    pub refused_draining: Counter,
    pub refused_bad_request: Counter,
    pub refused_fd_limit: Counter,
    /// Clients a router handed over (in process or over `--handoff`), taken / given back.
    pub handoffs_taken: Counter,
    pub handoffs_refused: Counter,
    /// Upgrades without a valid token or hop header while auth is on (401/403).
    pub refused_auth: Counter,
    /// Connections closed with 4001 at their token's `exp`.
    pub token_expired_closes: Counter,
    pub messages_in: Counter,
    pub deliveries: Counter,
    pub signals: Counter,
    pub reads: Counter,
    pub slow_consumer_closes: Counter,
    pub rate_limit_closes: Counter,
    pub idle_closes: Counter,
    pub drain_closes: Counter,
    pub room_full_closes: Counter,
    pub redis_publishes: Counter,
    pub redis_publishes_avoided: Counter,
    pub redis_reconnects: Counter,
    pub redis_errors: Counter,
    pub span_handshake: Histogram,
    pub bus_gaps: Counter,
    pub bus_notes: Counter,
    pub bus_duplicates: Counter,
    /// Bytes of messages held in rooms' histories on this node.
    pub history_bytes: Gauge,
    /// Rooms on this node holding at least one message of history.
    pub history_rooms: Gauge,
    /// Batches the history writer offered the store.
    pub history_flushes: Counter,
    /// Messages the store took from the history writer.
    pub history_appends: Counter,
    /// Messages of archived rooms the archive queue took, and the ones given up on (the
    /// queue away so long that the writer's hold overflowed).
    pub archive_queued: Counter,
    pub archive_dropped: Counter,
    /// Messages waiting in the history writer for the archive queue.
    pub archive_held: Gauge,
    /// Resumes answered with `recovered:true` / `recovered:false`.
    pub resumes_recovered: Counter,
    pub resumes_lost: Counter,
    /// Server publishes (`/internal/rooms/{room}/publish`) this node stamped.
    pub posts: Counter,
    /// Webhook deliveries answered 2xx, tried again, refused for good (4xx), and events
    /// dropped because the queue was full.
    pub webhooks_sent: Counter,
    pub webhook_retries: Counter,
    pub webhooks_failed: Counter,
    pub webhooks_dropped: Counter,
    errors: [Counter; ErrorCode::ALL.len()],
}

impl Metrics {
    pub fn error(&self, code: ErrorCode) {
        if let Some(i) = ErrorCode::ALL.iter().position(|c| *c == code) {
            self.errors[i].inc();
        }
    }

    pub fn render(&self) -> String {
        let mut e = Exposition::new();
        e.gauge("wsnode_connections", "Open WebSocket connections.", self.connections.get());
        e.gauge("wsnode_rooms", "Rooms with at least one member on this node.", self.rooms.get());
        e.gauge(
            "wsnode_spanning_rooms",
            "Rooms that also have members on other nodes (carried over Redis).",
            self.spanning_rooms.get(),
        );
        e.counter("wsnode_upgrades_total", "WebSocket upgrades accepted.", &self.upgrades);
        e.labeled(
            "wsnode_upgrades_refused_total",
            "counter",
            "Upgrades refused before the 101, by reason.",
            "reason",
            [
                ("connection_limit", self.refused_full.get()),
                ("draining", self.refused_draining.get()),
                ("bad_request", self.refused_bad_request.get()),
                ("fd_limit", self.refused_fd_limit.get()),
                ("auth", self.refused_auth.get()),
            ],
        );
        e.labeled(
            "wsnode_handoffs_total",
            "counter",
            "Client sockets a router handed over, by answer.",
            "outcome",
            [("taken", self.handoffs_taken.get()), ("refused", self.handoffs_refused.get())],
        );
        e.counter(
            "wsnode_messages_in_total",
            "Publishes accepted from clients.",
            &self.messages_in,
        );
        e.counter(
            "wsnode_deliveries_total",
            "Message, presence and signal frames queued to members.",
            &self.deliveries,
        );
        e.counter("wsnode_signals_total", "Signals relayed.", &self.signals);
        e.counter("wsnode_reads_total", "Read markers sent by clients.", &self.reads);
        e.labeled(
            "wsnode_closes_total",
            "counter",
            "Connections closed by the node, by reason.",
            "reason",
            [
                ("slow_consumer", self.slow_consumer_closes.get()),
                ("rate_limit", self.rate_limit_closes.get()),
                ("idle", self.idle_closes.get()),
                ("drain", self.drain_closes.get()),
                ("room_full", self.room_full_closes.get()),
            ],
        );
        e.labeled(
            "wsnode_error_frames_total",
            "counter",
            "Error frames sent, by code.",
            "code",
            ErrorCode::ALL.iter().zip(&self.errors).map(|(c, n)| (c.as_str(), n.get())),
        );
        e.counter(
            "wsnode_redis_publishes_total",
            "PUBLISH commands sent for spanning rooms.",
            &self.redis_publishes,
        );
        e.counter(
            "wsnode_redis_publishes_avoided_total",
            "Messages delivered without Redis because their room is on this node only.",
            &self.redis_publishes_avoided,
        );
        e.counter(
            "wsnode_webhooks_sent_total",
            "Webhook deliveries answered 2xx.",
            &self.webhooks_sent,
        );
        e.counter(
            "wsnode_webhook_retries_total",
            "Webhook deliveries tried again.",
            &self.webhook_retries,
        );
        e.counter(
            "wsnode_webhooks_failed_total",
            "Webhook events the receiver refused for good (4xx but 408 and 429).",
            &self.webhooks_failed,
        );
        e.counter(
            "wsnode_webhooks_dropped_total",
            "Webhook events dropped because the queue was full.",
            &self.webhooks_dropped,
        );
        e.counter(
            "wsnode_posts_total",
            "Server API publishes this node stamped (a retried id counts once).",
            &self.posts,
        );
        e.counter("wsnode_redis_reconnects_total", "Redis reconnections.", &self.redis_reconnects);
        e.counter("wsnode_redis_errors_total", "Failed Redis operations.", &self.redis_errors);
        e.counter(
            "wsnode_bus_gaps_total",
            "Times a room's order skipped messages the bus no longer held (a healed split).",
            &self.bus_gaps,
        );
        e.counter(
            "wsnode_bus_notes_total",
            "Sync and presence notes published on spanning rooms' channels.",
            &self.bus_notes,
        );
        e.counter(
            "wsnode_bus_duplicates_total",
            "Bus messages dropped because this node had delivered them already.",
            &self.bus_duplicates,
        );
        e.gauge(
            "wsnode_history_bytes",
            "Bytes of messages held in rooms' histories on this node.",
            self.history_bytes.get(),
        );
        e.gauge(
            "wsnode_history_rooms",
            "Rooms on this node holding history.",
            self.history_rooms.get(),
        );
        e.counter(
            "wsnode_history_flushes_total",
            "Batches of history appends offered to the store (one round trip each).",
            &self.history_flushes,
        );
        e.counter(
            "wsnode_history_appends_total",
            "Messages appended to the stored history.",
            &self.history_appends,
        );
        e.counter(
            "wsnode_archive_queued_total",
            "Messages of archived rooms put on the archive queue.",
            &self.archive_queued,
        );
        e.counter(
            "wsnode_archive_dropped_total",
            "Messages of archived rooms given up on: the queue stayed away past the hold.",
            &self.archive_dropped,
        );
        e.gauge(
            "wsnode_archive_held",
            "Messages of archived rooms waiting in the node for the archive queue.",
            self.archive_held.get(),
        );
        e.labeled(
            "wsnode_resumes_total",
            "counter",
            "Reconnects that asked to resume, by outcome.",
            "recovered",
            [("true", self.resumes_recovered.get()), ("false", self.resumes_lost.get())],
        );
        e.histogram(
            "wsnode_span_handshake_seconds",
            "Time from joining a room held elsewhere to the other nodes' confirmation.",
            &self.span_handshake,
        );
        e.finish()
    }
}
