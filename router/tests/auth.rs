//! Identity and access through a real router and real nodes: every way of passing a token,
//! each refusal class with its status, read-only members, nodes that refuse identities no
//! router signed, refresh and expiry, and a JWKS rotated while the fleet runs.

mod common;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use common::{STEP, TestNode, UPGRADE, WsClient, raw_upgrade};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use router::Router;
use serde_json::{Value, json};
use shared::auth::{HopKey, Verifier, unix_secs};
use ws_node::LocalHub;

const HOP: &[u8] = b"hop-secret-for-the-tests-0123456";
const K1: &[u8] = b"first-signing-secret-0123456789ab";
const K2: &[u8] = b"second-signing-secret-0123456789a";

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// A JWKS of HS256 (`oct`) keys.
fn jwks(keys: &[(&str, &[u8])]) -> String {
    let keys: Vec<Value> = keys
        .iter()
        .map(|(kid, k)| json!({"kty": "oct", "kid": kid, "alg": "HS256", "k": b64(k)}))
        .collect();
    json!({ "keys": keys }).to_string()
}

struct Claims<'a> {
    sub: &'a str,
    rooms: Value,
    exp: i64,
    nbf: Option<i64>,
}

fn claims(sub: &str, rooms: Value) -> Claims<'_> {
    Claims { sub, rooms, exp: 600, nbf: None }
}

/// A token; `exp`/`nbf` are seconds from now.
fn sign(c: &Claims<'_>, kid: Option<&str>, alg: Algorithm, key: &EncodingKey) -> String {
    let now = unix_secs() as i64;
    let mut body = json!({"sub": c.sub, "rooms": c.rooms, "exp": now + c.exp});
    if let Some(nbf) = c.nbf {
        body["nbf"] = json!(now + nbf);
    }
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&h, &body, key).unwrap()
}

fn hs(c: &Claims<'_>, kid: &str, secret: &[u8]) -> String {
    sign(c, Some(kid), Algorithm::HS256, &EncodingKey::from_secret(secret))
}

/// Two nodes that verify tokens and hop headers, and a router in front of them.
struct Fleet {
    _dir: TempDir,
    jwks_path: std::path::PathBuf,
    nodes: Vec<TestNode>,
    router: Router,
}

/// A directory removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "roomfleet-{tag}-{}-{}",
            std::process::id(),
            fastrand_u64()
        ));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fastrand_u64() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
}

impl Fleet {
    async fn start() -> Self {
        let dir = TempDir::new("auth");
        let jwks_path = dir.0.join("jwks.json");
        std::fs::write(&jwks_path, jwks(&[("k1", K1)])).unwrap();
        let verifier = Arc::new(Verifier::from_arg(jwks_path.to_str().unwrap()).unwrap());
        let hop = HopKey::new(HOP).unwrap();
        let hub = LocalHub::new();
        let mut nodes = Vec::new();
        for id in ["node-a", "node-b"] {
            let cfg = ws_node::Config {
                node_id: id.into(),
                jwt: Some(verifier.clone()),
                hop_key: Some(hop.clone()),
                ..ws_node::Config::default()
            };
            nodes.push(TestNode::with_config(cfg, &hub).await);
        }
        let mut cfg = common::config(&nodes.iter().collect::<Vec<_>>());
        cfg.jwt = Some(verifier);
        cfg.hop_key = Some(hop);
        let router = Router::start(cfg).unwrap();
        Self { _dir: dir, jwks_path, nodes, router }
    }

    fn url(&self, query: &str) -> String {
        format!("ws://{}/ws?{query}", self.router.proxy_addr())
    }

    async fn refused(&self, query: &str, headers: &[(&str, &str)]) -> (u16, String) {
        let mut h: Vec<(&str, &str)> = UPGRADE.to_vec();
        h.extend_from_slice(headers);
        raw_upgrade(self.router.proxy_addr(), &format!("/ws?{query}"), &h).await
    }

    async fn metric(&self, name: &str) -> f64 {
        let text = shared::testkit::http(self.router.admin_addr(), "GET", "/metrics", &[], "")
            .await
            .unwrap()
            .1;
        shared::metrics::sample(&text, name).unwrap_or(0.0)
    }
}

