//! Placement policies: which nodes, in which order, a client's upgrade goes to. The proxy
//! and `/admin/placement` call [`client_ip`] and [`Policy::place`] with the room and the
//! client's address, so a policy that keys on the client (the `geo` policy of issue 5:
//! key = country, optional pools as filters of the ring walk, `room` as the fallback) plugs
//! in here alone: a [`PolicyName`], a [`Policy`] variant holding its state, a `match` arm.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use serde::Serialize;
use shared::ids::{NodeId, RoomId};

use crate::Error;
use crate::config::Config;
use crate::membership::{Member, View};
use crate::ring::Ring;

/// The `--policy` flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum PolicyName {
    /// Key = room ID: every member of a room meets on one node.
    #[default]
    Room,
}

/// A placement policy with whatever it needs at run time, built once at start.
#[derive(Debug)]
pub enum Policy {
    Room,
}

/// The client address placement uses: the TCP peer, IPv4-mapped IPv6 made IPv4. (Issue 5
/// adds `X-Forwarded-For` / `Forwarded` when the peer is a configured trusted proxy.)
pub fn client_ip(peer: SocketAddr, headers: &HeaderMap, config: &Config) -> IpAddr {
    let _ = (headers, config);
    peer.ip().to_canonical()
}

/// Where a room goes and why: what the proxy tries in order and what the admin API shows.
#[derive(Debug, Clone, Serialize)]
pub struct Placement {
    pub room: RoomId,
    /// The policy that decided (a fallback names the policy it fell back to).
    pub policy: &'static str,
    /// What was hashed: the room ID, or (geo) the country.
    pub key: String,
    /// The key's position on the ring, as 16 hex digits (JSON numbers lose 64-bit precision).
    pub hash: String,
    /// The client's country, when the policy looked it up.
    pub country: Option<String>,
    /// One line on why these nodes.
    pub reason: &'static str,
    pub generation: u64,
    /// The owner first, then the nodes to try when it refuses; every eligible node once.
    pub candidates: Vec<NodeId>,
}

impl Policy {
    /// Builds the configured policy; a policy that cannot start (a missing database) fails
    /// here, before anything binds.
    pub fn from_config(config: &Config) -> Result<Self, Error> {
        match config.policy {
            PolicyName::Room => Ok(Policy::Room),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Policy::Room => "room",
        }
    }

    /// Places `room` for a client at `client_ip` on `view`'s ring.
    pub fn place(&self, view: &View, room: &RoomId, client_ip: IpAddr) -> Result<Placement, Error> {
        let _ = client_ip;
        match self {
            Policy::Room => by_key(view, room, "room", room.as_str(), "room id hash"),
        }
    }
}

/// Places by hashing `key` on the whole ring.
fn by_key(
    view: &View,
    room: &RoomId,
    policy: &'static str,
    key: &str,
    reason: &'static str,
) -> Result<Placement, Error> {
    let ring = &view.ring;
    let hash = Ring::hash_key(key);
    let candidates: Vec<NodeId> = ring.candidates_at(hash).cloned().collect();
    if candidates.is_empty() {
        return Err(Error::EmptyRing);
    }
    Ok(Placement {
        room: room.clone(),
        policy,
        key: key.to_owned(),
        hash: format!("{hash:016x}"),
        country: None,
        reason,
        generation: ring.generation(),
        candidates,
    })
}

impl Placement {
    /// The owner: where the room lives while its node is up.
    pub fn node(&self) -> &NodeId {
        &self.candidates[0]
    }

    /// The candidates with their members, in order (skipping any the view lacks).
    pub fn members<'v>(&'v self, view: &'v View) -> impl Iterator<Item = &'v Member> + 'v {
        self.candidates.iter().filter_map(|id| view.member(id))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::membership::{Membership, Source};

    #[test]
    fn room_policy_hashes_the_room() {
        let m = Membership::new(
            vec!["a=127.0.0.1:1".parse().unwrap(), "b=127.0.0.1:2".parse().unwrap()],
            Source::Static,
            160,
            Arc::default(),
        );
        let view = m.view();
        let room = RoomId::parse("lobby").unwrap();
        let p = Policy::Room.place(&view, &room, "10.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(p.node(), view.ring.try_get("lobby").unwrap());
        assert_eq!(p.candidates.len(), 2);
        assert_eq!(p.hash, format!("{:016x}", Ring::hash_key("lobby")));
        let other = Policy::Room.place(&view, &room, "10.9.9.9".parse().unwrap()).unwrap();
        assert_eq!(p.candidates, other.candidates, "the client does not matter for `room`");
        assert_eq!(p.members(&view).count(), 2);
    }

    #[test]
    fn an_empty_ring_places_nothing() {
        let m = Membership::new(vec![], Source::Static, 160, Arc::default());
        let room = RoomId::parse("lobby").unwrap();
        let r = Policy::Room.place(&m.view(), &room, "10.0.0.1".parse().unwrap());
        assert!(matches!(r, Err(Error::EmptyRing)));
    }
}
