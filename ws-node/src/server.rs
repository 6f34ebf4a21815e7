//! The node's HTTP side on one listener: the WebSocket upgrade on `/ws`, and `/healthz`,
//! `/readyz`, `/metrics`, `/admin/rooms`, `/admin/drain` as plain HTTP, and the routers'
//! `/internal/*` calls ([`crate::internal`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use shared::auth::{AuthError, HOP_HEADER, Identity, token_from};
use shared::handoff::{Hold, Prefixed};
use shared::http::{
    Body, bearer_ok, check_ws_upgrade, json, json_error, metrics_text, query_param, text,
    ws_upgrade_refusal,
};
use shared::ids::{UserId, WsTarget, parse_ws_query};
use shared::listen::Acceptor;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::node::Node;
use crate::room::RoomInfo;

/// Serves `node` on `listener` until [`Node::shutdown`], then waits for every connection
/// to close (they get 1001), at most `shutdown_grace`.
pub async fn serve(node: Arc<Node>, listener: TcpListener) {
    let bus_task = tokio::spawn(node.rooms.clone().run_bus(node.token.clone()));
    if let Some(jwt) = &node.config.jwt {
        jwt.spawn_reloader(node.token.clone());
    }
    if let Some(tls) = &node.config.tls {
        node.tracker.spawn(tls.clone().reload_on_sighup(node.token.clone()));
    }
    let mut acceptor = Acceptor::new(listener);
    loop {
        let stream = tokio::select! {
            _ = node.token.cancelled() => break,
            (s, _) = acceptor.accept(&node.metrics.refused_fd_limit) => s,
        };
        node.tracker.spawn(serve_tcp(node.clone(), stream));
    }
    drop(acceptor);
    node.tracker.close();
    if tokio::time::timeout(node.config.shutdown_grace, node.tracker.wait()).await.is_err() {
        tracing::warn!("shutdown grace expired with connections still open");
    }
    bus_task.abort();
}

/// The TLS handshake when the node has a certificate (bounded by the header timeout), then
/// the connection's requests.
async fn serve_tcp(node: Arc<Node>, stream: TcpStream) {
    let Ok(peer) = stream.peer_addr() else { return };
    let Some(tls) = &node.config.tls else { return serve_http(node, stream, peer, None).await };
    let handshake = tls.acceptor().accept(stream);
    match tokio::time::timeout(node.config.header_timeout, handshake).await {
        Ok(Ok(s)) => serve_http(node, s, peer, None).await,
        Ok(Err(e)) => tracing::debug!("TLS handshake: {e}"),
        Err(_) => tracing::debug!("TLS handshake timed out"),
    }
}

/// A client a router handed over (see [`crate::handoff`]): the router's forwarded head read
/// first, then the socket; one request, and only `GET /ws`, so a client never reaches this
/// node's admin or `/internal/*` paths through it.
pub(crate) async fn serve_handed(
    node: Arc<Node>,
    stream: TcpStream,
    head: Bytes,
    hold: Option<Hold>,
) {
    let Ok(peer) = stream.peer_addr() else { return };
    let hold = Some(Held { _hold: hold });
    serve_http(node, Prefixed::new(head, stream), peer, hold).await
}

/// The response header naming the node that answered, as routers set it.
const NODE_HEADER: http::HeaderName = http::HeaderName::from_static("x-roomfleet-node");

/// A handed-off request's [`Hold`], kept by its session (a request extension until then).
#[derive(Clone)]
struct Held {
    _hold: Option<Hold>,
}

/// One HTTP connection: requests until it closes, upgrades, or the node shuts down.
/// `peer` is the TCP peer, which `/internal/*` checks. `handed` is set for a connection a
/// router handed over: only `GET /ws`, and closed after a refusal.
async fn serve_http<I>(node: Arc<Node>, stream: I, peer: std::net::SocketAddr, handed: Option<Held>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc_node = node.clone();
    let svc = service_fn(move |mut req: Request<Incoming>| {
        let node = svc_node.clone();
        let handed = handed.clone();
        async move {
            let r = if let Some(h) = handed {
                let mut r = if req.method() == Method::GET && req.uri().path() == "/ws" {
                    req.extensions_mut().insert(h);
                    upgrade(&node, req)
                } else {
                    text(StatusCode::NOT_FOUND, "not found")
                };
                // One request per handed-off connection: what follows a refusal would not
                // have passed the router.
                if r.status() != StatusCode::SWITCHING_PROTOCOLS {
                    r.headers_mut()
                        .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
                }
                // What the router adds to the answers it passes on.
                if let Ok(v) = http::HeaderValue::from_str(&node.config.node_id) {
                    r.headers_mut().insert(NODE_HEADER, v);
                }
                r
            } else if req.method() == Method::GET && req.uri().path() == "/admin/rooms" {
                admin_rooms(&node, req).await
            } else if crate::internal::owns(req.uri().path()) {
                crate::internal::route(&node, peer, req).await
            } else {
                route(&node, req)
            };
            Ok::<_, std::convert::Infallible>(r)
        }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Some(node.config.header_timeout))
        .max_buf_size(node.config.max_header_bytes)
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => if let Err(e) = r { tracing::debug!("http: {e}") },
        _ = node.token.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
        }
    }
}