async fn welcome(c: &mut WsClient) -> Value {
    let w = c.recv().await;
    assert_eq!(w["type"], "welcome", "{w}");
    w
}

#[tokio::test]
async fn a_token_passes_as_query_bearer_or_subprotocol() {
    let f = Fleet::start().await;
    let t = hs(&claims("ann", json!({"chat:*": "rw"})), "k1", K1);

    let (mut c, _) =
        WsClient::connect_with(&f.url(&format!("room=chat:1&token={t}")), &[]).await.unwrap();
    assert_eq!(welcome(&mut c).await["user"], "ann", "the user is the token's sub");

    let bearer = format!("Bearer {t}");
    let (mut c, _) =
        WsClient::connect_with(&f.url("room=chat:1&user=ann"), &[("authorization", &bearer)])
            .await
            .unwrap();
    assert_eq!(welcome(&mut c).await["user"], "ann");

    let proto = format!("roomfleet, token.{t}");
    let (mut c, headers) =
        WsClient::connect_with(&f.url("room=chat:1"), &[("sec-websocket-protocol", &proto)])
            .await
            .unwrap();
    assert_eq!(headers["sec-websocket-protocol"], "roomfleet", "the server picks roomfleet");
    assert_eq!(welcome(&mut c).await["user"], "ann");
}

#[tokio::test]
async fn es256_pem_keys_verify() {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let dir = TempDir::new("es256");
    let pem = dir.0.join("pub.pem");
    std::fs::write(&pem, kp.public_key_pem()).unwrap();
    let v = Verifier::from_arg(pem.to_str().unwrap()).unwrap();
    let key = EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap();
    let t = sign(&claims("ann", json!({"*": "r"})), None, Algorithm::ES256, &key);
    let room = shared::ids::RoomId::parse("x").unwrap();
    assert_eq!(v.verify(&t, &room, None).unwrap().user.as_str(), "ann");
    let hs = hs(&claims("ann", json!({"*": "r"})), "k1", K1);
    assert!(v.verify(&hs, &room, None).is_err(), "an HS256 token never passes an EC key");
}

#[tokio::test]
async fn each_bad_token_gets_its_status_and_reason() {
    let f = Fleet::start().await;
    let ok = |c: &Claims<'_>| hs(c, "k1", K1);
    let cases: Vec<(&str, String, u16, &str, &str)> = vec![
        ("missing", "room=chat:1".into(), 401, "token is missing", "missing"),
        (
            "bad signature",
            format!("room=chat:1&token={}", hs(&claims("ann", json!({"*": "rw"})), "k1", K2)),
            401,
            "bad signature",
            "invalid",
        ),
        (
            "wrong key id",
            format!("room=chat:1&token={}", hs(&claims("ann", json!({"*": "rw"})), "k9", K1)),
            401,
            "key id is unknown",
            "unknown_kid",
        ),
        (
            "expired",
            format!(
                "room=chat:1&token={}",
                ok(&Claims { exp: -120, ..claims("ann", json!({"*": "rw"})) })
            ),
            401,
            "expired",
            "expired",
        ),
        (
            "not yet valid",
            format!(
                "room=chat:1&token={}",
                ok(&Claims { nbf: Some(300), ..claims("ann", json!({"*": "rw"})) })
            ),
            401,
            "not yet valid",
            "not_yet_valid",
        ),
        (
            "room not allowed",
            format!("room=dm:1&token={}", ok(&claims("ann", json!({"chat:*": "rw"})))),
            403,
            "does not grant room dm:1",
            "room_not_allowed",
        ),
        (
            "user not sub",
            format!("room=chat:1&user=admin&token={}", ok(&claims("ann", json!({"*": "rw"})))),
            401,
            "does not match",
            "user_mismatch",
        ),
    ];
    for (what, query, status, text, reason) in cases {
        let (got, body) = f.refused(&query, &[]).await;
        assert_eq!(got, status, "{what}: {body}");
        assert!(body.contains(text), "{what}: {body}");
        let name = format!("router_auth_refused_total{{reason=\"{reason}\"}}");
        assert_eq!(f.metric(&name).await, 1.0, "{what} counted as {reason}");
    }
}

