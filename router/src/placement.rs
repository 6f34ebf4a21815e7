//! Placement policies: which nodes, in which order, a client's upgrade goes to. The proxy
//! and `/admin/placement` call [`Policy::place`] with the room and the client's address. `room` hashes the room; `geo` hashes the client's country (or, with a
//! pool for it, the room over the pool's nodes) and falls back to `room` when the country
//! is unknown.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;
use shared::ids::{NodeId, RoomId};

use crate::Error;
use crate::membership::{Member, View};
pub use crate::metrics::GEO_FALLBACKS as FALLBACKS;
use crate::ring::Ring;

/// The `--policy` flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum PolicyName {
    /// Key = room ID: every member of a room meets on one node.
    #[default]
    Room,
    /// Key = the client's country (GeoIP): a country's users share a node or a pool.
    Geo,
}

/// A placement policy with whatever it needs at run time, built once at start.
#[derive(Debug)]
pub enum Policy {
    Room,
    Geo(Geo),
}

/// The state of the `geo` policy: the database (reloadable) and the pools.
#[derive(Debug)]
pub struct Geo {
    pub db: Arc<geoip::GeoDb>,
    /// Country code (or `default`) -> the nodes its rooms are hashed over.
    pub pools: BTreeMap<String, Vec<NodeId>>,
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
    /// The `geo` pool used, when there was one.
    pub pool: Option<String>,
    /// Set when `geo` fell back: one of [`FALLBACKS`].
    pub fallback: Option<&'static str>,
    pub generation: u64,
    /// The owner first, then the nodes to try when it refuses; every eligible node once.
    pub candidates: Vec<NodeId>,
}

impl Policy {
    /// Builds the configured policy; a policy that cannot start (a missing database) fails
    /// here, before anything binds.
    /// `pools` maps a country (or `default`) to the node IDs its rooms are hashed over.
    pub fn new(
        name: PolicyName,
        geoip: Option<&Path>,
        pools: &[(String, Vec<String>)],
    ) -> Result<Self, Error> {
        match name {
            PolicyName::Room => Ok(Policy::Room),
            PolicyName::Geo => {
                let path =
                    geoip.ok_or_else(|| Error::config("--policy geo needs --geoip FILE.mmdb"))?;
                let db = geoip::GeoDb::open(path).map_err(|e| Error::config(e.to_string()))?;
                let mut by_country = BTreeMap::new();
                for (country, nodes) in pools {
                    let ids = nodes
                        .iter()
                        .map(|n| {
                            NodeId::parse(n)
                                .map_err(|e| Error::config(format!("--pools {country}: {e}")))
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    by_country.insert(country.clone(), ids);
                }
                Ok(Policy::Geo(Geo { db: Arc::new(db), pools: by_country }))
            }
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Policy::Room => "room",
            Policy::Geo(_) => "geo",
        }
    }

    /// Places `room` for a client at `client_ip` on `view`'s ring.
    pub fn place(&self, view: &View, room: &RoomId, client_ip: IpAddr) -> Result<Placement, Error> {
        match self {
            Policy::Room => by_key(view, room, "room", room.as_str(), "room id hash"),
            Policy::Geo(geo) => geo.place(view, room, client_ip),
        }
    }
}

impl Geo {
    fn place(&self, view: &View, room: &RoomId, ip: IpAddr) -> Result<Placement, Error> {
        let Some(country) = self.db.lookup(ip) else {
            let mut p = by_key(view, room, "room", room.as_str(), "unknown country: room id hash")?;
            p.fallback = Some(FALLBACKS[0]);
            return Ok(p);
        };
        let code = country.as_str().to_string();
        let pool = self
            .pools
            .get(&code)
            .map(|p| (code.clone(), p))
            .or_else(|| self.pools.get("default").map(|p| ("default".to_string(), p)));
        let Some((pool_name, members)) = pool else {
            // No pools: the country is the key, so its users share one node.
            let mut p = by_key(view, room, "geo", &format!("country:{code}"), "country hash")?;
            p.country = Some(code);
            return Ok(p);
        };
        let mut p =
            by_key(view, room, "geo", room.as_str(), "room id hash within the country's pool")?;
        p.country = Some(code);
        p.pool = Some(pool_name);
        // The ring walk filtered to the pool is the pool's own ring; the rest follow as
        // last-resort fallbacks so a client is still served when the whole pool is down.
        let (inside, outside): (Vec<NodeId>, Vec<NodeId>) =
            p.candidates.iter().cloned().partition(|id| members.contains(id));
        if inside.is_empty() {
            p.fallback = Some(FALLBACKS[1]);
            p.reason = "pool has no healthy node: room id hash on the whole ring";
        } else {
            p.candidates = inside.into_iter().chain(outside).collect();
        }
        Ok(p)
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
        pool: None,
        fallback: None,
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
