//! The example end to end with real processes: redis-server, a router reading the inbox, two
//! ws-nodes over Redis, the `job-status` binary, and two WebSocket members of the
//! submitter's room, one through the router and one on the other node (the room spans).
//! Each member sees every status of every job in order, once.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use shared::testkit::process::{Process, RouterProcess, node_ready, ws_node};
use shared::testkit::ws::WsClient;
use shared::testkit::{RedisServer, free_port, http, wait_until};

const WAIT: Duration = Duration::from_secs(20);

/// The statuses one member saw, per job, and every `seq` in arrival order.
async fn statuses(c: &mut WsClient, frames: usize) -> (BTreeMap<u64, Vec<String>>, Vec<u64>) {
    let (mut jobs, mut seqs) = (BTreeMap::<u64, Vec<String>>::new(), Vec::new());
    for _ in 0..frames {
        let m = c.recv_type("message").await;
        assert_eq!(m["from"], "judge", "{m}");
        let job = m["body"]["job"].as_u64().expect("a job number");
        jobs.entry(job).or_default().push(m["body"]["text"].as_str().unwrap().to_owned());
        seqs.push(m["seq"].as_u64().unwrap());
    }
    (jobs, seqs)
}

#[tokio::test]
async fn members_of_the_submitters_room_see_each_status_in_order_once() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let (_a, a) = ws_node("node-a", &["--redis", &url]);
    let (_b, b) = ws_node("node-b", &["--redis", &url]);
    node_ready(a).await;
    node_ready(b).await;
    let (na, nb) = (format!("node-a={a}"), format!("node-b={b}"));
    let router =
        RouterProcess::start(&["--redis", &url, "--inbox", "--node", &na, "--node", &nb]).await;
    wait_until(WAIT, "both nodes in the ring", || async { router.placeable().await.len() == 2 })
        .await;

    let web: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_job-status"));
    cmd.args(["--redis", &url, "--listen", &web.to_string(), "--workers", "2", "--step-ms", "20"])
        .env("RUST_LOG", "warn");
    let _example = Process::spawn(cmd);
    wait_until(WAIT, "the example's /healthz", || async move {
        http(web, "GET", "/healthz", &[], "").await.is_ok_and(|(s, _)| s == 200)
    })
    .await;

    let room = "status:u42";
    let owner = router.placed(room).await;
    let other = if owner == "node-a" { b } else { a };
    let (mut ann, _) = WsClient::join(&format!("{}?room={room}&user=u42", router.ws_url())).await;
    let (mut bob, w) = WsClient::join(&format!("ws://{other}/ws?room={room}&user=u42-phone")).await;
    assert_eq!(w["members"], json!(["u42", "u42-phone"]), "the room spans two nodes: {w}");

    let submit = |body: Value| async move {
        let h = [("content-type", "application/json")];
        let (status, v) = http(web, "POST", "/jobs", &h, &body.to_string()).await.unwrap();
        (status, serde_json::from_str::<Value>(&v).unwrap_or_default())
    };
    let (status, first) = submit(json!({"user": "u42", "tests": 3})).await;
    assert_eq!((status, &first["room"]), (202, &json!(room)), "{first}");
    let (status, second) = submit(json!({"user": "u42", "tests": 2, "fail": [2]})).await;
    assert_eq!(status, 202, "{second}");
    let (status, bad) = submit(json!({"user": "not a user"})).await;
    assert_eq!((status, bad["code"].as_str()), (400, Some("bad_user")), "{bad}");

    let (j1, j2) = (first["job"].as_u64().unwrap(), second["job"].as_u64().unwrap());
    let expected = BTreeMap::from([
        (j1, vec!["queued", "running 0/3", "running 1/3", "running 2/3", "passed 3/3"]),
        (j2, vec!["queued", "running 0/2", "running 1/2", "failed 1/2"]),
    ]);
    let frames = expected.values().map(Vec::len).sum();
    for c in [&mut ann, &mut bob] {
        let (jobs, seqs) = statuses(c, frames).await;
        let jobs: BTreeMap<u64, Vec<&str>> =
            jobs.iter().map(|(j, t)| (*j, t.iter().map(String::as_str).collect())).collect();
        assert_eq!(jobs, expected, "each job's statuses in order, once each");
        assert_eq!(seqs, (1..=frames as u64).collect::<Vec<_>>(), "one order, no gap");
    }
    // Nothing more comes: a publish of its own is the next message either member sees.
    ann.publish(json!("done")).await;
    for c in [&mut ann, &mut bob] {
        let m = c.recv_type("message").await;
        assert_eq!(
            (m["body"].as_str(), m["seq"].as_u64()),
            (Some("done"), Some(frames as u64 + 1))
        );
    }
}