#[tokio::test]
async fn read_only_members_cannot_publish() {
    let f = Fleet::start().await;
    let reader = hs(&claims("rita", json!({"news:*": "r"})), "k1", K1);
    let writer = hs(&claims("will", json!({"news:*": "rw"})), "k1", K1);
    let (mut r, _) =
        WsClient::connect_with(&f.url(&format!("room=news:1&token={reader}")), &[]).await.unwrap();
    welcome(&mut r).await;
    let (mut w, _) =
        WsClient::connect_with(&f.url(&format!("room=news:1&token={writer}")), &[]).await.unwrap();
    welcome(&mut w).await;
    r.publish(json!("from the reader")).await;
    let e = r.recv_type("error").await;
    assert_eq!(e["code"], "forbidden", "{e}");
    w.publish(json!("from the writer")).await;
    let m = r.recv_type("message").await;
    assert_eq!((m["from"].as_str(), m["body"].as_str()), (Some("will"), Some("from the writer")));
    assert_eq!(
        w.recv_type("message").await["body"],
        "from the writer",
        "only one message went out"
    );
}

#[tokio::test]
async fn a_node_refuses_identities_no_router_signed() {
    let f = Fleet::start().await;
    let node = f.nodes[0].addr;
    let raw = |path: String, extra: Vec<(&'static str, String)>| async move {
        let mut h: Vec<(&str, &str)> = UPGRADE.to_vec();
        let extra_ref: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
        h.extend_from_slice(&extra_ref);
        raw_upgrade(node, &path, &h).await
    };
    let (status, body) = raw("/ws?room=vip&user=admin".into(), vec![]).await;
    assert_eq!(status, 401, "bare user= straight to a node: {body}");

    let id = shared::auth::Identity {
        user: shared::ids::UserId::parse("admin").unwrap(),
        rights: shared::auth::Rights::ReadWrite,
        exp: unix_secs() + 600,
        info: None,
    };
    let room = shared::ids::RoomId::parse("vip").unwrap();
    let forged = HopKey::new(b"a-secret-the-attacker-made-up!!").unwrap().sign(&id, &room);
    let (status, body) = raw("/ws?room=vip".into(), vec![("x-roomfleet-identity", forged)]).await;
    assert_eq!(status, 401, "forged hop header: {body}");
    assert!(body.contains("identity header"), "{body}");

    // Through the router, a client's own identity header is dropped, not believed.
    let genuine = HopKey::new(HOP).unwrap().sign(&id, &room);
    let (status, body) = f.refused("room=vip", &[("x-roomfleet-identity", &genuine)]).await;
    assert_eq!(status, 401, "{body}");

    // A valid token straight to the node is fine.
    let t = hs(&claims("ann", json!({"vip": "rw"})), "k1", K1);
    let (mut c, _) =
        WsClient::connect_with(&format!("ws://{node}/ws?room=vip&token={t}"), &[]).await.unwrap();
    assert_eq!(welcome(&mut c).await["user"], "ann");
}

#[tokio::test]
async fn refresh_extends_and_expiry_closes_with_4001() {
    let f = Fleet::start().await;
    let short = |sub| hs(&Claims { exp: 3, ..claims(sub, json!({"live": "rw"})) }, "k1", K1);
    let (mut keep, _) =
        WsClient::connect_with(&f.url(&format!("room=live&token={}", short("kay"))), &[])
            .await
            .unwrap();
    welcome(&mut keep).await;
    let (mut lapse, _) =
        WsClient::connect_with(&f.url(&format!("room=live&token={}", short("lea"))), &[])
            .await
            .unwrap();
    welcome(&mut lapse).await;

    let other = hs(&claims("someone-else", json!({"live": "rw"})), "k1", K1);
    keep.send_json(&json!({"type": "refresh", "token": other})).await;
    assert_eq!(keep.recv_type("error").await["code"], "bad_token", "a token for another sub");
    let later = hs(&Claims { exp: 600, ..claims("kay", json!({"live": "rw"})) }, "k1", K1);
    keep.send_json(&json!({"type": "refresh", "token": later})).await;

    let closed = lapse.closed_with_reason(STEP).await;
    assert_eq!(closed, Some((4001, "token expired".to_string())));
    // Past the first token's exp, the refreshed connection still chats.
    keep.publish(json!("still here")).await;
    assert_eq!(keep.recv_type("message").await["body"], "still here");
}

