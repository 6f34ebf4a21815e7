//! Connection identity: the JWT a client connects with (verified against `--jwt-key`: an
//! HS256 secret, PEM public keys, or a JWKS file reloaded when it changes), the rights its
//! `rooms` claim grants, and the signed hop header in which a router hands a node the
//! identity it verified, so nodes trust a router and never a bare `user=`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderMap;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use ring::hmac;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;

use crate::ids::{RoomId, UserId};

/// Seconds of clock skew allowed on `exp` and `nbf` between token issuer and fleet.
pub const LEEWAY_SECS: u64 = 5;
/// The request header a router puts the verified identity in, for the node.
pub const HOP_HEADER: http::HeaderName = http::HeaderName::from_static("x-roomfleet-identity");
/// How long a hop header is good for: the router signs it just before forwarding.
pub const HOP_VALIDITY: Duration = Duration::from_secs(30);
/// The WebSocket subprotocol clients offer (with `token.<JWT>` beside it).
pub const SUBPROTOCOL: &str = "roomfleet";
/// How often a JWKS file is checked for changes.
const JWKS_POLL: Duration = Duration::from_secs(1);
/// Largest `info` claim: it is copied to every member's `welcome` and `presence`.
pub const MAX_INFO_BYTES: usize = 1024;

/// What a member may do in its room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Rights {
    /// Receive, signal and be present; publishes are refused with `forbidden`.
    #[serde(rename = "r")]
    Read,
    /// Also publish.
    #[serde(rename = "rw")]
    ReadWrite,
}

/// A verified identity for one room.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user: UserId,
    pub rights: Rights,
    /// The token's `exp` (Unix seconds): the node closes with 4001 then, unless refreshed.
    pub exp: u64,
    /// The token's `info` claim, shown to the other members.
    pub info: Option<Arc<RawValue>>,
}

/// Why a connection was refused. `reason()` is the stable metrics label; the text is the
/// one-line body of the 401/403.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("token is missing: pass ?token=, Authorization: Bearer, or the subprotocol token.JWT")]
    Missing,
    #[error("token is invalid: {0}")]
    Invalid(String),
    #[error("token has expired")]
    Expired,
    #[error("token is not yet valid")]
    NotYetValid,
    #[error("token key id is unknown")]
    UnknownKid,
    #[error("user does not match the token's sub")]
    UserMismatch,
    #[error("token does not grant room {0}")]
    RoomNotAllowed(String),
    #[error("identity header is invalid: {0}")]
    BadHop(&'static str),
    #[error("connect ticket is invalid: {0}")]
    BadTicket(&'static str),
}

impl AuthError {
    /// The label in `router_auth_refused_total{reason}` / `wsnode_auth_refused_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Invalid(_) => "invalid",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::UnknownKid => "unknown_kid",
            Self::UserMismatch => "user_mismatch",
            Self::RoomNotAllowed(_) => "room_not_allowed",
            Self::BadHop(_) => "bad_hop",
            Self::BadTicket(_) => "bad_ticket",
        }
    }

    /// Every label, so the metrics show zeros before the first refusal.
    pub const REASONS: [&'static str; 9] = [
        "missing",
        "invalid",
        "expired",
        "not_yet_valid",
        "unknown_kid",
        "user_mismatch",
        "room_not_allowed",
        "bad_hop",
        "bad_ticket",
    ];

    /// 403 for a valid token that does not reach this room; 401 for everything else.
    pub fn status(&self) -> http::StatusCode {
        match self {
            Self::RoomNotAllowed(_) => http::StatusCode::FORBIDDEN,
            _ => http::StatusCode::UNAUTHORIZED,
        }
    }
}

/// A `--jwt-key` or JWKS that cannot be used; `main` prints it and exits 2.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("--jwt-key {what}: {source}")]
    Read { what: String, source: std::io::Error },
    #[error("--jwt-key {what}: {why}")]
    Bad { what: String, why: String },
}

