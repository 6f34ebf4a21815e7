//! The wire dialects the client speaks: roomfleet's JSON frames, Socket.IO v4 over a raw
//! WebSocket (Engine.IO packets `0` open, `2`/`3` ping/pong, `40` connect, `42` event, `43`
//! ack), and Pusher protocol 7 ([`crate::pusher`]). Pure text in, text out, so the parsing is
//! tested without a server.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

/// Which protocol the client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Dialect {
    /// roomfleet: `GET /ws?room=R&user=U`, sequenced `message` frames, `ack` per publish id.
    Native,
    /// Socket.IO v4: `join` with an ack, `publish` and `message` events; no `seq`, no ack.
    Socketio,
    /// Pusher protocol 7 (sockudo, soketi): signed `private-` channels, `client-` events that
    /// skip the sender, no `seq`, no ack. Needs `--pusher-app KEY:SECRET`.
    Pusher,
}

impl Dialect {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Socketio => "socketio",
            Self::Pusher => "pusher",
        }
    }

    /// Whether a sender receives its own publishes (Pusher client events skip the sender).
    pub fn echoes(self) -> bool {
        self != Self::Pusher
    }

    /// The answer to a server ping.
    pub fn pong(self) -> &'static str {
        match self {
            Self::Pusher => crate::pusher::PONG,
            Self::Native | Self::Socketio => PONG,
        }
    }
}

/// Parses one server text frame of `dialect`.
pub fn parse(dialect: Dialect, text: &str) -> Incoming {
    match dialect {
        Dialect::Native => parse_native(text),
        Dialect::Socketio => parse_socketio(text),
        Dialect::Pusher => crate::pusher::parse(text),
    }
}

/// What the load client puts in every publish body: who sent it, its counter, and the send
/// time in µs since the Unix epoch (all processes share one machine, so one clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Stamp {
    pub s: u32,
    pub c: u64,
    pub t: u64,
}

/// A server frame, reduced to what the load client acts on.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// roomfleet `welcome`, or the Socket.IO ack of our `join`: the member is in the room.
    /// `epoch` and `recovered` come from servers that keep history (resume with them).
    Joined { seq: Option<u64>, epoch: Option<String>, recovered: bool },
    /// A room message; `stamp` is None when another client sent a body of its own.
    Message { seq: Option<u64>, stamp: Option<Stamp> },
    /// The server sequenced our publish `id` (our counter) as `seq`.
    Ack { id: u64, seq: u64 },
    /// `error` frame (roomfleet) or connect error (Socket.IO), by code.
    Error { code: String },
    /// Engine.IO open packet: time to connect to the namespace.
    Open,
    /// Socket.IO namespace connected: time to join the room.
    Connected,
    /// Pusher connection established: time to subscribe, signing with this socket id.
    Established { socket_id: String },
    /// Engine.IO ping: answer with [`PONG`].
    Ping,
    /// Socket.IO disconnect packet.
    Disconnect,
    /// Presence, signals and anything else: counted, not judged.
    Other,
}

/// Engine.IO pong.
pub const PONG: &str = "3";
/// Socket.IO connect to the default namespace.
pub const SIO_CONNECT: &str = "40";
/// The Socket.IO ack id our `join` carries.
const JOIN_ACK_ID: &str = "0";

#[derive(Deserialize)]
struct NativeFrame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    seq: Option<u64>,
    #[serde(borrow)]
    body: Option<&'a RawValue>,
    id: Option<serde_json::Value>,
    code: Option<String>,
    epoch: Option<String>,
    recovered: Option<bool>,
}

fn stamp_of(raw: &RawValue) -> Option<Stamp> {
    serde_json::from_str(raw.get()).ok()
}

/// Parses a roomfleet server frame. Unknown shapes are `Other`, never an error: the client
/// must keep reading whatever the server sends.
pub fn parse_native(text: &str) -> Incoming {
    let Ok(frame) = serde_json::from_str::<NativeFrame<'_>>(text) else {
        return Incoming::Other;
    };
    match &*frame.kind {
        "welcome" => Incoming::Joined {
            seq: frame.seq,
            epoch: frame.epoch,
            recovered: frame.recovered.unwrap_or(false),
        },
        "message" => Incoming::Message { seq: frame.seq, stamp: frame.body.and_then(stamp_of) },
        "ack" => match (frame.id.as_ref().and_then(serde_json::Value::as_u64), frame.seq) {
            (Some(id), Some(seq)) => Incoming::Ack { id, seq },
            _ => Incoming::Other,
        },
        "error" => Incoming::Error { code: frame.code.unwrap_or_else(|| "unknown".into()) },
        _ => Incoming::Other,
    }
}

/// Parses an Engine.IO / Socket.IO text packet.
pub fn parse_socketio(text: &str) -> Incoming {
    match text.as_bytes().first() {
        Some(b'0') => return Incoming::Open,
        Some(b'2') => return Incoming::Ping,
        Some(b'1') => return Incoming::Disconnect,
        Some(b'4') => {}
        _ => return Incoming::Other,
    }
    let sio = &text[1..];
    match sio.as_bytes().first() {
        Some(b'0') => Incoming::Connected,
        Some(b'1') => Incoming::Disconnect,
        Some(b'4') => Incoming::Error { code: "connect_error".into() },
        Some(b'3') if sio[1..].starts_with(JOIN_ACK_ID) => {
            Incoming::Joined { seq: None, epoch: None, recovered: false }
        }
        Some(b'2') => {
            let Ok(args) = serde_json::from_str::<Vec<&RawValue>>(&sio[1..]) else {
                return Incoming::Other;
            };
            match args.as_slice() {
                [name, payload, ..] if name.get() == "\"message\"" => {
                    Incoming::Message { seq: None, stamp: socketio_stamp(payload) }
                }
                _ => Incoming::Other,
            }
        }
        _ => Incoming::Other,
    }
}

