//! The admin listener: the ring, placements, run-time membership and drain, metrics, health
//! and readiness, as a plain `match` on method and path. `/admin/*` takes the bearer token
//! when one is configured. Bad input gets 400 with `{"error": ...}`, an unknown node 404.
//! Other GETs serve the admin UI's embedded files ([`crate::ui`]), which need no token.

use std::net::IpAddr;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use serde_json::json;
use shared::http::{Body, bearer_ok, json, json_error, metrics_text, query_param, text};
use shared::ids::{NodeId, RoomId};
use shared::listen::Acceptor;

use crate::Error;
use crate::membership::{Member, NodeSpec, Source, Upsert, View};
use crate::proxy::Proxy;
use crate::ui::{self, Site};
use crate::{node_stats, upstream};

/// Largest admin request body.
const MAX_ADMIN_BODY: usize = 16 * 1024;

/// Serves the admin API until shutdown.
pub(crate) async fn serve(proxy: Arc<Proxy>, acceptor: Acceptor) {
    crate::plain_http::serve(proxy, acceptor, "admin", |p, req| async move { route(&p, req).await })
        .await
}

async fn route(proxy: &Arc<Proxy>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    if let Some(token) = &proxy.config.admin_token
        && path.starts_with("/admin/")
        && !bearer_ok(req.headers(), token)
    {
        return json_error(StatusCode::UNAUTHORIZED, "admin requires a bearer token");
    }
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = req.method().clone();
    match (&method, segments.as_slice()) {
        (&Method::GET, ["healthz"]) => text(StatusCode::OK, "ok"),
        (&Method::GET, ["readyz"]) => readyz(proxy),
        (&Method::GET, ["metrics"]) => {
            let view = proxy.membership.view();
            let mut text = proxy.metrics.render(view.ring.len(), &view.samples());
            if let Some(archiver) = &proxy.config.archiver_metrics {
                text.push_str(&archiver.render());
            }
            metrics_text(text)
        }
        (&Method::GET, ["admin", "ring"]) => ring(proxy, req.uri().query()),
        (&Method::GET, ["admin", "placement"]) => placement(proxy, req.uri().query()),
        (&Method::GET, ["admin", "nodes"]) => nodes(proxy, req.uri().query()).await,
        (&Method::POST, ["admin", "nodes"]) => add_node(proxy, req).await,
        (&Method::DELETE, ["admin", "nodes", id]) => remove_node(proxy, id),
        (&Method::POST, ["admin", "nodes", id, "drain"]) => drain(proxy, id).await,
        (_, ["healthz" | "readyz" | "metrics"] | ["admin", "ring" | "placement" | "nodes"])
        | (_, ["admin", "nodes", _] | ["admin", "nodes", _, "drain"]) => {
            json_error(StatusCode::METHOD_NOT_ALLOWED, format!("{method} is not allowed on {path}"))
        }
        _ => ui::serve(Site::Admin, &method, &path).unwrap_or_else(|| {
            json_error(StatusCode::NOT_FOUND, format!("no such endpoint: {path}"))
        }),
    }
}

/// Whether the query asks for an optional part of an answer (`?points=1`, `?stats=true`).
fn flag(query: Option<&str>, name: &str) -> bool {
    query_param(query, name).is_some_and(|v| v == "1" || v == "true")
}

fn readyz(proxy: &Proxy) -> Response<Body> {
    if proxy.shutdown.token.is_cancelled() {
        text(StatusCode::SERVICE_UNAVAILABLE, "shutting down")
    } else if proxy.membership.view().ring.is_empty() {
        text(StatusCode::SERVICE_UNAVAILABLE, "no healthy node in the ring")
    } else {
        text(StatusCode::OK, "ready")
    }
}

