//! One run: connect the shard's connections at `--connect-rate`, publish for warmup +
//! duration, drain, close, and fold what every connection saw into a [`Report`]. Connection
//! tasks only observe; one collector task owns the histograms and the checker (a task, not a
//! thread: a thread parked on the channel costs a futex wake per message at 90,000/s). With
//! `--reconnect` a connection that closes or breaks comes back (back-off, resume) until the end.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::{Interval, MissedTickBehavior};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::access::{Access, Ws};
use crate::checker::{Checker, Event, Verdict};
pub use crate::counters::Counters;
use crate::cpu;
use crate::dialect::{self, Dialect, Incoming};
use crate::progress::{Progress, ProgressMode};
use crate::pusher::PusherApp;
use crate::reconnect::{Backoff, ResumePoint};
use crate::report::{Connect, Latency, REPORT_VERSION, Reconnects, Report, new_histogram};
use crate::scenario::{Dist, Plan, Shard, room_name, user_name};
use crate::target::Target;

/// Microseconds since the Unix epoch: the one clock senders and receivers share.
pub fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// Everything one run needs, validated.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub url: String,
    /// Open `url`, or ask its router where each room lives first (`--connect direct`).
    pub connect: crate::direct::ConnectMode,
    pub target: Target,
    pub dialect: Dialect,
    pub conns: usize,
    pub rooms: usize,
    pub dist: Dist,
    /// Publishes per second per sender; 0 = idle mode (connect and hold).
    pub rate: f64,
    pub senders: u32,
    pub size: usize,
    pub duration: Duration,
    pub warmup: Duration,
    /// Longest wait after the last publish for in-flight messages before judging loss.
    pub drain: Duration,
    pub connect_rate: f64,
    pub connect_timeout: Duration,
    /// Handshakes in flight at once, so a slow server sees a steady trickle, not a stampede.
    pub max_inflight: usize,
    /// Source addresses, round-robin by connection; empty = let the OS choose.
    pub src_ips: Vec<IpAddr>,
    pub shard: Shard,
    pub prefix: String,
    pub progress: ProgressMode,
    /// Tokens and TLS, when the fleet wants them.
    pub access: Access,
    /// `--reconnect`: come back after a close with this back-off and resume.
    pub reconnect: Option<Backoff>,
    /// `--dialect pusher`: the app whose secret signs private-channel subscriptions.
    pub pusher: Option<PusherApp>,
}

impl RunConfig {
    /// A small run against `url`: handy for tests.
    pub fn small(url: &str) -> anyhow::Result<Self> {
        Ok(Self {
            url: url.to_owned(),
            connect: crate::direct::ConnectMode::Url,
            target: Target::parse(url)?,
            dialect: Dialect::Native,
            conns: 20,
            rooms: 4,
            dist: Dist::Uniform,
            rate: 5.0,
            senders: 1,
            size: 64,
            duration: Duration::from_secs(2),
            warmup: Duration::from_millis(500),
            drain: Duration::from_secs(3),
            connect_rate: 1000.0,
            connect_timeout: Duration::from_secs(10),
            max_inflight: 256,
            src_ips: Vec::new(),
            shard: Shard::WHOLE,
            prefix: "lt".into(),
            progress: ProgressMode::Quiet,
            access: Access::default(),
            reconnect: None,
            pusher: None,
        })
    }
}

/// Where the run is; connections follow it through a watch channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connecting,
    Publishing,
    Draining,
    Closing,
}

/// What connections tell the collector.
enum Note {
    Check(Event),
    Delivery {
        event: Event,
        sent_us: u64,
        recv_us: u64,
    },
    Foreign,
    Connected {
        us: u64,
    },
    ConnectFailed(String),
    Disconnected(String),
    ServerError(String),
    /// `--reconnect`: back in after a close: close to welcome, and dial to welcome, in µs.
    Rehomed {
        us: u64,
        connect_us: u64,
    },
    /// `--reconnect`: one attempt to come back failed.
    ReconnectFailed(String),
    /// `--reconnect`: a connection stopped trying (attempts used up).
    GaveUp,
}

