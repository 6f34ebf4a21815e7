//! The server API for back ends on its own listener (`--api`): publish into a room (routed
//! to the room's owner by the same placement as an upgrade), broadcast to many rooms, list
//! rooms and members across the nodes, read a room's history (and its archive, [`archive`]),
//! remove a user. JSON in and out; every refusal is `{"code","message"}`
//! ([`shared::api::ApiError`]). Keys are checked by [`keys`]; what a node does for a call
//! is in the node's `internal.rs`.

mod archive;
mod keys;
mod nodes;

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use shared::api::{ApiError, PublishRequest, Published, answer, check_id};
use shared::http::{Body, percent_decode};
use shared::ids::{RoomId, UserId};
use shared::listen::Acceptor;
use shared::protocol::ClientId;

pub use keys::{ApiKey, MIN_SECRET};

use crate::proxy::Proxy;

/// Largest request body: a broadcast of [`MAX_BROADCAST`] room names and a message.
const MAX_BODY: usize = 1024 * 1024;
/// Rooms one broadcast reaches at most.
pub const MAX_BROADCAST: usize = 1000;
/// Publishes of one broadcast in flight at once.
const BROADCAST_CONCURRENCY: usize = 32;
/// The `from` of a caller when the API takes no keys (loopback only).
const ANONYMOUS: &str = "api";

/// Serves the API until shutdown.
pub(crate) async fn serve(proxy: Arc<Proxy>, acceptor: Acceptor) {
    crate::plain_http::serve(proxy, acceptor, "api", |p, req| async move { route(&p, req).await })
        .await
}

async fn route(proxy: &Arc<Proxy>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let r = async {
        let caller = caller(proxy, &req)?;
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (&method, segments.as_slice()) {
            (&Method::POST, ["api", "rooms", room, "publish"]) => {
                let room = room_id(room)?;
                let p: PublishRequest = read_json(req).await?;
                to_value(publish(proxy, &room, p, &caller).await)
            }
            (&Method::POST, ["api", "broadcast"]) => {
                let b: Broadcast = read_json(req).await?;
                to_value(broadcast(proxy, b, &caller).await)
            }
            (&Method::GET, ["api", "rooms"]) => {
                to_value(nodes::rooms(proxy, req.uri().query()).await)
            }
            (&Method::GET, ["api", "rooms", room]) => {
                to_value(nodes::room(proxy, &room_id(room)?).await)
            }
            (&Method::GET, ["api", "rooms", room, "messages"]) => {
                let room = room_id(room)?;
                let query = req.uri().query();
                if archive::wants(query) {
                    let store = proxy.config.archive.as_ref();
                    to_value(archive::messages(store, &room, query).await)
                } else {
                    to_value(nodes::messages(proxy, &room, query).await)
                }
            }
            (&Method::GET, ["api", "rooms", room, "markers"]) => {
                let store = proxy.config.archive.as_ref();
                to_value(archive::markers(store, &room_id(room)?).await)
            }
            (&Method::GET, ["api", "rooms", room, "meta"]) => {
                let room = room_id(room)?;
                to_value(archive::get_meta(proxy.config.archive.as_ref(), &room).await)
            }
            (&Method::PUT, ["api", "rooms", room, "meta"]) => {
                let room = room_id(room)?;
                let m: archive::MetaPut = read_json(req).await?;
                to_value(archive::put_meta(proxy.config.archive.as_ref(), &room, m).await)
            }
            (&Method::DELETE, ["api", "rooms", room, "members", user]) => {
                let room = room_id(room)?;
                let user = UserId::parse(&percent_decode(user)).map_err(|e| {
                    ApiError::new(StatusCode::BAD_REQUEST, "bad_user", e.to_string())
                })?;
                to_value(nodes::remove(proxy, &room, &user).await)
            }
            (_, ["api", "rooms", _, "publish"] | ["api", "broadcast"] | ["api", "rooms"])
            | (_, ["api", "rooms", _] | ["api", "rooms", _, "messages" | "meta"])
            | (_, ["api", "rooms", _, "members", _]) => {
                Err(ApiError::method_not_allowed(&method, &path))
            }
            _ => Err(ApiError::not_found(format!("no such endpoint: {path}"))),
        }
    }
    .await;
    if let Err(e) = &r {
        proxy.metrics.api_error(e.code);
        tracing::debug!(%method, %path, code = e.code, "api: {}", e.message);
    } else {
        proxy.metrics.api_ok.inc();
    }
    answer(r)
}

fn to_value<T: Serialize>(r: Result<T, ApiError>) -> Result<serde_json::Value, ApiError> {
    r.map(|v| serde_json::to_value(v).unwrap_or_default())
}

