//! The live counts of a run: connections update them, the progress display and the drain
//! decision read them. A leaf, so `run` and `progress` both use it without meeting.

use std::sync::atomic::AtomicU64;

/// Live counts for the progress display and the drain decision.
#[derive(Debug, Default)]
pub struct Counters {
    pub attempted: AtomicU64,
    pub connected: AtomicU64,
    pub failed: AtomicU64,
    /// Connections open right now.
    pub alive: AtomicU64,
    pub published: AtomicU64,
    pub acked: AtomicU64,
    /// Publishes whose connection broke before their ack (`--reconnect`).
    pub cut: AtomicU64,
    pub delivered: AtomicU64,
}
