//! `loadtest api`: load on the server API and the Redis inbox instead of on members. Members
//! sit in rooms on every node (routed rooms on their owner, spanning rooms over all the
//! `--node-url`s); back-end callers publish through `POST /api/rooms/{room}/publish`, then
//! through `XADD {prefix}:inbox`, each kept at a bounded number in flight. Measured: calls
//! or entries per second, and the latency from the call to each member's delivery; every
//! delivery is checked (each publish reaches each member of its room once).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::access::{Access, Ws};
use crate::dialect::{self, Dialect, Incoming};
use crate::report::{Summary, new_histogram};
use crate::run::{dial, join_as, now_us, ws_cause, ws_config};
use crate::target::Target;

/// Inbox publish counters start here, so a delivery tells which phase it belongs to.
const INBOX_BASE: u64 = 1 << 40;
/// Inbox entries one `XADD` pipeline carries at most.
const XADD_BATCH: usize = 128;

/// `loadtest api` flags.
#[derive(Debug, clap::Args)]
pub struct ApiArgs {
    /// The router's WebSocket URL: members of routed rooms join there.
    #[arg(long, env = "LOADTEST_URL", default_value = "ws://127.0.0.1:8080/ws")]
    pub url: String,
    /// The nodes' WebSocket URLs (comma list): members of spanning rooms join them in turn.
    #[arg(long, env = "LOADTEST_NODE_URLS", value_delimiter = ',')]
    pub node_url: Vec<String>,
    /// The router's API listener.
    #[arg(long, env = "LOADTEST_API", default_value = "127.0.0.1:9091")]
    pub api: SocketAddr,
    /// The API key's secret (`Authorization: Bearer`); none for a loopback API without keys.
    #[arg(long, env = "LOADTEST_API_KEY")]
    pub api_key: Option<String>,
    /// Redis of the routers' inbox (`--inbox`); without it the inbox phase is skipped.
    #[arg(long, env = "LOADTEST_REDIS")]
    pub redis: Option<String>,
    /// The fleet's `--redis-prefix`.
    #[arg(long, env = "LOADTEST_REDIS_PREFIX", default_value = "roomfleet")]
    pub redis_prefix: String,
    /// Rooms; the first `--spanning` of them span the node URLs.
    #[arg(long, env = "LOADTEST_ROOMS", default_value_t = 30)]
    pub rooms: usize,
    /// Rooms whose members are spread over the `--node-url`s.
    #[arg(long, env = "LOADTEST_SPANNING", default_value_t = 10)]
    pub spanning: usize,
    /// Members per room.
    #[arg(long, env = "LOADTEST_MEMBERS", default_value_t = 3)]
    pub members: usize,
    /// HTTP publishes in flight at once (one keep-alive connection each).
    #[arg(long, env = "LOADTEST_CONCURRENCY", default_value_t = 32)]
    pub concurrency: usize,
    /// Inbox entries appended but not yet delivered to every member, at most.
    #[arg(long, env = "LOADTEST_WINDOW", default_value_t = 256)]
    pub window: u64,
    /// Seconds of each phase.
    #[arg(long, env = "LOADTEST_DURATION", default_value_t = 10.0)]
    pub duration: f64,
    /// Publish body size in bytes (padded JSON).
    #[arg(long, env = "LOADTEST_SIZE", default_value_t = 64)]
    pub size: usize,
    /// HTTP publishes without an `id` (not idempotent: the node keeps no mark for them).
    #[arg(long)]
    pub without_ids: bool,
    /// Prefix of room and user names.
    #[arg(long, env = "LOADTEST_PREFIX", default_value = "ltapi")]
    pub prefix: String,
    /// Write the JSON report here.
    #[arg(long, env = "LOADTEST_JSON")]
    pub json: Option<std::path::PathBuf>,
}

/// One phase's figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Phase {
    /// Publishes the API answered 200 (HTTP) or entries appended (inbox).
    pub published: u64,
    /// Calls that failed (HTTP status or transport), by nothing finer: see the router log.
    pub errors: u64,
    pub seconds: f64,
    /// `published / seconds`.
    pub per_s: f64,
    /// Member deliveries expected (`published x members`) and seen.
    pub expected: u64,
    pub delivered: u64,
    pub duplicates: u64,
    /// From the call (HTTP request sent, `XADD` sent) to each member's delivery, µs.
    pub latency_us: Summary,
    /// From the call to the HTTP answer, µs (HTTP only).
    pub answer_us: Summary,
}

