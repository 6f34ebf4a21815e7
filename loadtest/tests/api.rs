//! `loadtest api` end to end with real processes: redis-server, two ws-nodes on it and a
//! router with `--inbox`; a short run of both phases must deliver every publish to every
//! member once, in routed and spanning rooms.

use std::net::SocketAddr;

use loadtest::api::{ApiArgs, run};
use shared::testkit::process::{RouterProcess, node_ready, ws_node};
use shared::testkit::{RedisServer, free_port, wait_until};

#[tokio::test]
async fn both_phases_deliver_every_publish_to_every_member_once() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let (_a, a) = ws_node("node-a", &["--redis", &url]);
    let (_b, b) = ws_node("node-b", &["--redis", &url]);
    node_ready(a).await;
    node_ready(b).await;
    let api: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let (na, nb, api_arg) = (format!("node-a={a}"), format!("node-b={b}"), api.to_string());
    let router = RouterProcess::start(&[
        "--redis", &url, "--inbox", "--api", &api_arg, "--node", &na, "--node", &nb,
    ])
    .await;
    wait_until(shared::testkit::ws::STEP, "both nodes in the ring", || async {
        router.placeable().await.len() == 2
    })
    .await;
    let args = ApiArgs {
        url: router.ws_url(),
        node_url: vec![format!("ws://{a}/ws"), format!("ws://{b}/ws")],
        api,
        api_key: None,
        redis: Some(url.clone()),
        redis_prefix: "roomfleet".into(),
        rooms: 6,
        spanning: 2,
        members: 2,
        concurrency: 4,
        window: 8,
        duration: 0.5,
        size: 64,
        without_ids: false,
        prefix: "ltapi".into(),
        json: None,
    };
    let report = run(&args).await.expect("the run");
    let inbox = report.inbox.as_ref().expect("an inbox phase");
    assert!(report.ok, "{}", report.table());
    assert!(report.http.published > 0 && inbox.published > 0, "{}", report.table());
    assert_eq!(report.http.delivered, report.http.published * 2);
    assert_eq!(inbox.delivered, inbox.published * 2);
}