/// The caller's name: its key's, or [`ANONYMOUS`] when the API takes no keys.
fn caller(proxy: &Proxy, req: &Request<Incoming>) -> Result<UserId, ApiError> {
    let keys = &proxy.config.api_keys;
    if keys.is_empty() {
        return Ok(UserId::parse(ANONYMOUS).expect("a valid user id"));
    }
    keys::find(keys, req.headers()).map(|k| k.name.clone()).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the server API needs Authorization: Bearer with one of its --api-key secrets",
        )
    })
}

fn room_id(s: &str) -> Result<RoomId, ApiError> {
    RoomId::parse(&percent_decode(s))
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_room", e.to_string()))
}

async fn read_json<T: for<'de> Deserialize<'de>>(req: Request<Incoming>) -> Result<T, ApiError> {
    let body: Bytes = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", format!("body: {e}"))
        })?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| ApiError::bad_json(format!("body: {e}")))
}

/// Publishes `p` into `room` at the room's owner (the next node when the owner cannot be
/// reached at all); the HTTP call, a broadcast and the Redis inbox all come here.
pub(crate) async fn publish(
    proxy: &Proxy,
    room: &RoomId,
    mut p: PublishRequest,
    caller: &UserId,
) -> Result<Published, ApiError> {
    check_id(&p.id)?;
    let from = match p.from.take() {
        Some(f) => UserId::parse(&f).map_err(|e| {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_from", format!("from: {e}"))
        })?,
        None => caller.clone(),
    };
    p.from = Some(from.to_string());
    let body = Bytes::from(serde_json::to_vec(&p).unwrap_or_default());
    let path = format!("/internal/rooms/{room}/publish");
    let view = proxy.membership.view();
    let placement = proxy
        .policy
        .place(&view, room, IpAddr::from([0, 0, 0, 0]))
        .map_err(|e| ApiError::unavailable("no_node", e.to_string()))?;
    let mut failures = Vec::new();
    for member in placement.members(&view).take(proxy.config.max_tries) {
        match nodes::call(proxy, member, Method::POST, &path, room, &from, body.clone()).await {
            Ok(answer) => return nodes::parse::<Published>(member, answer),
            // Only a node that never got the request is passed over: one that got it may
            // have stamped it, and another node would stamp it again.
            Err(e @ crate::Error::Node { cause: crate::Cause::Connect, .. }) => {
                failures.push(e.to_string())
            }
            Err(e) => return Err(nodes::unavailable(&e)),
        }
    }
    Err(ApiError::new(
        StatusCode::BAD_GATEWAY,
        "node_unavailable",
        format!("no node of room {room} could be reached: {}", failures.join("; ")),
    ))
}

/// `POST /api/broadcast`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Broadcast {
    rooms: Vec<String>,
    body: Box<RawValue>,
    #[serde(default)]
    id: Option<ClientId>,
    #[serde(default)]
    from: Option<String>,
}

/// One room's result in a broadcast.
#[derive(Serialize)]
struct RoomResult {
    room: String,
    #[serde(flatten)]
    outcome: Outcome,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Outcome {
    Published(Published),
    Failed { error: shared::api::ErrorBody },
}

#[derive(Serialize)]
struct Broadcasted {
    published: usize,
    failed: usize,
    results: Vec<RoomResult>,
}

async fn broadcast(proxy: &Proxy, b: Broadcast, caller: &UserId) -> Result<Broadcasted, ApiError> {
    if b.rooms.is_empty() || b.rooms.len() > MAX_BROADCAST {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_rooms",
            format!("rooms must list 1 to {MAX_BROADCAST} rooms"),
        ));
    }
    check_id(&b.id)?;
    let results: Vec<RoomResult> = futures_util::stream::iter(b.rooms)
        .map(|name| {
            let p = PublishRequest { body: b.body.clone(), id: b.id.clone(), from: b.from.clone() };
            async move {
                let r = match RoomId::parse(&name) {
                    Ok(room) => publish(proxy, &room, p, caller).await,
                    Err(e) => {
                        Err(ApiError::new(StatusCode::BAD_REQUEST, "bad_room", e.to_string()))
                    }
                };
                let outcome = match r {
                    Ok(p) => Outcome::Published(p),
                    Err(e) => Outcome::Failed {
                        error: shared::api::ErrorBody { code: e.code.into(), message: e.message },
                    },
                };
                RoomResult { room: name, outcome }
            }
        })
        .buffered(BROADCAST_CONCURRENCY)
        .collect()
        .await;
    let published = results.iter().filter(|r| matches!(r.outcome, Outcome::Published(_))).count();
    Ok(Broadcasted { published, failed: results.len() - published, results })
}