/// One member as the admin API shows it.
#[derive(Serialize)]
struct NodeInfo<'a> {
    id: &'a str,
    addr: &'a str,
    weight: u32,
    healthy: bool,
    draining: bool,
    /// Fraction of the key space this node owns now (0 when it is off the ring).
    share: f64,
    connections: i64,
    source: Source,
}

fn node_info<'a>(view: &'a View, m: &'a Member) -> NodeInfo<'a> {
    NodeInfo {
        id: m.spec.id.as_str(),
        addr: m.spec.addr.as_str(),
        weight: m.spec.weight,
        healthy: m.healthy,
        // Drained here, or draining itself (its `/readyz` says 503): either way not placed.
        draining: m.draining || !m.ready,
        share: view.ring.share(&m.spec.id),
        connections: m.stats.connections.get(),
        source: m.source,
    }
}

/// The ring; with `points=1` also its arcs, clockwise, hashes as 16 hex digits like
/// `/admin/placement`'s `hash` (the first arc wraps past the top when `from` > `to`).
fn ring(proxy: &Proxy, query: Option<&str>) -> Response<Body> {
    let view = proxy.membership.view();
    let nodes: Vec<NodeInfo<'_>> = view.members.values().map(|m| node_info(&view, m)).collect();
    let mut answer = json!({
        "generation": view.ring.generation(),
        "policy": proxy.policy.name(),
        "vnodes_per_weight": proxy.config.vnodes,
        "placed": view.ring.len(),
        "nodes": nodes,
    });
    if flag(query, "points") {
        let arcs: Vec<serde_json::Value> = view
            .ring
            .arcs()
            .into_iter()
            .map(|(from, to, node)| {
                json!({ "node": node, "from": format!("{from:016x}"), "to": format!("{to:016x}") })
            })
            .collect();
        answer["arcs"] = arcs.into();
    }
    json(StatusCode::OK, &answer)
}

/// The members; with `stats=1` also each node's own figures ([`node_stats`]), or
/// `stats_error` saying why not.
async fn nodes(proxy: &Proxy, query: Option<&str>) -> Response<Body> {
    let view = proxy.membership.view();
    let members: Vec<&Member> = view.members.values().collect();
    let mut nodes: Vec<serde_json::Value> = members
        .iter()
        .map(|m| serde_json::to_value(node_info(&view, m)).unwrap_or_default())
        .collect();
    if flag(query, "stats") {
        let stats =
            node_stats::fetch(&proxy.dialer, &members, proxy.config.node_admin_token.as_deref())
                .await;
        for (node, stats) in nodes.iter_mut().zip(stats) {
            match stats {
                Ok(s) => node["stats"] = serde_json::to_value(s).unwrap_or_default(),
                Err(e) => node["stats_error"] = e.into(),
            }
        }
    }
    json(StatusCode::OK, &json!({ "generation": view.ring.generation(), "nodes": nodes }))
}

fn placement(proxy: &Proxy, query: Option<&str>) -> Response<Body> {
    let room = match RoomId::parse(query_param(query, "room").as_deref().unwrap_or("")) {
        Ok(r) => r,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let ip: IpAddr = match query_param(query, "ip") {
        None => IpAddr::from([0, 0, 0, 0]),
        Some(s) => match s.parse::<IpAddr>() {
            Ok(ip) => ip.to_canonical(),
            Err(_) => {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    format!("ip {s:?} is not an IP address"),
                );
            }
        },
    };
    let view = proxy.membership.view();
    let p = match proxy.policy.place(&view, &room, ip) {
        Ok(p) => p,
        Err(e) => return json_error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    let owner = view.member(p.node());
    json(
        StatusCode::OK,
        &json!({
            "room": p.room,
            "node": p.node(),
            "addr": owner.map(|m| m.spec.addr.as_str()),
            "policy": p.policy,
            "key": p.key,
            "hash": p.hash,
            "reason": p.reason,
            "country": p.country,
            "pool": p.pool,
            "fallback": p.fallback,
            "generation": p.generation,
            "fallbacks": &p.candidates[1..],
        }),
    )
}

/// The body of `POST /admin/nodes`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewNode {
    id: String,
    addr: String,
    weight: Option<u32>,
}

