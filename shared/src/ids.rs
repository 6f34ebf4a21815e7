//! Room and user ID rules shared by router and nodes, so both refuse the same input.

use std::fmt;
use std::sync::Arc;

/// Longest room ID; long enough for `tenant:channel:thread` keys.
pub const MAX_ROOM_LEN: usize = 128;
/// Longest user ID.
pub const MAX_USER_LEN: usize = 64;

/// Why an ID was refused; the text is what the HTTP 400 body says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} is missing")]
    Missing { kind: &'static str },
    #[error("{kind} is longer than {max} characters")]
    TooLong { kind: &'static str, max: usize },
    #[error("{kind} has a character outside [A-Za-z0-9._:-]")]
    BadChar { kind: &'static str },
    #[error("since must be a decimal seq number")]
    BadSince,
    #[error("epoch must be 1 to 64 of [A-Za-z0-9_-]")]
    BadEpoch,
    #[error("since and epoch go together: a resume needs both")]
    HalfResume,
    #[error("history must be a count from 0 to {MAX_HISTORY}")]
    BadHistory,
}

/// Most messages a first connect may ask for with `history=N`; the room's own
/// `max_recovery` and what it holds may give fewer.
pub const MAX_HISTORY: usize = 1000;

fn allowed(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-')
}

fn check(kind: &'static str, max: usize, s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Missing { kind });
    }
    if s.len() > max {
        return Err(IdError::TooLong { kind, max });
    }
    if !s.bytes().all(allowed) {
        return Err(IdError::BadChar { kind });
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Validates `s` against the ID rules of docs/protocol.md.
            pub fn parse(s: &str) -> Result<Self, IdError> {
                check($kind, $max, s)?;
                Ok(Self(Arc::from(s)))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// A validated room ID: 1 to 128 of `[A-Za-z0-9._:-]`. Cheap to clone.
    RoomId, "room", MAX_ROOM_LEN
);
id_type!(
    /// A validated user ID: 1 to 64 of `[A-Za-z0-9._:-]`. Cheap to clone.
    UserId, "user", MAX_USER_LEN
);

id_type!(
    /// A validated node ID (ring member, `welcome.node`): 1 to 64 of `[A-Za-z0-9._:-]`.
    NodeId, "node id", MAX_USER_LEN
);

/// Whether a room pattern (a room id, or a prefix followed by `*`; `*` alone is every
/// room) covers `room`. Token grants and the node's `[[rooms]]` tables use it.
pub fn pattern_matches(pattern: &str, room: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => room.starts_with(prefix),
        None => pattern == room,
    }
}

/// Longest history epoch.
pub const MAX_EPOCH_LEN: usize = 64;

/// Whether `s` is a well-formed history epoch: 1 to 64 of `[A-Za-z0-9_-]`.
pub fn valid_epoch(s: &str) -> bool {
    (1..=MAX_EPOCH_LEN).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Where a reconnecting client left off: the last `seq` it got and its welcome's epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    pub since: u64,
    pub epoch: String,
}

/// The query parameters of `GET /ws`, validated.
#[derive(Debug, Clone)]
pub struct WsTarget {
    pub room: RoomId,
    /// `None` when the client left it out: the node then makes one up.
    pub user: Option<UserId>,
    /// `since` and `epoch`, when the client resumes.
    pub resume: Option<Resume>,
    /// `history=N`: the last N messages after the welcome of a first connect (0: none;
    /// a resume ignores it).
    pub history: usize,
}

/// Parses the query string of `GET /ws?room=R&user=U`. IDs use only unreserved characters,
/// so no percent-decoding is needed; an encoded byte is refused as a bad character.
pub fn parse_ws_query(query: Option<&str>) -> Result<WsTarget, IdError> {
    let mut room = None;
    let mut user = None;
    let mut since = None;
    let mut epoch = None;
    let mut history = None;
    for pair in query.unwrap_or("").split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "room" => room = Some(v),
            "user" => user = Some(v),
            "since" => since = Some(v),
            "epoch" => epoch = Some(v),
            "history" => history = Some(v),
            _ => {}
        }
    }
    let room = RoomId::parse(room.unwrap_or(""))?;
    let user = match user {
        None => None,
        Some(u) => Some(UserId::parse(u)?),
    };
    let resume = match (since, epoch) {
        (None, None) => None,
        (Some(s), Some(e)) => {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(IdError::BadSince);
            }
            let since = s.parse().map_err(|_| IdError::BadSince)?;
            if !valid_epoch(e) {
                return Err(IdError::BadEpoch);
            }
            Some(Resume { since, epoch: e.to_owned() })
        }
        _ => return Err(IdError::HalfResume),
    };
    let history = match history {
        None => 0,
        Some(h) if !h.is_empty() && h.bytes().all(|b| b.is_ascii_digit()) => {
            match h.parse::<usize>() {
                Ok(n) if n <= MAX_HISTORY => n,
                _ => return Err(IdError::BadHistory),
            }
        }
        Some(_) => return Err(IdError::BadHistory),
    };
    Ok(WsTarget { room, user, resume, history })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_alphabet() {
        assert!(RoomId::parse("tenant-1:chat.general_2").is_ok());
        assert!(RoomId::parse(&"r".repeat(128)).is_ok());
        assert!(UserId::parse(&"u".repeat(64)).is_ok());
    }

    #[test]
    fn refuses_everything_else() {
        assert_eq!(RoomId::parse(""), Err(IdError::Missing { kind: "room" }));
        assert!(matches!(RoomId::parse(&"r".repeat(129)), Err(IdError::TooLong { .. })));
        assert!(matches!(UserId::parse(&"u".repeat(65)), Err(IdError::TooLong { .. })));
        for bad in ["a b", "a/b", "é", "a%20", "a\0"] {
            assert!(matches!(RoomId::parse(bad), Err(IdError::BadChar { .. })), "{bad}");
        }
    }

    #[test]
    fn parses_the_query() {
        let t = parse_ws_query(Some("room=lobby&user=ann&x=1")).unwrap();
        assert_eq!(t.room.as_str(), "lobby");
        assert_eq!(t.user.unwrap().as_str(), "ann");
        assert!(parse_ws_query(Some("room=lobby")).unwrap().user.is_none());
        assert!(parse_ws_query(Some("user=ann")).is_err());
        assert!(parse_ws_query(None).is_err());
        assert!(parse_ws_query(Some("room=lobby&user=")).is_err());
        assert!(parse_ws_query(Some("room=lobby")).unwrap().resume.is_none());
    }

    #[test]
    fn parses_a_resume() {
        let t = parse_ws_query(Some("room=lobby&since=42&epoch=ab-C_9")).unwrap();
        assert_eq!(t.resume, Some(Resume { since: 42, epoch: "ab-C_9".into() }));
        let bad = |q: &str| parse_ws_query(Some(q)).unwrap_err();
        assert_eq!(bad("room=r&since=42"), IdError::HalfResume);
        assert_eq!(bad("room=r&epoch=e"), IdError::HalfResume);
        assert_eq!(bad("room=r&since=-1&epoch=e"), IdError::BadSince);
        assert_eq!(bad("room=r&since=1x&epoch=e"), IdError::BadSince);
        assert_eq!(bad("room=r&since=&epoch=e"), IdError::BadSince);
        assert_eq!(bad("room=r&since=99999999999999999999999&epoch=e"), IdError::BadSince);
        assert_eq!(bad("room=r&since=1&epoch="), IdError::BadEpoch);
        assert_eq!(bad("room=r&since=1&epoch=a%20b"), IdError::BadEpoch);
    }

    #[test]
    fn parses_a_history_count() {
        let h = |q: &str| parse_ws_query(Some(q)).map(|t| t.history);
        assert_eq!(h("room=r"), Ok(0));
        assert_eq!(h("room=r&history=20"), Ok(20));
        assert_eq!(h("room=r&history=0"), Ok(0));
        assert_eq!(h(&format!("room=r&history={MAX_HISTORY}")), Ok(MAX_HISTORY));
        for bad in ["", "-1", "1x", "+3", "1001", "99999999999999999999999", "%31"] {
            assert_eq!(h(&format!("room=r&history={bad}")), Err(IdError::BadHistory), "{bad}");
        }
        assert_eq!(h("room=r&history"), Err(IdError::BadHistory));
    }
}
