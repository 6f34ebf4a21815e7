//! Webhooks: the room changes this node raised (`room.occupied`, `room.vacated`,
//! `member.joined`, `member.left`; each is raised only where it happened, so once across the
//! fleet) POSTed as JSON to every `--webhook` that wants them, signed with HMAC-SHA256 of
//! the body (`x-roomfleet-signature: sha256=HEX`). One bounded queue and one sender per
//! webhook, in order, each event retried with exponential back-off until it is taken; an
//! event is dropped (and counted) only when the queue is full, or when the receiver refuses
//! it for good (a 4xx other than 408 and 429).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Events one webhook queues before new ones are dropped.
pub const QUEUE: usize = 10_000;
/// The first retry's wait; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long one delivery may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The event names, as `--webhook` filters and the `event` field say them.
pub const EVENTS: [&str; 4] = ["room.occupied", "room.vacated", "member.joined", "member.left"];

/// One `--webhook [EVENTS@]http://HOST:PORT/PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    /// `HOST:PORT` to connect to.
    pub authority: String,
    pub path: String,
    /// The events it gets; empty = all.
    pub events: Vec<String>,
}

impl std::str::FromStr for Webhook {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (events, url) = match s.split_once('@') {
            Some((ev, url))
                if !ev.contains('/') && ev.split(',').all(|e| EVENTS.contains(&e.trim())) =>
            {
                (ev.split(',').map(|e| e.trim().to_string()).collect(), url)
            }
            _ => (Vec::new(), s),
        };
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("--webhook {url}: only http:// URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            return Err(format!("--webhook {url}: no host"));
        }
        let authority =
            if authority.contains(':') { authority.to_string() } else { format!("{authority}:80") };
        Ok(Self { authority, path: path.to_string(), events })
    }
}

impl Webhook {
    fn wants(&self, event: &str) -> bool {
        self.events.is_empty() || self.events.iter().any(|e| e == event)
    }
}

/// What a webhook receives.
#[derive(Debug, Clone, Serialize)]
pub struct HookEvent {
    /// Unique per event: a receiver drops a retried one it already has.
    pub id: String,
    pub event: &'static str,
    pub room: String,
    /// The node that raised it.
    pub node: String,
    /// Unix milliseconds when it happened.
    pub ts: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<Box<serde_json::value::RawValue>>,
    /// `member.left`: the close code and reason of the user's last connection (1000 and
    /// an empty reason when the client closed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The `--webhook-secret` (itself, `env:VAR` or `file:PATH`; 16 bytes at least).
pub fn secret(arg: &str) -> Result<Arc<[u8]>, String> {
    let s = shared::api::secret("--webhook-secret", arg)?;
    if s.len() < 16 {
        return Err("--webhook-secret needs at least 16 bytes".into());
    }
    Ok(Arc::from(s.into_bytes()))
}

struct Sender {
    hook: Webhook,
    tx: mpsc::Sender<Arc<(String, Bytes)>>,
}

/// The node's webhooks; `emit` never waits.
#[derive(Default)]
pub struct Hooks {
    senders: Vec<Sender>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Hooks({})", self.senders.len())
    }
}

impl Hooks {
    /// Starts one sender per webhook, until `stop`.
    pub fn start(
        hooks: &[Webhook],
        secret: Option<Arc<[u8]>>,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) -> Self {
        let senders = hooks
            .iter()
            .map(|h| {
                let (tx, rx) = mpsc::channel(QUEUE);
                tokio::spawn(send_all(
                    h.clone(),
                    secret.clone(),
                    rx,
                    metrics.clone(),
                    stop.clone(),
                ));
                Sender { hook: h.clone(), tx }
            })
            .collect();
        Self { senders, metrics }
    }

    pub fn is_empty(&self) -> bool {
        self.senders.is_empty()
    }

    /// Queues `e` for every webhook that wants it; a full queue drops it (counted).
    pub fn emit(&self, e: &HookEvent) {
        let body = Bytes::from(serde_json::to_vec(e).unwrap_or_default());
        let item = Arc::new((e.event.to_string(), body));
        for s in self.senders.iter().filter(|s| s.hook.wants(e.event)) {
            if s.tx.try_send(item.clone()).is_err() {
                self.metrics.webhooks_dropped.inc();
            }
        }
    }
}

async fn send_all(
    hook: Webhook,
    secret: Option<Arc<[u8]>>,
    mut rx: mpsc::Receiver<Arc<(String, Bytes)>>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    loop {
        let item = tokio::select! {
            _ = stop.cancelled() => return,
            i = rx.recv() => match i { Some(i) => i, None => return },
        };
        let (event, body) = &*item;
        let signature = secret.as_deref().map(|s| shared::api::sign_webhook(s, body));
        let mut wait = FIRST_BACKOFF;
        loop {
            match post(&hook, event, body, signature.as_deref()).await {
                Ok(()) => {
                    metrics.webhooks_sent.inc();
                    break;
                }
                Err(Failure::Refused(e)) => {
                    metrics.webhooks_failed.inc();
                    tracing::warn!(
                        webhook = hook.authority,
                        event,
                        "webhook refused for good: {e}"
                    );
                    break;
                }
                Err(Failure::Retry(e)) => {
                    metrics.webhook_retries.inc();
                    tracing::debug!(webhook = hook.authority, event, "webhook: {e}; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                    wait = (wait * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

/// Why a delivery did not go through.
enum Failure {
    /// Unreachable, timed out, 5xx, 408 or 429: try again.
    Retry(String),
    /// Any other 4xx: the receiver will never take it.
    Refused(String),
}

/// One POST; a 2xx answer is a delivery.
async fn post(
    hook: &Webhook,
    event: &str,
    body: &Bytes,
    signature: Option<&str>,
) -> Result<(), Failure> {
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(&hook.authority)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        let mut req = Request::post(hook.path.as_str())
            .header(header::HOST, hook.authority.as_str())
            .header(header::CONTENT_TYPE, "application/json")
            .header("x-roomfleet-event", event);
        if let Some(s) = signature {
            req = req.header("x-roomfleet-signature", s);
        }
        let req = req.body(Full::new(body.clone())).map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| format!("request: {e}"))?;
        Ok::<_, String>(resp.status())
    };
    match tokio::time::timeout(TIMEOUT, exchange).await {
        Ok(Ok(s)) if s.is_success() => Ok(()),
        Ok(Ok(s)) if s.is_client_error() && s != 408 && s != 429 => {
            Err(Failure::Refused(format!("answered {s}")))
        }
        Ok(Ok(s)) => Err(Failure::Retry(format!("answered {s}"))),
        Ok(Err(e)) => Err(Failure::Retry(e)),
        Err(_) => Err(Failure::Retry("timed out".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhooks_parse_with_and_without_a_filter() {
        let w: Webhook = "http://127.0.0.1:9000/hooks/rf".parse().unwrap();
        assert_eq!((w.authority.as_str(), w.path.as_str()), ("127.0.0.1:9000", "/hooks/rf"));
        assert!(w.wants("room.vacated"));
        let w: Webhook = "member.left,room.vacated@http://hooks.internal/x".parse().unwrap();
        assert_eq!(w.authority, "hooks.internal:80");
        assert!(w.wants("member.left") && !w.wants("member.joined"));
        assert!("https://a/x".parse::<Webhook>().is_err());
        assert!(
            "room.nope@http://a/x".parse::<Webhook>().is_err(),
            "an unknown event is no filter"
        );
    }
}
