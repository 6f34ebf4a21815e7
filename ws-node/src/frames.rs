//! Server frames as the node builds them: serialized once per room event, shared by every
//! member's queue. A message is built as an [`Envelope`] so its `seq` can be stamped last,
//! by the room (one node) or atomically by the bus (spanning rooms).

use serde_json::value::RawValue;
use shared::ids::{RoomId, UserId};
use shared::protocol::{ClientId, ServerFrame};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::bus::Envelope;

/// The `message` frame without its `seq`: `head + seq + tail` is the frame.
pub fn message(
    conn: u64,
    room: &RoomId,
    from: &UserId,
    ts: u64,
    body: &RawValue,
    id: Option<&ClientId>,
) -> Envelope {
    let room = serde_json::to_string(room.as_str()).unwrap_or_default();
    let from = serde_json::to_string(from.as_str()).unwrap_or_default();
    let head = format!(r#"{{"type":"message","room":{room},"from":{from},"seq":"#);
    let mut tail = format!(r#","ts":{ts},"body":{}"#, body.get());
    if let Some(id) = id {
        tail.push_str(r#","id":"#);
        tail.push_str(&serde_json::to_string(id).unwrap_or_default());
    }
    tail.push('}');
    Envelope { conn, head, tail: Some(tail) }
}

/// An unsequenced frame (presence, signal) from connection `conn`.
pub fn unsequenced(conn: u64, frame: &ServerFrame) -> Envelope {
    Envelope { conn, head: frame.to_json(), tail: None }
}

/// Any server frame, serialized once.
pub fn text(frame: &ServerFrame) -> Utf8Bytes {
    Utf8Bytes::from(frame.to_json())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::stamp;

    #[test]
    fn a_stamped_message_is_the_protocol_frame() {
        let room = RoomId::parse("r-1").unwrap();
        let from = UserId::parse("ann").unwrap();
        let body = RawValue::from_string(r#"{"t":"hi \"x\""}"#.into()).unwrap();
        for id in [None, Some(ClientId::Num(9)), Some(ClientId::Str("c\"1".into()))] {
            let env = message(1, &room, &from, 77, &body, id.as_ref());
            let want = ServerFrame::Message {
                room: room.clone(),
                from: from.clone(),
                seq: 42,
                ts: 77,
                body: body.clone(),
                id: id.clone(),
            };
            assert_eq!(stamp(&env, 42).as_str(), want.to_json());
        }
    }
}