/// One verification key with the only algorithm it is used with (no alg confusion).
struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// Where the keys come from.
#[derive(Debug, Clone)]
enum Source {
    Fixed,
    Jwks(PathBuf),
}

/// Verifies connection tokens. Cheap to share; a JWKS source is swapped in whole on reload.
pub struct Verifier {
    keys: ArcSwap<Vec<Key>>,
    source: Source,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("keys", &self.keys.load().len())
            .field("source", &self.source)
            .finish()
    }
}

/// The claims a token must carry.
#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    rooms: HashMap<String, Rights>,
    info: Option<Box<RawValue>>,
}

impl Verifier {
    /// Parses `--jwt-key`: `env:NAME` (an HS256 secret in that variable), or a file holding
    /// a JWKS (JSON with `keys`), PEM public keys (RSA: RS256, EC P-256: ES256), or else an
    /// HS256 secret (surrounding whitespace trimmed).
    pub fn from_arg(arg: &str) -> Result<Self, KeyError> {
        if let Some(name) = arg.strip_prefix("env:") {
            let what = format!("env:{name}");
            let secret = std::env::var(name).map_err(|_| KeyError::Bad {
                what: what.clone(),
                why: "variable not set".into(),
            })?;
            return Self::hs256(secret.as_bytes()).map_err(|why| KeyError::Bad { what, why });
        }
        let path = PathBuf::from(arg);
        let text = std::fs::read_to_string(&path)
            .map_err(|source| KeyError::Read { what: arg.to_string(), source })?;
        let bad = |why: String| KeyError::Bad { what: arg.to_string(), why };
        if text.trim_start().starts_with('{') {
            let keys = parse_jwks(&text).map_err(bad)?;
            return Ok(Self { keys: ArcSwap::from_pointee(keys), source: Source::Jwks(path) });
        }
        if text.contains("-----BEGIN") {
            let keys = parse_pems(&text).map_err(bad)?;
            return Ok(Self { keys: ArcSwap::from_pointee(keys), source: Source::Fixed });
        }
        Self::hs256(text.trim().as_bytes()).map_err(bad)
    }

    /// A verifier for one HS256 secret (at least 16 bytes, so it cannot be guessed).
    pub fn hs256(secret: &[u8]) -> Result<Self, String> {
        if secret.len() < 16 {
            return Err("an HS256 secret needs at least 16 bytes".into());
        }
        let key = Key { kid: None, alg: Algorithm::HS256, key: DecodingKey::from_secret(secret) };
        Ok(Self { keys: ArcSwap::from_pointee(vec![key]), source: Source::Fixed })
    }

