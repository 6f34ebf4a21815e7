//! At the process's open-file limit the node refuses new clients with a clear 503 and
//! keeps serving the ones it has (a real binary under a lowered `ulimit -n`).

mod common;

use common::NodeProcess;
use shared::testkit::http;
use shared::testkit::ws::fill_until_refused;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_refuses_at_the_file_limit_and_keeps_the_rest() {
    // 64 descriptors, but a connection limit far above them: only the file limit can stop us.
    let node = NodeProcess::start(
        &["--node-id", "tight", "--max-connections", "1000"],
        &[],
        Some("ulimit -n 64"),
    )
    .await;
    let addr = node.addr();
    let url = node.url("r", "u");
    let refused = fill_until_refused(&url, 100).await;
    assert!(refused.contains("503"), "{refused}");
    let (_, metrics) = http(addr, "GET", "/metrics", &[], "").await.unwrap();
    assert!(
        !metrics.contains("wsnode_upgrades_refused_total{reason=\"fd_limit\"} 0"),
        "refusals at the file limit are counted"
    );
}
