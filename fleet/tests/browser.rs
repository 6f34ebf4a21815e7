//! The demo chat and the admin UI in a real headless Chromium driven over WebDriver
//! (Debian's `chromium` and `chromium-driver`; scripts/test installs them): two sessions
//! chat and see presence, typing and each other's read markers ("seen by"), the chat
//! survives a drain with its reconnect banner and resumes it with nothing lost, a late
//! joiner sees the earlier messages (history on join), the admin UI shows the nodes and
//! agrees with `/admin/placement`. Screenshots go to docs/img.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder};
use fleet::{Fleet, Options};
use router::HealthConfig;
use serde_json::{Value, json};
use shared::testkit::ws::WsClient;
use shared::testkit::{free_port, http, wait_until};

const WAIT: Duration = Duration::from_secs(15);

/// A chromedriver on a free port, killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tool(env: &str, path: &str, package: &str) -> String {
    let p = std::env::var(env).unwrap_or_else(|_| path.to_owned());
    assert!(
        Path::new(&p).exists(),
        "browser tests need {p} (Debian package {package}; scripts/test installs it, or set {env})"
    );
    p
}

async fn driver() -> Driver {
    let bin = tool("CHROMEDRIVER", "/usr/bin/chromedriver", "chromium-driver");
    let port = free_port();
    let child = Command::new(bin)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let d = Driver { child, url: format!("http://127.0.0.1:{port}") };
    // It listens once it is ready for sessions (its /status keeps the connection open,
    // which the test kit's HTTP client would wait out).
    wait_until(WAIT, "chromedriver to listen", || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
    })
    .await;
    d
}

/// One browser session with its own fresh profile.
async fn session(d: &Driver, profile: &Path) -> Client {
    let chromium = tool("CHROMIUM", "/usr/bin/chromium", "chromium");
    // As root Chromium needs --no-sandbox; the network flags keep it from calling out of a
    // closed network, which otherwise makes it refuse connections.
    let args = [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1200,860",
    ]
    .into_iter()
    .map(String::from)
    .chain([format!("--user-data-dir={}", profile.display())])
    .collect::<Vec<_>>();
    let caps = json!({ "goog:chromeOptions": { "binary": chromium, "args": args } });
    let Value::Object(caps) = caps else { unreachable!() };
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&d.url)
        .await
        .expect("a chromium session")
}

async fn js(c: &Client, script: &str) -> Value {
    c.execute(script, vec![]).await.unwrap_or_else(|e| panic!("{script}: {e}"))
}

/// Waits until `script` returns something truthy.
async fn wait_js(c: &Client, script: &str, what: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let v = js(c, script).await;
        if !matches!(v, Value::Null | Value::Bool(false)) && v != json!("") && v != json!(0) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("screenshot");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/img").join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, png).unwrap();
}

async fn up() -> Fleet {
    let router = router::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin: "127.0.0.1:0".parse().unwrap(),
        health: HealthConfig {
            timeout: Duration::from_secs(2),
            fall: 5,
            ..HealthConfig::default()
        },
        drain_window: Some(Duration::from_millis(200)),
        shutdown_grace: Duration::from_secs(2),
        ..router::Config::default()
    };
    Fleet::up(Options {
        nodes: 3,
        router,
        node: ws_node::Config::default(),
        redis: None,
        data_path: Default::default(),
        archive: None,
    })
    .await
    .unwrap()
}

