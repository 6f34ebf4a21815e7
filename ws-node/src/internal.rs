//! The calls routers make into a node for the server API, under `/internal/rooms/{room}`:
//! publish from no member, the room's members and state, its history, and removing a user.
//! Only routers may call them: with `--hop-secret` a request needs a hop header signed for
//! its room (`x-roomfleet-identity`, as for upgrades); without one, only loopback peers.

use std::net::SocketAddr;
use std::sync::Arc;

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

use crate::node::Node;
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
    // A message that went out but was not stored keeps its `seq` for a retry (it must not
    // go out twice); only this first call says it was not stored.
    let unstored = std::sync::atomic::AtomicBool::new(false);
    let seq = node
        .posts
        .once(room, key, || async {
            let env = crate::frames::message(0, room, &from, unix_ms(), &p.body, p.id.as_ref());
            match rooms.post(room, env).await {
                Ok(seq) => {
                    node.metrics.posts.inc();
                    Ok(seq)
                }
                Err(PostError::NotStored(seq)) => {
                    node.metrics.posts.inc();
                    unstored.store(true, std::sync::atomic::Ordering::Relaxed);
                    Ok(seq)
                }
                Err(PostError::Degraded) => Err(ApiError::unavailable(
                    "degraded",
                    "the room spans nodes and the bus is unavailable; the message was not published",
                )),
            }
        })
        .await?;
    if unstored.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(ApiError::unavailable(
            "not_stored",
            format!("the message went out as seq {seq} but the history store could not take it"),
        ));
    }
    Ok(Published { seq, node: node.config.node_id.clone() })
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
    seq: Option<u64>,
    epoch: Option<String>,
    messages: Vec<Box<RawValue>>,
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
    let Some((info, frames)) = held else {
        return Ok(Page {
            node: node_id,
            open: false,
            seq: None,
            epoch: None,
            messages: Vec::new(),
        });
    };
    let messages =
        frames.iter().filter_map(|f| RawValue::from_string(f.as_str().to_owned()).ok()).collect();
    Ok(Page { node: node_id, open: true, seq: Some(info.seq), epoch: Some(info.epoch), messages })
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