/// What `loadtest api` reports.
#[derive(Debug, Clone, Serialize)]
pub struct ApiReport {
    pub rooms: usize,
    pub spanning: usize,
    pub members: usize,
    pub http: Phase,
    pub inbox: Option<Phase>,
    /// True when every publish reached every member of its room exactly once.
    pub ok: bool,
}

/// A member's deliveries, kept by its task.
struct Seen {
    latency: [Histogram<u64>; 2],
    counters: HashSet<u64>,
    duplicates: [u64; 2],
}

/// Deliveries so far per phase, for the inbox window.
#[derive(Default)]
struct Delivered([AtomicU64; 2]);

fn room(prefix: &str, r: usize) -> String {
    format!("{prefix}-{r}")
}

impl ApiArgs {
    fn check(&self) -> anyhow::Result<(Target, Vec<Target>)> {
        let router = Target::parse(&self.url)?;
        let nodes =
            self.node_url.iter().map(|u| Target::parse(u)).collect::<Result<Vec<_>, _>>()?;
        if !self.api.ip().is_loopback() {
            bail!("--api {}: loadtest only talks to this machine", self.api);
        }
        if self.spanning > self.rooms || (self.spanning > 0 && nodes.len() < 2) {
            bail!("--spanning {} needs at most --rooms rooms and two --node-url", self.spanning);
        }
        if self.rooms == 0 || self.members == 0 || self.concurrency == 0 || self.window == 0 {
            bail!("--rooms, --members, --concurrency and --window must be at least 1");
        }
        if !(self.duration.is_finite() && (0.1..=3600.0).contains(&self.duration)) {
            bail!("--duration {}: expected 0.1 to 3600 seconds", self.duration);
        }
        if let Some(r) = &self.redis {
            let host = r.strip_prefix("redis://").unwrap_or(r);
            if !(host.starts_with("127.") || host.starts_with("localhost")) {
                bail!("--redis {r}: loadtest only talks to this machine");
            }
        }
        Ok((router, nodes))
    }
}

/// Runs both phases.
pub async fn run(args: &ApiArgs) -> anyhow::Result<ApiReport> {
    let (router, nodes) = args.check()?;
    let delivered = Arc::new(Delivered::default());
    let (stop_tx, stop) = watch::channel(false);
    let mut members = Vec::new();
    for r in 0..args.rooms {
        let name = room(&args.prefix, r);
        for m in 0..args.members {
            let target = if r < args.spanning { &nodes[m % nodes.len()] } else { &router };
            let user = format!("{}-u{r}-{m}", args.prefix);
            let url = target.request_url(Dialect::Native, &name, &user);
            let ws = open(target.addr, &url, &name).await.with_context(|| url.clone())?;
            let (d, s) = (delivered.clone(), stop.clone());
            members.push(tokio::spawn(member(ws, d, s)));
        }
    }
    let http = http_phase(args, &delivered).await?;
    let inbox = match &args.redis {
        Some(url) => Some(inbox_phase(args, url, &delivered).await?),
        None => None,
    };
    let _ = stop_tx.send(true);
    let mut phases = [http, inbox.unwrap_or_default()];
    let mut latency = [new_histogram(), new_histogram()];
    for m in members {
        let seen = m.await.context("a member task")?;
        for i in 0..2 {
            latency[i].add(&seen.latency[i]).ok();
            phases[i].duplicates += seen.duplicates[i];
        }
    }
    for (i, p) in phases.iter_mut().enumerate() {
        p.delivered = delivered.0[i].load(Ordering::Relaxed);
        p.latency_us = Summary::of(&latency[i]);
    }
    let [http, inbox_phase] = phases;
    let inbox = args.redis.as_ref().map(|_| inbox_phase);
    let clean = |p: &Phase| p.delivered == p.expected && p.duplicates == 0 && p.errors == 0;
    let ok = clean(&http) && inbox.as_ref().is_none_or(clean);
    Ok(ApiReport {
        rooms: args.rooms,
        spanning: args.spanning,
        members: args.members,
        http,
        inbox,
        ok,
    })
}

