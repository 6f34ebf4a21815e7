//! The public listener: admission, `GET /ws` validation, placement, the upgrade forwarded to
//! the owner node (the next candidates when it cannot be reached or answers 5xx), the node's
//! 101 returned to the client, and the tunnel spliced in a tracked task.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioIo, TokioTimer};
use shared::auth::{AuthError, HOP_HEADER, token_from};
use shared::http::{Body, check_ws_upgrade, text, ws_upgrade_refusal};
use shared::ids::parse_ws_query;
use shared::listen::Acceptor;
use shared::shutdown::Shutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::Config;
use crate::error::{Cause, Error};
use crate::limits::{ConnGuard, Limits};
use crate::membership::{Member, Membership, NodeStats};
use crate::metrics::{Metrics, Outcome, Refusal};
use crate::placement::Policy;
use crate::upstream::{self, ConnFuture, MAX_BODY, NodeIo, node_error};

/// The request header naming the ring generation a node was chosen with.
pub const RING_GENERATION: HeaderName = HeaderName::from_static("x-roomfleet-ring-generation");
/// The response header naming the node that answered (101 or a passed-back 4xx).
pub const NODE: HeaderName = HeaderName::from_static("x-roomfleet-node");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Headers that belong to one hop and are never copied to the other.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// How long a refused client may take to send the request its refusal answers.
const REFUSAL_HEADER_TIMEOUT: Duration = Duration::from_secs(1);

/// What the public side shares across connections.
pub(crate) struct Proxy {
    pub(crate) config: Arc<Config>,
    pub(crate) policy: Policy,
    pub(crate) membership: Arc<Membership>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) limits: Arc<Limits>,
    /// `token` stops accepting; `tracker` holds connections and tunnels.
    pub(crate) shutdown: Shutdown,
    /// Cuts the tunnels still open when the shutdown grace is over.
    pub(crate) hard_stop: CancellationToken,
    /// The public listener's certificate, when it speaks TLS.
    pub(crate) tls: Option<Arc<crate::tls::Tls>>,
    /// How nodes are reached (TLS with `--node-tls-ca`).
    pub(crate) dialer: upstream::Dialer,
    /// Where clients are handed to nodes instead of proxied; `None` = proxy only.
    pub(crate) handoff: Option<crate::handoff::Routes>,
}

/// An upgrade that passed the router's checks: where it goes and what the node is told.
pub(crate) struct Checked {
    pub(crate) target: shared::ids::WsTarget,
    /// The signed identity header, with auth on.
    pub(crate) hop: Option<HeaderValue>,
    pub(crate) client_ip: IpAddr,
    pub(crate) view: Arc<crate::membership::View>,
    pub(crate) placement: crate::placement::Placement,
}

/// Why [`Proxy::check`] refused an upgrade; [`Proxy::refused`] counts it and answers.
pub(crate) enum Refused {
    BadRequest(Response<Body>),
    Auth(AuthError, shared::ids::RoomId),
    NoNode(Response<Body>),
}

/// What one node said to the upgrade.
enum Answer {
    /// 101: the response, and what completes the node side of the tunnel.
    Switching(Response<Incoming>, NodeSide),
    /// A 4xx, passed back to the client as is.
    Final(Response<Body>),
}

/// The node side of a tunnel until its upgrade completes.
struct NodeSide {
    conn: ConnFuture,
    conn_done: Option<hyper::Result<()>>,
    upgrade: OnUpgrade,
    sender: SendRequest<Empty<Bytes>>,
}

/// Accepts clients until shutdown; each connection is served in a tracked task.
pub(crate) async fn serve(proxy: Arc<Proxy>, mut acceptor: Acceptor) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = proxy.shutdown.token.cancelled() => break,
            r = acceptor.accept(&proxy.metrics.refused_fd_limit) => r,
        };
        let ip = peer.ip().to_canonical();
        let admitted = proxy.limits.admit(ip);
        if let Err(why) = &admitted {
            proxy.metrics.refused(*why);
            tracing::debug!(%peer, ?why, "client refused");
        }
        let span = tracing::debug_span!("client", %peer);
        proxy
            .shutdown
            .tracker
            .spawn(connection(proxy.clone(), stream, peer, admitted).instrument(span));
    }
}

