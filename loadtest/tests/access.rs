//! Runs against a fleet with auth and TLS on: a real ws-node that verifies HS256 tokens
//! and serves `wss://` with a test certificate; every connection mints its token, passes the
//! node's check for its own room, and shakes hands with the CA from `--ca`.

use std::sync::Arc;
use std::time::Duration;

use loadtest::access::AccessArgs;
use loadtest::{RunConfig, run};
use ws_node::{Bus, Config, LocalBus, Node};

const SECRET: &str = "loadtest-access-secret-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_over_wss_get_every_connection_in() {
    let dir = std::env::temp_dir().join(format!("lt-access-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let files = shared::tls::TlsFiles { cert: dir.join("cert.pem"), key: dir.join("key.pem") };
    std::fs::write(&files.cert, ck.cert.pem()).unwrap();
    std::fs::write(&files.key, ck.signing_key.serialize_pem()).unwrap();
    let secret = dir.join("secret");
    std::fs::write(&secret, SECRET).unwrap();

    let config = Config {
        node_id: "lt-secure".into(),
        jwt: Some(Arc::new(shared::auth::Verifier::hs256(SECRET.as_bytes()).unwrap())),
        tls: Some(Arc::new(shared::tls::Tls::load(files.clone()).unwrap())),
        ..Config::default()
    };
    let bus: Arc<dyn Bus> = Arc::new(LocalBus::standalone(&config.node_id));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("wss://localhost:{}/ws", listener.local_addr().unwrap().port());
    let node = Node::new(config, bus);
    let serving = tokio::spawn(ws_node::serve(node.clone(), listener));

    let mut cfg = RunConfig::small(&url).unwrap();
    cfg.conns = 30;
    cfg.rooms = 6;
    cfg.duration = Duration::from_secs(1);
    let args = AccessArgs {
        jwt_secret: Some(secret.display().to_string()),
        ca: Some(files.cert.clone()),
        ..AccessArgs::default()
    };
    cfg.access = args.access(cfg.target.tls).unwrap();
    let report = run(cfg.clone()).await.unwrap();
    assert_eq!(report.connect.connected, 30, "{:?}", report.connect.failures);
    assert!(report.ok, "{:#?}", report.check);

    // Without tokens the node refuses every upgrade, and the report says so.
    cfg.access.minter = None;
    cfg.conns = 3;
    cfg.rooms = 1;
    cfg.rate = 0.0;
    cfg.warmup = Duration::ZERO;
    cfg.duration = Duration::ZERO;
    let report = run(cfg).await.unwrap();
    assert_eq!(report.connect.failures.get("http_401"), Some(&3), "{:?}", report.connect.failures);

    node.shutdown();
    let _ = tokio::time::timeout(Duration::from_secs(15), serving).await;
    let _ = std::fs::remove_dir_all(&dir);
}
