//! Everything the roomfleet binaries share: the wire protocol, the archive queue's format,
//! ID rules, config loading, small HTTP helpers, Prometheus metrics, the listener with
//! file-limit handling, TLS certificates, Redis Streams consumer steps, and the shutdown
//! helper.
#![forbid(unsafe_code)]

pub mod api;
pub mod archive;
pub mod auth;
pub mod config;
pub mod handoff;
pub mod http;
pub mod ids;
pub mod listen;
pub mod metrics;
pub mod protocol;
pub mod registry;
pub mod shutdown;
pub mod streams;
pub mod testkit;
pub mod tls;