/// A Socket.IO `message` payload is either our body itself or `{"from":..,"body":BODY}`.
fn socketio_stamp(payload: &RawValue) -> Option<Stamp> {
    #[derive(Deserialize)]
    struct Wrapped<'a> {
        #[serde(borrow)]
        body: &'a RawValue,
    }
    stamp_of(payload).or_else(|| {
        serde_json::from_str::<Wrapped<'_>>(payload.get()).ok().and_then(|w| stamp_of(w.body))
    })
}

/// The JSON body of a publish, padded with a `p` string to about `size` bytes.
pub fn body(sender: u32, counter: u64, sent_us: u64, size: usize) -> String {
    let mut b = format!(r#"{{"s":{sender},"c":{counter},"t":{sent_us}"#);
    const PAD: usize = r#","p":""}"#.len();
    if b.len() + PAD < size {
        b.push_str(r#","p":""#);
        b.extend(std::iter::repeat_n('x', size - b.len() - 2));
        b.push('"');
    }
    b.push('}');
    b
}

/// The publish frame carrying `body` into `room`; roomfleet's asks for an ack with the
/// counter as id.
pub fn publish(dialect: Dialect, room: &str, counter: u64, body: &str) -> String {
    match dialect {
        Dialect::Native => format!(r#"{{"type":"publish","id":{counter},"body":{body}}}"#),
        Dialect::Socketio => format!(r#"42["publish",{body}]"#),
        Dialect::Pusher => crate::pusher::publish(room, body),
    }
}

/// The Socket.IO `join` event with ack id 0 (the server's ack is our welcome).
pub fn socketio_join(room: &str) -> String {
    format!(r#"42{JOIN_ACK_ID}["join",{}]"#, serde_json::Value::from(room))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_have_the_asked_size_and_parse_back() {
        for size in [0, 10, 64, 1000] {
            let b = body(3, 9, 1_700_000_000_000_000, size);
            if size >= 64 {
                assert_eq!(b.len(), size, "{b}");
            }
            let stamp: Stamp = serde_json::from_str(&b).unwrap();
            assert_eq!(stamp, Stamp { s: 3, c: 9, t: 1_700_000_000_000_000 });
        }
    }

    #[test]
    fn reads_native_frames() {
        let b = body(1, 2, 3, 0);
        let msg = format!(
            r#"{{"type":"message","room":"r","from":"u","seq":5,"ts":1,"body":{b},"id":2}}"#
        );
        assert_eq!(
            parse_native(&msg),
            Incoming::Message { seq: Some(5), stamp: Some(Stamp { s: 1, c: 2, t: 3 }) }
        );
        let foreign = r#"{"type":"message","room":"r","from":"u","seq":6,"ts":1,"body":"hi"}"#;
        assert_eq!(parse_native(foreign), Incoming::Message { seq: Some(6), stamp: None });
        assert_eq!(
            parse_native(
                r#"{"type":"welcome","room":"r","user":"u","node":"n","members":["u"],"seq":4}"#
            ),
            Incoming::Joined { seq: Some(4), epoch: None, recovered: false }
        );
        assert_eq!(
            parse_native(
                r#"{"type":"welcome","room":"r","user":"u","node":"n","members":["u"],"seq":4,"epoch":"e-1","recovered":true}"#
            ),
            Incoming::Joined { seq: Some(4), epoch: Some("e-1".into()), recovered: true }
        );
        assert_eq!(
            parse_native(r#"{"type":"ack","id":7,"seq":9}"#),
            Incoming::Ack { id: 7, seq: 9 }
        );
        assert_eq!(
            parse_native(r#"{"type":"error","code":"rate_limited","message":"x"}"#),
            Incoming::Error { code: "rate_limited".into() }
        );
        assert_eq!(
            parse_native(r#"{"type":"presence","event":"join","user":"u"}"#),
            Incoming::Other
        );
        assert_eq!(parse_native("garbage"), Incoming::Other);
    }

    #[test]
    fn reads_socketio_packets() {
        assert_eq!(parse_socketio(r#"0{"sid":"a","pingInterval":25000}"#), Incoming::Open);
        assert_eq!(parse_socketio("2"), Incoming::Ping);
        assert_eq!(parse_socketio(r#"40{"sid":"b"}"#), Incoming::Connected);
        assert_eq!(
            parse_socketio(r#"430["ok"]"#),
            Incoming::Joined { seq: None, epoch: None, recovered: false }
        );
        let b = body(4, 5, 6, 0);
        let stamp = Some(Stamp { s: 4, c: 5, t: 6 });
        assert_eq!(
            parse_socketio(&format!(r#"42["message",{b}]"#)),
            Incoming::Message { seq: None, stamp }
        );
        assert_eq!(
            parse_socketio(&format!(r#"42["message",{{"from":"x","body":{b}}}]"#)),
            Incoming::Message { seq: None, stamp }
        );
        assert_eq!(parse_socketio(r#"42["other",1]"#), Incoming::Other);
        assert_eq!(socketio_join("lt-r1"), r#"420["join","lt-r1"]"#);
        assert_eq!(publish(Dialect::Socketio, "r", 1, "{}"), r#"42["publish",{}]"#);
        assert_eq!(
            publish(Dialect::Native, "r", 1, "{}"),
            r#"{"type":"publish","id":1,"body":{}}"#
        );
    }
}
