//! The nodes' own figures for the admin nodes table (`GET /admin/nodes?stats=1`): each
//! node's `/metrics` read concurrently, under one short timeout, for at most
//! [`MAX_NODES`] nodes, reduced to the gauges and counters the admin UI shows.

use std::time::Duration;

use http::Method;
use serde::Serialize;

use crate::membership::Member;
use crate::upstream;

/// Nodes asked per request; a larger fleet shows the rest without stats.
pub(crate) const MAX_NODES: usize = 64;

/// How long the slowest node may take; the table must not hang on one dead node.
const TIMEOUT: Duration = Duration::from_secs(1);

/// What one node reports about itself.
#[derive(Debug, Default, Serialize, PartialEq)]
pub(crate) struct NodeStats {
    pub connections: Option<f64>,
    pub rooms: Option<f64>,
    pub spanning_rooms: Option<f64>,
    /// Counters: the admin UI turns two readings into rates.
    pub messages_in_total: Option<f64>,
    pub deliveries_total: Option<f64>,
}

/// Each member's stats or why there are none, in the order given.
pub(crate) async fn fetch(
    dialer: &crate::upstream::Dialer,
    members: &[&Member],
    token: Option<&str>,
) -> Vec<Result<NodeStats, String>> {
    let asks = members.iter().enumerate().map(|(i, m)| async move {
        if i >= MAX_NODES {
            return Err(format!("not asked: the table asks {MAX_NODES} nodes at most"));
        }
        match upstream::request(dialer, m, Method::GET, "/metrics", token, TIMEOUT).await {
            Ok((status, body)) if status.is_success() => Ok(parse(&String::from_utf8_lossy(&body))),
            Ok((status, _)) => Err(format!("/metrics answered {status}")),
            Err(e) => Err(e.to_string()),
        }
    });
    futures_util::future::join_all(asks).await
}

/// The figures of a node's Prometheus text; a metric it lacks stays `None`.
fn parse(text: &str) -> NodeStats {
    let value = |name: &str| {
        text.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix(' ')?;
            rest.split_whitespace().next()?.parse::<f64>().ok()
        })
    };
    NodeStats {
        connections: value("wsnode_connections"),
        rooms: value("wsnode_rooms"),
        spanning_rooms: value("wsnode_spanning_rooms"),
        messages_in_total: value("wsnode_messages_in_total"),
        deliveries_total: value("wsnode_deliveries_total"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauges_and_counters_are_read_and_missing_ones_stay_empty() {
        let text = "# HELP wsnode_connections Open.\n# TYPE wsnode_connections gauge\n\
                    wsnode_connections 12\nwsnode_connections_extra 99\nwsnode_rooms 3\n\
                    wsnode_spanning_rooms 1\nwsnode_messages_in_total 40 1700000000\n";
        let s = parse(text);
        assert_eq!(s.connections, Some(12.0));
        assert_eq!(s.rooms, Some(3.0));
        assert_eq!(s.spanning_rooms, Some(1.0));
        assert_eq!(s.messages_in_total, Some(40.0));
        assert_eq!(s.deliveries_total, None);
        assert_eq!(parse("garbage\nwsnode_rooms x\n"), NodeStats::default());
    }
}