/// The TLS handshake when the listener has a certificate (bounded by the header timeout),
/// then the client's requests, or the refusal of a client over a connection cap.
async fn connection(
    proxy: Arc<Proxy>,
    stream: TcpStream,
    peer: SocketAddr,
    admitted: Result<ConnGuard, Refusal>,
) {
    let Some(tls) = &proxy.tls else {
        return match admitted {
            Ok(guard) if proxy.handoff.is_some() => {
                crate::handoff::serve(proxy, stream, peer, Arc::new(guard)).await
            }
            Ok(guard) => serve_client(proxy, stream, peer, Arc::new(guard)).await,
            Err(why) => refuse(stream, why).await,
        };
    };
    let handshake = tls.acceptor().accept(stream);
    let stream = match tokio::time::timeout(proxy.config.header_timeout, handshake).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return tracing::debug!("TLS handshake: {e}"),
        Err(_) => return tracing::debug!("TLS handshake timed out"),
    };
    match admitted {
        Ok(guard) => serve_client(proxy, stream, peer, Arc::new(guard)).await,
        Err(why) => refuse(stream, why).await,
    }
}

/// Answers the first request of a client over a connection cap with 503 or 429, then closes.
async fn refuse<I>(stream: I, why: Refusal)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |_req: Request<Incoming>| async move {
        let mut r = match why {
            Refusal::PerIp => {
                text(StatusCode::TOO_MANY_REQUESTS, "too many connections from your address")
            }
            _ => text(StatusCode::SERVICE_UNAVAILABLE, "router at its connection limit; retry"),
        };
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        Ok::<_, Infallible>(r)
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Some(REFUSAL_HEADER_TIMEOUT))
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), svc);
    let _ = tokio::time::timeout(REFUSAL_HEADER_TIMEOUT * 2, conn).await;
}