async fn api(f: &Fleet, method: &str, path: &str) -> Value {
    let (status, body) = http(f.router.admin_addr(), method, path, &[], "").await.unwrap();
    assert!((200..300).contains(&status), "{method} {path}: {status} {body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chat_and_the_admin_ui_work_in_chromium() {
    let f = up().await;
    let d = driver().await;
    let tmp = std::env::temp_dir().join(format!("roomfleet-browser-{}", std::process::id()));
    let profiles: Vec<PathBuf> = (0..2).map(|i| tmp.join(format!("p{i}"))).collect();
    let ann = session(&d, &profiles[0]).await;
    let bob = session(&d, &profiles[1]).await;

    // Admin UI: three nodes, and the explorer agrees with the API for 20 rooms.
    ann.goto(&format!("{}/", f.admin_url())).await.unwrap();
    wait_js(&ann, "return document.querySelectorAll('#nodes tr').length === 3", "3 node rows")
        .await;
    wait_js(&ann, "return document.querySelectorAll('#ring path.arc').length >= 3", "ring arcs")
        .await;
    for i in 0..20 {
        let room = format!("room-{i}");
        let want = api(&f, "GET", &format!("/admin/placement?room={room}")).await;
        js(&ann, &format!(
            "document.getElementById('place-room').value = '{room}'; document.getElementById('place-form').requestSubmit(); return true"
        ))
        .await;
        wait_js(
            &ann,
            &format!("return document.getElementById('place-result').dataset.room === '{room}'"),
            &room,
        )
        .await;
        let shown = js(&ann, "return [document.getElementById('place-node').textContent, document.getElementById('place-hash').textContent, document.getElementById('place-fallbacks').textContent]").await;
        let fallbacks: Vec<&str> =
            want["fallbacks"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert_eq!(shown[0], want["node"], "{room}: node");
        assert_eq!(shown[1], want["hash"], "{room}: hash");
        assert_eq!(shown[2], json!(fallbacks.join(" → ")), "{room}: fallbacks");
    }
    wait_js(&ann, "return document.querySelector('#rates [data-metric=router_upgrades_total] .value').textContent !== '–'", "a rate").await;
    screenshot(&ann, "admin.png").await;

    // Chat: both join, see each other, typing, messages.
    let room = "browser-lobby";
    for (c, user) in [(&ann, "ann"), (&bob, "bob")] {
        c.goto(&format!("{}/?room={room}&user={user}&join=1", f.chat_url())).await.unwrap();
        wait_js(c, "return document.body.dataset.state === 'open'", &format!("{user} open")).await;
    }
    wait_js(&ann, "return !!document.querySelector('#members li[data-user=bob]')", "ann sees bob")
        .await;
    wait_js(&bob, "return !!document.querySelector('#members li[data-user=ann]')", "bob sees ann")
        .await;
    bob.find(fantoccini::Locator::Id("text"))
        .await
        .unwrap()
        .send_keys("hello from b")
        .await
        .unwrap();
    wait_js(
        &ann,
        "return document.getElementById('typing').textContent.includes('bob is typing')",
        "typing",
    )
    .await;
    bob.find(fantoccini::Locator::Id("text")).await.unwrap().send_keys("ob\u{e007}").await.unwrap();
    let has = |text: &str| {
        format!(
            "return [...document.querySelectorAll('#messages li .text')].some(e => e.textContent === '{text}')"
        )
    };
    wait_js(&ann, &has("hello from bob"), "bob's message at ann").await;
    wait_js(&ann, "return document.getElementById('typing').textContent === ''", "typing cleared")
        .await;
    js(&ann, "document.getElementById('text').value = 'hi bob'; document.getElementById('send-form').requestSubmit(); return true").await;
    wait_js(&bob, &has("hi bob"), "ann's message at bob").await;
    // bob's page marks what it showed as read: ann's page says so under her message.
    let seen_under = |text: &str, users: &str| {
        format!(
            "return [...document.querySelectorAll('#messages li[data-seq]')].some(li => li.querySelector('.text').textContent === '{text}' && li.querySelector('.seen').textContent === 'seen by {users}')"
        )
    };
    wait_js(&ann, &seen_under("hi bob", "bob"), "bob's read marker at ann").await;
    wait_js(&bob, &seen_under("hi bob", "ann"), "ann's read marker at bob").await;
    screenshot(&ann, "chat.png").await;

    // Drain the room's node: the banner shows while reconnecting, then the chat resumes on
    // another node with what was said meanwhile by cy, a member on a third node that stays.
    let placed = api(&f, "GET", &format!("/admin/placement?room={room}")).await;
    let drained = placed["node"].as_str().unwrap().to_owned();
    let ring = api(&f, "GET", "/admin/ring").await;
    let other = ring["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] != drained.as_str())
        .map(|n| n["addr"].as_str().unwrap().to_owned())
        .unwrap();
    let (mut cy, _) = WsClient::join(&format!("ws://{other}/ws?room={room}&user=cy")).await;
    wait_js(&ann, "return !!document.querySelector('#members li[data-user=cy]')", "cy at ann")
        .await;
    js(&ann, "window.banners = []; const b = document.getElementById('banner'); new MutationObserver(() => { if (!b.hidden) window.banners.push(b.textContent) }).observe(b, { attributes: true, childList: true, subtree: true, characterData: true }); return true").await;
    api(&f, "POST", &format!("/admin/nodes/{drained}/drain")).await;
    wait_js(
        &ann,
        "return window.banners.some(t => t.startsWith('Reconnecting (closed 1012'))",
        "the reconnect banner",
    )
    .await;
    for i in 0..5 {
        cy.publish(json!({"text": format!("while away {i}")})).await;
    }
    wait_js(&ann, &format!("return document.body.dataset.state === 'open' && document.getElementById('banner').hidden && !document.getElementById('status').textContent.endsWith('{drained}')"), "ann open on another node").await;
    wait_js(&bob, "return document.body.dataset.state === 'open' && !!document.querySelector('#members li[data-user=ann]')", "bob back with ann").await;
    wait_js(
        &ann,
        "return [...document.querySelectorAll('#messages li.note')].some(e => e.textContent.endsWith('nothing missed'))",
        "the chat saying it resumed with nothing missed",
    )
    .await;
    js(&bob, "document.getElementById('text').value = 'after the drain'; document.getElementById('send-form').requestSubmit(); return true").await;
    wait_js(&ann, &has("after the drain"), "a message after the drain").await;
    for i in 0..5 {
        let once = format!(
            "return [...document.querySelectorAll('#messages li .text')].filter(e => e.textContent === 'while away {i}').length === 1"
        );
        wait_js(&ann, &once, &format!("cy's message {i} once at ann")).await;
    }

    // A late joiner (bob's browser, now as dee) sees what was said before it came, in
    // order and once, and its own read marker reaches ann.
    bob.goto(&format!("{}/?room={room}&user=dee&join=1", f.chat_url())).await.unwrap();
    wait_js(&bob, "return document.body.dataset.state === 'open'", "dee open").await;
    let said = ["hello from bob", "hi bob", "while away 0", "while away 4", "after the drain"];
    let order = serde_json::to_string(&said).unwrap();
    wait_js(
        &bob,
        &format!("const t = [...document.querySelectorAll('#messages li .text')].map(e => e.textContent); const want = {order}; return want.every(w => t.filter(x => x === w).length === 1) && want.map(w => t.indexOf(w)).every((i, k, a) => k === 0 || a[k - 1] < i)"),
        "the earlier messages at the late joiner, in order, once",
    )
    .await;
    wait_js(
        &bob,
        "return [...document.querySelectorAll('#messages li.note')].some(e => /^the last \\d+ message/.test(e.textContent))",
        "the history note",
    )
    .await;
    wait_js(
        &ann,
        "return [...document.querySelectorAll('#messages li .seen')].some(e => e.textContent.includes('dee'))",
        "dee's read marker at ann",
    )
    .await;

    ann.close().await.unwrap();
    bob.close().await.unwrap();
    drop(d);
    let _ = std::fs::remove_dir_all(&tmp);
    f.shutdown().await;
}