/// `/admin/*` without the configured bearer token.
fn admin_refused(node: &Node, req: &Request<Incoming>) -> Option<Response<Body>> {
    let token = node.config.admin_token.as_ref()?;
    (req.uri().path().starts_with("/admin/") && !bearer_ok(req.headers(), token))
        .then(|| json_error(StatusCode::UNAUTHORIZED, "admin requires a bearer token"))
}

fn route(node: &Arc<Node>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    if let Some(r) = admin_refused(node, &req) {
        return r;
    }
    match (req.method(), path) {
        (&Method::GET, "/ws") => upgrade(node, req),
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok"),
        (&Method::GET, "/readyz") => {
            if node.is_draining() || node.token.is_cancelled() {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining")
            } else if !node.rooms.bus.is_ready() {
                text(StatusCode::SERVICE_UNAVAILABLE, "starting: waiting for Redis")
            } else {
                text(StatusCode::OK, "ready")
            }
        }
        (&Method::GET, "/metrics") => metrics_text(node.metrics.render()),
        (&Method::POST, "/admin/drain") => admin_drain(node, req.uri().query()),
        (_, "/ws" | "/healthz" | "/readyz" | "/metrics" | "/admin/rooms" | "/admin/drain") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => text(StatusCode::NOT_FOUND, "not found"),
    }
}

/// Validates the upgrade, answers 101, and hands the connection to a session.
fn upgrade(node: &Arc<Node>, mut req: Request<Incoming>) -> Response<Body> {
    let target = match parse_ws_query(req.uri().query()) {
        Ok(t) => t,
        Err(e) => {
            node.metrics.refused_bad_request.inc();
            return text(StatusCode::BAD_REQUEST, e.to_string());
        }
    };
    let accept = match check_ws_upgrade(req.headers()) {
        Ok(key) => derive_accept_key(key),
        Err((status, why)) => {
            node.metrics.refused_bad_request.inc();
            return ws_upgrade_refusal(status, why);
        }
    };
    let access = match authenticate(node, &req, &target) {
        Ok(a) => a,
        Err(e) => {
            node.metrics.refused_auth.inc();
            tracing::debug!(room = %target.room, reason = e.reason(), "upgrade refused: {e}");
            return text(e.status(), e.to_string());
        }
    };
    if node.is_draining() || node.token.is_cancelled() {
        node.metrics.refused_draining.inc();
        return retry_later("node draining; reconnect through the router");
    }
    if !node.rooms.bus.is_ready() {
        // Rooms opened now could not read their stored history: resumes would fail.
        node.metrics.refused_draining.inc();
        return retry_later("node starting: waiting for Redis");
    }
    let Some(conn) = node.reserve_slot() else {
        node.metrics.refused_full.inc();
        return retry_later("node at its connection limit");
    };
    node.metrics.upgrades.inc();
    let user = match &access {
        Some(id) => id.user.clone(),
        None => target.user.clone().unwrap_or_else(anonymous_user),
    };
    let subprotocol = shared::auth::offers_subprotocol(req.headers());
    let on_upgrade = hyper::upgrade::on(&mut req);
    let held = req.extensions_mut().remove::<Held>();
    let session_node = node.clone();
    node.tracker.spawn(async move {
        let _held = held;
        match on_upgrade.await {
            Ok(upgraded) => {
                let halves = crate::outlet::open(upgraded, session_node.config.outbound_queue);
                crate::session::run(session_node, halves, target, user, access, conn).await;
            }
            Err(e) => {
                session_node.release_slot();
                tracing::debug!("upgrade failed: {e}");
            }
        }
    });
    let mut r = Response::new(Body::default());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, http::HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, http::HeaderValue::from_static("Upgrade"));
    if let Ok(v) = http::HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if subprotocol {
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            http::HeaderValue::from_static(shared::auth::SUBPROTOCOL),
        );
    }
    r
}

