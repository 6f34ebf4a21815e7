//! The router library's one error type: configuration, binding, placement, and what went
//! wrong talking to a node (with the cause label the metrics count).

use std::net::SocketAddr;

/// Why a talk with a node failed before its `101`; the label of `router_proxy_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// TCP connect refused, reset or unresolvable.
    Connect,
    /// No connection or no answer within the configured timeout.
    Timeout,
    /// The node answered 5xx (at its connection limit, draining, broken).
    Refused,
    /// The node spoke broken HTTP or answered an upgrade with something else than 101.
    Protocol,
}

impl Cause {
    pub const ALL: [Cause; 4] = [Cause::Connect, Cause::Timeout, Cause::Refused, Cause::Protocol];

    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Connect => "connect",
            Cause::Timeout => "timeout",
            Cause::Refused => "node_5xx",
            Cause::Protocol => "protocol",
        }
    }
}

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
