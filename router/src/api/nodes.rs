//! The server API's calls into the nodes: one signed `/internal/*` request, and the reads
//! that ask every node at once (rooms, a room's members, removal) or the owner (history),
//! merged into one answer. A node that cannot answer is listed under `errors`, never hides
//! what the others said.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::Full;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use shared::api::{ApiError, ErrorBody};
use shared::auth::{HOP_HEADER, Identity, Rights};
use shared::http::query_param;
use shared::ids::{RoomId, UserId};

use crate::membership::Member;
use crate::proxy::Proxy;
use crate::upstream;

/// How long one node may take for a read that asks every node.
const FANOUT_TIMEOUT: Duration = Duration::from_secs(2);
/// Rooms a page of `GET /api/rooms` holds by default and at most.
const PAGE: usize = 100;
const MAX_PAGE: usize = 1000;
/// Rooms read from each node for `GET /api/rooms` at most, and the bytes that may take.
const MAX_NODE_ROOMS: usize = 100_000;
const MAX_NODE_ROOMS_BYTES: usize = 32 * 1024 * 1024;

/// One `/internal/*` call to `member` for `room`, signed with the hop secret when the
/// router has one (the node takes unsigned calls only from loopback).
pub(super) async fn call(
    proxy: &Proxy,
    member: &Member,
    method: Method,
    path: &str,
    room: &RoomId,
    user: &UserId,
    body: Bytes,
) -> Result<(StatusCode, Bytes), crate::Error> {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(hop) = &proxy.config.hop_key {
        let id = Identity {
            user: user.clone(),
            rights: Rights::ReadWrite,
            exp: shared::auth::unix_secs() + 60,
            info: None,
        };
        req = req.header(HOP_HEADER, hop.sign(&id, room));
    }
    let req = req.body(Full::new(body)).map_err(|e| crate::Error::config(e.to_string()))?;
    upstream::call(&proxy.dialer, member, req, proxy.config.upstream_timeout, upstream::MAX_BODY)
        .await
}

/// A node's answer as `T`, or its refusal passed on with its status and code.
pub(super) fn parse<T: DeserializeOwned>(
    member: &Member,
    (status, body): (StatusCode, Bytes),
) -> Result<T, ApiError> {
    if status.is_success() {
        return serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "node_unavailable",
                format!("node {} answered {e}", member.spec.id),
            )
        });
    }
    let e: ErrorBody = serde_json::from_slice(&body).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "node_unavailable",
            format!("node {} answered {status}", member.spec.id),
        )
    })?;
    let code = shared::api::CODES.iter().find(|c| **c == e.code).copied().unwrap_or("internal");
    Err(ApiError::new(status, code, e.message))
}

pub(super) fn unavailable(e: &crate::Error) -> ApiError {
    ApiError::new(StatusCode::BAD_GATEWAY, "node_unavailable", e.to_string())
}

/// A node that could not answer a fan-out read.
#[derive(Serialize)]
pub(super) struct NodeError {
    node: String,
    message: String,
}

fn api_user() -> UserId {
    UserId::parse("api").expect("a valid user id")
}

/// Asks every node in the view the same `/internal/*` call for `room`, concurrently.
async fn every_node<T: DeserializeOwned>(
    proxy: &Proxy,
    method: Method,
    path: &str,
    room: &RoomId,
) -> (Vec<T>, Vec<NodeError>) {
    let view = proxy.membership.view();
    let user = api_user();
    let asks = view.members.values().map(|m| {
        let (method, user) = (method.clone(), &user);
        async move {
            let r = tokio::time::timeout(
                FANOUT_TIMEOUT,
                call(proxy, m, method, path, room, user, Bytes::new()),
            )
            .await
            .unwrap_or_else(|_| {
                Err(crate::Error::config(format!("no answer within {FANOUT_TIMEOUT:?}")))
            });
            let r = r.map_err(|e| unavailable(&e)).and_then(|a| parse::<T>(m, a));
            r.map_err(|e| NodeError { node: m.spec.id.to_string(), message: e.message })
        }
    });
    let mut ok = Vec::new();
    let mut errors = Vec::new();
    for r in futures_util::future::join_all(asks).await {
        match r {
            Ok(v) => ok.push(v),
            Err(e) => errors.push(e),
        }
    }
    (ok, errors)
}

/// What a node's `/admin/rooms` says about one room.
#[derive(Deserialize)]
struct NodeRoom {
    room: String,
    members: usize,
    seq: u64,
    mode: String,
}

#[derive(Deserialize)]
struct NodeRooms {
    node: String,
    rooms: Vec<NodeRoom>,
}