async fn open(addr: SocketAddr, url: &str, room: &str) -> anyhow::Result<Ws> {
    let stream = dial(addr, None).await.map_err(anyhow::Error::msg)?;
    let mut ws = Access::default()
        .handshake(url, stream, ws_config())
        .await
        .map_err(|e| anyhow::anyhow!("{}", ws_cause(&e)))?;
    tokio::time::timeout(Duration::from_secs(10), join_as(&mut ws, Dialect::Native, None, room))
        .await
        .context("no welcome in 10 s")?
        .map_err(anyhow::Error::msg)?;
    Ok(ws)
}

/// Reads deliveries until the run stops.
async fn member(mut ws: Ws, delivered: Arc<Delivered>, mut stop: watch::Receiver<bool>) -> Seen {
    let mut seen = Seen {
        latency: [new_histogram(), new_histogram()],
        counters: HashSet::new(),
        duplicates: [0, 0],
    };
    loop {
        let frame = tokio::select! {
            _ = stop.wait_for(|s| *s) => return seen,
            f = ws.next() => f,
        };
        let text = match frame {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return seen,
        };
        let Incoming::Message { stamp: Some(stamp), .. } = dialect::parse_native(&text) else {
            continue;
        };
        let phase = usize::from(stamp.c >= INBOX_BASE);
        if !seen.counters.insert(stamp.c) {
            seen.duplicates[phase] += 1;
            continue;
        }
        delivered.0[phase].fetch_add(1, Ordering::Relaxed);
        seen.latency[phase].saturating_record(now_us().saturating_sub(stamp.t).max(1));
    }
}