/// With auth on, the identity from a router's hop header (checked first: a present but bad
/// one is refused, never passed over), from a router's connect ticket, or from the client's
/// own token; `None` with auth off.
fn authenticate(
    node: &Node,
    req: &Request<Incoming>,
    target: &WsTarget,
) -> Result<Option<Identity>, AuthError> {
    if !node.config.auth_on() {
        return Ok(None);
    }
    if let Some(v) = req.headers().get(HOP_HEADER) {
        let hop = node.config.hop_key.as_ref().ok_or(AuthError::BadHop("no --hop-secret here"))?;
        let v = v.to_str().map_err(|_| AuthError::BadHop("malformed"))?;
        let id = hop.verify(v, &target.room)?;
        if target.user.as_ref().is_some_and(|u| *u != id.user) {
            return Err(AuthError::UserMismatch);
        }
        return Ok(Some(id));
    }
    if let Some(t) = shared::http::query_param(req.uri().query(), "ticket") {
        // A router's `GET /connect` ticket: for this node and this room only.
        let hop =
            node.config.hop_key.as_ref().ok_or(AuthError::BadTicket("no --hop-secret here"))?;
        let id = hop.verify_ticket(&t, &target.room, &node.config.node_id)?;
        if target.user.as_ref().is_some_and(|u| *u != id.user) {
            return Err(AuthError::UserMismatch);
        }
        return Ok(Some(id));
    }
    let token = token_from(req.uri().query(), req.headers()).ok_or(AuthError::Missing)?;
    let jwt = node.config.jwt.as_ref().ok_or(AuthError::Missing)?;
    jwt.verify(&token, &target.room, target.user.as_ref()).map(Some)
}

/// 503 with `Retry-After`: the router takes it as "try the next node".
fn retry_later(why: &str) -> Response<Body> {
    let mut r = text(StatusCode::SERVICE_UNAVAILABLE, why);
    r.headers_mut().insert(header::RETRY_AFTER, http::HeaderValue::from_static("1"));
    r
}

/// A user ID for clients that did not name one.
fn anonymous_user() -> UserId {
    let id = format!("anon-{:016x}", fastrand::u64(..));
    UserId::parse(&id).expect("generated IDs are valid")
}

/// Rooms listed by `GET /admin/rooms` unless `limit` says otherwise.
const ROOMS_LIMIT: usize = 1000;

async fn admin_rooms(node: &Node, req: Request<Incoming>) -> Response<Body> {
    if let Some(r) = admin_refused(node, &req) {
        return r;
    }
    let query = req.uri().query();
    let limit = match query_param(query, "limit").map(|v| v.parse::<usize>()) {
        None => ROOMS_LIMIT,
        Some(Ok(n)) => n,
        Some(Err(_)) => return json_error(StatusCode::BAD_REQUEST, "limit must be a number"),
    };
    let filter = query_param(query, "room");
    let all = node.rooms.all();
    let total = all.len();
    let mut rooms: Vec<RoomInfo> = Vec::new();
    for h in all.iter().filter(|r| filter.as_deref().is_none_or(|f| r.id.as_str() == f)) {
        if let Some(info) = h.info().await {
            rooms.push(info);
        }
    }
    rooms.sort_by(|a, b| b.members.cmp(&a.members).then_with(|| a.room.cmp(&b.room)));
    rooms.truncate(limit);
    json(
        StatusCode::OK,
        &serde_json::json!({
            "node": node.config.node_id,
            "connections": node.connections(),
            "draining": node.is_draining(),
            "total_rooms": total,
            "rooms": rooms,
        }),
    )
}

fn admin_drain(node: &Arc<Node>, query: Option<&str>) -> Response<Body> {
    let window = match query_param(query, "window_ms").map(|v| v.parse::<u64>()) {
        None => node.config.drain_window,
        Some(Ok(ms)) if ms <= 3_600_000 => Duration::from_millis(ms),
        Some(_) => {
            return json_error(StatusCode::BAD_REQUEST, "window_ms must be 0..=3600000");
        }
    };
    let n = node.drain(window);
    json(
        StatusCode::ACCEPTED,
        &serde_json::json!({"draining": true, "connections": n, "window_ms": window.as_millis() as u64}),
    )
}

/// The WebSocket settings of every session: frame limits from the node's config; a small
/// write buffer, since tungstenite writes only control frames.
pub(crate) fn ws_config(cfg: &crate::Config) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(8192)
        .max_message_size(Some(cfg.max_frame_bytes))
        .max_frame_size(Some(cfg.max_frame_bytes))
}
