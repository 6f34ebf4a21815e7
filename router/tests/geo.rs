//! `--policy geo` end to end: a generated country database maps 127.1.0.0/16 to DE and
//! 127.2.0.0/16 to US, clients bind those source addresses so the router sees real peers,
//! and nodes share a real Redis so a room with members in both countries spans nodes.

use std::net::IpAddr;
use std::sync::Arc;

use serde_json::{Value, json};
use shared::testkit::ws::{STEP, WsClient};
use shared::testkit::{RedisServer, http};
use tokio_util::sync::CancellationToken;
use ws_node::{Node, RedisBus, RedisConfig};

struct World {
    router: router::Router,
    _nodes: Vec<Arc<Node>>,
    token: CancellationToken,
    _redis: RedisServer,
    dir: std::path::PathBuf,
}

impl Drop for World {
    fn drop(&mut self) {
        self.token.cancel();
        self._nodes.iter().for_each(|n| n.shutdown());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn world(pools: Vec<(String, Vec<String>)>) -> World {
    let redis = RedisServer::start().await;
    let token = CancellationToken::new();
    let mut nodes = Vec::new();
    let mut specs = Vec::new();
    for id in ["node-a", "node-b", "node-c"] {
        let bus = RedisBus::start(id, RedisConfig::new(redis.url()), token.clone()).unwrap();
        shared::testkit::wait_until(STEP, "redis", || {
            let bus = bus.clone();
            async move { bus.is_connected() }
        })
        .await;
        let cfg = ws_node::Config { node_id: id.into(), ..ws_node::Config::default() };
        let node = Node::new(cfg, bus);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        specs.push(format!("{id}={}", listener.local_addr().unwrap()).parse().unwrap());
        tokio::spawn(ws_node::serve(node.clone(), listener));
        nodes.push(node);
    }
    let dir =
        std::env::temp_dir().join(format!("router-geo-{}-{}", std::process::id(), redis.port));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("country.mmdb");
    geoip::testdb::write(
        &db,
        &[("127.1.0.0/16".parse().unwrap(), "DE"), ("127.2.0.0/16".parse().unwrap(), "US")],
        geoip::testdb::Layout::Country,
    )
    .unwrap();
    let config = router::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin: "127.0.0.1:0".parse().unwrap(),
        nodes: specs,
        policy: router::PolicyName::Geo,
        geoip: Some(db),
        pools,
        trusted_proxies: vec!["127.9.0.0/16".parse().unwrap()],
        ..router::Config::default()
    };
    let router = router::Router::start(config).unwrap();
    World { router, _nodes: nodes, token, _redis: redis, dir }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

impl World {
    fn url(&self, room: &str, user: &str) -> String {
        format!("ws://{}/ws?room={room}&user={user}", self.router.proxy_addr())
    }

    async fn join_from(
        &self,
        room: &str,
        user: &str,
        src: &str,
        headers: &[(&str, &str)],
    ) -> (WsClient, Value) {
        let mut c = WsClient::connect_from(&self.url(room, user), ip(src), headers).await.unwrap();
        let w = c.recv().await;
        assert_eq!(w["type"], "welcome", "{w}");
        (c, w)
    }

    async fn placement(&self, room: &str, ip: &str) -> Value {
        let path = format!("/admin/placement?room={room}&ip={ip}");
        let (s, body) = http(self.router.admin_addr(), "GET", &path, &[], "").await.unwrap();
        assert_eq!(s, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }
}

fn pools() -> Vec<(String, Vec<String>)> {
    vec![("DE".into(), vec!["node-a".into()]), ("US".into(), vec!["node-b".into()])]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn countries_land_on_their_nodes_and_share_a_room_through_redis() {
    let w = world(pools()).await;
    let (mut de, wde) = w.join_from("world", "hans", "127.1.0.5", &[]).await;
    let (mut us, wus) = w.join_from("world", "joe", "127.2.0.7", &[]).await;
    assert_eq!(wde["node"], "node-a");
    assert_eq!(wus["node"], "node-b");
    assert_eq!(wus["members"], json!(["hans", "joe"]), "presence spans the nodes");
    // /admin/placement agrees with where they landed.
    let p = w.placement("world", "127.1.0.5").await;
    assert_eq!(
        (p["node"].as_str(), p["country"].as_str(), p["pool"].as_str()),
        (Some("node-a"), Some("DE"), Some("DE"))
    );
    let p = w.placement("world", "127.2.0.7").await;
    assert_eq!((p["node"].as_str(), p["country"].as_str()), (Some("node-b"), Some("US")));
    // Every message reaches both, in one order, seq contiguous.
    let _ = de.recv_type("presence").await;
    for i in 0..20 {
        let c = if i % 2 == 0 { &mut de } else { &mut us };
        c.publish(json!(i)).await;
    }
    let mut orders = Vec::new();
    for c in [&mut de, &mut us] {
        let mut got = Vec::new();
        while got.len() < 20 {
            let m = c.recv_type("message").await;
            got.push((m["seq"].as_u64().unwrap(), m["body"].clone()));
        }
        assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), (1..=20).collect::<Vec<_>>());
        orders.push(got);
    }
    assert_eq!(orders[0], orders[1]);
    let (_, metrics) = http(w.router.admin_addr(), "GET", "/metrics", &[], "").await.unwrap();
    assert!(metrics.contains("router_geo_placements_total{country=\"DE\"} 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_count_only_from_trusted_proxies() {
    let w = world(pools()).await;
    // A DE client claiming to be in the US is not believed.
    let spoof = [("x-forwarded-for", "127.2.0.9")];
    let (_c, wl) = w.join_from("r1", "spoofer", "127.1.0.5", &spoof).await;
    assert_eq!(wl["node"], "node-a");
    // The same header from a trusted proxy (127.9.0.0/16) moves the client.
    let (_p, wp) = w.join_from("r1", "proxied", "127.9.0.1", &spoof).await;
    assert_eq!(wp["node"], "node-b");
    let forwarded = [("forwarded", "for=127.1.0.77;proto=https")];
    let (_q, wq) = w.join_from("r1", "proxied2", "127.9.0.1", &forwarded).await;
    assert_eq!(wq["node"], "node-a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_pools_a_country_shares_one_node_and_unknown_falls_back_to_the_room() {
    let w = world(Vec::new()).await;
    let mut nodes = std::collections::BTreeSet::new();
    for room in ["a", "b", "c", "d", "e", "f"] {
        let p = w.placement(room, "127.1.2.3").await;
        assert_eq!((p["policy"].as_str(), p["key"].as_str()), (Some("geo"), Some("country:DE")));
        nodes.insert(p["node"].as_str().unwrap().to_string());
    }
    assert_eq!(nodes.len(), 1, "every DE room on one node");
    let p = w.placement("lobby", "127.3.0.1").await;
    assert_eq!(
        (p["policy"].as_str(), p["fallback"].as_str()),
        (Some("room"), Some("unknown_country"))
    );
    assert_eq!(p["key"], "lobby");
    let (_c, wc) = w.join_from("lobby", "nowhere", "127.3.0.1", &[]).await;
    assert_eq!(wc["node"], p["node"]);
    let (_, metrics) = http(w.router.admin_addr(), "GET", "/metrics", &[], "").await.unwrap();
    assert!(
        metrics.contains("router_geo_fallbacks_total{reason=\"unknown_country\"} 1"),
        "{metrics}"
    );
}
