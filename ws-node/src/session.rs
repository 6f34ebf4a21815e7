//! One client connection: a single `select!` loop that reads frames, writes what its
//! outlet queued, pings, enforces the per-connection limits, and closes with the
//! documented code. Tungstenite reads and writes control frames; text frames, already
//! encoded, go out raw through the connection's [`crate::outlet`] (from the room's own
//! task while the connection keeps up).

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use shared::auth::{Identity, Rights, unix_secs};
use shared::ids::{RoomId, UserId, WsTarget};
use shared::protocol::{ClientFrame, ErrorCode, ServerFrame, close, unix_ms};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::frames;
use crate::node::Node;
use crate::outbox;
use crate::outlet::{Duplex, Halves, Leftover, Refused, Writer};
use crate::rate::TokenBucket;
use crate::room::{CloseReason, JoinError, Kill, Member, Outbound};
use crate::rooms::Membership;

type Ws = WebSocketStream<Duplex>;

const GOING_AWAY: CloseReason =
    CloseReason { code: close::GOING_AWAY, reason: "node shutting down" };
const IDLE: CloseReason = CloseReason { code: close::IDLE_TIMEOUT, reason: "idle timeout" };
const RATE_ABUSE: CloseReason = CloseReason { code: close::POLICY, reason: "rate limit exceeded" };
const TOO_BIG: CloseReason = CloseReason { code: close::TOO_BIG, reason: "frame too large" };
const ROOM_FULL: CloseReason = CloseReason { code: close::ROOM_FULL, reason: "room full" };
const EXPIRED: CloseReason = CloseReason { code: close::TOKEN_EXPIRED, reason: "token expired" };
const BAD_UTF8: CloseReason =
    CloseReason { code: close::INVALID_DATA, reason: "text frame is not valid UTF-8" };

/// Far enough to never fire: the expiry of a connection without a token.
const NEVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Decrements the connection gauge however the session ends.
struct ConnGuard(Arc<Node>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.release_slot();
    }
}

/// Serves one upgraded connection until it closes. The caller reserved its slot.
/// `target` says the room and how the connection starts (resume, history);
/// `access` is the verified identity when auth is on: its `info` goes to the member list,
/// its rights and `exp` are enforced here.
pub(crate) async fn run(
    node: Arc<Node>,
    halves: Halves,
    target: WsTarget,
    user: UserId,
    access: Option<Identity>,
    conn: u64,
) {
    let WsTarget { room: room_id, resume, history, .. } = target;
    let _guard = ConnGuard(node.clone());
    let cfg = &node.config;
    let Halves { duplex, mut writer, outlet, read_ahead } = halves;
    let mut ws = WebSocketStream::from_partially_read(
        duplex,
        read_ahead,
        Role::Server,
        Some(crate::server::ws_config(cfg)),
    )
    .await;
    let kill = Arc::new(Kill::child_of(&node.token));
    let info = access.as_ref().and_then(|a| a.info.as_deref()).map(|i| Arc::from(i.get()));
    let member = Member { conn, user, info, out: outlet, kill: kill.clone(), resume, history };
    node.kills.insert(conn, kill.clone());
    let joined = tokio::select! {
        j = node.rooms.join(&room_id, member.clone()) => j,
        _ = kill.token().cancelled() => {
            node.kills.remove(conn);
            let reason = kill.reason().or(Some(GOING_AWAY));
            finish(&mut ws, &mut writer, reason, cfg.close_timeout).await;
            return;
        }
    };
    let membership = match joined {
        Ok(m) => m,
        Err(JoinError::RoomFull) => {
            node.kills.remove(conn);
            node.metrics.room_full_closes.inc();
            node.metrics.error(ErrorCode::RoomFull);
            let err =
                ServerFrame::error(ErrorCode::RoomFull, "room holds its maximum number of members");
            let _ = ws.feed(Message::Text(frames::text(&err))).await;
            finish(&mut ws, &mut writer, Some(ROOM_FULL), cfg.close_timeout).await;
            return;
        }
    };
    let reason = serve(&node, &mut ws, &membership, &member, access, &mut writer).await;
    node.kills.remove(conn);
    drop(membership);
    match reason {
        Some(r) if r == CloseReason::SLOW_CONSUMER => {}
        Some(r) if r == RATE_ABUSE => node.metrics.rate_limit_closes.inc(),
        Some(r) if r == IDLE => node.metrics.idle_closes.inc(),
        Some(r) if r == CloseReason::DRAIN => node.metrics.drain_closes.inc(),
        Some(r) if r == EXPIRED => node.metrics.token_expired_closes.inc(),
        _ => {}
    }
    finish(&mut ws, &mut writer, reason, cfg.close_timeout).await;
}