#[tokio::test]
async fn a_rotated_jwks_is_picked_up_without_a_restart() {
    let f = Fleet::start().await;
    let t2 = hs(&claims("ann", json!({"*": "rw"})), "k2", K2);
    let (status, body) = f.refused(&format!("room=r&token={t2}"), &[]).await;
    assert_eq!((status, body.contains("key id is unknown")), (401, true), "{body}");
    let (mut old, _) = WsClient::connect_with(
        &f.url(&format!("room=r&token={}", hs(&claims("bob", json!({"*": "rw"})), "k1", K1))),
        &[],
    )
    .await
    .unwrap();
    welcome(&mut old).await;

    let tmp = f.jwks_path.with_extension("new");
    std::fs::write(&tmp, jwks(&[("k2", K2)])).unwrap();
    std::fs::rename(&tmp, &f.jwks_path).unwrap();
    let url = f.url(&format!("room=r&token={t2}"));
    shared::testkit::wait_until(Duration::from_secs(15), "the new key to be accepted", || {
        let url = url.clone();
        async move { WsClient::connect_with(&url, &[]).await.is_ok() }
    })
    .await;
    let t1 = hs(&claims("ann", json!({"*": "rw"})), "k1", K1);
    assert_eq!(f.refused(&format!("room=r&token={t1}"), &[]).await.0, 401, "the retired key");
    old.publish(json!("open connections stay")).await;
    assert_eq!(old.recv_type("message").await["body"], "open connections stay");
}

/// `GET /connect` on the router's public listener.
async fn connect(f: &Fleet, query: &str) -> (u16, Value) {
    let (status, body) =
        shared::testkit::http(f.router.proxy_addr(), "GET", &format!("/connect?{query}"), &[], "")
            .await
            .unwrap();
    (status, serde_json::from_str(&body).unwrap_or(Value::String(body)))
}