async fn add_node(proxy: &Proxy, req: Request<Incoming>) -> Response<Body> {
    let body = match Limited::new(req.into_body(), MAX_ADMIN_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return json_error(StatusCode::BAD_REQUEST, format!("body: {e}")),
    };
    let new: NewNode = match serde_json::from_slice(&body) {
        Ok(n) => n,
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                format!(
                    "body must be {{\"id\": ID, \"addr\": \"HOST:PORT\", \"weight\": N?}}: {e}"
                ),
            );
        }
    };
    let spec = match NodeSpec::new(&new.id, &new.addr, new.weight) {
        Ok(s) => s,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, e),
    };
    let id = spec.id.clone();
    let outcome = proxy.membership.upsert(spec, Source::Admin);
    tracing::info!(node = %id, ?outcome, "node set through the admin API");
    let view = proxy.membership.view();
    let status = match outcome {
        Upsert::Added => StatusCode::CREATED,
        Upsert::Replaced => StatusCode::OK,
    };
    match view.member(&id) {
        Some(m) => json(
            status,
            &json!({ "generation": view.ring.generation(), "node": node_info(&view, m) }),
        ),
        None => json_error(StatusCode::CONFLICT, format!("node {id} was removed meanwhile")),
    }
}

/// The `{id}` path segment as a node ID.
fn node_id(id: &str) -> Result<NodeId, String> {
    NodeId::parse(&shared::http::percent_decode(id)).map_err(|e| e.to_string())
}

fn remove_node(proxy: &Proxy, id: &str) -> Response<Body> {
    let id = match node_id(id) {
        Ok(id) => id,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, e),
    };
    if !proxy.membership.remove(&id) {
        return json_error(StatusCode::NOT_FOUND, Error::UnknownNode(id.to_string()).to_string());
    }
    tracing::info!(node = %id, "node removed through the admin API");
    json(StatusCode::OK, &json!({ "removed": id, "generation": proxy.membership.generation() }))
}

/// Stops placing rooms on the node, then asks the node to close its clients (1012) so they
/// reconnect through the router and land elsewhere.
async fn drain(proxy: &Proxy, id: &str) -> Response<Body> {
    let id = match node_id(id) {
        Ok(id) => id,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, e),
    };
    if let Err(e) = proxy.membership.set_draining(&id, true) {
        return json_error(StatusCode::NOT_FOUND, e.to_string());
    }
    let view = proxy.membership.view();
    let Some(member) = view.member(&id) else {
        return json_error(StatusCode::NOT_FOUND, Error::UnknownNode(id.to_string()).to_string());
    };
    tracing::info!(node = %id, generation = view.ring.generation(), "draining node");
    let path = match proxy.config.drain_window {
        Some(w) => format!("/admin/drain?window_ms={}", w.as_millis()),
        None => "/admin/drain".to_owned(),
    };
    let token = proxy.config.node_admin_token.as_deref();
    let timeout = proxy.config.upstream_timeout;
    let answer =
        upstream::request(&proxy.dialer, member, Method::POST, &path, token, timeout).await;
    let (status, body) = match answer {
        Ok(r) => r,
        Err(e) => {
            return json_error(
                StatusCode::BAD_GATEWAY,
                format!("{e}; the router no longer places rooms there"),
            );
        }
    };
    if !status.is_success() {
        return json_error(
            StatusCode::BAD_GATEWAY,
            format!(
                "node {id} answered its drain with {status}; the router no longer places rooms there"
            ),
        );
    }
    let node_answer: serde_json::Value =
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    json(
        StatusCode::ACCEPTED,
        &json!({
            "node": id,
            "draining": true,
            "generation": view.ring.generation(),
            "node_answer": node_answer,
        }),
    )
}
