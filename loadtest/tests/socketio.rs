//! The Socket.IO dialect against a tiny in-test Socket.IO v4 server (Engine.IO open, ping,
//! namespace connect, `join` with ack, `publish` broadcast as `message`), and the checker
//! catching a server that drops messages in that dialect.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use loadtest::dialect::Dialect;
use loadtest::{RunConfig, run};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

type Rooms = Arc<Mutex<HashMap<String, Vec<mpsc::Sender<String>>>>>;

/// Serves until the test ends; drops every `drop_every`-th delivery when it is not 0.
struct Server {
    url: String,
    pongs: Arc<AtomicU64>,
}

async fn serve(drop_every: u64) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url =
        format!("ws://{}/socket.io/?EIO=4&transport=websocket", listener.local_addr().unwrap());
    let rooms: Rooms = Arc::default();
    let pongs = Arc::new(AtomicU64::new(0));
    let deliveries = Arc::new(AtomicU64::new(0));
    let p = pongs.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (rooms, pongs, deliveries) = (rooms.clone(), p.clone(), deliveries.clone());
            tokio::spawn(async move {
                let Ok(ws) = tokio_tungstenite::accept_async(stream).await else { return };
                let (mut sink, mut stream) = ws.split();
                let (tx, mut rx) = mpsc::channel::<String>(4096);
                tokio::spawn(async move {
                    while let Some(text) = rx.recv().await {
                        if sink.send(Message::text(text)).await.is_err() {
                            break;
                        }
                    }
                });
                let _ = tx
                    .send(r#"0{"sid":"s","pingInterval":25000,"pingTimeout":20000}"#.into())
                    .await;
                let mut room = None;
                while let Some(Ok(msg)) = stream.next().await {
                    let Message::Text(text) = msg else { continue };
                    let text = text.as_str();
                    if text == "40" {
                        let _ = tx.send(r#"40{"sid":"n"}"#.into()).await;
                        let _ = tx.send("2".into()).await;
                    } else if text == "3" {
                        pongs.fetch_add(1, Ordering::Relaxed);
                    } else if let Some(args) = text.strip_prefix("420") {
                        let args: Vec<String> = serde_json::from_str(args).unwrap();
                        rooms.lock().unwrap().entry(args[1].clone()).or_default().push(tx.clone());
                        room = Some(args[1].clone());
                        let _ = tx.send("430[]".into()).await;
                    } else if let Some(args) = text.strip_prefix("42") {
                        let args: Vec<serde_json::Value> = serde_json::from_str(args).unwrap();
                        let out = format!(r#"42["message",{{"from":"u","body":{}}}]"#, args[1]);
                        let members = rooms.lock().unwrap().get(room.as_ref().unwrap()).cloned();
                        for m in members.unwrap_or_default() {
                            let n = deliveries.fetch_add(1, Ordering::Relaxed) + 1;
                            if drop_every > 0 && n % drop_every == 0 {
                                continue;
                            }
                            let _ = m.send(out.clone()).await;
                        }
                    }
                }
            });
        }
    });
    Server { url, pongs }
}

fn config(url: &str) -> RunConfig {
    let mut cfg = RunConfig::small(url).unwrap();
    cfg.dialect = Dialect::Socketio;
    cfg.conns = 12;
    cfg.rooms = 3;
    cfg.rate = 20.0;
    cfg.warmup = Duration::ZERO;
    cfg.duration = Duration::from_secs(1);
    cfg.drain = Duration::from_secs(1);
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speaks_socketio_and_passes_a_clean_server() {
    let server = serve(0).await;
    let report = run(config(&server.url)).await.unwrap();
    assert_eq!(report.connect.connected, 12, "{:?}", report.connect.failures);
    assert!(report.published > 30);
    assert_eq!(report.delivered, report.published * 4, "4 members per room, sender included");
    assert!(report.ok, "{:#?}", report.check);
    assert_eq!(report.dialect, "socketio");
    assert_eq!(server.pongs.load(Ordering::Relaxed), 12, "every ping answered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_a_socketio_server_that_drops_messages() {
    let server = serve(7).await;
    let report = run(config(&server.url)).await.unwrap();
    assert!(!report.ok);
    assert!(report.check.loss > 0, "{:#?}", report.check);
    assert_eq!(report.check.duplicate, 0);
}