    /// Verifies `token` and the rights it grants in `room`; `user` is the client's `user`
    /// parameter, which must equal `sub` when given.
    pub fn verify(
        &self,
        token: &str,
        room: &RoomId,
        user: Option<&UserId>,
    ) -> Result<Identity, AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(format!("{e}")))?;
        let keys = self.keys.load();
        let candidates: Vec<&Key> = match &header.kid {
            Some(kid) if keys.iter().any(|k| k.kid.is_some()) => {
                let found: Vec<&Key> =
                    keys.iter().filter(|k| k.kid.as_deref() == Some(kid)).collect();
                if found.is_empty() {
                    return Err(AuthError::UnknownKid);
                }
                found
            }
            _ => keys.iter().filter(|k| k.alg == header.alg).collect(),
        };
        if candidates.is_empty() {
            return Err(AuthError::Invalid(format!("no key for algorithm {:?}", header.alg)));
        }
        let mut last = AuthError::Invalid("bad signature".into());
        for k in candidates {
            let mut v = Validation::new(k.alg);
            v.leeway = LEEWAY_SECS;
            v.validate_nbf = true;
            v.validate_aud = false;
            v.set_required_spec_claims(&["exp", "sub"]);
            match jsonwebtoken::decode::<Claims>(token, &k.key, &v) {
                Ok(data) => return identity(data.claims, room, user),
                Err(e) => {
                    last = match e.kind() {
                        ErrorKind::ExpiredSignature => return Err(AuthError::Expired),
                        ErrorKind::ImmatureSignature => return Err(AuthError::NotYetValid),
                        ErrorKind::InvalidSignature => AuthError::Invalid("bad signature".into()),
                        ErrorKind::InvalidAlgorithm => {
                            AuthError::Invalid("algorithm does not match the key".into())
                        }
                        other => AuthError::Invalid(format!("{other:?}")),
                    }
                }
            }
        }
        Err(last)
    }

    /// Re-reads a JWKS file whenever its modification time or size changes, until `stop`;
    /// a file that does not parse keeps the last good keys (and is logged). Nothing to do
    /// for fixed keys.
    pub fn spawn_reloader(self: &Arc<Self>, stop: CancellationToken) {
        let Source::Jwks(path) = &self.source else { return };
        let path = path.clone();
        let me = self.clone();
        tokio::spawn(async move {
            let mut seen = stamp(&path);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(JWKS_POLL) => {}
                }
                let now = stamp(&path);
                if now == seen {
                    continue;
                }
                seen = now;
                match std::fs::read_to_string(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|t| parse_jwks(&t))
                {
                    Ok(keys) => {
                        tracing::info!(path = %path.display(), keys = keys.len(), "JWKS reloaded");
                        me.keys.store(Arc::new(keys));
                    }
                    Err(e) => {
                        tracing::warn!(path = %path.display(), "JWKS not reloaded, keeping the last keys: {e}")
                    }
                }
            }
        });
    }
}

/// What tells a changed file: the inode too, because a JWKS renamed over the old one (the
/// safe way to replace it) can have the same size and, within one tick of the file system's
/// coarse clock, the same modification time.
fn stamp(path: &Path) -> Option<(SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

fn identity(c: Claims, room: &RoomId, user: Option<&UserId>) -> Result<Identity, AuthError> {
    let sub = UserId::parse(&c.sub)
        .map_err(|e| AuthError::Invalid(format!("sub is not a valid user id: {e}")))?;
    if user.is_some_and(|u| *u != sub) {
        return Err(AuthError::UserMismatch);
    }
    let rights = rights_in(&c.rooms, room.as_str())
        .ok_or_else(|| AuthError::RoomNotAllowed(room.to_string()))?;
    let info = match c.info {
        Some(i) if i.get().len() > MAX_INFO_BYTES => {
            return Err(AuthError::Invalid(format!("info is over {MAX_INFO_BYTES} bytes")));
        }
        Some(i) => Some(Arc::from(i)),
        None => None,
    };
    Ok(Identity { user: sub, rights, exp: c.exp, info })
}

/// The widest rights any pattern grants in `room`: a pattern is a room id, or a prefix
/// followed by `*` (`chat:*`; `*` alone is every room).
pub fn rights_in(rooms: &HashMap<String, Rights>, room: &str) -> Option<Rights> {
    rooms.iter().filter(|(p, _)| crate::ids::pattern_matches(p, room)).map(|(_, r)| *r).max()
}

fn parse_jwks(text: &str) -> Result<Vec<Key>, String> {
    let set: JwkSet = serde_json::from_str(text).map_err(|e| format!("not a JWKS: {e}"))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let alg = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                Algorithm::ES256
            }
            AlgorithmParameters::OctetKey(_) => Algorithm::HS256,
            _ => continue,
        };
        let key =
            DecodingKey::from_jwk(jwk).map_err(|e| format!("key {:?}: {e}", jwk.common.key_id))?;
        keys.push(Key { kid: jwk.common.key_id.clone(), alg, key });
    }
    if keys.is_empty() {
        return Err("no RSA, EC P-256 or oct key in the JWKS".into());
    }
    Ok(keys)
}

