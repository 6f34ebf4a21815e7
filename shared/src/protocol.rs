//! The wire protocol: JSON text frames between clients and nodes (docs/protocol.md), the
//! stable error codes and the close codes. Bodies stay raw JSON so a node never re-parses
//! what it only forwards.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::ids::{RoomId, UserId};

/// Longest client-chosen publish `id`, so acks stay small.
pub const MAX_CLIENT_ID_LEN: usize = 64;

/// Close codes the servers use (RFC 6455 where one fits, 4xxx for our own).
pub mod close {
    /// A normal close (the client's own, or its connection simply ended).
    pub const NORMAL: u16 = 1000;
    /// The node is shutting down; reconnect (through the router) later.
    pub const GOING_AWAY: u16 = 1001;
    /// A text frame that is not valid UTF-8 (RFC 6455 section 7.4.1).
    pub const INVALID_DATA: u16 = 1007;
    /// Policy violation: slow consumer, or sustained publishing over the rate limit.
    pub const POLICY: u16 = 1008;
    /// A frame larger than the configured maximum.
    pub const TOO_BIG: u16 = 1009;
    /// An internal error on the node.
    pub const INTERNAL: u16 = 1011;
    /// Drain: the node is being emptied; reconnect through the router now.
    pub const SERVICE_RESTART: u16 = 1012;
    /// The peer answered no ping within the idle timeout.
    pub const IDLE_TIMEOUT: u16 = 4000;
    /// The connection's token expired and no `refresh` brought a later one.
    pub const TOKEN_EXPIRED: u16 = 4001;
    /// A back end removed the user from the room (`DELETE /api/rooms/{room}/members/{user}`).
    pub const REMOVED: u16 = 4003;
    /// The room already holds its maximum number of members.
    pub const ROOM_FULL: u16 = 4009;
}

/// Stable `error` frame codes: clients branch on these, so never rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The text frame was not JSON, or not an object of a known shape.
    BadJson,
    /// The frame's `type` is not one the server accepts.
    UnknownType,
    /// Binary frames are not part of the protocol.
    BinaryUnsupported,
    /// The frame is larger than the node's maximum; the connection is closed with 1009.
    FrameTooLarge,
    /// Publishing faster than the per-connection rate; the frame was dropped.
    RateLimited,
    /// The publish `id` is not a string of at most 64 bytes or an unsigned integer.
    BadId,
    /// The room holds its maximum number of members; the connection is closed with 4009.
    RoomFull,
    /// The room spans nodes and Redis is unreachable; publishes fail until it is back.
    Degraded,
    /// Something went wrong on the server; the frame was not processed.
    Internal,
    /// The member's token grants this room read-only; the publish was refused.
    Forbidden,
    /// A `refresh` token that is invalid, for another `sub`, not later, or not for this room.
    BadToken,
    /// A `read` marker above the room's current `seq`: nobody can have read that far.
    BadRead,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadJson => "bad_json",
            Self::UnknownType => "unknown_type",
            Self::BinaryUnsupported => "binary_unsupported",
            Self::FrameTooLarge => "frame_too_large",
            Self::RateLimited => "rate_limited",
            Self::BadId => "bad_id",
            Self::RoomFull => "room_full",
            Self::Degraded => "degraded",
            Self::Internal => "internal",
            Self::Forbidden => "forbidden",
            Self::BadToken => "bad_token",
            Self::BadRead => "bad_read",
        }
    }

    /// Every code, for metrics labels and docs.
    pub const ALL: [ErrorCode; 12] = [
        Self::BadJson,
        Self::UnknownType,
        Self::BinaryUnsupported,
        Self::FrameTooLarge,
        Self::RateLimited,
        Self::BadId,
        Self::RoomFull,
        Self::Degraded,
        Self::Internal,
        Self::Forbidden,
        Self::BadToken,
        Self::BadRead,
    ];
}

/// The client's correlation ID of a publish, echoed in the `ack` and the `message`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ClientId {
    Num(u64),
    Str(String),
}

/// A frame from a client.
#[derive(Debug)]
pub enum ClientFrame {
    /// Publish `body` to the room as a sequenced `message`; `id` asks for an `ack`.
    Publish { body: Box<RawValue>, id: Option<ClientId> },
    /// Relay `body` to the other members as an ephemeral, unsequenced `signal`.
    Signal { body: Box<RawValue> },
    /// A later token for the same `sub`, so the connection outlives the first one's `exp`.
    Refresh { token: String },
    /// The user has read the room up to `seq`; the other members get a `read` frame.
    Read { seq: u64 },
}

