//! The calls routers make into a node for the server API, under `/internal/rooms/{room}`:
//! publish from no member, the room's members and state, its history, and removing a user.
//! Only routers may call them: with `--hop-secret` a request needs a hop header signed for
//! its room (`x-roomfleet-identity`, as for upgrades); without one, only loopback peers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Serialize;
use serde_json::value::RawValue;
use shared::api::{ApiError, PublishRequest, Published, answer, check_id};
use shared::auth::HOP_HEADER;
use shared::http::{Body, percent_decode, query_param};
use shared::ids::{RoomId, UserId};
use shared::protocol::unix_ms;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::node::Node;
use crate::posts::WINDOW;
use crate::room::{MemberInfo, RoomInfo};
use crate::room_core::PostError;

/// Messages one history read returns at most.
pub const MAX_LIMIT: usize = 1000;

/// Whether `path` is one of these calls.
pub fn owns(path: &str) -> bool {
    path.starts_with("/internal/")
}

pub async fn route(node: &Arc<Node>, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let room = match segments.as_slice() {
        ["internal", "rooms", room, ..] => match RoomId::parse(&percent_decode(room)) {
            Ok(r) => r,
            Err(e) => {
                return ApiError::new(StatusCode::BAD_REQUEST, "bad_room", e.to_string())
                    .response();
            }
        },
        _ => return ApiError::not_found(format!("no such endpoint: {path}")).response(),
    };
    if let Err(e) = authorize(node, peer, &req, &room) {
        return e.response();
    }
    let method = req.method().clone();
    match (&method, &segments[3..]) {
        (&Method::POST, ["publish"]) => answer(publish(node, &room, req).await),
        (&Method::GET, []) => answer(inspect(node, &room).await),
        (&Method::GET, ["messages"]) => answer(messages(node, &room, req.uri().query()).await),
        (&Method::DELETE, ["members", user]) => answer(remove(node, &room, user).await),
        (_, ["publish"] | [] | ["messages"] | ["members", _]) => {
            ApiError::method_not_allowed(&method, &path).response()
        }
        _ => ApiError::not_found(format!("no such endpoint: {path}")).response(),
    }
}

/// A router's call: a hop header for this room, or (no secret here) a loopback peer.
fn authorize(
    node: &Node,
    peer: SocketAddr,
    req: &Request<Incoming>,
    room: &RoomId,
) -> Result<(), ApiError> {
    let refused = |m: String| ApiError::new(StatusCode::FORBIDDEN, "forbidden", m);
    match &node.config.hop_key {
        Some(key) => {
            let v = req.headers().get(HOP_HEADER).and_then(|v| v.to_str().ok());
            let v = v.ok_or_else(|| {
                refused("only a router may call /internal: no identity header".into())
            })?;
            key.verify(v, room).map(|_| ()).map_err(|e| refused(e.to_string()))
        }
        None if peer.ip().to_canonical().is_loopback() => Ok(()),
        None => Err(refused(
            "this node has no --hop-secret: /internal takes only loopback callers".into(),
        )),
    }
}