/// One client connection: requests until it closes or upgrades.
pub(crate) async fn serve_client<I>(
    proxy: Arc<Proxy>,
    stream: I,
    peer: SocketAddr,
    guard: Arc<ConnGuard>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc_proxy = proxy.clone();
    let svc = service_fn(move |req| {
        let proxy = svc_proxy.clone();
        let guard = guard.clone();
        async move { Ok::<_, Infallible>(proxy.handle(req, peer, guard).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Some(proxy.config.header_timeout))
        .max_buf_size(proxy.config.max_header_bytes)
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => if let Err(e) = r {
            if e.is_parse_too_large() {
                // hyper has answered 431 already.
                proxy.metrics.refused_header_too_large.inc();
            }
            tracing::debug!("http: {e}")
        },
        _ = proxy.shutdown.token.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(proxy.config.upstream_timeout, conn).await;
        }
    }
}

impl Proxy {
    async fn handle(
        self: &Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
        guard: Arc<ConnGuard>,
    ) -> Response<Body> {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/ws") => self.upgrade(req, peer, guard).await,
            (_, "/ws") => text(StatusCode::METHOD_NOT_ALLOWED, "/ws takes only GET upgrades"),
            (&Method::GET, "/healthz") => text(StatusCode::OK, "ok"),
            (&Method::GET, "/connect") => crate::connect::answer(self, &req, peer),
            (method, path) => {
                crate::ui::serve(crate::ui::Site::Chat, method, path).unwrap_or_else(|| {
                    text(StatusCode::NOT_FOUND, "not found; connect to /ws?room=ROOM&user=USER")
                })
            }
        }
    }

    /// The router's checks of an upgrade, before any node is asked: the query, the upgrade
    /// headers, the token (with auth on), and placement. The proxy and the handoff run the
    /// same ones.
    pub(crate) fn check<B>(
        &self,
        req: &Request<B>,
        peer: SocketAddr,
    ) -> Result<Checked, Box<Refused>> {
        let target = parse_ws_query(req.uri().query())
            .map_err(|e| Refused::BadRequest(text(StatusCode::BAD_REQUEST, e.to_string())))?;
        check_ws_upgrade(req.headers())
            .map_err(|(status, why)| Refused::BadRequest(ws_upgrade_refusal(status, why)))?;
        let hop = self.identity(req, &target).map_err(|e| Refused::Auth(e, target.room.clone()))?;
        let client_ip =
            crate::client_ip::client_ip(peer, req.headers(), &self.config.trusted_proxies);
        let view = self.membership.view();
        let placement = self.policy.place(&view, &target.room, client_ip).map_err(|e| {
            Refused::NoNode(retry_later(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("{e}; retry later"),
            ))
        })?;
        Ok(Checked { target, hop, client_ip, view, placement })
    }

    /// Counts a refusal of [`Proxy::check`] and gives the client's answer.
    fn refused(&self, r: Refused) -> Response<Body> {
        let m = &self.metrics;
        match r {
            Refused::BadRequest(resp) => {
                m.upgrade(Outcome::BadRequest);
                resp
            }
            Refused::Auth(e, room) => {
                m.upgrade(Outcome::Unauthorized);
                m.auth_refused(&e);
                tracing::debug!(%room, reason = e.reason(), "upgrade refused: {e}");
                text(e.status(), e.to_string())
            }
            Refused::NoNode(resp) => {
                m.upgrade(Outcome::NoNode);
                resp
            }
        }
    }

    /// Counts a placement made (per country with `geo`).
    pub(crate) fn placed(&self, p: &crate::placement::Placement) {
        if matches!(self.policy, crate::placement::Policy::Geo(_)) {
            self.metrics.geo(p.country.as_deref(), p.fallback);
        }
    }

    /// Validates, places and forwards one upgrade; the answer the client gets.
    async fn upgrade(
        self: &Arc<Self>,
        mut req: Request<Incoming>,
        peer: SocketAddr,
        guard: Arc<ConnGuard>,
    ) -> Response<Body> {
        let started = Instant::now();
        let m = &self.metrics;
        let Checked { target, hop, client_ip, view, placement } = match self.check(&req, peer) {
            Ok(c) => c,
            Err(r) => return self.refused(*r),
        };
        self.placed(&placement);
        let client_upgrade = hyper::upgrade::on(&mut req);
        let mut failures: Vec<Error> = Vec::new();
        for (i, member) in placement.members(&view).take(self.config.max_tries).enumerate() {
            if i > 0 {
                m.retries.inc();
            }
            let fwd = forwarded(&req, member, client_ip, placement.generation, hop.as_ref());
            match self.attempt(member, fwd).await {
                Ok(Answer::Switching(resp, node)) => {
                    m.upgrade(Outcome::Ok);
                    m.upgrade_seconds.observe(started.elapsed());
                    member.stats.upgrades.inc();
                    let answer = switching_response(&resp, member);
                    tracing::debug!(node = %member.spec.id, room = %target.room, "upgraded");
                    self.spawn_tunnel(client_upgrade, node, member.stats.clone(), guard);
                    return answer;
                }
                Ok(Answer::Final(resp)) => {
                    m.upgrade(Outcome::NodeRejected);
                    return resp;
                }
                Err(Error::FdLimit(e)) => {
                    // Every other candidate would need a descriptor too.
                    m.refused(Refusal::FdLimit);
                    tracing::warn!(room = %target.room, "connect to a node: {e}; refusing with 503");
                    return retry_later(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "router at its open-file limit; retry",
                    );
                }
                Err(e) => {
                    if let Error::Node { cause, .. } = &e {
                        m.proxy_error(*cause);
                    }
                    tracing::debug!(room = %target.room, "{e}");
                    failures.push(e);
                }
            }
        }
        m.upgrade(Outcome::Failed);
        let all_refused =
            failures.iter().all(|e| matches!(e, Error::Node { cause: Cause::Refused, .. }));
        let list = failures.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
        if all_refused {
            retry_later(StatusCode::SERVICE_UNAVAILABLE, &format!("every node refused: {list}"))
        } else {
            text(StatusCode::BAD_GATEWAY, format!("no node could take the upgrade: {list}"))
        }
    }

    /// With auth on, the client's token verified for the room; `None` with auth off.
    pub(crate) fn verified<B>(
        &self,
        req: &Request<B>,
        target: &shared::ids::WsTarget,
    ) -> Result<Option<shared::auth::Identity>, AuthError> {
        let (Some(jwt), Some(_)) = (&self.config.jwt, &self.config.hop_key) else {
            return Ok(None);
        };
        let token = token_from(req.uri().query(), req.headers()).ok_or(AuthError::Missing)?;
        jwt.verify(&token, &target.room, target.user.as_ref()).map(Some)
    }

    /// With auth on, the signed hop header that carries the verified identity to the node.
    fn identity<B>(
        &self,
        req: &Request<B>,
        target: &shared::ids::WsTarget,
    ) -> Result<Option<HeaderValue>, AuthError> {
        let (Some(id), Some(hop)) = (self.verified(req, target)?, &self.config.hop_key) else {
            return Ok(None);
        };
        Ok(HeaderValue::from_str(&hop.sign(&id, &target.room)).ok())
    }

    /// Sends the upgrade to one node and reads its answer.
    async fn attempt(&self, member: &Member, req: Request<Empty<Bytes>>) -> Result<Answer, Error> {
        let cfg = &self.config;
        let stream = self.dialer.connect(member, cfg.connect_timeout).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| node_error(member, Cause::Protocol, format!("handshake: {e}")))?;
        let mut conn: ConnFuture = Box::pin(conn.with_upgrades());
        let mut conn_done = None;
        let exchange = upstream::exchange(&mut sender, req, &mut conn, &mut conn_done);
        let mut resp = match tokio::time::timeout(cfg.upstream_timeout, exchange).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                return Err(node_error(member, Cause::Protocol, format!("upgrade request: {e}")));
            }
            Err(_) => {
                let detail = format!("no answer within {:?}", cfg.upstream_timeout);
                return Err(node_error(member, Cause::Timeout, detail));
            }
        };
        let status = resp.status();
        if status == StatusCode::SWITCHING_PROTOCOLS {
            let upgrade = hyper::upgrade::on(&mut resp);
            return Ok(Answer::Switching(resp, NodeSide { conn, conn_done, upgrade, sender }));
        }
        if status.is_server_error() {
            return Err(node_error(member, Cause::Refused, format!("answered {status}")));
        }
        if !status.is_client_error() {
            let detail = format!("answered {status} to an upgrade");
            return Err(node_error(member, Cause::Protocol, detail));
        }
        drop(sender);
        let (parts, body) = resp.into_parts();
        let read = async {
            tokio::join!(Limited::new(body, MAX_BODY).collect(), upstream::finish(conn, conn_done))
                .0
        };
        let body = match tokio::time::timeout(cfg.upstream_timeout, read).await {
            Ok(Ok(b)) => b.to_bytes(),
            _ => Bytes::from(format!("{status} from node {}\n", member.spec.id)),
        };
        let mut out = Response::new(Full::new(body));
        *out.status_mut() = status;
        copy_end_to_end(&parts.headers, out.headers_mut());
        out.headers_mut().remove(header::CONTENT_LENGTH);
        name_node(out.headers_mut(), member);
        Ok(Answer::Final(out))
    }

    /// Completes both upgrades in a tracked task and splices them.
    fn spawn_tunnel(
        self: &Arc<Self>,
        client: OnUpgrade,
        node: NodeSide,
        stats: Arc<NodeStats>,
        guard: Arc<ConnGuard>,
    ) {
        let proxy = self.clone();
        let tunnel = async move {
            let NodeSide { conn, conn_done, upgrade, sender } = node;
            let node_io = async move {
                let (_, up) = tokio::join!(upstream::finish(conn, conn_done), upgrade);
                drop(sender);
                up
            };
            let both = async { tokio::join!(client, node_io) };
            let (client_io, node_io) = match tokio::time::timeout(
                proxy.config.upstream_timeout,
                both,
            )
            .await
            {
                Ok((Ok(c), Ok(n))) => (c, n),
                Ok((c, n)) => {
                    tracing::debug!(client = ?c.err(), node = ?n.err(), "upgrade did not complete");
                    return;
                }
                Err(_) => {
                    tracing::debug!("upgrade did not complete in time");
                    return;
                }
            };
            let Some(node_io) = crate::tunnel::into_node(node_io) else {
                // The node side is built on TokioIo<NodeIo> above; nothing else can arrive.
                tracing::error!("upgraded node connection is not a NodeIo; dropping the tunnel");
                return;
            };
            let m = &proxy.metrics;
            m.tunnels.inc();
            stats.connections.inc();
            let stop = proxy.hard_stop.clone();
            let r = splice(client_io, node_io, m.clone(), stop).await;
            if let Err(e) = r {
                tracing::debug!("tunnel: {e}");
            }
            stats.connections.dec();
            m.tunnels.dec();
            drop(guard);
        };
        self.shutdown.tracker.spawn(tunnel.in_current_span());
    }
}

