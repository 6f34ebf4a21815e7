//! Who is in the fleet: the node table (address, weight, health, draining, where the entry
//! came from) and the published [`View`] the proxy reads without locking. Every change
//! rebuilds the ring from the healthy, non-draining members and swaps the view atomically.
//! Sources: static flags, the admin API, and (later) a registry fed through [`Membership::sync`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;
use serde::Serialize;
use shared::ids::NodeId;
use shared::metrics::{Counter, Gauge};

use crate::Error;
use crate::metrics::NodeSample;
use crate::ring::Ring;

/// Heaviest weight a node may have: keeps a ring rebuild bounded.
pub const MAX_WEIGHT: u32 = 1000;

/// A node's address: an IP socket address is used as is, a `host:port` name is resolved on
/// every connect (container names in compose files).
#[derive(Clone, PartialEq, Eq)]
pub struct NodeAddr {
    text: String,
    ip: Option<SocketAddr>,
}

impl NodeAddr {
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The socket address when the address is an IP literal.
    pub fn ip(&self) -> Option<SocketAddr> {
        self.ip
    }

    /// The host part (an IP literal without brackets, or a name): what a node's TLS
    /// certificate must name.
    pub fn host(&self) -> &str {
        let host = self.text.rsplit_once(':').map_or(self.text.as_str(), |(h, _)| h);
        host.trim_start_matches('[').trim_end_matches(']')
    }
}

impl From<SocketAddr> for NodeAddr {
    fn from(a: SocketAddr) -> Self {
        Self { text: a.to_string(), ip: Some(a) }
    }
}

impl FromStr for NodeAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(ip) = s.parse::<SocketAddr>() {
            return Ok(ip.into());
        }
        let bad = || format!("address {s:?} is not HOST:PORT");
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        port.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(bad)?;
        let host_ok = !host.is_empty()
            && host.len() <= 253
            && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !host_ok {
            return Err(bad());
        }
        Ok(Self { text: s.to_owned(), ip: None })
    }
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for NodeAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

/// One node as configured: `--node ID=HOST:PORT[@WEIGHT][,handoff=PATH]`, a
/// `POST /admin/nodes` body, or a registry entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    pub id: NodeId,
    pub addr: NodeAddr,
    pub weight: u32,
    /// The node's `--handoff` Unix socket on this host: clients are handed to it there
    /// instead of proxied (only `--node` flags carry one).
    pub handoff: Option<std::path::PathBuf>,
}

impl NodeSpec {
    /// Validates the parts one by one, naming the first that is wrong.
    pub fn new(id: &str, addr: &str, weight: Option<u32>) -> Result<Self, String> {
        let id = NodeId::parse(id).map_err(|e| e.to_string())?;
        let addr = addr.parse()?;
        let weight = weight.unwrap_or(1);
        if !(1..=MAX_WEIGHT).contains(&weight) {
            return Err(format!("weight {weight} is outside 1..={MAX_WEIGHT}"));
        }
        Ok(Self { id, addr, weight, handoff: None })
    }
}

impl NodeSpec {
    /// `--node` values as clap splits them at commas: a `handoff=PATH` piece belongs to the
    /// node before it.
    pub fn parse_flags(values: &[String]) -> Result<Vec<Self>, String> {
        let mut joined: Vec<String> = Vec::new();
        for v in values {
            match (v.starts_with("handoff="), joined.last_mut()) {
                (true, Some(prev)) => {
                    prev.push(',');
                    prev.push_str(v);
                }
                _ => joined.push(v.clone()),
            }
        }
        joined.iter().map(|s| s.parse()).collect()
    }
}

impl FromStr for NodeSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (node, handoff) = match s.split_once(",handoff=") {
            Some((_, "")) => return Err(format!("{s:?}: handoff= needs a socket path")),
            Some((node, path)) => (node, Some(std::path::PathBuf::from(path))),
            None => (s, None),
        };
        let s = node;
        let (id, rest) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?} is not ID=HOST:PORT[@WEIGHT][,handoff=PATH]"))?;
        let (addr, weight) = match rest.rsplit_once('@') {
            Some((addr, w)) => {
                let w = w.parse().map_err(|_| format!("{s:?}: weight {w:?} is not a number"))?;
                (addr, Some(w))
            }
            None => (rest, None),
        };
        let spec = Self::new(id, addr, weight).map_err(|e| format!("{s:?}: {e}"))?;
        Ok(Self { handoff, ..spec })
    }
}