struct Shared {
    cfg: RunConfig,
    plan: Plan,
    notes: mpsc::Sender<Note>,
    phase: watch::Receiver<Phase>,
    counters: Arc<Counters>,
}

/// Connections buffer little: a 100k-connection run must not spend 128 KiB on each.
pub(crate) fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0)
}

fn io_cause(e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => "refused".into(),
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof => "reset".into(),
        AddrInUse | AddrNotAvailable => "no_source_port".into(),
        TimedOut => "timeout".into(),
        _ if e.raw_os_error() == Some(24) => "too_many_open_files".into(),
        _ => format!("io_{:?}", e.kind()).to_lowercase(),
    }
}

pub(crate) fn ws_cause(e: &tungstenite::Error) -> String {
    match e {
        tungstenite::Error::Io(io) => io_cause(io),
        tungstenite::Error::Http(resp) => format!("http_{}", resp.status().as_u16()),
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => "closed".into(),
        tungstenite::Error::Protocol(_) => "protocol".into(),
        tungstenite::Error::Tls(_) => "tls".into(),
        _ => "handshake".into(),
    }
}

pub(crate) async fn dial(target: SocketAddr, src: Option<IpAddr>) -> Result<TcpStream, String> {
    let socket = TcpSocket::new_v4().map_err(|e| io_cause(&e))?;
    if let Some(ip) = src {
        socket.bind(SocketAddr::new(ip, 0)).map_err(|e| io_cause(&e))?;
    }
    let stream = socket.connect(target).await.map_err(|e| io_cause(&e))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// What a welcome (or Socket.IO's join ack) said.
pub(crate) struct Welcome {
    seq: Option<u64>,
    epoch: Option<String>,
    recovered: bool,
}

/// Reads until the member is in the room.
pub(crate) async fn join(ws: &mut Ws, cfg: &RunConfig, room: &str) -> Result<Welcome, String> {
    join_as(ws, cfg.dialect, cfg.pusher.as_ref(), room).await
}

/// [`join`] for `dialect` (`pusher`: the app a Pusher subscription is signed with).
pub(crate) async fn join_as(
    ws: &mut Ws,
    dialect: Dialect,
    pusher: Option<&PusherApp>,
    room: &str,
) -> Result<Welcome, String> {
    // Bounded by the caller's connect timeout, and in count: a server chatting forever
    // before the welcome is a failure too.
    for _ in 0..64 {
        let text = match ws.next().await {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(f))) => {
                return Err(f.map_or("close".into(), |f| format!("close_{}", u16::from(f.code))));
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(ws_cause(&e)),
            None => return Err("eof".into()),
        };
        let reply = match dialect::parse(dialect, &text) {
            Incoming::Joined { seq, epoch, recovered } => {
                return Ok(Welcome { seq, epoch, recovered });
            }
            Incoming::Error { code } => return Err(format!("error_{code}")),
            Incoming::Open => dialect::SIO_CONNECT.to_owned(),
            Incoming::Connected => dialect::socketio_join(room),
            Incoming::Established { socket_id } => match pusher {
                Some(app) => app.subscribe(&socket_id, room),
                None => return Err("pusher_without_app".into()),
            },
            Incoming::Ping => dialect.pong().to_owned(),
            Incoming::Disconnect => return Err("disconnect".into()),
            _ => continue,
        };
        ws.send(Message::text(reply)).await.map_err(|e| ws_cause(&e))?;
    }
    Err("no_welcome".into())
}

