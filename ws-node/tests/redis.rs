//! Rooms spanning nodes over a real `redis-server` that each test starts on a free port:
//! the spanning scenarios, Redis PUBLISH accounting, Redis restarts, and a SIGKILLed node.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::spanning as scenario;
use common::{Client, NodeProcess, STEP, TestNode, config};
use serde_json::json;
use shared::testkit::{RedisServer, wait_until};
use tokio_util::sync::CancellationToken;
use ws_node::{Bus, RedisBus, RedisConfig};

/// Nodes on one Redis; their buses stop when `token` is cancelled (or the test ends).
struct Cluster {
    nodes: Vec<TestNode>,
    tokens: Vec<CancellationToken>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.tokens.iter().for_each(|t| t.cancel());
    }
}

fn redis_config(redis: &RedisServer) -> RedisConfig {
    RedisConfig { heartbeat_ttl: Duration::from_secs(2), ..RedisConfig::new(redis.url()) }
}

async fn cluster(redis: &RedisServer, n: usize) -> Cluster {
    let mut c = Cluster { nodes: Vec::new(), tokens: Vec::new() };
    for i in 0..n {
        let id = format!("n{i}");
        let token = CancellationToken::new();
        let bus = RedisBus::start(&id, redis_config(redis), token.clone()).unwrap();
        wait_until(STEP, "node connected to redis", || {
            let bus = bus.clone();
            async move { bus.is_connected() }
        })
        .await;
        let bus: Arc<dyn Bus> = bus;
        c.nodes.push(TestNode::with_bus(config(&id), bus).await);
        c.tokens.push(token);
    }
    c
}

async fn publish_count(redis: &RedisServer) -> u64 {
    redis.command_calls().await.get("publish").copied().unwrap_or(0)
}

#[tokio::test]
async fn a_room_on_three_nodes_has_one_order() {
    let redis = RedisServer::start().await;
    scenario::a_room_on_three_nodes_has_one_order(&cluster(&redis, 3).await.nodes).await;
}

#[tokio::test]
async fn seq_continues_and_presence_crosses_nodes() {
    let redis = RedisServer::start().await;
    scenario::seq_continues_and_presence_crosses_nodes(&cluster(&redis, 2).await.nodes).await;
}

#[tokio::test]
async fn a_joiner_misses_nothing_while_20_senders_publish() {
    let redis = RedisServer::start().await;
    scenario::a_joiner_misses_nothing_while_20_senders_publish(&cluster(&redis, 2).await.nodes)
        .await;
}

#[tokio::test]
async fn a_room_back_on_one_node_stops_publishing_to_redis() {
    let redis = RedisServer::start().await;
    let c = cluster(&redis, 2).await;
    let start = publish_count(&redis).await;
    scenario::a_room_back_on_one_node_stops_using_the_bus(&c.nodes).await;
    assert!(publish_count(&redis).await > start, "spanning publishes are counted by Redis");
    // Redis itself agrees: no PUBLISH while the room is on one node.
    let (mut a, _) = Client::join(&c.nodes[0].url("solo", "a")).await;
    let before = publish_count(&redis).await;
    for i in 0..50 {
        a.publish(json!(i)).await;
        a.recv().await;
    }
    assert_eq!(publish_count(&redis).await, before, "single-node rooms never PUBLISH");
}

#[tokio::test]
async fn a_dead_node_is_pruned_and_its_members_leave() {
    let redis = RedisServer::start().await;
    let c = cluster(&redis, 2).await;
    // Stopping node 1's bus (no clean leave) leaves its heartbeat to expire.
    let token = c.tokens[1].clone();
    scenario::a_dead_node_is_pruned_and_its_members_leave(&c.nodes, || token.cancel()).await;
}

