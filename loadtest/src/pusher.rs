//! Pusher protocol 7 (sockudo, soketi, Pusher itself): `pusher:connection_established` with a
//! socket id, `pusher:subscribe` to a private channel signed with the app secret, `client-`
//! events that the server relays to every other subscriber (never back to the sender), and
//! `pusher:ping`/`pusher:pong`. Pure text in, text out, like [`crate::dialect`].

use std::borrow::Cow;

use anyhow::{Context, bail};
use ring::hmac;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::dialect::{Incoming, Stamp};

/// The client event every publish is sent as (Pusher requires the `client-` prefix).
pub const EVENT: &str = "client-publish";
/// The answer to a server's `pusher:ping`.
pub const PONG: &str = r#"{"event":"pusher:pong","data":{}}"#;
/// What the handshake URL says about the client (Pusher servers check `protocol`).
const QUERY: &str = "protocol=7&client=roomfleet-loadtest&version=7.0.0&flash=false";

/// The app the load client signs its private-channel subscriptions for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PusherApp {
    pub key: String,
    secret: String,
}

impl PusherApp {
    /// Parses `--pusher-app KEY:SECRET`.
    pub fn parse(spec: &str) -> anyhow::Result<Self> {
        let (key, secret) = spec
            .split_once(':')
            .context("--pusher-app must be KEY:SECRET (the app's key and secret)")?;
        if key.is_empty()
            || secret.is_empty()
            || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            bail!(
                "--pusher-app {key:?}: needs a key of letters, digits, '-' or '_' and a non-empty secret"
            );
        }
        Ok(Self { key: key.to_owned(), secret: secret.to_owned() })
    }

    /// The handshake path and query: `/app/KEY?protocol=7&...`.
    pub fn path(&self) -> String {
        format!("/app/{}?{QUERY}", self.key)
    }

    /// `KEY:HEX(HMAC-SHA256(secret, "socket_id:channel"))`, the private-channel auth.
    pub fn auth(&self, socket_id: &str, channel: &str) -> String {
        let key = hmac::Key::new(hmac::HMAC_SHA256, self.secret.as_bytes());
        let tag = hmac::sign(&key, format!("{socket_id}:{channel}").as_bytes());
        let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        format!("{}:{hex}", self.key)
    }

    /// The signed `pusher:subscribe` for `room`'s private channel.
    pub fn subscribe(&self, socket_id: &str, room: &str) -> String {
        let channel = channel(room);
        serde_json::json!({
            "event": "pusher:subscribe",
            "data": { "channel": channel, "auth": self.auth(socket_id, &channel) },
        })
        .to_string()
    }
}

/// The private channel a room is.
pub fn channel(room: &str) -> String {
    format!("private-{room}")
}

/// A publish: the body as the client event's data, on the room's channel.
pub fn publish(room: &str, body: &str) -> String {
    let channel = serde_json::Value::from(channel(room));
    format!(r#"{{"event":"{EVENT}","channel":{channel},"data":{body}}}"#)
}

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

/// Pusher puts JSON inside a JSON string for server events, and relays client events as sent;
/// both shapes are read.
fn data_json(raw: &RawValue) -> Cow<'_, str> {
    match serde_json::from_str::<String>(raw.get()) {
        Ok(inner) => Cow::Owned(inner),
        Err(_) => Cow::Borrowed(raw.get()),
    }
}

/// Parses a Pusher server frame; unknown shapes are `Other`.
pub fn parse(text: &str) -> Incoming {
    let Ok(frame) = serde_json::from_str::<Frame<'_>>(text) else {
        return Incoming::Other;
    };
    let data = frame.data.map(data_json);
    match &*frame.event {
        "pusher:connection_established" => {
            #[derive(Deserialize)]
            struct Established {
                socket_id: String,
            }
            match data.and_then(|d| serde_json::from_str::<Established>(&d).ok()) {
                Some(e) => Incoming::Established { socket_id: e.socket_id },
                None => Incoming::Error { code: "bad_connection_established".into() },
            }
        }
        "pusher_internal:subscription_succeeded" => {
            Incoming::Joined { seq: None, epoch: None, recovered: false }
        }
        "pusher:subscription_error" => Incoming::Error { code: "subscription_error".into() },
        "pusher:error" => {
            #[derive(Deserialize)]
            struct PusherError {
                code: Option<u32>,
            }
            let code = data
                .and_then(|d| serde_json::from_str::<PusherError>(&d).ok())
                .and_then(|e| e.code);
            Incoming::Error {
                code: code.map_or_else(|| "pusher_error".into(), |c| format!("pusher_{c}")),
            }
        }
        "pusher:ping" => Incoming::Ping,
        EVENT => Incoming::Message {
            seq: None,
            stamp: data.and_then(|d| serde_json::from_str::<Stamp>(&d).ok()),
        },
        _ => Incoming::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialect::body;

    #[test]
    fn signs_private_channels_as_pusher_documents() {
        // The example of Pusher's channel authorization docs.
        let app = PusherApp::parse("278d425bdf160c739803:7ad3773142a6692b25b8").unwrap();
        assert_eq!(
            app.auth("1234.1234", "private-foobar"),
            "278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
        );
        let sub: serde_json::Value = serde_json::from_str(&app.subscribe("1.2", "r")).unwrap();
        assert_eq!(sub["event"], "pusher:subscribe");
        assert_eq!(sub["data"]["channel"], "private-r");
        assert!(app.path().starts_with("/app/278d425bdf160c739803?protocol=7&"));
        assert!(PusherApp::parse("nokey").is_err());
        assert!(PusherApp::parse("k:").is_err());
        assert!(PusherApp::parse("k/x:s").is_err());
    }

    #[test]
    fn reads_pusher_frames() {
        let est = r#"{"event":"pusher:connection_established","data":"{\"socket_id\":\"123.456\",\"activity_timeout\":120}"}"#;
        assert_eq!(parse(est), Incoming::Established { socket_id: "123.456".into() });
        assert_eq!(
            parse(
                r#"{"event":"pusher_internal:subscription_succeeded","channel":"private-r","data":"{}"}"#
            ),
            Incoming::Joined { seq: None, epoch: None, recovered: false }
        );
        let b = body(4, 5, 6, 0);
        let stamp = Some(Stamp { s: 4, c: 5, t: 6 });
        let as_sent = publish("r", &b);
        assert_eq!(parse(&as_sent), Incoming::Message { seq: None, stamp });
        let as_string =
            serde_json::json!({"event": EVENT, "channel": "private-r", "data": b}).to_string();
        assert_eq!(parse(&as_string), Incoming::Message { seq: None, stamp });
        assert_eq!(parse(r#"{"event":"pusher:ping","data":{}}"#), Incoming::Ping);
        assert_eq!(
            parse(r#"{"event":"pusher:error","data":{"code":4009,"message":"x"}}"#),
            Incoming::Error { code: "pusher_4009".into() }
        );
        assert_eq!(
            parse(r#"{"event":"pusher:subscription_error","channel":"private-r","data":{}}"#),
            Incoming::Error { code: "subscription_error".into() }
        );
        assert_eq!(parse(r#"{"event":"client-other","data":{}}"#), Incoming::Other);
        assert_eq!(parse("nope"), Incoming::Other);
    }
}