fn parse_pems(text: &str) -> Result<Vec<Key>, String> {
    let mut keys = Vec::new();
    for block in text.split("-----BEGIN").skip(1) {
        let pem = format!("-----BEGIN{block}");
        let pem = pem.as_bytes();
        if let Ok(key) = DecodingKey::from_ec_pem(pem) {
            keys.push(Key { kid: None, alg: Algorithm::ES256, key });
        } else if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            keys.push(Key { kid: None, alg: Algorithm::RS256, key });
        } else {
            return Err("a PEM block is neither an RSA nor an EC public key".into());
        }
    }
    Ok(keys)
}

/// The token a client passed: `?token=`, `Authorization: Bearer`, or the subprotocol
/// `token.<JWT>` next to `roomfleet`, in that order.
pub fn token_from(query: Option<&str>, headers: &HeaderMap) -> Option<String> {
    if let Some(t) = crate::http::query_param(query, "token").filter(|t| !t.is_empty()) {
        return Some(t);
    }
    let bearer = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty());
    if let Some(t) = bearer {
        return Some(t.to_string());
    }
    subprotocols(headers).find_map(|p| p.strip_prefix("token.").map(str::to_string))
}

/// Every offered `Sec-WebSocket-Protocol` value.
pub fn subprotocols(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// Whether the client offered the `roomfleet` subprotocol (the node then answers it).
pub fn offers_subprotocol(headers: &HeaderMap) -> bool {
    subprotocols(headers).any(|p| p == SUBPROTOCOL)
}

/// The secret routers sign hop headers with and nodes check them with.
#[derive(Clone)]
pub struct HopKey(hmac::Key);

impl std::fmt::Debug for HopKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HopKey(..)")
    }
}

/// What a hop header (or a connect ticket) carries, signed as a whole.
#[derive(Serialize, Deserialize)]
struct Hop<'a> {
    room: &'a str,
    user: &'a str,
    rights: Rights,
    exp: u64,
    /// Unix milliseconds after which the header is refused (replay window).
    until: u64,
    #[serde(borrow, skip_serializing_if = "Option::is_none")]
    info: Option<&'a RawValue>,
    /// Set on connect tickets only: the one node that may take it.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    node: Option<&'a str>,
}

/// How long a connect ticket (`GET /connect`) is good for.
pub const TICKET_VALIDITY: Duration = HOP_VALIDITY;

/// A connect ticket: the identity a router verified, for one room on one node, until
/// `expires` (Unix ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub value: String,
    pub expires: u64,
}

impl HopKey {
    /// From `--hop-secret` (at least 16 bytes).
    pub fn new(secret: &[u8]) -> Result<Self, String> {
        if secret.len() < 16 {
            return Err("--hop-secret needs at least 16 bytes".into());
        }
        Ok(Self(hmac::Key::new(hmac::HMAC_SHA256, secret)))
    }

    /// From a `--hop-secret` argument: `env:NAME` or a file (whitespace around it trimmed).
    pub fn from_arg(arg: &str) -> Result<Self, String> {
        let secret = match arg.strip_prefix("env:") {
            Some(name) => std::env::var(name)
                .map_err(|_| format!("--hop-secret env:{name}: variable not set"))?,
            None => std::fs::read_to_string(arg).map_err(|e| format!("--hop-secret {arg}: {e}"))?,
        };
        Self::new(secret.trim().as_bytes())
    }

    /// A random key, for one process that is router and nodes at once (`fleet up`).
    pub fn random() -> Self {
        let mut b = [0u8; 32];
        for chunk in b.chunks_mut(8) {
            chunk.copy_from_slice(&fastrand::u64(..).to_le_bytes());
        }
        Self(hmac::Key::new(hmac::HMAC_SHA256, &b))
    }

