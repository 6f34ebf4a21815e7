//! End to end through `fleet up`: real WebSocket clients, the router, three ws-nodes on one
//! in-process bus. Placement agrees with `/admin/placement`; a stopped node leaves the ring
//! within the health window; drain moves clients; bad input gets the documented errors.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use fleet::{DataPath, Fleet, Options};
use router::HealthConfig;
use serde_json::{Value, json};
use shared::testkit::ws::{STEP, WsClient};
use shared::testkit::{http, wait_until};

fn health() -> HealthConfig {
    HealthConfig {
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(200),
        fall: 2,
        rise: 2,
    }
}

async fn up(nodes: usize) -> Fleet {
    up_with(nodes, health()).await
}

/// Probes tolerant of a loaded test machine, for tests where no node should ever leave.
fn steady_health() -> HealthConfig {
    HealthConfig { timeout: Duration::from_secs(2), fall: 5, ..HealthConfig::default() }
}

async fn up_with(nodes: usize, health: HealthConfig) -> Fleet {
    let router = router::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin: "127.0.0.1:0".parse().unwrap(),
        api: Some("127.0.0.1:0".parse().unwrap()),
        health,
        drain_window: Some(Duration::from_millis(200)),
        shutdown_grace: Duration::from_secs(5),
        ..router::Config::default()
    };
    let node =
        ws_node::Config { publish_rate: 1000.0, publish_burst: 1000.0, ..Default::default() };
    Fleet::up(Options { nodes, router, node, redis: None, data_path: data_path(), archive: None })
        .await
        .unwrap()
}

/// This run's data path (`ROOMFLEET_TEST_DATA_PATH`): fleet up's default, the in-process
/// handoff, unless `proxy` is asked for (a `unix` run has no socket in one process).
fn data_path() -> DataPath {
    match shared::testkit::data_path(shared::testkit::DataPath::InProcess) {
        shared::testkit::DataPath::Proxy => DataPath::Proxy,
        _ => DataPath::Handoff,
    }
}

fn url(f: &Fleet, room: &str, user: &str) -> String {
    format!("{}?room={room}&user={user}", f.ws_url())
}

