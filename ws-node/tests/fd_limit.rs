//! At the process's open-file limit the node refuses new clients with a clear 503 and
//! keeps serving the ones it has (a real binary under a lowered `ulimit -n`).

mod common;

use std::time::Duration;

use common::NodeProcess;
use serde_json::json;
use shared::testkit::ws::WsClient;
use shared::testkit::{http, wait_until};

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
    let mut open = Vec::new();
    let mut refused = None;
    for _ in 0..100 {
        match WsClient::connect(&url).await {
            Ok(c) => open.push(c),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let refused = refused.expect("the file limit refuses someone before 100 connections");
    assert!(refused.contains("503"), "{refused}");
    assert!(open.len() > 20, "only {} connections before the limit", open.len());
    // Everyone already in keeps working.
    let first = open.first_mut().unwrap();
    let _ = first.recv_type("welcome").await;
    first.publish(json!("still here")).await;
    assert_eq!(first.recv_type("message").await["body"], "still here");
    // And once clients leave, new ones get in again.
    open.truncate(5);
    wait_until(Duration::from_secs(10), "room for a new client", || async {
        WsClient::connect(&url).await.is_ok()
    })
    .await;
    let (_, metrics) = http(addr, "GET", "/metrics", &[], "").await.unwrap();
    assert!(
        !metrics.contains("wsnode_upgrades_refused_total{reason=\"fd_limit\"} 0"),
        "refusals at the file limit are counted"
    );
}