/// Splices the client to the node: the zero-copy TCP splice when both are plain TCP,
/// buffered copies when either speaks TLS.
async fn splice(
    client: hyper::upgrade::Upgraded,
    node: (NodeIo, Bytes),
    m: Arc<Metrics>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    use crate::tunnel::{into_tcp, into_tls, splice_buffered, splice_tcp};
    let client = match into_tcp(client) {
        Ok(tcp) => Ok(tcp),
        Err(up) => Err(into_tls(up)),
    };
    match (client, node) {
        (Ok(c), (NodeIo::Plain(n), early)) => splice_tcp(c, (n, early), m, stop).await,
        (Ok(c), n) => splice_buffered(c, n, m, stop).await,
        (Err(Some(c)), n) => splice_buffered(c, n, m, stop).await,
        (Err(None), _) => {
            tracing::error!("upgraded client connection is neither TCP nor TLS");
            Ok(())
        }
    }
}

/// The upgrade as `member` gets it, with the signed identity when auth is on.
pub(crate) fn forwarded<B>(
    req: &Request<B>,
    member: &Member,
    client_ip: IpAddr,
    generation: u64,
    hop: Option<&HeaderValue>,
) -> Request<Empty<Bytes>> {
    let mut fwd = forward_request(req.uri(), req.headers(), member, client_ip, generation);
    if let Some(v) = hop {
        fwd.headers_mut().insert(HOP_HEADER, v.clone());
    }
    fwd
}