async fn admin(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, Value) {
    let (status, text) = http(addr, method, path, &[], body).await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn placement(f: &Fleet, room: &str) -> Value {
    let (status, v) =
        admin(f.router.admin_addr(), "GET", &format!("/admin/placement?room={room}"), "").await;
    assert_eq!(status, 200, "{v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_rooms_of_five_clients_each_meet_on_their_placed_node() {
    let f = up_with(3, steady_health()).await;
    let generation = f.router.membership().generation();
    let mut tasks = tokio::task::JoinSet::new();
    for r in 0..200 {
        let room = format!("room-{r}");
        let ws = f.ws_url();
        let admin_addr = f.router.admin_addr();
        tasks.spawn(async move {
            let path = format!("/admin/placement?room={room}");
            let (status, placed) = admin(admin_addr, "GET", &path, "").await;
            assert_eq!(status, 200, "{placed}");
            let mut clients = Vec::new();
            for u in 0..5 {
                let (c, w) = WsClient::join(&format!("{ws}?room={room}&user=u{u}")).await;
                assert_eq!(w["node"], placed["node"], "{room} u{u}: welcome vs /admin/placement");
                assert_eq!(w["members"].as_array().unwrap().len(), u + 1, "{room}: {w}");
                clients.push(c);
            }
            clients[0].publish(json!(room)).await;
            for c in &mut clients {
                assert_eq!(c.recv_type("message").await["body"], room.as_str());
            }
            (placed["node"].as_str().unwrap().to_owned(), clients)
        });
    }
    let mut per_node: HashMap<String, usize> = HashMap::new();
    let mut open = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let (node, clients) = r.unwrap();
        *per_node.entry(node).or_default() += 1;
        open.push(clients);
    }
    assert_eq!(f.router.membership().generation(), generation, "the ring never changed");
    assert_eq!(per_node.len(), 3, "rooms on every node: {per_node:?}");
    assert!(per_node.values().all(|n| *n >= 40), "a fair spread: {per_node:?}");
    for n in &f.nodes {
        assert_eq!(n.node.connections(), per_node[&n.id] * 5, "{} holds its rooms' clients", n.id);
    }
    let text = http(f.router.admin_addr(), "GET", "/metrics", &[], "").await.unwrap().1;
    let (tunnels, handed) = match data_path() {
        DataPath::Proxy => (1000.0, 0.0),
        DataPath::Handoff => (0.0, 1000.0),
    };
    assert_eq!(shared::metrics::sample(&text, "router_tunnels"), Some(tunnels), "{text}");
    let name = "router_handoffs_total{outcome=\"in_process\"}";
    assert_eq!(shared::metrics::sample(&text, name), Some(handed), "{text}");
    // Handed-off clients keep their router slot and their node's gauge, as tunnels do.
    assert_eq!(shared::metrics::sample(&text, "router_connections"), Some(1000.0), "{text}");
    drop(open);
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_leaves_the_ring_within_the_health_window_and_its_rooms_fail_over() {
    let f = up(3).await;
    let rooms: Vec<String> = (0..60).map(|i| format!("chat-{i}")).collect();
    let mut before: HashMap<String, Value> = HashMap::new();
    let mut clients = Vec::new();
    for room in &rooms {
        let p = placement(&f, room).await;
        let (c, w) = WsClient::join(&url(&f, room, "first")).await;
        assert_eq!(w["node"], p["node"]);
        clients.push((room.clone(), w["node"].as_str().unwrap().to_owned(), c));
        before.insert(room.clone(), p);
    }
    let victim = "node-b";
    let victims: HashSet<&String> = rooms.iter().filter(|r| before[*r]["node"] == victim).collect();
    assert!(victims.len() >= 5, "enough rooms on {victim}: {}", victims.len());

    let stopped = tokio::time::Instant::now();
    assert!(f.stop_node(victim));
    let membership = f.router.membership().clone();
    let id = shared::ids::NodeId::parse(victim).unwrap();
    let window = health().window() + Duration::from_millis(500);
    wait_until(window, "the stopped node to leave the ring", || {
        let gone = !membership.view().ring.contains(&id);
        async move { gone }
    })
    .await;
    assert!(stopped.elapsed() <= window, "left after {:?}", stopped.elapsed());

    for (room, node, c) in &mut clients {
        if node == victim {
            assert_eq!(c.closed(STEP).await, Some(1001), "{room}: the node closed it");
        }
    }
    for room in &rooms {
        let now = placement(&f, room).await;
        let (_c, w) = WsClient::join(&url(&f, room, "second")).await;
        assert_eq!(w["node"], now["node"], "{room}");
        if victims.contains(room) {
            assert_eq!(w["node"], before[room]["fallbacks"][0], "{room} goes to its fallback");
        } else {
            assert_eq!(w["node"], before[room]["node"], "{room} stays where it was");
        }
    }
    let text = http(f.router.admin_addr(), "GET", "/metrics", &[], "").await.unwrap().1;
    assert!(text.contains("router_health_transitions_total{to=\"down\"} 1"), "{text}");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_moves_a_nodes_clients_to_other_nodes() {
    let f = up_with(3, steady_health()).await;
    let mut on_drained = Vec::new();
    let mut others = Vec::new();
    for i in 0..60 {
        let room = format!("drain-{i}");
        let (c, w) = WsClient::join(&url(&f, &room, "u")).await;
        if w["node"] == "node-a" {
            on_drained.push((room, c));
        } else {
            others.push((room, c));
        }
    }
    assert!(on_drained.len() >= 5, "enough clients on node-a: {}", on_drained.len());
    let (status, v) = admin(f.router.admin_addr(), "POST", "/admin/nodes/node-a/drain", "").await;
    assert_eq!(status, 202, "{v}");
    assert_eq!(v["node_answer"]["connections"], on_drained.len());
    for (room, mut c) in on_drained {
        assert_eq!(c.closed(STEP).await, Some(1012), "{room}");
        let p = placement(&f, &room).await;
        assert_ne!(p["node"], "node-a");
        let (_c, w) = WsClient::join(&url(&f, &room, "u")).await;
        assert_eq!(w["node"], p["node"], "{room} reconnects where placement says");
    }
    for (room, c) in &mut others {
        c.publish(json!("still")).await;
        assert_eq!(c.recv_type("message").await["body"], "still", "{room} untouched");
    }
    let (_, ring) = admin(f.router.admin_addr(), "GET", "/admin/ring", "").await;
    assert_eq!(ring["nodes"][0]["id"], "node-a");
    assert_eq!(
        (ring["nodes"][0]["draining"].as_bool(), ring["nodes"][0]["share"].as_f64()),
        (Some(true), Some(0.0))
    );
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_drained_inside_fleet_up_resumes_on_another_node_with_nothing_missed() {
    let f = up_with(3, steady_health()).await;
    let room = "resumed";
    let owner = placement(&f, room).await["node"].as_str().unwrap().to_owned();
    let (mut x, wx) = WsClient::join(&url(&f, room, "x")).await;
    let (mut p, _) = WsClient::join(&url(&f, room, "p")).await;
    let epoch = wx["epoch"].as_str().expect("an epoch").to_owned();
    for i in 1..=3 {
        p.publish(json!(format!("a{i}"))).await;
    }
    for _ in 0..3 {
        x.recv_type("message").await;
    }
    let since = wx["seq"].as_u64().unwrap() + 2;
    let path = format!("/admin/nodes/{owner}/drain");
    let (status, v) = admin(f.router.admin_addr(), "POST", &path, "").await;
    assert_eq!(status, 202, "{v}");
    assert_eq!(x.closed(STEP).await, Some(1012));
    assert_eq!(p.closed(STEP).await, Some(1012));
    drop((x, p));

    // p comes back on another in-process node and chats while x is away.
    let (mut p, wp) = WsClient::join(&url(&f, room, "p")).await;
    assert_ne!(wp["node"], owner.as_str(), "{wp}");
    for i in 1..=2 {
        p.publish(json!(format!("b{i}"))).await;
        p.recv_type("message").await;
    }
    let resume = format!("{}&since={since}&epoch={epoch}", url(&f, room, "x"));
    let (mut x, w) = WsClient::join(&resume).await;
    assert_eq!(
        (&w["recovered"], &w["epoch"], &w["node"]),
        (&json!(true), &json!(epoch), &wp["node"])
    );
    let last = w["seq"].as_u64().unwrap();
    assert_eq!(last, since + 3, "{w}");
    let mut replay = Vec::new();
    for _ in since..last {
        let m = x.recv_type("message").await;
        replay.push((m["seq"].as_u64().unwrap(), m["body"].clone()));
    }
    let want: Vec<(u64, Value)> =
        (since + 1..=last).zip(["a3", "b1", "b2"]).map(|(s, b)| (s, json!(b))).collect();
    assert_eq!(replay, want, "every missed message, in order, once");
    p.publish(json!("live")).await;
    let m = x.recv_type("message").await;
    assert_eq!((m["seq"].as_u64(), &m["body"]), (Some(last + 1), &json!("live")));
    // Closed first, so the router's shutdown has no tunnel to wait for.
    x.close().await;
    p.close().await;
    f.shutdown().await;
}

#[tokio::test]
async fn bad_admin_input_and_bad_upgrades_get_the_documented_errors() {
    let f = up(2).await;
    let proxy = f.router.proxy_addr();
    let upgrade = [
        ("upgrade", "websocket"),
        ("connection", "Upgrade"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], u16, &'a str);
    let cases: [Case<'_>; 4] = [
        ("/ws?room=a/b&user=u", &upgrade, 400, "room has a character outside [A-Za-z0-9._:-]"),
        ("/ws?user=u", &upgrade, 400, "room is missing"),
        ("/ws?room=r&user=", &upgrade, 400, "user is missing"),
        ("/ws?room=r&user=u", &[], 426, "/ws takes only WebSocket upgrades"),
    ];
    for (path, headers, status, reason) in cases {
        let (got, body) = http(proxy, "GET", path, headers, "").await.unwrap();
        assert_eq!((got, body.trim()), (status, reason), "{path}");
    }
    let e = WsClient::connect(&url(&f, "bad%21", "u")).await.err().unwrap();
    assert!(e.contains("400"), "{e}");

    let a = f.router.admin_addr();
    for (method, path, body) in [
        ("GET", "/admin/placement?room=", ""),
        ("GET", "/admin/placement?room=r&ip=999.1.1.1", ""),
        ("POST", "/admin/nodes", "{"),
        ("POST", "/admin/nodes", r#"{"id":"n","addr":"127.0.0.1"}"#),
        ("DELETE", "/admin/nodes/a%20b", ""),
    ] {
        let (status, v) = admin(a, method, path, body).await;
        assert_eq!(status, 400, "{method} {path}: {v}");
        assert!(v["error"].is_string(), "{method} {path}: {v}");
    }
    let (status, v) = admin(a, "POST", "/admin/nodes/node-z/drain", "").await;
    assert_eq!((status, v["error"].as_str()), (404, Some("unknown node node-z")));
    f.shutdown().await;
}

#[tokio::test]
async fn the_banner_names_every_url() {
    let f = up(2).await;
    let b = f.banner();
    assert!(b.contains(&format!("ws://{}/ws?room=ROOM&user=USER", f.router.proxy_addr())), "{b}");
    assert!(b.contains(&format!("http://{}/admin/ring", f.router.admin_addr())), "{b}");
    assert!(b.contains(&format!("chat:   http://{}/ ", f.router.proxy_addr())), "{b}");
    assert!(b.contains(&format!("admin:  http://{}/ ", f.router.admin_addr())), "{b}");
    let api = f.router.api_addr().expect("fleet up serves the API");
    assert!(b.contains(&format!("api:    http://{api}/api/rooms ")), "{b}");
    for n in &f.nodes {
        assert!(b.contains(&format!("{}: ws://{}/ws", n.id, n.addr)), "{b}");
    }
    f.shutdown().await;
}

#[tokio::test]
async fn the_server_api_of_fleet_up_publishes_into_a_room() {
    let f = up(3).await;
    let api = f.router.api_addr().expect("fleet up serves the API");
    let (mut c, _) = WsClient::join(&url(&f, "status:u42", "u42")).await;
    let (status, v) =
        admin(api, "POST", "/api/rooms/status:u42/publish", r#"{"body":"passed 12/12"}"#).await;
    assert_eq!((status, v["seq"].as_u64()), (200, Some(1)), "{v}");
    let m = c.recv_type("message").await;
    assert_eq!((m["body"].as_str(), m["from"].as_str()), (Some("passed 12/12"), Some("api")));
    c.close().await;
    f.shutdown().await;
}

/// Direct connect speaks the same protocol as the router's own data path: a member that
/// asked `GET /connect` and went to its node itself shares the room with one that came
/// through the router, in both directions, with the same welcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_client_and_a_routed_client_share_a_room() {
    let f = up_with(3, steady_health()).await;
    let (mut ann, aw, answer) =
        WsClient::join_direct(f.router.proxy_addr(), "room=direct:1&user=ann").await;
    let (mut bob, bw) = WsClient::join(&url(&f, "direct:1", "bob")).await;
    assert_eq!(aw["node"], answer["node"], "the node the router named");
    assert_eq!(bw["node"], aw["node"], "both on the room's node");
    assert_eq!(placement(&f, "direct:1").await["node"], aw["node"]);
    assert_eq!(bw["members"], json!(["ann", "bob"]));
    ann.publish(json!("from ann")).await;
    assert_eq!(bob.recv_type("message").await["body"], "from ann");
    assert_eq!(ann.recv_type("message").await["from"], "ann", "a sender gets its own too");
    bob.publish(json!("from bob")).await;
    let m = ann.recv_type("message").await;
    assert_eq!((m["from"].as_str(), m["body"].as_str()), (Some("bob"), Some("from bob")));
    ann.close().await;
    bob.close().await;
    f.shutdown().await;
}
