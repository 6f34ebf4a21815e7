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
}

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

/// The `room` and `user` query parameters of `GET /ws`, validated.
#[derive(Debug, Clone)]
pub struct WsTarget {
    pub room: RoomId,
    /// `None` when the client left it out: the node then makes one up.
    pub user: Option<UserId>,
}

/// Parses the query string of `GET /ws?room=R&user=U`. IDs use only unreserved characters,
/// so no percent-decoding is needed; an encoded byte is refused as a bad character.
pub fn parse_ws_query(query: Option<&str>) -> Result<WsTarget, IdError> {
    let mut room = None;
    let mut user = None;
    for pair in query.unwrap_or("").split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "room" => room = Some(v),
            "user" => user = Some(v),
            _ => {}
        }
    }
    let room = RoomId::parse(room.unwrap_or(""))?;
    let user = match user {
        None => None,
        Some(u) => Some(UserId::parse(u)?),
    };
    Ok(WsTarget { room, user })
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
    }
}