/// What is wrong with a client's text frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    pub code: ErrorCode,
    pub message: String,
}

/// The flat shape every client frame is read through: a tagged enum cannot hold a `RawValue`.
#[derive(Deserialize)]
struct RawClientFrame<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    body: Option<Box<RawValue>>,
    id: Option<Box<RawValue>>,
    token: Option<String>,
    seq: Option<Box<RawValue>>,
}

impl ClientFrame {
    /// Parses one text frame, naming the stable error code when it is not acceptable.
    pub fn parse(text: &str) -> Result<Self, FrameError> {
        let raw: RawClientFrame<'_> = serde_json::from_str(text).map_err(|e| FrameError {
            code: ErrorCode::BadJson,
            message: format!("not a protocol frame: {e}"),
        })?;
        let body = raw.body.unwrap_or_else(null_body);
        match &*raw.kind {
            "publish" => {
                let id = match raw.id {
                    None => None,
                    Some(id) if id.get() == "null" => None,
                    Some(id) => Some(parse_client_id(&id)?),
                };
                Ok(Self::Publish { body, id })
            }
            "signal" => Ok(Self::Signal { body }),
            "refresh" => match raw.token {
                Some(token) => Ok(Self::Refresh { token }),
                None => Err(FrameError {
                    code: ErrorCode::BadJson,
                    message: "refresh needs a string token".into(),
                }),
            },
            "read" => match raw.seq.as_deref().map(|s| s.get().parse::<u64>()) {
                Some(Ok(seq)) => Ok(Self::Read { seq }),
                _ => Err(FrameError {
                    code: ErrorCode::BadJson,
                    message: "read needs seq, an unsigned integer".into(),
                }),
            },
            other => Err(FrameError {
                code: ErrorCode::UnknownType,
                message: format!("unknown frame type {:?}", truncate(other, 32)),
            }),
        }
    }
}

fn null_body() -> Box<RawValue> {
    RawValue::from_string("null".to_owned()).expect("null is JSON")
}

fn parse_client_id(raw: &RawValue) -> Result<ClientId, FrameError> {
    let bad = || FrameError {
        code: ErrorCode::BadId,
        message: format!(
            "id must be a string of at most {MAX_CLIENT_ID_LEN} bytes or an unsigned integer"
        ),
    };
    match serde_json::from_str::<ClientId>(raw.get()) {
        Ok(ClientId::Str(s)) if s.len() > MAX_CLIENT_ID_LEN => Err(bad()),
        Ok(id) => Ok(id),
        Err(_) => Err(bad()),
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Whether a presence event is a join or a leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceEvent {
    Join,
    Leave,
}

/// A frame from the server. Serialized once per room and shared by every member's queue.
/// Clients read it as plain JSON (`serde_json::Value` or their own struct): a tagged enum
/// cannot deserialize the raw `body`.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// First frame: who is in the room (every node) and the last `seq` before this member.
    /// `info` holds the members that carry one (from their token), by user. `epoch` names
    /// the room's history; `recovered` says a resume's missed messages follow, in order.
    /// `reads` holds the read markers the room knows, by user; `history` says how many of
    /// the room's last messages (up to `seq`) follow on a first connect with `history=N`.
    Welcome {
        room: RoomId,
        user: UserId,
        node: String,
        members: Vec<UserId>,
        seq: u64,
        epoch: String,
        recovered: bool,
        #[serde(skip_serializing_if = "Option::is_none", default)]
        info: Option<std::collections::BTreeMap<UserId, Box<RawValue>>>,
        #[serde(skip_serializing_if = "Option::is_none", default)]
        reads: Option<std::collections::BTreeMap<UserId, u64>>,
        #[serde(skip_serializing_if = "Option::is_none", default)]
        history: Option<usize>,
    },
    /// A published message, to every member including the sender.
    Message {
        room: RoomId,
        from: UserId,
        seq: u64,
        ts: u64,
        body: Box<RawValue>,
        #[serde(skip_serializing_if = "Option::is_none", default)]
        id: Option<ClientId>,
    },
    /// The sender's publish with this `id` got this `seq`.
    Ack { id: ClientId, seq: u64 },
    /// A member joined or left the room (counted once per user, whatever its node or tabs);
    /// a join carries the user's `info` when it has one.
    Presence {
        event: PresenceEvent,
        user: UserId,
        #[serde(skip_serializing_if = "Option::is_none", default)]
        info: Option<Box<RawValue>>,
    },
    /// An ephemeral relay (typing, cursors): not sequenced, not acknowledged.
    Signal { from: UserId, body: Box<RawValue> },
    /// `user` has read the room up to `seq` (its marker only ever rises).
    Read { user: UserId, seq: u64 },
    /// Something the client sent could not be processed; `code` is stable.
    Error { code: ErrorCode, message: String },
}

impl ServerFrame {
    /// The frame as JSON text; serializing our own types cannot fail.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server frames serialize")
    }

    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Error { code, message: message.into() }
    }
}

