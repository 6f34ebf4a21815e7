//! roomfleet's router: places every room on one ws-node of a consistent-hash ring and
//! proxies the WebSocket upgrade there.
#![forbid(unsafe_code)]

pub mod config;
mod error;
pub mod health;
pub mod membership;
pub mod metrics;
pub mod placement;
pub mod ring;
mod upstream;

pub use config::{Config, RouterArgs};
pub use error::{Cause, Error};
pub use health::HealthConfig;
pub use membership::{Membership, NodeSpec, Source, View};
pub use metrics::Metrics;
pub use placement::{Placement, Policy};
pub use ring::Ring;
