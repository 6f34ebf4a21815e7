//! The router library's one error type: configuration, binding, placement, and what went
//! wrong talking to a node (with the cause label the metrics count, defined there).

use std::net::SocketAddr;

pub use crate::metrics::Cause;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Placement found no healthy, non-draining node.
    #[error("no healthy node in the ring")]
    EmptyRing,
    /// A setting that cannot work; printed as one line before anything binds.
    #[error("{0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    /// A request to a node failed; `cause` is what the metrics count.
    #[error("node {id} at {addr}: {detail}")]
    Node { id: String, addr: String, cause: Cause, detail: String },
    #[error("unknown node {0}")]
    UnknownNode(String),
    /// The router itself had no descriptor for the node side: no node is at fault.
    #[error("router at its open-file limit: {0}")]
    FdLimit(std::io::Error),
}

impl Error {
    pub(crate) fn config(msg: impl Into<String>) -> Self {
        Error::Config(msg.into())
    }
}