    /// The header value for `id` in `room`: `BASE64URL(json).BASE64URL(HMAC-SHA256)`.
    pub fn sign(&self, id: &Identity, room: &RoomId) -> String {
        self.seal(id, room, None, unix_ms() + HOP_VALIDITY.as_millis() as u64)
    }

    /// A connect ticket for `id` in `room` that only node `node` takes, for `ttl`.
    pub fn ticket(&self, id: &Identity, room: &RoomId, node: &str, ttl: Duration) -> Ticket {
        let expires = unix_ms() + ttl.as_millis() as u64;
        Ticket { value: self.seal(id, room, Some(node), expires), expires }
    }

    fn seal(&self, id: &Identity, room: &RoomId, node: Option<&str>, until: u64) -> String {
        let hop = Hop {
            room: room.as_str(),
            user: id.user.as_str(),
            rights: id.rights,
            exp: id.exp,
            until,
            info: id.info.as_deref(),
            node,
        };
        let payload = serde_json::to_vec(&hop).expect("hop serializes");
        let tag = hmac::sign(&self.0, &payload);
        format!("{}.{}", URL_SAFE_NO_PAD.encode(&payload), URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    /// Checks a hop header for `room`: signature (constant time), validity window, room.
    /// A connect ticket is not a hop header.
    pub fn verify(&self, value: &str, room: &RoomId) -> Result<Identity, AuthError> {
        self.open(value, room, None).map_err(AuthError::BadHop)
    }

    /// Checks a connect ticket for `room` on node `node`: signature, expiry, room, node.
    pub fn verify_ticket(
        &self,
        value: &str,
        room: &RoomId,
        node: &str,
    ) -> Result<Identity, AuthError> {
        self.open(value, room, Some(node)).map_err(AuthError::BadTicket)
    }

    fn open(
        &self,
        value: &str,
        room: &RoomId,
        node: Option<&str>,
    ) -> Result<Identity, &'static str> {
        let (p, t) = value.split_once('.').ok_or("malformed")?;
        let payload = URL_SAFE_NO_PAD.decode(p).map_err(|_| "malformed")?;
        let tag = URL_SAFE_NO_PAD.decode(t).map_err(|_| "malformed")?;
        hmac::verify(&self.0, &payload, &tag).map_err(|_| "bad signature")?;
        let hop: Hop<'_> = serde_json::from_slice(&payload).map_err(|_| "malformed")?;
        if hop.until <= unix_ms() {
            return Err(if node.is_some() { "expired" } else { "stale" });
        }
        if hop.room != room.as_str() {
            return Err("signed for another room");
        }
        match (node, hop.node) {
            (None, None) => {}
            (None, Some(_)) => return Err("a connect ticket is not an identity header"),
            (Some(me), Some(n)) if me == n => {}
            (Some(_), Some(_)) => return Err("issued for another node"),
            (Some(_), None) => return Err("an identity header is not a connect ticket"),
        }
        let user = UserId::parse(hop.user).map_err(|_| "malformed")?;
        let info = hop.info.map(|i| Arc::from(i.to_owned()));
        Ok(Identity { user, rights: hop.rights, exp: hop.exp, info })
    }
}

/// Seconds since the Unix epoch.
pub fn unix_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn unix_ms() -> u64 {
    crate::protocol::unix_ms()
}

/// Signs HS256 tokens: `fleet token` and the tests.
#[derive(Debug, Clone, Serialize)]
pub struct TokenClaims {
    pub sub: String,
    pub exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    pub rooms: HashMap<String, Rights>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<serde_json::Value>,
}

/// An HS256 token over `claims` with `secret`.
pub fn sign_hs256(claims: &TokenClaims, secret: &[u8]) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(secret);
    jsonwebtoken::encode(&jsonwebtoken::Header::new(Algorithm::HS256), claims, &key)
        .expect("HS256 signing cannot fail")
}