async fn publish(
    node: &Node,
    room: &RoomId,
    req: Request<Incoming>,
) -> Result<Published, ApiError> {
    let limit = node.config.max_frame_bytes;
    let body = Limited::new(req.into_body(), limit).collect().await.map_err(|e| {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", format!("body: {e}"))
    })?;
    let p: PublishRequest = serde_json::from_slice(&body.to_bytes()).map_err(|e| {
        ApiError::bad_json(format!(
            "body must be {{\"body\": ANY, \"id\": ID?, \"from\": USER}}: {e}"
        ))
    })?;
    check_id(&p.id)?;
    let from = UserId::parse(p.from.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_from", format!("from: {e}")))?;
    let key = p.id.as_ref().map(|id| serde_json::to_string(id).unwrap_or_default());
    let rooms = &node.rooms;
    let me = node.config.node_id.clone();
    // A message that went out but was not stored keeps its `seq` for a retry (it must not
    // go out twice); only this first call says it was not stored.
    let unstored = AtomicBool::new(false);
    let published = node
        .posts
        .once(room, key.clone(), || async {
            // Stamped by an earlier owner of the room (before a drain, a ring change)?
            if let Some(k) = &key {
                match rooms.bus.post_mark(room, k).await {
                    Ok(Some(first)) => return Ok(first),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(%room, "publish id not checked in the bus: {e}"),
                }
            }
            let env = crate::frames::message(0, room, &from, unix_ms(), &p.body, p.id.as_ref());
            let seq = match rooms.post(room, env).await {
                Ok(seq) => seq,
                Err(PostError::NotStored(seq)) => {
                    unstored.store(true, Ordering::Relaxed);
                    seq
                }
                Err(PostError::Degraded) => {
                    return Err(ApiError::unavailable(
                        "degraded",
                        "the room spans nodes and the bus is unavailable; the message was not published",
                    ));
                }
            };
            node.metrics.posts.inc();
            let posted = Published { seq, node: me.clone() };
            if let Some(k) = &key
                && let Err(e) = rooms.bus.set_post_mark(room, k, &posted, WINDOW).await
            {
                tracing::warn!(%room, seq, "publish id not marked in the bus: {e}");
            }
            Ok(posted)
        })
        .await?;
    if unstored.load(Ordering::Relaxed) {
        return Err(ApiError::unavailable(
            "not_stored",
            format!(
                "the message went out as seq {} but the history store could not take it",
                published.seq
            ),
        ));
    }
    Ok(published)
}

/// A room as one node holds it.
#[derive(Serialize)]
struct Held {
    node: String,
    /// Whether the room is open here; the rest is only there when it is.
    open: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<RoomInfo>,
    members: Vec<MemberInfo>,
}

async fn inspect(node: &Node, room: &RoomId) -> Result<Held, ApiError> {
    let node_id = node.config.node_id.clone();
    let Some(h) = node.rooms.get(room) else {
        return Ok(Held { node: node_id, open: false, state: None, members: Vec::new() });
    };
    let (state, members) = tokio::join!(h.info(), h.members());
    Ok(Held { node: node_id, open: state.is_some(), state, members: members.unwrap_or_default() })
}

/// A page of the room's history here.
#[derive(Serialize)]
struct Page {
    node: String,
    open: bool,
    /// Where the page was read: `memory` (the room is open here), `store` (it is not; its
    /// stored history, with `--redis`), or `none`.
    source: &'static str,
    seq: Option<u64>,
    epoch: Option<String>,
    messages: Vec<Box<RawValue>>,
}

fn raw(frames: &[Utf8Bytes]) -> Vec<Box<RawValue>> {
    frames.iter().filter_map(|f| RawValue::from_string(f.as_str().to_owned()).ok()).collect()
}

async fn messages(node: &Node, room: &RoomId, query: Option<&str>) -> Result<Page, ApiError> {
    let number = |name: &str, default: u64| -> Result<u64, ApiError> {
        match query_param(query, name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_query",
                    format!("{name} must be a number"),
                )
            }),
        }
    };
    let since = number("since", 0)?;
    let limit = number("limit", 100)?.clamp(1, MAX_LIMIT as u64) as usize;
    let node_id = node.config.node_id.clone();
    let held = match node.rooms.get(room) {
        Some(h) => h.messages(since, limit).await,
        None => None,
    };
    if let Some((info, frames)) = held {
        return Ok(Page {
            node: node_id,
            open: true,
            source: "memory",
            seq: Some(info.seq),
            epoch: Some(info.epoch),
            messages: raw(&frames),
        });
    }
    // Open on no node here: what the store keeps (a node opening the room reads the same).
    let stored = node.rooms.bus.read_history(room, since, limit).await.map_err(|e| {
        ApiError::unavailable("store_unavailable", format!("the room's stored history: {e}"))
    })?;
    Ok(match stored {
        Some(p) => Page {
            node: node_id,
            open: false,
            source: "store",
            seq: Some(p.seq),
            epoch: p.epoch,
            messages: raw(&p.frames),
        },
        None => Page {
            node: node_id,
            open: false,
            source: "none",
            seq: None,
            epoch: None,
            messages: Vec::new(),
        },
    })
}

#[derive(Serialize)]
struct Removed {
    node: String,
    closed: usize,
}

async fn remove(node: &Node, room: &RoomId, user: &str) -> Result<Removed, ApiError> {
    let user = UserId::parse(&percent_decode(user))
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_user", e.to_string()))?;
    let closed = match node.rooms.get(room) {
        Some(h) => h.remove(user).await.unwrap_or(0),
        None => 0,
    };
    Ok(Removed { node: node.config.node_id.clone(), closed })
}
