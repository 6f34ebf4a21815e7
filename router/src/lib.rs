//! roomfleet's router: places every room on one ws-node of a consistent-hash ring and
//! proxies the WebSocket upgrade there.
#![forbid(unsafe_code)]

mod error;
pub mod ring;

pub use error::{Cause, Error};
