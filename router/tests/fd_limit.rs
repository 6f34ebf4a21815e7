//! At the process's open-file limit the router refuses new clients with a clear 503 and
//! keeps the tunnels it has (the real binary under a lowered `ulimit -n`).
//!
//! A proxied client costs two descriptors, so whether the last one runs out at `accept` or
//! at the connect to the node depends on how many the process started with. Each scenario
//! runs twice, the second time with one more inherited descriptor, so both are exercised
//! whatever the machine hands the process.

mod common;

use common::*;
use shared::testkit::ws::fill_until_refused;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_refuses_at_the_file_limit_and_keeps_open_tunnels() {
    let hub = ws_node::LocalHub::new();
    let node = TestNode::start("node-a", &hub).await;
    for extra in [0, 1] {
        let router = LimitedRouter::start(&format!("node-a={}", node.addr), extra).await;
        let refused = fill_until_refused(&router.url("r", "u"), 100).await;
        assert!(refused.contains("503"), "with {extra} extra descriptors: {refused}");
        let metrics = router.get("/metrics").await;
        let counted =
            shared::metrics::sample(&metrics, "router_refused_total{reason=\"fd_limit\"}");
        assert!(counted.is_some_and(|n| n > 0.0), "fd_limit refusals not counted:\n{metrics}");
    }
}
