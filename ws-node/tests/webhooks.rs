//! Webhooks against a real HTTP receiver: a room on two nodes raises occupied, joined,
//! left (with the close code) and vacated once each across the fleet, signed; a receiver
//! that was down gets them afterwards, in order (retries with back-off).

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::Value;
use shared::testkit::wait_until;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use ws_node::{Bus, LocalHub};

const SECRET: &[u8] = b"webhook-secret-0123456789";

/// One POST as the receiver got it.
#[derive(Debug, Clone)]
struct Got {
    event: String,
    signature: String,
    body: String,
}

/// A webhook receiver: answers 503 to the first `refuse` requests, 200 after.
struct Receiver {
    addr: std::net::SocketAddr,
    got: Arc<Mutex<Vec<Got>>>,
}

impl Receiver {
    async fn start(refuse: usize) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let seen = got.clone();
        tokio::spawn(async move {
            let mut n = 0;
            while let Ok((mut s, _)) = l.accept().await {
                n += 1;
                let Some(g) = read_request(&mut s).await else { continue };
                let status = if n <= refuse { "503 Service Unavailable" } else { "200 OK" };
                if n > refuse {
                    seen.lock().unwrap().push(g);
                }
                let resp =
                    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = s.write_all(resp.as_bytes()).await;
            }
        });
        Self { addr, got }
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }
}

/// Reads one HTTP/1.1 request with a content-length body (bounded: 64 KiB).
async fn read_request(s: &mut tokio::net::TcpStream) -> Option<Got> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(STEP, s.read(&mut chunk)).await.ok()?.ok()?;
        if n == 0 || buf.len() > 65536 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        let Some((head, body)) = text.split_once("\r\n\r\n") else { continue };
        let header = |name: &str| {
            head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
            })
        };
        let len: usize = header("content-length")?.parse().ok()?;
        if body.len() < len {
            continue;
        }
        return Some(Got {
            event: header("x-roomfleet-event").unwrap_or_default(),
            signature: header("x-roomfleet-signature").unwrap_or_default(),
            body: body[..len].to_string(),
        });
    }
}

async fn nodes(hub: &LocalHub, hook: &str) -> Vec<TestNode> {
    let mut out = Vec::new();
    for id in ["node-a", "node-b"] {
        let cfg = ws_node::Config {
            webhooks: vec![hook.parse().unwrap()],
            webhook_secret: Some(Arc::from(SECRET)),
            ..config(id)
        };
        let bus: Arc<dyn Bus> = Arc::new(hub.bus(id));
        out.push(TestNode::with_bus(cfg, bus).await);
    }
    out
}

fn events(r: &Receiver) -> Vec<(String, Value)> {
    r.got()
        .into_iter()
        .map(|g| {
            assert_eq!(g.signature, shared::api::sign_webhook(SECRET, g.body.as_bytes()), "signed");
            let v: Value = serde_json::from_str(&g.body).unwrap();
            assert_eq!(v["event"], g.event.as_str());
            (g.event, v)
        })
        .collect()
}

#[tokio::test]
async fn a_room_on_two_nodes_raises_each_change_once_signed() {
    let r = Receiver::start(0).await;
    let hub = LocalHub::new();
    let ns = nodes(&hub, &format!("http://{}/hooks", r.addr)).await;
    let (mut ann, _) = Client::join(&ns[0].url("w:1", "ann")).await;
    let (bob, w) = Client::join(&ns[1].url("w:1", "bob")).await;
    assert_eq!(w["members"].as_array().unwrap().len(), 2, "the room spans: {w}");
    ann.recv_type("presence").await;
    bob.close().await;
    assert_eq!(ann.recv_type("presence").await["event"], "leave");
    ann.close().await;
    wait_until(STEP, "six events", || {
        let n = r.got().len();
        async move { n >= 6 }
    })
    .await;
    let got = events(&r);
    let mut names: Vec<(&str, Option<&str>, &str)> = got
        .iter()
        .map(|(e, v)| (e.as_str(), v["user"].as_str(), v["node"].as_str().unwrap()))
        .collect();
    // Each node sends what it raised in order; the two nodes' streams may interleave.
    let of = |names: &[(&str, Option<&str>, &str)], node: &str| -> Vec<String> {
        names.iter().filter(|n| n.2 == node).map(|n| format!("{} {:?}", n.0, n.1)).collect()
    };
    assert_eq!(
        of(&names, "node-a"),
        [
            "room.occupied None",
            "member.joined Some(\"ann\")",
            "member.left Some(\"ann\")",
            "room.vacated None"
        ],
        "{got:?}"
    );
    assert_eq!(
        of(&names, "node-b"),
        ["member.joined Some(\"bob\")", "member.left Some(\"bob\")"],
        "{got:?}"
    );
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 6, "once each across the fleet: {got:?}");
    let left = got.iter().find(|(e, _)| e == "member.left").map(|(_, v)| v.clone()).unwrap();
    assert_eq!((left["code"].as_u64(), left["room"].as_str()), (Some(1000), Some("w:1")));
    assert_eq!(ns[0].metric("wsnode_webhooks_sent_total").await, 4.0);
}
#[tokio::test]
async fn a_receiver_that_was_down_gets_the_events_later_in_order() {
    let r = Receiver::start(3).await;
    let hub = LocalHub::new();
    let filter = format!("member.joined,member.left@http://{}/hooks", r.addr);
    let ns = nodes(&hub, &filter).await;
    let (c, _) = Client::join(&ns[0].url("w:2", "cy")).await;
    c.close().await;
    wait_until(Duration::from_secs(10), "both events after the retries", || {
        let n = r.got().len();
        async move { n == 2 }
    })
    .await;
    let got: Vec<String> = events(&r).into_iter().map(|(e, _)| e).collect();
    assert_eq!(got, ["member.joined", "member.left"], "filtered, in order");
    assert_eq!(ns[0].metric("wsnode_webhook_retries_total").await, 3.0);
}