/// Waits until `expected` deliveries of `phase` arrived, at most 10 s.
async fn settle(delivered: &Delivered, phase: usize, expected: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while delivered.0[phase].load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `--concurrency` callers, each on its own keep-alive connection, publish round the rooms.
async fn http_phase(args: &ApiArgs, delivered: &Delivered) -> anyhow::Result<Phase> {
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(args.duration);
    let next = Arc::new(AtomicU64::new(1));
    let auth = args.api_key.as_ref().map(|k| format!("Bearer {k}"));
    let mut callers = Vec::new();
    for _ in 0..args.concurrency {
        let (next, auth) = (next.clone(), auth.clone());
        let (api, rooms, prefix, size) = (args.api, args.rooms, args.prefix.clone(), args.size);
        let with_id = !args.without_ids;
        callers.push(tokio::spawn(async move {
            let mut answers = new_histogram();
            let (mut ok, mut errors) = (0u64, 0u64);
            let mut conn = None;
            while Instant::now() < until {
                let c = next.fetch_add(1, Ordering::Relaxed);
                let path = format!("/api/rooms/{}/publish", room(&prefix, c as usize % rooms));
                let t = now_us();
                let stamp = dialect::body(0, c, t, size);
                let body = match with_id {
                    true => format!(r#"{{"id":{c},"body":{stamp}}}"#),
                    false => format!(r#"{{"body":{stamp}}}"#),
                };
                match post(&mut conn, api, &path, auth.as_deref(), body).await {
                    Ok(200) => ok += 1,
                    Ok(_) | Err(_) => errors += 1,
                }
                answers.saturating_record(now_us().saturating_sub(t).max(1));
            }
            (ok, errors, answers)
        }));
    }
    let mut phase = Phase::default();
    let mut answers = new_histogram();
    for c in callers {
        let (ok, errors, h) = c.await.context("an HTTP caller")?;
        phase.published += ok;
        phase.errors += errors;
        answers.add(&h).ok();
    }
    phase.seconds = started.elapsed().as_secs_f64();
    phase.per_s = phase.published as f64 / phase.seconds;
    phase.expected = phase.published * args.members as u64;
    phase.answer_us = Summary::of(&answers);
    settle(delivered, 0, phase.expected).await;
    Ok(phase)
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// One POST on the caller's connection (opened again after an error); the status.
async fn post(
    conn: &mut Option<Sender>,
    api: SocketAddr,
    path: &str,
    auth: Option<&str>,
    body: String,
) -> anyhow::Result<u16> {
    if conn.as_ref().is_none_or(|s| s.is_closed()) {
        let stream = dial(api, None).await.map_err(anyhow::Error::msg)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        *conn = Some(sender);
    }
    let Some(sender) = conn.as_mut() else { bail!("no connection") };
    let mut req = http::Request::post(path)
        .header(http::header::HOST, api.to_string())
        .header(http::header::CONTENT_TYPE, "application/json");
    if let Some(a) = auth {
        req = req.header(http::header::AUTHORIZATION, a);
    }
    let resp = match sender.send_request(req.body(Full::new(Bytes::from(body)))?).await {
        Ok(r) => r,
        Err(e) => {
            *conn = None;
            return Err(e.into());
        }
    };
    let status = resp.status().as_u16();
    resp.into_body().collect().await?;
    Ok(status)
}

/// Appends entries round the rooms in pipelined `XADD`s, keeping at most `--window` not yet
/// delivered to every member.
async fn inbox_phase(args: &ApiArgs, url: &str, delivered: &Delivered) -> anyhow::Result<Phase> {
    let client = redis::Client::open(url).with_context(|| format!("--redis {url}"))?;
    let mut conn = client.get_multiplexed_async_connection().await.context("redis")?;
    let stream = format!("{}:inbox", args.redis_prefix);
    let members = args.members as u64;
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(args.duration);
    let mut phase = Phase::default();
    let mut c = INBOX_BASE;
    while Instant::now() < until {
        let done = delivered.0[1].load(Ordering::Relaxed) / members;
        let room_for = (done + args.window).saturating_sub(phase.published).min(XADD_BATCH as u64);
        if room_for == 0 {
            tokio::time::sleep(Duration::from_micros(200)).await;
            continue;
        }
        let mut pipe = redis::pipe();
        for _ in 0..room_for {
            let r = room(&args.prefix, (c - INBOX_BASE) as usize % args.rooms);
            pipe.cmd("XADD")
                .arg(&stream)
                .arg("*")
                .arg("room")
                .arg(r)
                .arg("body")
                .arg(dialect::body(0, c, now_us(), args.size))
                .arg("id")
                .arg(c)
                .arg("from")
                .arg("loadtest")
                .ignore();
            c += 1;
        }
        match pipe.query_async::<()>(&mut conn).await {
            Ok(()) => phase.published += room_for,
            Err(e) => {
                phase.errors += room_for;
                eprintln!("loadtest api: XADD failed: {e}");
            }
        }
    }
    phase.seconds = started.elapsed().as_secs_f64();
    phase.expected = phase.published * members;
    settle(delivered, 1, phase.expected).await;
    // Entries count once every member has them: the rate is of deliveries, not appends.
    let done = delivered.0[1].load(Ordering::Relaxed) / members;
    phase.per_s = done as f64 / started.elapsed().as_secs_f64();
    Ok(phase)
}

impl ApiReport {
    /// The table printed at the end.
    pub fn table(&self) -> String {
        let ms = |us: u64| us as f64 / 1000.0;
        let mut out = format!(
            "{} rooms x {} members ({} spanning)\n| path | published | errors | per s | delivered/expected | dup | p50 ms | p99 ms | answer p50/p99 ms |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
            self.rooms, self.members, self.spanning
        );
        let mut row = |name: &str, p: &Phase| {
            let answer = match p.answer_us.count {
                0 => "-".to_owned(),
                _ => format!("{:.2}/{:.2}", ms(p.answer_us.p50), ms(p.answer_us.p99)),
            };
            out.push_str(&format!(
                "| {name} | {} | {} | {:.0} | {}/{} | {} | {:.2} | {:.2} | {answer} |\n",
                p.published,
                p.errors,
                p.per_s,
                p.delivered,
                p.expected,
                p.duplicates,
                ms(p.latency_us.p50),
                ms(p.latency_us.p99),
            ));
        };
        row("POST /api/rooms/{room}/publish", &self.http);
        if let Some(i) = &self.inbox {
            row("XADD {prefix}:inbox", i);
        }
        out
    }
}