/// Dials and joins; `resume` is the `&since=..&epoch=..` of a comeback.
async fn open(sh: &Shared, conn: usize, resume: Option<&str>) -> Result<(Ws, Welcome), String> {
    let cfg = &sh.cfg;
    let seat = sh.plan.seats[conn];
    let room = room_name(&cfg.prefix, seat.room);
    let user = user_name(&cfg.prefix, conn);
    let mut request = cfg.target.request_url(cfg.dialect, &room, &user);
    request.push_str(resume.unwrap_or_default());
    let url = cfg.access.url(request, &user, &room)?;
    let src = (!cfg.src_ips.is_empty()).then(|| cfg.src_ips[conn % cfg.src_ips.len()]);
    let (addr, url) = match cfg.connect {
        crate::direct::ConnectMode::Url => (cfg.target.addr, url),
        crate::direct::ConnectMode::Direct => {
            let node = crate::direct::resolve(&cfg.target, src, &url).await?;
            (node.addr, node.path)
        }
    };
    let stream = dial(addr, src).await?;
    let mut ws = cfg.access.handshake(&url, stream, ws_config()).await.map_err(|e| ws_cause(&e))?;
    let welcome = join(&mut ws, cfg, &room).await?;
    Ok((ws, welcome))
}

async fn tick(ticker: &mut Option<Interval>) {
    match ticker {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// A connection's publishing, kept across its sessions.
struct Publisher {
    sender: bool,
    ticker: Option<Interval>,
    counter: u64,
    /// Publishes of this session not acked yet: cut when the session breaks.
    outstanding: u64,
}

/// One connection from dial to close; with `--reconnect`, over all its sessions.
async fn connection(sh: Arc<Shared>, conn: usize, permit: tokio::sync::OwnedSemaphorePermit) {
    let c = &sh.counters;
    c.attempted.fetch_add(1, Relaxed);
    let started = Instant::now();
    let opened = tokio::time::timeout(sh.cfg.connect_timeout, open(&sh, conn, None)).await;
    drop(permit);
    let (mut ws, welcome) = match opened {
        Ok(Ok(ok)) => ok,
        Ok(Err(cause)) => return fail(&sh, cause).await,
        Err(_) => return fail(&sh, "timeout".into()).await,
    };
    let us = started.elapsed().as_micros() as u64;
    let room = sh.plan.seats[conn].room;
    let me = conn as u32;
    let mut point = ResumePoint::default();
    let first = match sh.cfg.reconnect {
        None => Event::Welcome { conn: me, room, seq: welcome.seq },
        Some(_) => {
            point.welcomed(welcome.seq.unwrap_or(0), welcome.epoch.clone(), welcome.recovered);
            session_event(me, room, welcome, None)
        }
    };
    let _ = sh.notes.send(Note::Check(first)).await;
    let _ = sh.notes.send(Note::Connected { us }).await;
    c.connected.fetch_add(1, Relaxed);
    c.alive.fetch_add(1, Relaxed);

    let mut publisher = Publisher {
        sender: sh.cfg.rate > 0.0 && sh.plan.is_sender(conn),
        ticker: None,
        counter: 0,
        outstanding: 0,
    };
    let mut phase = sh.phase.clone();
    // Bounded: every pass needs a new welcome, and comebacks stop at the run's end.
    loop {
        let broken = session(&sh, &mut ws, me, room, &mut publisher, &mut phase, &mut point).await;
        c.alive.fetch_sub(1, Relaxed);
        let Some(cause) = broken else { return goodbye(&sh, ws).await };
        let _ = sh.notes.send(Note::Check(Event::Closed { conn: me })).await;
        let _ = sh.notes.send(Note::Disconnected(cause)).await;
        let Some(backoff) = sh.cfg.reconnect else { return };
        c.cut.fetch_add(std::mem::take(&mut publisher.outstanding), Relaxed);
        let closed = Instant::now();
        let Some((back, welcome, connect_us)) =
            comeback(&sh, conn, &backoff, &point, &mut phase).await
        else {
            return;
        };
        ws = back;
        let since = point.epoch.is_some().then_some(point.seq);
        point.welcomed(welcome.seq.unwrap_or(0), welcome.epoch.clone(), welcome.recovered);
        let _ = sh.notes.send(Note::Check(session_event(me, room, welcome, since))).await;
        let us = closed.elapsed().as_micros() as u64;
        let _ = sh.notes.send(Note::Rehomed { us, connect_us }).await;
        c.alive.fetch_add(1, Relaxed);
    }
}

fn session_event(conn: u32, room: u32, w: Welcome, since: Option<u64>) -> Event {
    let seq = w.seq.unwrap_or(0);
    Event::Session { conn, room, seq, epoch: w.epoch, recovered: w.recovered, since }
}

/// Publishes and reads until the run closes (None) or the connection breaks (its cause).
async fn session(
    sh: &Shared,
    ws: &mut Ws,
    me: u32,
    room: u32,
    p: &mut Publisher,
    phase: &mut watch::Receiver<Phase>,
    point: &mut ResumePoint,
) -> Option<String> {
    let c = &sh.counters;
    let label = room_name(&sh.cfg.prefix, room);
    loop {
        match *phase.borrow_and_update() {
            Phase::Publishing if p.sender && p.ticker.is_none() => {
                let period = Duration::from_secs_f64(1.0 / sh.cfg.rate);
                // Spread senders over the period so the room does not get bursts.
                let offset = period.mul_f64((me % 1000) as f64 / 1000.0);
                let mut t = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
                t.set_missed_tick_behavior(MissedTickBehavior::Delay);
                p.ticker = Some(t);
            }
            Phase::Publishing => {}
            Phase::Connecting | Phase::Draining => p.ticker = None,
            Phase::Closing => return None,
        }
        tokio::select! {
            changed = phase.changed() => if changed.is_err() { return None },
            () = tick(&mut p.ticker) => {
                let sent_us = now_us();
                let body = dialect::body(me, p.counter, sent_us, sh.cfg.size);
                let frame = dialect::publish(sh.cfg.dialect, &label, p.counter, &body);
                let published = Event::Published { room, sender: me, counter: p.counter };
                let _ = sh.notes.send(Note::Check(published)).await;
                p.counter += 1;
                p.outstanding += 1;
                c.published.fetch_add(1, Relaxed);
                if let Err(e) = ws.send(Message::text(frame)).await {
                    return Some(ws_cause(&e));
                }
            }
            frame = ws.next() => {
                let recv_us = now_us();
                match frame {
                    Some(Ok(Message::Text(text))) => {
                        let incoming = dialect::parse(sh.cfg.dialect, &text);
                        match incoming {
                            Incoming::Message { seq: Some(seq), .. } => point.got(seq),
                            Incoming::Ack { .. } => p.outstanding = p.outstanding.saturating_sub(1),
                            _ => {}
                        }
                        if let Some(cause) = handle(sh, ws, me, room, incoming, recv_us).await {
                            return Some(cause);
                        }
                    }
                    Some(Ok(Message::Close(f))) => {
                        return Some(f.map_or("close".into(), |f| format!("close_{}", u16::from(f.code))));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Some(ws_cause(&e)),
                    None => return Some("eof".into()),
                }
            }
        }
    }
}

/// The client's own close at the end of the run.
async fn goodbye(sh: &Shared, mut ws: Ws) {
    let bye = async {
        if sh.cfg.dialect == Dialect::Socketio {
            let _ = ws.send(Message::text("41")).await;
        }
        let _ = ws.close(None).await;
        // Bounded: the server's close reply, or at most 64 late frames.
        for _ in 0..64 {
            if !matches!(ws.next().await, Some(Ok(_))) {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), bye).await;
}

/// Comes back after a close: waits the back-off, dials with the resume point, at most
/// `backoff.attempts` times and never past the run's end. Returns the new connection, its
/// welcome and how long the successful attempt took (µs).
async fn comeback(
    sh: &Shared,
    conn: usize,
    backoff: &Backoff,
    point: &ResumePoint,
    phase: &mut watch::Receiver<Phase>,
) -> Option<(Ws, Welcome, u64)> {
    let resume = point.query();
    for n in 0..backoff.attempts {
        let wait = tokio::time::sleep(backoff.delay(n, fastrand::f64()));
        tokio::pin!(wait);
        // Bounded by the run: the wait ends early when the run closes.
        loop {
            if *phase.borrow_and_update() == Phase::Closing {
                return None;
            }
            tokio::select! {
                () = &mut wait => break,
                changed = phase.changed() => if changed.is_err() { return None },
            }
        }
        let started = Instant::now();
        let timeout = sh.cfg.connect_timeout;
        match tokio::time::timeout(timeout, open(sh, conn, resume.as_deref())).await {
            Ok(Ok((ws, welcome))) => {
                return Some((ws, welcome, started.elapsed().as_micros() as u64));
            }
            Ok(Err(cause)) => {
                let _ = sh.notes.send(Note::ReconnectFailed(cause)).await;
            }
            Err(_) => {
                let _ = sh.notes.send(Note::ReconnectFailed("timeout".into())).await;
            }
        }
    }
    let _ = sh.notes.send(Note::GaveUp).await;
    None
}

/// Acts on one parsed frame; returns a cause when the connection is over.
async fn handle(
    sh: &Shared,
    ws: &mut Ws,
    me: u32,
    room: u32,
    incoming: Incoming,
    recv_us: u64,
) -> Option<String> {
    let c = &sh.counters;
    match incoming {
        Incoming::Message { seq, stamp: Some(st) } => {
            c.delivered.fetch_add(1, Relaxed);
            let event = Event::Message { conn: me, room, seq, sender: st.s, counter: st.c };
            let _ = sh.notes.send(Note::Delivery { event, sent_us: st.t, recv_us }).await;
        }
        Incoming::Message { stamp: None, .. } => {
            c.delivered.fetch_add(1, Relaxed);
            let _ = sh.notes.send(Note::Foreign).await;
        }
        Incoming::Ack { id, seq } => {
            c.acked.fetch_add(1, Relaxed);
            let ack = Event::Ack { room, sender: me, counter: id, seq };
            let _ = sh.notes.send(Note::Check(ack)).await;
        }
        Incoming::Error { code } => {
            let _ = sh.notes.send(Note::ServerError(code)).await;
        }
        Incoming::Ping => {
            if let Err(e) = ws.send(Message::text(sh.cfg.dialect.pong())).await {
                return Some(ws_cause(&e));
            }
        }
        Incoming::Disconnect => return Some("disconnect".into()),
        Incoming::Joined { .. }
        | Incoming::Open
        | Incoming::Connected
        | Incoming::Established { .. }
        | Incoming::Other => {}
    }
    None
}

async fn fail(sh: &Shared, cause: String) {
    sh.counters.failed.fetch_add(1, Relaxed);
    let _ = sh.notes.send(Note::ConnectFailed(cause)).await;
}

/// What the collector hands back.
struct Collected {
    verdict: Verdict,
    latency: Histogram<u64>,
    connect: Histogram<u64>,
    connect_failures: BTreeMap<String, u64>,
    disconnects: BTreeMap<String, u64>,
    server_errors: BTreeMap<String, u64>,
    delivered_measured: u64,
    reconnects: Option<Reconnects>,
    rehome: Histogram<u64>,
    reconnect_latency: Histogram<u64>,
}

/// Runs until every sender of `notes` is gone (the end of the run).
async fn collect(
    mut notes: mpsc::Receiver<Note>,
    dialect: Dialect,
    reconnect: bool,
    measure_from_us: Arc<AtomicU64>,
) -> Collected {
    let mut checker = match dialect {
        _ if reconnect => Checker::across_reconnects(),
        Dialect::Native => Checker::new(),
        Dialect::Socketio => Checker::without_acks(),
        Dialect::Pusher => Checker::without_acks_or_echo(),
    };
    let mut out = Collected {
        verdict: Verdict::default(),
        latency: new_histogram(),
        connect: new_histogram(),
        connect_failures: BTreeMap::new(),
        disconnects: BTreeMap::new(),
        server_errors: BTreeMap::new(),
        delivered_measured: 0,
        reconnects: reconnect.then(Reconnects::default),
        rehome: new_histogram(),
        reconnect_latency: new_histogram(),
    };
    while let Some(note) = notes.recv().await {
        match note {
            Note::Check(e) => checker.feed(e),
            Note::Delivery { event, sent_us, recv_us } => {
                checker.feed(event);
                if sent_us >= measure_from_us.load(Relaxed) {
                    out.delivered_measured += 1;
                    out.latency.saturating_record(recv_us.saturating_sub(sent_us).max(1));
                }
            }
            Note::Foreign => {}
            Note::Connected { us } => out.connect.saturating_record(us.max(1)),
            Note::ConnectFailed(cause) => *out.connect_failures.entry(cause).or_default() += 1,
            Note::Disconnected(cause) => *out.disconnects.entry(cause).or_default() += 1,
            Note::ServerError(code) => *out.server_errors.entry(code).or_default() += 1,
            Note::Rehomed { us, connect_us } => {
                out.rehome.saturating_record(us.max(1));
                out.reconnect_latency.saturating_record(connect_us.max(1));
                if let Some(r) = &mut out.reconnects {
                    r.attempts += 1;
                    r.back += 1;
                }
            }
            Note::ReconnectFailed(cause) => {
                if let Some(r) = &mut out.reconnects {
                    r.attempts += 1;
                    *r.failures.entry(cause).or_default() += 1;
                }
            }
            Note::GaveUp => {
                if let Some(r) = &mut out.reconnects {
                    r.gave_up += 1;
                }
            }
        }
    }
    if let Some(r) = &mut out.reconnects {
        r.rehome_us = Latency::of(&out.rehome);
        r.connect_us = Latency::of(&out.reconnect_latency);
    }
    out.verdict = checker.finish();
    out
}

/// Runs the scenario's share of this shard and reports. Loss is in the report, not an error:
/// errors are for runs that could not happen at all.
pub async fn run(cfg: RunConfig) -> anyhow::Result<Report> {
    let wall = Instant::now();
    let cpu_before = cpu::self_cpu();
    let plan = Plan::new(cfg.conns, cfg.rooms, cfg.dist, cfg.senders)?;
    let local: Vec<usize> = cfg.shard.members(cfg.conns).collect();
    let (notes_tx, notes_rx) = mpsc::channel(1 << 16);
    let measure_from = Arc::new(AtomicU64::new(u64::MAX));
    let collector = {
        let m = measure_from.clone();
        let dialect = cfg.dialect;
        let reconnect = cfg.reconnect.is_some();
        tokio::spawn(collect(notes_rx, dialect, reconnect, m))
    };
    let (phase_tx, phase_rx) = watch::channel(Phase::Connecting);
    let counters = Arc::new(Counters::default());
    let progress = Progress::start(cfg.progress, counters.clone(), local.len() as u64);
    let sh = Arc::new(Shared {
        cfg: cfg.clone(),
        plan,
        notes: notes_tx,
        phase: phase_rx,
        counters: counters.clone(),
    });

    // Connect phase, paced without drift.
    let gap = Duration::from_secs_f64(1.0 / cfg.connect_rate.max(0.001));
    let slots = Arc::new(Semaphore::new(cfg.max_inflight.max(1)));
    let mut tasks = Vec::with_capacity(local.len());
    let start = tokio::time::Instant::now();
    for (n, &conn) in local.iter().enumerate() {
        tokio::time::sleep_until(start + gap.mul_f64(n as f64)).await;
        let permit = slots.clone().acquire_owned().await?;
        tasks.push(tokio::spawn(connection(sh.clone(), conn, permit)));
    }
    progress.set_stage("connecting");
    let settled = |c: &Counters| c.connected.load(Relaxed) + c.failed.load(Relaxed);
    wait_for(cfg.connect_timeout + Duration::from_secs(2), || {
        settled(&counters) >= local.len() as u64
    })
    .await;

    let mut measured_s = 0.0;
    if cfg.rate > 0.0 {
        progress.set_stage("warmup");
        measure_from.store(now_us() + cfg.warmup.as_micros() as u64, Relaxed);
        let _ = phase_tx.send(Phase::Publishing);
        tokio::time::sleep(cfg.warmup).await;
        progress.set_stage("measuring");
        let measuring = Instant::now();
        tokio::time::sleep(cfg.duration).await;
        let _ = phase_tx.send(Phase::Draining);
        measured_s = measuring.elapsed().as_secs_f64();
        progress.set_stage("draining");
        drain(&cfg, &counters).await;
    } else {
        progress.set_stage("holding");
        tokio::time::sleep(cfg.warmup + cfg.duration).await;
    }
    let held = counters.alive.load(Relaxed);

    progress.set_stage("closing");
    let _ = phase_tx.send(Phase::Closing);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    for mut task in tasks {
        if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
            task.abort();
            let _ = task.await;
        }
    }
    drop(sh);
    progress.finish().await;
    let collected = collector.await.map_err(|e| anyhow::anyhow!("the collector failed: {e}"))?;

    let cpu_after = cpu::self_cpu();
    let c = &counters;
    let delivered_measured = collected.delivered_measured;
    let ok = collected.verdict.is_clean();
    Ok(Report {
        version: REPORT_VERSION,
        dialect: cfg.dialect.as_str().into(),
        url: cfg.url.clone(),
        shards: vec![cfg.shard.to_string()],
        conns: local.len() as u64,
        rooms: cfg.rooms as u64,
        dist: cfg.dist.to_string(),
        rate: cfg.rate,
        senders: cfg.senders,
        size: cfg.size,
        warmup_s: cfg.warmup.as_secs_f64(),
        duration_s: cfg.duration.as_secs_f64(),
        connect: Connect {
            attempted: c.attempted.load(Relaxed),
            connected: c.connected.load(Relaxed),
            failed: c.failed.load(Relaxed),
            failures: collected.connect_failures,
            latency_us: Latency::of(&collected.connect),
        },
        held,
        disconnects: collected.disconnects,
        server_errors: collected.server_errors,
        published: c.published.load(Relaxed),
        acked: c.acked.load(Relaxed),
        delivered: c.delivered.load(Relaxed),
        delivered_measured,
        measured_s,
        deliveries_per_s: if measured_s > 0.0 {
            delivered_measured as f64 / measured_s
        } else {
            0.0
        },
        latency_us: Latency::of(&collected.latency),
        check: collected.verdict,
        reconnect: collected.reconnects,
        cpu: crate::report::Cpu {
            user_s: cpu_after.user_s - cpu_before.user_s,
            system_s: cpu_after.system_s - cpu_before.system_s,
            total_s: cpu_after.total_s - cpu_before.total_s,
        },
        wall_s: wall.elapsed().as_secs_f64(),
        ok,
    })
}

/// Polls `cond` every 20 ms until it holds or `limit` passes.
async fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// After the last publish: wait until every publish is acked (roomfleet) and deliveries have
/// been quiet for 300 ms, at most `--drain`.
async fn drain(cfg: &RunConfig, c: &Counters) {
    let deadline = tokio::time::Instant::now() + cfg.drain;
    let mut last = c.delivered.load(Relaxed);
    let mut quiet_since = tokio::time::Instant::now();
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = c.delivered.load(Relaxed);
        if now != last {
            last = now;
            quiet_since = tokio::time::Instant::now();
        }
        // Publishes cut by a broken session (--reconnect) will never be acked.
        let settled = c.acked.load(Relaxed) + c.cut.load(Relaxed);
        let acked = cfg.dialect != Dialect::Native || settled >= c.published.load(Relaxed);
        if acked && quiet_since.elapsed() >= Duration::from_millis(300) {
            return;
        }
    }
}