/// The node's answer to an upgrade at `url` (a `ws://` URL), as status and body.
async fn upgrade_at(url: &str) -> (u16, String) {
    let rest = url.strip_prefix("ws://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    raw_upgrade(host.parse().unwrap(), path, &UPGRADE).await
}

#[tokio::test]
async fn direct_connect_tickets_work_only_on_their_node_and_only_until_they_expire() {
    let f = Fleet::start().await;
    let t = hs(&claims("ann", json!({"chat:*": "rw"})), "k1", K1);
    let (status, d) = connect(&f, &format!("room=chat:1&token={t}&since=3&epoch=e1")).await;
    assert_eq!(status, 200, "{d}");
    let url = d["url"].as_str().unwrap().to_owned();
    let node = d["node"].as_str().unwrap().to_owned();
    assert!(d["expires"].as_u64().unwrap() > 0);
    assert!(!url.contains(&t), "the client's token never goes into the node URL: {url}");
    assert!(url.contains("user=ann") && url.contains("since=3&epoch=e1"), "{url}");
    let (mut c, _) = WsClient::connect_with(&url, &[]).await.unwrap();
    let w = welcome(&mut c).await;
    assert_eq!((w["user"].as_str(), w["node"].as_str()), (Some("ann"), Some(node.as_str())));

    // The same ticket on the other node, tampered with, expired, or without one.
    let me = f.nodes.iter().find(|n| n.id == node).unwrap().addr.to_string();
    let other = f.nodes.iter().find(|n| n.id != node).unwrap().addr.to_string();
    let (status, body) = upgrade_at(&url.replace(&me, &other)).await;
    assert_eq!((status, body.contains("issued for another node")), (401, true), "{body}");
    let ticket = d["ticket"].as_str().unwrap();
    let tampered = url.replace(ticket, &format!("{}x", &ticket[..ticket.len() - 1]));
    assert_eq!(upgrade_at(&tampered).await.0, 401);
    let hop = HopKey::new(HOP).unwrap();
    let id = shared::auth::Identity {
        user: shared::ids::UserId::parse("ann").unwrap(),
        rights: shared::auth::Rights::ReadWrite,
        exp: unix_secs() + 600,
        info: None,
    };
    let room = shared::ids::RoomId::parse("chat:1").unwrap();
    let stale = hop.ticket(&id, &room, &node, Duration::ZERO);
    // A ticket is good through its last millisecond: checked within it, this one would pass.
    shared::testkit::wait_until(STEP, "the stale ticket's millisecond to pass", || async {
        shared::protocol::unix_ms() > stale.expires
    })
    .await;
    let (status, body) =
        upgrade_at(&format!("ws://{me}/ws?room=chat:1&ticket={}", stale.value)).await;
    assert_eq!((status, body.contains("expired")), (401, true), "{body}");

    // A ticket works until it expires, then the same one is refused.
    let short = hop.ticket(&id, &room, &node, Duration::from_millis(300));
    let url = format!("ws://{me}/ws?room=chat:1&ticket={}", short.value);
    let (mut c, _) = WsClient::connect_with(&url, &[]).await.unwrap();
    welcome(&mut c).await;
    shared::testkit::wait_until(Duration::from_secs(5), "the ticket to expire", || {
        let url = url.clone();
        async move { WsClient::connect_with(&url, &[]).await.is_err() }
    })
    .await;
    let (status, body) = upgrade_at(&url).await;
    assert_eq!((status, body.contains("expired")), (401, true), "{body}");

    // The router refuses what it would refuse for an upgrade.
    assert_eq!(connect(&f, "room=chat:1").await.0, 401);
    let t = hs(&claims("ann", json!({"other:*": "rw"})), "k1", K1);
    assert_eq!(connect(&f, &format!("room=chat:1&token={t}")).await.0, 403);
    assert_eq!(connect(&f, "room=a%20b").await.0, 400);
}

#[tokio::test]
async fn a_tokens_info_reaches_the_others_welcome_and_presence() {
    let f = Fleet::start().await;
    let with_info = |sub: &str, info: Value| {
        let body = json!({
            "sub": sub,
            "rooms": {"team:*": "rw"},
            "exp": unix_secs() + 600,
            "info": info,
        });
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("k1".into());
        jsonwebtoken::encode(&h, &body, &EncodingKey::from_secret(K1)).unwrap()
    };
    let ann_info = json!({"name": "Ann", "avatar": "https://example.test/ann.png"});
    let ann_token = with_info("ann", ann_info.clone());
    let (mut ann, _) =
        WsClient::connect_with(&f.url(&format!("room=team:1&token={ann_token}")), &[])
            .await
            .unwrap();
    let w = welcome(&mut ann).await;
    assert_eq!(w["info"]["ann"], ann_info, "a member sees its own info too: {w}");

    // bob's token has no info; carol's has one. Both go through the router's hop header.
    let bob_token = hs(&claims("bob", json!({"team:*": "rw"})), "k1", K1);
    let (mut bob, _) =
        WsClient::connect_with(&f.url(&format!("room=team:1&token={bob_token}")), &[])
            .await
            .unwrap();
    let w = welcome(&mut bob).await;
    assert_eq!(w["info"]["ann"], ann_info, "the others' info in welcome: {w}");
    assert!(w["info"].get("bob").is_none(), "no info, no entry: {w}");
    let joined = ann.recv_type("presence").await;
    assert_eq!((joined["event"].as_str(), joined["user"].as_str()), (Some("join"), Some("bob")));
    assert!(joined.get("info").is_none(), "a join without info: {joined}");

    let carol_info = json!({"name": "Carol", "role": "host"});
    let carol_token = with_info("carol", carol_info.clone());
    let (mut carol, _) =
        WsClient::connect_with(&f.url(&format!("room=team:1&token={carol_token}")), &[])
            .await
            .unwrap();
    let w = welcome(&mut carol).await;
    assert_eq!(w["info"]["ann"], ann_info, "{w}");
    for member in [&mut ann, &mut bob] {
        let joined = member.recv_type("presence").await;
        assert_eq!(joined["user"], "carol", "{joined}");
        assert_eq!(joined["info"], carol_info, "the join carries carol's info: {joined}");
    }
}
