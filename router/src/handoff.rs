//! The router out of the data path: a plain-TCP client's first request is read here
//! ([`crate::head`]), checked and placed exactly as the proxy does it, and when its node
//! takes handoffs the socket goes to the node with the forwarded head (hop header and all):
//! to a node in this process ([`InProcess`], `fleet up`), or over the node's `--handoff`
//! Unix socket (SCM_RIGHTS), after which the router holds nothing of the client. Every
//! other request, and every refusal, goes on to the proxy with the bytes read so far.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::{Method, Request};
use shared::handoff::{self, Handoff, Prefixed, Taker};
use tokio::net::{TcpStream, UnixStream};
use tokio::time::Instant;

use crate::config::Config;
use crate::head::{self, Read};
use crate::limits::ConnGuard;
use crate::membership::{Member, NodeStats};
use crate::metrics::{HandoffOutcome, Outcome};
use crate::proxy::{Checked, Proxy};

/// A node in this process that takes clients (`fleet up`'s nodes).
#[derive(Clone)]
pub struct InProcess(pub Arc<dyn Taker>);

impl std::fmt::Debug for InProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InProcess")
    }
}

/// Where each node takes handoffs, by node id: in process, or its `--handoff` socket.
#[derive(Clone, Debug)]
pub(crate) struct Routes {
    in_process: BTreeMap<String, InProcess>,
    unix: BTreeMap<String, PathBuf>,
}

enum Route<'a> {
    InProcess(&'a InProcess),
    Unix(&'a PathBuf),
}

impl Routes {
    /// `None` when no node takes handoffs: the router then proxies every client.
    pub(crate) fn new(config: &Config) -> Option<Self> {
        let unix: BTreeMap<String, PathBuf> = config
            .nodes
            .iter()
            .filter_map(|n| Some((n.id.as_str().to_owned(), n.handoff.clone()?)))
            .collect();
        let in_process = config.in_process.clone();
        (!unix.is_empty() || !in_process.is_empty()).then_some(Self { in_process, unix })
    }

    fn get(&self, member: &Member) -> Option<Route<'_>> {
        let id = member.spec.id.as_str();
        if let Some(t) = self.in_process.get(id) {
            return Some(Route::InProcess(t));
        }
        // By id: a node re-added through the admin API under the same id is still the node
        // of this host's socket (the path is only ever set by `--node` flags).
        self.unix.get(id).map(Route::Unix)
    }
}

/// What the router keeps alive with a client it handed to a node in this process: the
/// connection-limit slot and the node's connection gauge.
struct InProcessHold {
    _guard: Arc<ConnGuard>,
    stats: Arc<NodeStats>,
}

impl Drop for InProcessHold {
    fn drop(&mut self) {
        self.stats.connections.dec();
    }
}

/// How one Unix handoff ended.
enum UnixResult {
    Taken,
    Refused(handoff::Refusal),
    /// Not sent whole: the socket is missing, refused, or full. The client is still ours.
    Unreachable(std::io::Error),
    /// Sent, but no answer came: the node may serve the client, so the router must not.
    Lost(std::io::Error),
}

/// Serves one plain-TCP client of a router with handoff routes.
pub(crate) async fn serve(
    proxy: Arc<Proxy>,
    mut stream: TcpStream,
    peer: SocketAddr,
    guard: Arc<ConnGuard>,
) {
    let Some(routes) = proxy.handoff.clone() else {
        return crate::proxy::serve_client(proxy, stream, peer, guard).await;
    };
    let cfg = &proxy.config;
    let mut buf = BytesMut::with_capacity(4096);
    let started = Instant::now();
    let read = head::read(&mut stream, &mut buf, cfg.max_header_bytes, cfg.header_timeout).await;
    let read_bytes = buf.freeze();
    let (req, len) = match read {
        Read::Head(req, len) => (req, len),
        Read::Other => return proxied(proxy, stream, read_bytes, peer, guard).await,
        Read::Gone => return,
    };
    if req.method() != Method::GET || req.uri().path() != "/ws" {
        return proxied(proxy, stream, read_bytes, peer, guard).await;
    }
    // A refusal is counted and answered by the proxy path, which runs the same checks.
    let Ok(checked) = proxy.check(&req, peer) else {
        return proxied(proxy, stream, read_bytes, peer, guard).await;
    };
    let early = read_bytes.slice(len..);
    let back = hand_off(&proxy, &routes, &req, &checked, stream, &early, &guard, started).await;
    if let Some(stream) = back {
        proxied(proxy, stream, read_bytes, peer, guard).await
    }
}

