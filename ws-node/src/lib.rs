//! roomfleet's ws-node: WebSocket sessions, rooms with presence and sequenced broadcast,
//! and the `Bus` that carries rooms spanning several nodes. Start one with [`Node::new`]
//! and [`serve`]; tests run it on port 0.
#![forbid(unsafe_code)]

mod appender;
pub mod bus;
pub mod config;
mod frames;
pub mod handoff;
pub mod history;
pub mod hooks;
mod internal;
pub mod markers;
pub mod metrics;
mod node;
mod outbox;
mod outlet;
mod posts;
mod presence;
mod rate;
pub mod redis_bus;
pub mod room;
pub mod room_core;
pub mod rooms;
mod server;
mod session;
mod suspects;

pub use bus::{Bus, LocalBus, LocalHub};
pub use config::Config;
pub use handoff::{serve_handoff, taker};
pub use node::Node;
pub use redis_bus::{RedisBus, RedisConfig};
pub use server::serve;

impl Node {
    /// Starts the shutdown: stop accepting, close every connection with 1001.
    pub fn shutdown(&self) {
        self.token.cancel();
    }
}