/// Parses `PATTERN=r|rw` (the `fleet token --room` form).
pub fn parse_room_grant(s: &str) -> Result<(String, Rights), String> {
    let (p, r) = s.split_once('=').ok_or_else(|| format!("{s:?} is not PATTERN=r|rw"))?;
    let rights = match r {
        "r" => Rights::Read,
        "rw" => Rights::ReadWrite,
        _ => return Err(format!("rights {r:?} must be r or rw")),
    };
    let id = p.strip_suffix('*').unwrap_or(p);
    if !id.is_empty() {
        RoomId::parse(id).map_err(|e| format!("pattern {p:?}: {e}"))?;
    }
    Ok((p.to_string(), rights))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn claims(sub: &str, exp: u64, rooms: &[(&str, Rights)]) -> TokenClaims {
        TokenClaims {
            sub: sub.into(),
            exp,
            nbf: None,
            rooms: rooms.iter().map(|(p, r)| (p.to_string(), *r)).collect(),
            info: None,
        }
    }

    fn room(s: &str) -> RoomId {
        RoomId::parse(s).unwrap()
    }

    #[test]
    fn patterns_grant_the_widest_rights() {
        let rooms: HashMap<String, Rights> =
            [("chat:*".to_string(), Rights::Read), ("chat:vip".to_string(), Rights::ReadWrite)]
                .into();
        assert_eq!(rights_in(&rooms, "chat:lobby"), Some(Rights::Read));
        assert_eq!(rights_in(&rooms, "chat:vip"), Some(Rights::ReadWrite));
        assert_eq!(rights_in(&rooms, "chat"), None);
        assert_eq!(rights_in(&rooms, "status:1"), None);
        let all: HashMap<String, Rights> = [("*".to_string(), Rights::Read)].into();
        assert_eq!(rights_in(&all, "anything"), Some(Rights::Read));
    }

    #[test]
    fn tokens_verify_or_name_their_fault() {
        let v = Verifier::hs256(SECRET).unwrap();
        let now = unix_secs();
        let good = sign_hs256(&claims("ann", now + 60, &[("chat:*", Rights::ReadWrite)]), SECRET);
        let id = v.verify(&good, &room("chat:1"), None).unwrap();
        assert_eq!((id.user.as_str(), id.rights), ("ann", Rights::ReadWrite));
        let ann = UserId::parse("ann").unwrap();
        let bob = UserId::parse("bob").unwrap();
        assert!(v.verify(&good, &room("chat:1"), Some(&ann)).is_ok());
        assert_eq!(
            v.verify(&good, &room("chat:1"), Some(&bob)).unwrap_err(),
            AuthError::UserMismatch
        );
        assert!(matches!(v.verify(&good, &room("dm:1"), None), Err(AuthError::RoomNotAllowed(_))));
        let other =
            sign_hs256(&claims("ann", now + 60, &[("*", Rights::Read)]), b"another-secret-of-16+");
        assert!(matches!(v.verify(&other, &room("x"), None), Err(AuthError::Invalid(_))));
        let old = sign_hs256(&claims("ann", now - 60, &[("*", Rights::Read)]), SECRET);
        assert_eq!(v.verify(&old, &room("x"), None).unwrap_err(), AuthError::Expired);
        let mut early = claims("ann", now + 600, &[("*", Rights::Read)]);
        early.nbf = Some(now + 300);
        let early = sign_hs256(&early, SECRET);
        assert_eq!(v.verify(&early, &room("x"), None).unwrap_err(), AuthError::NotYetValid);
        assert!(matches!(v.verify("nonsense", &room("x"), None), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn hop_headers_are_signed_for_one_room_and_a_short_while() {
        let k = HopKey::new(SECRET).unwrap();
        let id = Identity {
            user: UserId::parse("ann").unwrap(),
            rights: Rights::Read,
            exp: 99,
            info: Some(Arc::from(RawValue::from_string(r#"{"n":"Ann"}"#.into()).unwrap())),
        };
        let h = k.sign(&id, &room("r1"));
        let back = k.verify(&h, &room("r1")).unwrap();
        assert_eq!((back.user.as_str(), back.rights, back.exp), ("ann", Rights::Read, 99));
        assert_eq!(back.info.unwrap().get(), r#"{"n":"Ann"}"#);
        assert!(matches!(k.verify(&h, &room("r2")), Err(AuthError::BadHop(_))));
        let other = HopKey::new(b"not-the-same-secret").unwrap();
        assert_eq!(other.verify(&h, &room("r1")).unwrap_err(), AuthError::BadHop("bad signature"));
        let (p, t) = h.split_once('.').unwrap();
        let forged = format!("{}x.{t}", &p[..p.len() - 1]);
        assert!(k.verify(&forged, &room("r1")).is_err());
    }

    #[test]
    fn connect_tickets_are_for_one_node_one_room_and_a_while() {
        let k = HopKey::new(SECRET).unwrap();
        let id = Identity {
            user: UserId::parse("ann").unwrap(),
            rights: Rights::ReadWrite,
            exp: 99,
            info: None,
        };
        let t = k.ticket(&id, &room("r1"), "node-a", Duration::from_secs(30));
        assert!(t.expires > unix_ms());
        assert_eq!(k.verify_ticket(&t.value, &room("r1"), "node-a").unwrap().user.as_str(), "ann");
        let err = |r: Result<Identity, AuthError>| r.unwrap_err();
        assert_eq!(
            err(k.verify_ticket(&t.value, &room("r1"), "node-b")),
            AuthError::BadTicket("issued for another node")
        );
        assert!(matches!(
            err(k.verify_ticket(&t.value, &room("r2"), "node-a")),
            AuthError::BadTicket(_)
        ));
        let (p, sig) = t.value.split_once('.').unwrap();
        let json = String::from_utf8(URL_SAFE_NO_PAD.decode(p).unwrap()).unwrap();
        let forged = URL_SAFE_NO_PAD.encode(json.replace("ann", "bob"));
        let tampered = format!("{forged}.{sig}");
        assert_eq!(
            err(k.verify_ticket(&tampered, &room("r1"), "node-a")),
            AuthError::BadTicket("bad signature")
        );
        let old = k.ticket(&id, &room("r1"), "node-a", Duration::ZERO);
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(
            err(k.verify_ticket(&old.value, &room("r1"), "node-a")),
            AuthError::BadTicket("expired")
        );
        // Neither passes for the other.
        assert!(matches!(err(k.verify(&t.value, &room("r1"))), AuthError::BadHop(_)));
        let hop = k.sign(&id, &room("r1"));
        assert!(matches!(
            err(k.verify_ticket(&hop, &room("r1"), "node-a")),
            AuthError::BadTicket(_)
        ));
    }

    #[test]
    fn tokens_come_from_query_bearer_or_subprotocol() {
        let mut h = HeaderMap::new();
        assert_eq!(token_from(Some("room=a&token=q.q.q"), &h).as_deref(), Some("q.q.q"));
        assert_eq!(token_from(Some("room=a"), &h), None);
        h.insert("sec-websocket-protocol", "roomfleet, token.s.s.s".parse().unwrap());
        assert_eq!(token_from(None, &h).as_deref(), Some("s.s.s"));
        assert!(offers_subprotocol(&h));
        h.insert("authorization", "Bearer b.b.b".parse().unwrap());
        assert_eq!(token_from(None, &h).as_deref(), Some("b.b.b"));
    }

    #[test]
    fn room_grants_parse() {
        assert_eq!(parse_room_grant("chat:*=rw"), Ok(("chat:*".into(), Rights::ReadWrite)));
        assert_eq!(parse_room_grant("*=r"), Ok(("*".into(), Rights::Read)));
        assert!(parse_room_grant("chat=x").is_err());
        assert!(parse_room_grant("a b=r").is_err());
    }
}