/// Offers the client to its candidates in ring order while they take handoffs; `Some` gives
/// the stream back for the proxy (every candidate refused, or one that only proxies).
#[allow(clippy::too_many_arguments)]
async fn hand_off(
    proxy: &Arc<Proxy>,
    routes: &Routes,
    req: &Request<()>,
    c: &Checked,
    mut stream: TcpStream,
    early: &Bytes,
    guard: &Arc<ConnGuard>,
    started: Instant,
) -> Option<TcpStream> {
    let m = &proxy.metrics;
    for (i, member) in c.placement.members(&c.view).take(proxy.config.max_tries).enumerate() {
        let Some(route) = routes.get(member) else { return Some(stream) };
        if i > 0 {
            m.retries.inc();
        }
        let fwd = crate::proxy::forwarded(
            req,
            member,
            c.client_ip,
            c.placement.generation,
            c.hop.as_ref(),
        );
        let mut head = BytesMut::with_capacity(1024 + early.len());
        head::write(&fwd, &mut head);
        head.extend_from_slice(early);
        let head = head.freeze();
        let node = member.spec.id.as_str();
        match route {
            Route::InProcess(target) => {
                member.stats.connections.inc();
                let hold = InProcessHold { _guard: guard.clone(), stats: member.stats.clone() };
                let client = Handoff { stream, head, hold: Some(Arc::new(hold)) };
                match target.0.take(client) {
                    Ok(()) => {
                        m.handoff(HandoffOutcome::InProcess);
                        return taken(proxy, member, c, started);
                    }
                    Err(back) => {
                        let (client, why) = *back;
                        m.handoff(HandoffOutcome::Refused);
                        tracing::debug!(node, why = why.as_str(), "handoff refused");
                        stream = client.stream;
                    }
                }
            }
            Route::Unix(path) => match over_unix(proxy, path, &stream, &head).await {
                UnixResult::Taken => {
                    m.handoff(HandoffOutcome::Unix);
                    drop(stream);
                    return taken(proxy, member, c, started);
                }
                UnixResult::Refused(why) => {
                    m.handoff(HandoffOutcome::Refused);
                    tracing::debug!(node, why = why.as_str(), "handoff refused");
                }
                UnixResult::Unreachable(e) => {
                    m.handoff(HandoffOutcome::Unreachable);
                    tracing::debug!(node, path = %path.display(), "handoff socket: {e}");
                }
                UnixResult::Lost(e) => {
                    m.handoff(HandoffOutcome::Lost);
                    m.upgrade(Outcome::Failed);
                    tracing::warn!(node, "handoff sent but not answered: {e}; closing the client");
                    return None;
                }
            },
        }
    }
    Some(stream)
}

/// Counts a handed-off upgrade as the proxy counts a 101.
fn taken(proxy: &Proxy, member: &Member, c: &Checked, started: Instant) -> Option<TcpStream> {
    let m = &proxy.metrics;
    proxy.placed(&c.placement);
    m.upgrade(Outcome::Ok);
    m.upgrade_seconds.observe(started.elapsed());
    member.stats.upgrades.inc();
    tracing::debug!(node = %member.spec.id, room = %c.target.room, "handed off");
    None
}

/// One handoff over a node's Unix socket: connect, send the descriptor and the head, read
/// the answer.
async fn over_unix(proxy: &Proxy, path: &PathBuf, client: &TcpStream, head: &[u8]) -> UnixResult {
    let cfg = &proxy.config;
    let mut unix = match tokio::time::timeout(cfg.connect_timeout, UnixStream::connect(path)).await
    {
        Ok(Ok(u)) => u,
        Ok(Err(e)) => return UnixResult::Unreachable(e),
        Err(_) => return UnixResult::Unreachable(std::io::ErrorKind::TimedOut.into()),
    };
    // A node serves a client only once it has read the whole head and answered, so a send
    // that failed, even past the descriptor, leaves the client with the router.
    match tokio::time::timeout(cfg.connect_timeout, handoff::send(&mut unix, client, head)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return UnixResult::Unreachable(e),
        Err(_) => return UnixResult::Unreachable(std::io::ErrorKind::TimedOut.into()),
    }
    match tokio::time::timeout(cfg.upstream_timeout, handoff::read_answer(&mut unix)).await {
        Ok(Ok(Ok(()))) => UnixResult::Taken,
        Ok(Ok(Err(why))) => UnixResult::Refused(why),
        Ok(Err(e)) => UnixResult::Lost(e),
        Err(_) => UnixResult::Lost(std::io::ErrorKind::TimedOut.into()),
    }
}

/// The proxy path for a client whose first bytes were read here.
async fn proxied(
    proxy: Arc<Proxy>,
    stream: TcpStream,
    read: Bytes,
    peer: SocketAddr,
    guard: Arc<ConnGuard>,
) {
    crate::proxy::serve_client(proxy, Prefixed::new(read, stream), peer, guard).await
}