/// One room of `GET /api/rooms`.
#[derive(Serialize, Default)]
pub(super) struct RoomSummary {
    room: String,
    /// Connections in the room on every node.
    members: usize,
    /// The nodes holding it, with their connections there.
    nodes: BTreeMap<String, usize>,
    seq: u64,
    spanning: bool,
}

#[derive(Serialize)]
pub(super) struct RoomsPage {
    rooms: Vec<RoomSummary>,
    /// Pass as `after` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
    total: usize,
    errors: Vec<NodeError>,
}

/// `GET /api/rooms?limit=N&after=ROOM`: every open room on every node, by name.
pub(super) async fn rooms(proxy: &Proxy, query: Option<&str>) -> Result<RoomsPage, ApiError> {
    let limit = match query_param(query, "limit") {
        None => PAGE,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| bad_query(format!("limit must be 1..={MAX_PAGE}")))?,
    };
    let after = query_param(query, "after");
    let view = proxy.membership.view();
    let token = proxy.config.node_admin_token.as_deref();
    let path = format!("/admin/rooms?limit={MAX_NODE_ROOMS}");
    let asks =
        view.members.values().map(|m| {
            let path = &path;
            let ask = async move {
                let mut req = Request::builder().method(Method::GET).uri(path.as_str());
                if let Some(t) = token {
                    req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
                }
                let req = req.body(Full::new(Bytes::new())).map_err(|e| e.to_string())?;
                let (status, body) =
                    upstream::call(&proxy.dialer, m, req, FANOUT_TIMEOUT, MAX_NODE_ROOMS_BYTES)
                        .await
                        .map_err(|e| e.to_string())?;
                if !status.is_success() {
                    return Err(format!("/admin/rooms answered {status}"));
                }
                serde_json::from_slice::<NodeRooms>(&body).map_err(|e| format!("/admin/rooms: {e}"))
            };
            async move {
                ask.await.map_err(|message| NodeError { node: m.spec.id.to_string(), message })
            }
        });
    let mut all: BTreeMap<String, RoomSummary> = BTreeMap::new();
    let mut errors = Vec::new();
    for r in futures_util::future::join_all(asks).await {
        match r {
            Ok(n) => {
                for r in n.rooms {
                    let s = all.entry(r.room.clone()).or_insert_with(|| RoomSummary {
                        room: r.room.clone(),
                        ..RoomSummary::default()
                    });
                    s.members += r.members;
                    s.nodes.insert(n.node.clone(), r.members);
                    s.seq = s.seq.max(r.seq);
                    s.spanning |= r.mode == "spanning" || s.nodes.len() > 1;
                }
            }
            Err(e) => errors.push(e),
        }
    }
    let total = all.len();
    let mut rooms: Vec<RoomSummary> = match &after {
        Some(a) => all.into_values().filter(|r| r.room.as_str() > a.as_str()).collect(),
        None => all.into_values().collect(),
    };
    let next = (rooms.len() > limit).then(|| rooms[limit - 1].room.clone());
    rooms.truncate(limit);
    Ok(RoomsPage { rooms, next, total, errors })
}

fn bad_query(m: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_query", m)
}

/// What a node's `GET /internal/rooms/{room}` says.
#[derive(Deserialize)]
struct Held {
    node: String,
    open: bool,
    #[serde(default)]
    state: Option<HeldState>,
    #[serde(default)]
    members: Vec<HeldMember>,
}

#[derive(Deserialize)]
struct HeldState {
    seq: u64,
    epoch: String,
    mode: String,
}

#[derive(Deserialize)]
struct HeldMember {
    user: String,
    connections: usize,
    #[serde(default)]
    info: Option<Box<RawValue>>,
}

#[derive(Serialize)]
pub(super) struct MemberEntry {
    user: String,
    node: String,
    connections: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    info: Option<Box<RawValue>>,
}

#[derive(Serialize)]
pub(super) struct NodeState {
    node: String,
    mode: String,
    seq: u64,
    epoch: String,
}

#[derive(Serialize)]
pub(super) struct RoomDetail {
    room: String,
    /// The node placement sends the room to (its owner).
    owner: Option<String>,
    /// The owner's `seq` and `epoch` (or, when the owner does not hold it, the highest).
    seq: u64,
    epoch: Option<String>,
    spanning: bool,
    members: Vec<MemberEntry>,
    nodes: Vec<NodeState>,
    errors: Vec<NodeError>,
}

fn owner(proxy: &Proxy, room: &RoomId) -> Option<(String, Vec<shared::ids::NodeId>)> {
    let view = proxy.membership.view();
    let p = proxy.policy.place(&view, room, IpAddr::from([0, 0, 0, 0])).ok()?;
    Some((p.node().to_string(), p.candidates.clone()))
}