/// Where a member came from. A registry sync replaces only its own members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// `--node` flags or the config file.
    Static,
    /// `POST /admin/nodes`.
    Admin,
    /// A discovery registry (Redis, issue 7).
    Registry,
}

/// Live counters of one member, shared by every view it appears in.
#[derive(Debug, Default)]
pub struct NodeStats {
    /// Tunnels open to this node now.
    pub connections: Gauge,
    /// Upgrades this node answered with 101.
    pub upgrades: Counter,
}

/// One member as a view shows it.
#[derive(Debug, Clone)]
pub struct Member {
    pub spec: NodeSpec,
    pub source: Source,
    pub healthy: bool,
    /// Drained through the router's admin API.
    pub draining: bool,
    /// The node's own `/readyz` as the probes last saw it; false while it drains itself.
    pub ready: bool,
    pub stats: Arc<NodeStats>,
}

impl Member {
    /// Whether placement may use this member.
    pub fn eligible(&self) -> bool {
        self.healthy && self.ready && !self.draining
    }
}

/// An immutable snapshot: the ring and every member, placed or not.
#[derive(Debug)]
pub struct View {
    pub ring: Ring,
    pub members: BTreeMap<NodeId, Member>,
}

impl View {
    pub fn member(&self, id: &NodeId) -> Option<&Member> {
        self.members.get(id)
    }

    /// Every member's numbers for `/metrics`.
    pub fn samples(&self) -> Vec<NodeSample<'_>> {
        self.members
            .iter()
            .map(|(id, m)| NodeSample {
                id: id.as_str(),
                connections: m.stats.connections.get(),
                upgrades: m.stats.upgrades.get(),
                up: m.eligible(),
            })
            .collect()
    }
}

/// What `upsert` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upsert {
    Added,
    Replaced,
}

/// The authoritative node table and the published view. Writers take a short lock (never
/// across `.await`); readers load the view.
pub struct Membership {
    table: Mutex<Table>,
    view: ArcSwap<View>,
    vnodes: usize,
    generation_gauge: Arc<Gauge>,
}

impl fmt::Debug for Membership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Membership").field("view", &self.view.load()).finish()
    }
}

struct Table {
    members: BTreeMap<NodeId, Member>,
    generation: u64,
}