/// The upgrade as the node gets it: end-to-end headers (all `Sec-WebSocket-*` among them),
/// the upgrade headers, `Host` of the node, `X-Forwarded-For`/`-Proto`, the ring generation.
fn forward_request(
    uri: &http::Uri,
    headers: &HeaderMap,
    member: &Member,
    client_ip: IpAddr,
    generation: u64,
) -> Request<Empty<Bytes>> {
    let path = uri.path_and_query().map_or("/ws", |p| p.as_str());
    let mut out = Request::new(Empty::new());
    *out.method_mut() = Method::GET;
    *out.uri_mut() = path.parse().unwrap_or_else(|_| http::Uri::from_static("/ws"));
    let h = out.headers_mut();
    copy_end_to_end(headers, h);
    // A client's own identity header never reaches a node: only the router signs one.
    for name in [header::HOST, X_FORWARDED_FOR, X_FORWARDED_PROTO, RING_GENERATION, HOP_HEADER] {
        h.remove(&name);
    }
    if let Ok(v) = HeaderValue::from_str(member.spec.addr.as_str()) {
        h.insert(header::HOST, v);
    }
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    let prior: Vec<&str> =
        headers.get_all(&X_FORWARDED_FOR).iter().filter_map(|v| v.to_str().ok()).collect();
    let xff = if prior.is_empty() {
        client_ip.to_string()
    } else {
        format!("{}, {client_ip}", prior.join(", "))
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        h.insert(X_FORWARDED_FOR, v);
    }
    h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    h.insert(RING_GENERATION, HeaderValue::from(generation));
    out
}