/// The connection's loop; returns the close to send (`None`: the peer is gone or closed).
async fn serve(
    node: &Arc<Node>,
    ws: &mut Ws,
    room: &Membership,
    member: &Member,
    mut access: Option<Identity>,
    writer: &mut Writer,
) -> Option<CloseReason> {
    let cfg = &node.config;
    let expiry = tokio::time::sleep_until(deadline(access.as_ref()));
    tokio::pin!(expiry);
    let mut bucket = TokenBucket::new(cfg.publish_rate, cfg.publish_burst);
    let mut refused_in_a_row = 0u32;
    let mut last_seen = Instant::now();
    let mut ping = tokio::time::interval_at(Instant::now() + cfg.ping_interval, cfg.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // One pinned future for kill, drain and shutdown: re-creating cancellation futures
    // per wake-up would register a waiter (a lock) every time.
    let stopped = member.kill.token().cancelled();
    tokio::pin!(stopped);
    let why = || member.kill.reason().or(Some(GOING_AWAY));
    // Not `biased`: under fan-out the queue is never empty, and client reads must still
    // get their turn.
    loop {
        tokio::select! {
            _ = &mut stopped => return why(),
            _ = &mut expiry => return Some(EXPIRED),
            e = writer.run() => {
                tracing::debug!(conn = member.conn, "write: {e}");
                return None;
            }
            incoming = ws.next() => {
                last_seen = Instant::now();
                let msg = match incoming {
                    None => return None,
                    Some(Ok(m)) => m,
                    Some(Err(WsError::Capacity(e))) => {
                        tracing::debug!(conn = member.conn, "frame too large: {e}");
                        reply(node, member, ErrorCode::FrameTooLarge, format!("frame larger than {} bytes", cfg.max_frame_bytes));
                        return Some(TOO_BIG);
                    }
                    Some(Err(WsError::Utf8(e))) => {
                        tracing::debug!(conn = member.conn, "invalid UTF-8: {e}");
                        return Some(BAD_UTF8);
                    }
                    Some(Err(e)) => {
                        tracing::debug!(conn = member.conn, "read: {e}");
                        return None;
                    }
                };
                match msg {
                    Message::Text(text) => {
                        let frame = match ClientFrame::parse(text.as_str()) {
                            Ok(f) => f,
                            Err(e) => {
                                reply(node, member, e.code, e.message);
                                continue;
                            }
                        };
                        if !bucket.try_take() {
                            refused_in_a_row += 1;
                            if refused_in_a_row >= cfg.rate_abuse_frames {
                                return Some(RATE_ABUSE);
                            }
                            reply(node, member, ErrorCode::RateLimited, "publishing faster than the rate limit; frame dropped");
                            continue;
                        }
                        refused_in_a_row = 0;
                        match frame {
                            ClientFrame::Refresh { token } => {
                                if let Some(id) = refresh(node, &room.room().id, member, access.as_ref(), &token) {
                                    expiry.as_mut().reset(deadline(Some(&id)));
                                    access = Some(id);
                                }
                            }
                            ClientFrame::Publish { .. } if access.as_ref().is_some_and(|a| a.rights == Rights::Read) => {
                                reply(node, member, ErrorCode::Forbidden, "your token grants this room read-only; publish refused");
                            }
                            frame => handle(node, room, member, frame).await,
                        }
                    }
                    Message::Binary(_) => reply(node, member, ErrorCode::BinaryUnsupported, "binary frames are not part of the protocol; send JSON text"),
                    Message::Close(_) => return None,
                    Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                }
            }
            _ = ping.tick() => {
                if last_seen.elapsed() >= cfg.idle_timeout {
                    return Some(IDLE);
                }
                if last_seen.elapsed() >= cfg.ping_interval {
                    // Queued through the outlet at once; fails only when the queue is past its cap.
                    if ws.send(Message::Ping(Default::default())).await.is_err() {
                        return None;
                    }
                }
            }
        }
    }
}

/// When the connection's token expires (now + the time left, on Tokio's clock).
fn deadline(access: Option<&Identity>) -> Instant {
    match access {
        Some(a) => Instant::now() + Duration::from_secs(a.exp.saturating_sub(unix_secs())),
        None => Instant::now() + NEVER,
    }
}

/// Checks a `refresh` token: valid on this node's keys, same `sub`, a later `exp`, and
/// still granting the room. The new identity, or `None` after a `bad_token` reply.
fn refresh(
    node: &Node,
    room: &RoomId,
    member: &Member,
    current: Option<&Identity>,
    token: &str,
) -> Option<Identity> {
    let (Some(jwt), Some(current)) = (&node.config.jwt, current) else {
        let why = "this node verifies no tokens (no --jwt-key); refresh is not possible";
        reply(node, member, ErrorCode::BadToken, why);
        return None;
    };
    let refused = |why: String| {
        reply(node, member, ErrorCode::BadToken, why);
        None
    };
    match jwt.verify(token, room, Some(&member.user)) {
        Ok(id) if id.exp <= current.exp => refused("refresh token expires no later".into()),
        Ok(id) => Some(id),
        Err(e) => refused(format!("refresh refused: {e}")),
    }
}

/// Handles one accepted client frame.
async fn handle(node: &Arc<Node>, room: &Membership, member: &Member, frame: ClientFrame) {
    match frame {
        ClientFrame::Publish { body, id } => {
            let env = frames::message(
                member.conn,
                &room.room().id,
                &member.user,
                unix_ms(),
                &body,
                id.as_ref(),
            );
            node.metrics.messages_in.inc();
            room.publish(env, id).await;
        }
        ClientFrame::Signal { body } => {
            node.metrics.signals.inc();
            room.signal(body).await;
        }
        ClientFrame::Read { seq } => {
            node.metrics.reads.inc();
            room.read(seq).await;
        }
        // Answered in the loop, which owns the connection's identity and expiry.
        ClientFrame::Refresh { .. } => {}
    }
}

/// Queues an `error` frame behind whatever the connection already has queued.
fn reply(node: &Node, member: &Member, code: ErrorCode, message: impl Into<String>) {
    node.metrics.error(code);
    let frame = outbox::text(frames::text(&ServerFrame::error(code, message)));
    if member.out.push(Outbound::Wire(frame), false) == Err(Refused::Full)
        && member.kill.kill(CloseReason::SLOW_CONSUMER)
    {
        node.metrics.slow_consumer_closes.inc();
    }
}

/// What was queued goes out first (all of it, or for a slow consumer only the rest of a
/// frame cut short), then our close frame (when we close), then we wait briefly for the
/// peer's, bounded; when the queue cannot be written in time the connection just drops,
/// rather than close inside a frame.
async fn finish(ws: &mut Ws, writer: &mut Writer, reason: Option<CloseReason>, timeout: Duration) {
    let leftover =
        if reason == Some(CloseReason::SLOW_CONSUMER) { Leftover::Drop } else { Leftover::Write };
    let _ = tokio::time::timeout(timeout, async {
        // Tungstenite may still flush a pong here: it goes through the outlet too.
        let _ = ws.flush().await;
        writer.close(leftover).await?;
        if let Some(r) = reason {
            let frame = CloseFrame { code: CloseCode::from(r.code), reason: r.reason.into() };
            let _ = ws.close(Some(frame)).await;
            writer.flush().await?;
        }
        while let Some(Ok(_)) = ws.next().await {}
        // Tungstenite's answer to the peer's close.
        writer.flush().await
    })
    .await;
}