impl Membership {
    /// Starts with `nodes` (all healthy until probes say otherwise) at generation 1.
    /// `generation_gauge` follows every rebuild (the metrics' ring generation).
    pub fn new(
        nodes: Vec<NodeSpec>,
        source: Source,
        vnodes: usize,
        generation_gauge: Arc<Gauge>,
    ) -> Self {
        let members =
            nodes.into_iter().map(|spec| (spec.id.clone(), fresh(spec, source))).collect();
        let table = Table { members, generation: 0 };
        let this = Self {
            table: Mutex::new(table),
            view: ArcSwap::from_pointee(View { ring: Ring::empty(0), members: BTreeMap::new() }),
            vnodes,
            generation_gauge,
        };
        this.publish(&mut this.lock());
        this
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current snapshot; never blocks.
    pub fn view(&self) -> Arc<View> {
        self.view.load_full()
    }

    pub fn generation(&self) -> u64 {
        self.view.load().ring.generation()
    }

    /// Adds a node, or replaces one with the same ID: new address and weight, no longer
    /// draining (this is how a drained node comes back), health kept when the address is
    /// unchanged.
    pub fn upsert(&self, spec: NodeSpec, source: Source) -> Upsert {
        let mut t = self.lock();
        let outcome = match t.members.get_mut(&spec.id) {
            Some(m) => {
                let moved = m.spec.addr != spec.addr;
                m.spec = spec;
                m.source = source;
                m.healthy |= moved;
                m.ready |= moved;
                m.draining = false;
                Upsert::Replaced
            }
            None => {
                t.members.insert(spec.id.clone(), fresh(spec, source));
                Upsert::Added
            }
        };
        self.publish(&mut t);
        outcome
    }

    /// Removes a node; false when it is not a member.
    pub fn remove(&self, id: &NodeId) -> bool {
        let mut t = self.lock();
        let found = t.members.remove(id).is_some();
        if found {
            self.publish(&mut t);
        }
        found
    }

    /// Replaces every member of `source` with `nodes` in one rebuild: the entry point of a
    /// discovery registry's full read. Members of other sources are left alone, and one of
    /// them keeps its entry when the registry names the same ID.
    pub fn sync(&self, source: Source, nodes: Vec<NodeSpec>) {
        let mut t = self.lock();
        let before = t.members.clone();
        let wanted: BTreeMap<NodeId, NodeSpec> =
            nodes.into_iter().map(|s| (s.id.clone(), s)).collect();
        t.members.retain(|id, m| m.source != source || wanted.contains_key(id));
        for (id, spec) in wanted {
            match t.members.get_mut(&id) {
                Some(m) if m.source != source => {}
                Some(m) => {
                    if m.spec.addr != spec.addr {
                        m.healthy = true;
                        m.ready = true;
                    }
                    m.spec = spec;
                }
                None => {
                    t.members.insert(id, fresh(spec, source));
                }
            }
        }
        if !same(&before, &t.members) {
            self.publish(&mut t);
        }
    }

    /// Marks a node draining (placement stops using it) or not. `Err` for an unknown node.
    pub fn set_draining(&self, id: &NodeId, draining: bool) -> Result<(), Error> {
        self.update(id, |m| m.draining = draining)
    }

    /// Records a health transition; the health checker calls this after N bad or M good probes.
    pub fn set_healthy(&self, id: &NodeId, healthy: bool) -> Result<(), Error> {
        self.update(id, |m| m.healthy = healthy)
    }

    /// Records what the probes decided: health (after a streak) and the node's readiness.
    pub fn set_probed(&self, id: &NodeId, healthy: bool, ready: bool) -> Result<(), Error> {
        self.update(id, |m| (m.healthy, m.ready) = (healthy, ready))
    }

    fn update(&self, id: &NodeId, f: impl FnOnce(&mut Member)) -> Result<(), Error> {
        let mut t = self.lock();
        let m = t.members.get_mut(id).ok_or_else(|| Error::UnknownNode(id.to_string()))?;
        let before = (m.healthy, m.ready, m.draining);
        f(m);
        if before != (m.healthy, m.ready, m.draining) {
            self.publish(&mut t);
        }
        Ok(())
    }

    /// Builds the next ring from the eligible members and swaps the new view in.
    fn publish(&self, t: &mut Table) {
        t.generation += 1;
        let placed = t.members.values().filter(|m| m.eligible());
        let ring = Ring::build(
            t.generation,
            placed.map(|m| (m.spec.id.clone(), m.spec.weight)),
            self.vnodes,
        );
        self.generation_gauge.set(t.generation as i64);
        tracing::debug!(generation = t.generation, nodes = ring.len(), "ring rebuilt");
        self.view.store(Arc::new(View { ring, members: t.members.clone() }));
    }
}

fn fresh(spec: NodeSpec, source: Source) -> Member {
    Member { spec, source, healthy: true, draining: false, ready: true, stats: Arc::default() }
}

fn same(a: &BTreeMap<NodeId, Member>, b: &BTreeMap<NodeId, Member>) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|((ia, ma), (ib, mb))| {
            ia == ib
                && ma.spec == mb.spec
                && ma.source == mb.source
                && (ma.healthy, ma.ready, ma.draining) == (mb.healthy, mb.ready, mb.draining)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> NodeSpec {
        s.parse().unwrap()
    }

    fn membership(nodes: &[&str]) -> Membership {
        Membership::new(
            nodes.iter().map(|s| spec(s)).collect(),
            Source::Static,
            160,
            Arc::default(),
        )
    }

    #[test]
    fn the_host_is_what_a_node_certificate_names() {
        let host = |s: &str| s.parse::<NodeAddr>().unwrap().host().to_owned();
        assert_eq!(host("127.0.0.1:7001"), "127.0.0.1");
        assert_eq!(host("[::1]:7001"), "::1");
        assert_eq!(host("node-a:7001"), "node-a");
    }

    #[test]
    fn node_flags_parse() {
        let s = spec("node-a=127.0.0.1:7001@3");
        assert_eq!((s.id.as_str(), s.addr.as_str(), s.weight), ("node-a", "127.0.0.1:7001", 3));
        assert!(s.addr.ip().is_some());
        let s = spec("b=node-b:7001");
        assert_eq!((s.addr.as_str(), s.weight, s.addr.ip()), ("node-b:7001", 1, None));
        assert!(spec("c=[::1]:7001").addr.ip().is_some());
        let flags = ["a=h:1", "d=127.0.0.1:7004@2", "handoff=/run/roomfleet/d.sock"];
        let parsed = NodeSpec::parse_flags(&flags.map(String::from)).unwrap();
        assert_eq!((parsed.len(), parsed[0].handoff.as_ref()), (2, None));
        let s = parsed[1].clone();
        assert_eq!((s.addr.as_str(), s.weight), ("127.0.0.1:7004", 2));
        assert_eq!(s.handoff.as_deref(), Some(std::path::Path::new("/run/roomfleet/d.sock")));
        for bad in [
            "x",
            "=1.2.3.4:1",
            "a=1.2.3.4",
            "a=h:0",
            "a=h:1@0",
            "a=h:1@x",
            "a b=h:1",
            "a=h/x:1",
            "a=h:1,handoff=",
        ] {
            assert!(bad.parse::<NodeSpec>().is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn every_change_publishes_a_new_generation() {
        let m = membership(&["a=127.0.0.1:1", "b=127.0.0.1:2"]);
        let g = m.generation();
        assert_eq!(m.view().ring.len(), 2);
        let a = NodeId::parse("a").unwrap();
        m.set_healthy(&a, false).unwrap();
        assert_eq!(m.generation(), g + 1);
        assert!(!m.view().ring.contains(&a));
        assert!(m.view().member(&a).is_some(), "unhealthy members stay listed");
        m.set_healthy(&a, false).unwrap();
        assert_eq!(m.generation(), g + 1, "no change, no rebuild");
        m.set_healthy(&a, true).unwrap();
        m.set_draining(&a, true).unwrap();
        assert!(!m.view().ring.contains(&a));
        assert_eq!(m.upsert(spec("a=127.0.0.1:1"), Source::Admin), Upsert::Replaced);
        assert!(m.view().ring.contains(&a), "re-adding ends the drain");
        assert!(m.remove(&a));
        assert!(!m.remove(&a));
        assert!(matches!(m.set_draining(&a, true), Err(Error::UnknownNode(_))));
    }

    #[test]
    fn a_registry_sync_replaces_only_its_own_members() {
        let m = membership(&["a=127.0.0.1:1"]);
        m.sync(Source::Registry, vec![spec("r1=127.0.0.1:11"), spec("r2=127.0.0.1:12")]);
        assert_eq!(m.view().members.len(), 3);
        let g = m.generation();
        m.sync(Source::Registry, vec![spec("r1=127.0.0.1:11"), spec("r2=127.0.0.1:12")]);
        assert_eq!(m.generation(), g, "an unchanged registry does not rebuild");
        m.sync(Source::Registry, vec![spec("r2=127.0.0.1:12"), spec("a=127.0.0.1:99")]);
        let v = m.view();
        let ids: Vec<&str> = v.members.keys().map(|k| k.as_str()).collect();
        assert_eq!(ids, ["a", "r2"]);
        assert_eq!(v.members.values().next().unwrap().spec.addr.as_str(), "127.0.0.1:1");
    }
}