/// Milliseconds since the Unix epoch, for `message.ts`.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_publish_and_signal() {
        match ClientFrame::parse(r#"{"type":"publish","body":{"t":"hi"},"id":"a1"}"#).unwrap() {
            ClientFrame::Publish { body, id } => {
                assert_eq!(body.get(), r#"{"t":"hi"}"#);
                assert_eq!(id, Some(ClientId::Str("a1".into())));
            }
            other => panic!("{other:?}"),
        }
        match ClientFrame::parse(r#"{"type":"publish","body":1,"id":7}"#).unwrap() {
            ClientFrame::Publish { id, .. } => assert_eq!(id, Some(ClientId::Num(7))),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            ClientFrame::parse(r#"{"type":"signal","body":[1,2]}"#),
            Ok(ClientFrame::Signal { .. })
        ));
        assert!(matches!(
            ClientFrame::parse(r#"{"type":"refresh","token":"a.b.c"}"#),
            Ok(ClientFrame::Refresh { token }) if token == "a.b.c"
        ));
        assert!(matches!(
            ClientFrame::parse(r#"{"type":"read","seq":12}"#),
            Ok(ClientFrame::Read { seq: 12 })
        ));
    }

    #[test]
    fn names_the_error_code() {
        let code = |t: &str| ClientFrame::parse(t).unwrap_err().code;
        assert_eq!(code("nope"), ErrorCode::BadJson);
        assert_eq!(code(r#"{"body":1}"#), ErrorCode::BadJson);
        assert_eq!(code(r#"{"type":"dance"}"#), ErrorCode::UnknownType);
        assert_eq!(code(r#"{"type":"publish","id":{"x":1}}"#), ErrorCode::BadId);
        assert_eq!(code(r#"{"type":"publish","id":-1}"#), ErrorCode::BadId);
        let long = format!(r#"{{"type":"publish","id":"{}"}}"#, "x".repeat(65));
        assert_eq!(code(&long), ErrorCode::BadId);
        for bad in [
            r#"{"type":"read"}"#,
            r#"{"type":"read","seq":-1}"#,
            r#"{"type":"read","seq":"3"}"#,
            r#"{"type":"read","seq":1.5}"#,
        ] {
            assert_eq!(code(bad), ErrorCode::BadJson, "{bad}");
        }
    }

    #[test]
    fn server_frames_have_the_documented_shape() {
        let m = ServerFrame::Message {
            room: RoomId::parse("r").unwrap(),
            from: UserId::parse("u").unwrap(),
            seq: 3,
            ts: 10,
            body: RawValue::from_string(r#"{"a":1}"#.into()).unwrap(),
            id: None,
        };
        assert_eq!(
            m.to_json(),
            r#"{"type":"message","room":"r","from":"u","seq":3,"ts":10,"body":{"a":1}}"#
        );
        let r = ServerFrame::Read { user: UserId::parse("u").unwrap(), seq: 4 };
        assert_eq!(r.to_json(), r#"{"type":"read","user":"u","seq":4}"#);
        let e = ServerFrame::error(ErrorCode::RateLimited, "slow down");
        assert_eq!(e.to_json(), r#"{"type":"error","code":"rate_limited","message":"slow down"}"#);
        for code in ErrorCode::ALL {
            assert_eq!(serde_json::to_string(&code).unwrap(), format!("\"{}\"", code.as_str()));
        }
    }
}