#[tokio::test]
async fn a_redis_restart_leaves_local_rooms_alone_and_spanning_rooms_recover() {
    let mut redis = RedisServer::start().await;
    let c = cluster(&redis, 2).await;
    let (mut solo, _) = Client::join(&c.nodes[0].url("solo", "s")).await;
    let (mut a, _) = Client::join(&c.nodes[0].url("wide", "a")).await;
    let (mut b, _) = Client::join(&c.nodes[1].url("wide", "b")).await;
    assert_eq!(a.recv().await["event"], "join");
    a.publish(json!("before")).await;
    assert_eq!(b.recv().await["seq"], 1);
    assert_eq!(a.recv().await["seq"], 1);

    redis.kill();
    // Spanning members are told; the local room does not notice.
    assert_eq!(a.recv().await["code"], "degraded");
    assert_eq!(b.recv().await["code"], "degraded");
    for i in 0..20 {
        solo.publish(json!(i)).await;
        assert_eq!(solo.recv().await["seq"], i + 1);
    }
    a.publish(json!("during")).await;
    assert_eq!(a.recv().await["code"], "degraded", "a publish in the outage is refused, not lost");

    redis.restart().await;
    wait_until(Duration::from_secs(20), "both nodes to reconnect", || async {
        c.nodes[0].metric("wsnode_redis_reconnects_total").await >= 2.0
            && c.nodes[1].metric("wsnode_redis_reconnects_total").await >= 2.0
    })
    .await;
    // After the restart the room spans again and seq continues from where it was.
    let mut seq = 0;
    for attempt in 0..50 {
        a.publish(json!({"after": attempt})).await;
        let m = a.recv().await;
        if m["type"] == "message" {
            seq = m["seq"].as_u64().unwrap();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seq, 2, "seq continues after the restart");
    let m = b.recv_type("message").await;
    assert_eq!(m["seq"], 2);
    for i in 20..25 {
        solo.publish(json!(i)).await;
        assert_eq!(solo.recv().await["seq"], i + 1);
    }
}

#[tokio::test]
async fn a_sigkilled_node_is_pruned_from_room_sets_within_its_heartbeat_ttl() {
    let redis = RedisServer::start().await;
    let c = cluster(&redis, 1).await;
    let url = redis.url();
    let victim = NodeProcess::start(
        &["--node-id", "victim", "--redis", &url, "--heartbeat-ttl", "2"],
        &[],
        None,
    )
    .await;
    let victim_url = victim.url("shared", "v");
    wait_until(STEP, "the victim's heartbeat", || async {
        redis.command(&["EXISTS", "roomfleet:hb:victim"]).await.contains(":1")
    })
    .await;
    let (_v, _) = Client::join(&victim_url).await;
    let (mut a, _) = Client::join(&c.nodes[0].url("shared", "a")).await;
    let members = redis.command(&["SMEMBERS", "roomfleet:{shared}:nodes"]).await;
    assert!(members.contains("victim") && members.contains("n0"), "{members}");

    victim.signal("KILL");
    let _ = victim.exit().await;
    // Heartbeat TTL (2 s) plus one holder check (2 s), with slack for a loaded machine.
    wait_until(Duration::from_secs(6), "the victim to leave the room set", || async {
        !redis.command(&["SMEMBERS", "roomfleet:{shared}:nodes"]).await.contains("victim")
    })
    .await;
    assert_eq!(
        a.recv_type("presence").await,
        json!({"type": "presence", "event": "leave", "user": "v"})
    );
}

#[tokio::test]
async fn sigterm_deregisters_then_drains_with_1012_and_exits() {
    let redis = RedisServer::start().await;
    let (url, port) = (redis.url(), shared::testkit::free_port());
    // Advertise any address: the registry entry is what this test watches.
    let addr = format!("127.0.0.1:{port}");
    let node = NodeProcess::start(
        &["--node-id", "rolling", "--advertise", &addr, "--redis", &url]
            .into_iter()
            .chain(["--deregister-wait", "0.5", "--drain-window", "1"])
            .collect::<Vec<_>>(),
        &[],
        None,
    )
    .await;
    wait_until(STEP, "the node to register", || async {
        redis.command(&["HGET", "roomfleet:registry", "rolling"]).await.contains(&addr)
    })
    .await;
    let mut clients = Vec::new();
    for i in 0..5 {
        clients.push(Client::join(&node.url(&format!("r{i}"), "u")).await.0);
    }
    node.signal("TERM");
    wait_until(STEP, "the node to deregister", || async {
        !redis.command(&["HEXISTS", "roomfleet:registry", "rolling"]).await.contains(":1")
    })
    .await;
    for c in clients.iter_mut() {
        assert_eq!(c.closed(Duration::from_secs(10)).await, Some(1012));
    }
    let exit = node.exit().await;
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test]
async fn a_node_takes_no_clients_until_it_first_reaches_redis() {
    let mut redis = RedisServer::start().await;
    redis.kill();
    let token = CancellationToken::new();
    let cfg =
        RedisConfig { heartbeat_ttl: Duration::from_secs(60), ..RedisConfig::new(redis.url()) };
    let bus: Arc<dyn Bus> = RedisBus::start("n0", cfg, token.clone()).unwrap();
    let n = TestNode::with_bus(config("n0"), bus).await;
    let get = |path: &'static str| async move {
        shared::testkit::http(n.addr, "GET", path, &[], "").await.unwrap()
    };
    let (status, body) = get("/readyz").await;
    assert_eq!((status, body.trim()), (503, "starting: waiting for Redis"));
    let upgrade = [
        ("upgrade", "websocket"),
        ("connection", "Upgrade"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let (status, body) =
        shared::testkit::http(n.addr, "GET", "/ws?room=r&user=u", &upgrade, "").await.unwrap();
    assert_eq!(status, 503, "a room opened now would start a history of its own: {body}");
    redis.restart().await;
    wait_until(Duration::from_secs(10), "the node ready once Redis is reached", || async move {
        shared::testkit::http(n.addr, "GET", "/readyz", &[], "").await.is_ok_and(|r| r.0 == 200)
    })
    .await;
    let (_c, w) = Client::join(&format!("ws://{}/ws?room=r&user=u", n.addr)).await;
    assert_eq!(w["recovered"], false);
    token.cancel();
}