/// Copies every header except the hop-by-hop ones and those `Connection` nominates.
fn copy_end_to_end(from: &HeaderMap, to: &mut HeaderMap) {
    let nominated: Vec<HeaderName> = from
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for (name, value) in from {
        if !HOP_BY_HOP.contains(name) && !nominated.contains(name) {
            to.append(name.clone(), value.clone());
        }
    }
}

/// The client's 101: the node's upgrade headers (accept key, protocol, extensions).
fn switching_response(node: &Response<Incoming>, member: &Member) -> Response<Body> {
    let mut r = Response::new(Body::default());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    copy_end_to_end(node.headers(), h);
    h.remove(header::CONTENT_LENGTH);
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    name_node(h, member);
    r
}

fn name_node(h: &mut HeaderMap, member: &Member) {
    if let Ok(v) = HeaderValue::from_str(member.spec.id.as_str()) {
        h.insert(NODE, v);
    }
}

/// A refusal the client should retry shortly (through this or another router).
fn retry_later(status: StatusCode, why: &str) -> Response<Body> {
    let mut r = text(status, why);
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_gets_the_upgrade_with_forwarding_headers() {
        let member = Member {
            spec: "node-a=127.0.0.1:7001".parse().unwrap(),
            source: crate::membership::Source::Static,
            healthy: true,
            draining: false,
            ready: true,
            stats: Arc::default(),
        };
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("host", "router.example"),
            ("upgrade", "websocket"),
            ("connection", "keep-alive, Upgrade, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "hop"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("sec-websocket-protocol", "chat"),
            ("sec-websocket-extensions", "permessage-deflate"),
            ("origin", "https://app.example"),
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
            ("x-roomfleet-ring-generation", "999"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let uri: http::Uri = "/ws?room=r1&user=u1".parse().unwrap();
        let req = forward_request(&uri, &h, &member, "10.1.2.3".parse().unwrap(), 7);
        let got = |k: &str| req.headers().get(k).map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(req.uri(), "/ws?room=r1&user=u1");
        assert_eq!(got("host").as_deref(), Some("127.0.0.1:7001"));
        assert_eq!(got("upgrade").as_deref(), Some("websocket"));
        assert_eq!(got("connection").as_deref(), Some("Upgrade"));
        for k in ["sec-websocket-version", "sec-websocket-key", "sec-websocket-protocol"] {
            assert_eq!(got(k), h.get(k).map(|v| v.to_str().unwrap().to_owned()), "{k}");
        }
        assert_eq!(got("sec-websocket-extensions").as_deref(), Some("permessage-deflate"));
        assert_eq!(got("origin").as_deref(), Some("https://app.example"));
        assert_eq!(got("x-forwarded-for").as_deref(), Some("203.0.113.9, 10.1.2.3"));
        assert_eq!(got("x-forwarded-proto").as_deref(), Some("http"));
        assert_eq!(got("x-roomfleet-ring-generation").as_deref(), Some("7"));
        assert_eq!(got("keep-alive"), None);
        assert_eq!(got("x-secret"), None, "headers named by Connection stay on their hop");
    }
}