/// `GET /api/rooms/{room}`: its members on every node, `seq`, `epoch`, owner, spanning.
pub(super) async fn room(proxy: &Proxy, room: &RoomId) -> Result<RoomDetail, ApiError> {
    let path = format!("/internal/rooms/{room}");
    let (held, errors) = every_node::<Held>(proxy, Method::GET, &path, room).await;
    let owner = owner(proxy, room).map(|(o, _)| o);
    let mut members = Vec::new();
    let mut nodes = Vec::new();
    for h in held.into_iter().filter(|h| h.open) {
        if let Some(s) = h.state {
            nodes.push(NodeState {
                node: h.node.clone(),
                mode: s.mode,
                seq: s.seq,
                epoch: s.epoch,
            });
        }
        for m in h.members {
            members.push(MemberEntry {
                user: m.user,
                node: h.node.clone(),
                connections: m.connections,
                info: m.info,
            });
        }
    }
    members.sort_by(|a, b| (&a.user, &a.node).cmp(&(&b.user, &b.node)));
    nodes.sort_by(|a, b| a.node.cmp(&b.node));
    let main = nodes
        .iter()
        .find(|n| Some(&n.node) == owner.as_ref())
        .or_else(|| nodes.iter().max_by_key(|n| n.seq));
    let (seq, epoch) = main.map_or((0, None), |n| (n.seq, Some(n.epoch.clone())));
    let spanning = nodes.len() > 1 || nodes.iter().any(|n| n.mode == "spanning");
    Ok(RoomDetail { room: room.to_string(), owner, seq, epoch, spanning, members, nodes, errors })
}

/// A node's history page.
#[derive(Deserialize, Serialize)]
pub(super) struct Page {
    node: String,
    open: bool,
    /// `memory`, `store` (read from Redis: open nowhere) or `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    source: Option<String>,
    seq: Option<u64>,
    epoch: Option<String>,
    messages: Vec<Box<RawValue>>,
}

/// `GET /api/rooms/{room}/messages?since=&limit=`: the history at the owner (or, when the
/// owner does not hold the room, at the first of its fallbacks that does).
pub(super) async fn messages(
    proxy: &Proxy,
    room: &RoomId,
    query: Option<&str>,
) -> Result<Page, ApiError> {
    let mut q = Vec::new();
    for name in ["since", "limit"] {
        if let Some(v) = query_param(query, name) {
            v.parse::<u64>().map_err(|_| bad_query(format!("{name} must be a number")))?;
            q.push(format!("{name}={v}"));
        }
    }
    let path = format!("/internal/rooms/{room}/messages?{}", q.join("&"));
    let view = proxy.membership.view();
    let Some((_, candidates)) = owner(proxy, room) else {
        return Err(ApiError::unavailable("no_node", "no healthy node in the ring"));
    };
    let mut first: Option<Page> = None;
    for m in candidates.iter().filter_map(|id| view.member(id)) {
        let r = call(proxy, m, Method::GET, &path, room, &api_user(), Bytes::new()).await;
        let page = match r.map_err(|e| unavailable(&e)).and_then(|a| parse::<Page>(m, a)) {
            Ok(p) => p,
            Err(e) if first.is_none() => return Err(e),
            Err(_) => continue,
        };
        if page.open {
            return Ok(page);
        }
        first.get_or_insert(page);
    }
    first.ok_or_else(|| ApiError::unavailable("no_node", "no healthy node in the ring"))
}

#[derive(Deserialize)]
struct NodeRemoved {
    node: String,
    closed: usize,
}

#[derive(Serialize)]
pub(super) struct Removed {
    room: String,
    user: String,
    /// Connections closed with 4003, on every node.
    closed: usize,
    nodes: BTreeMap<String, usize>,
    errors: Vec<NodeError>,
}

/// `DELETE /api/rooms/{room}/members/{user}`: closes the user's connections everywhere.
pub(super) async fn remove(
    proxy: &Proxy,
    room: &RoomId,
    user: &UserId,
) -> Result<Removed, ApiError> {
    let path = format!("/internal/rooms/{room}/members/{user}");
    let (done, errors) = every_node::<NodeRemoved>(proxy, Method::DELETE, &path, room).await;
    let nodes: BTreeMap<String, usize> = done.into_iter().map(|r| (r.node, r.closed)).collect();
    Ok(Removed {
        room: room.to_string(),
        user: user.to_string(),
        closed: nodes.values().sum(),
        nodes,
        errors,
    })
}
