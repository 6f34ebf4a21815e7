//! roomfleet's archiver: drains the archive queue (Redis Streams in a consumer group, or
//! the in-process queue of `fleet up`) into PostgreSQL or SQLite in batches, idempotent on
//! `(room, epoch, seq)`, acknowledging only after commit, retrying while the database is
//! away, deleting what its rooms' retention let go, and serving its lag in `/metrics`.
#![forbid(unsafe_code)]

pub mod batch;
pub mod local;
pub mod metrics;
pub mod redis_queue;
pub mod retention;
pub mod store;

pub use metrics::Metrics;
pub use redis_queue::QueueConfig;
pub use store::Store;
